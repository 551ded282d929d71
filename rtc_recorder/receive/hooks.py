"""Every touch of aiortc's private internals, in one place.

Pass-through recording needs what aiortc keeps to itself: the encoded frames a
``RTCRtpReceiver`` re-assembles before handing them to its decoder thread, the RTCP
sender reports it receives, and its way of sending a picture loss indication. A
:class:`ReceiverTap` hooks those on one receiver:

- the receiver's decoder queue is wrapped so each complete frame goes to the taps'
  listeners, and to aiortc's decoder only once somebody reads decoded frames from the
  track (``track.recv()`` is wrapped to notice that);
- the jitter buffer's ``add`` is wrapped to see the RTP packets of each frame, so a frame
  that lost packets (or follows lost packets) is flagged;
- ``_handle_rtcp_packet`` is wrapped to keep the latest sender report.

This was written against aiortc 1.16. On any other version, or if one of those
attributes is missing, :func:`tap_track` logs a warning and returns ``None``: the
recorder then reads decoded frames like any other track (correct, only slower).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiortc
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpreceiver import RemoteStreamTrack, RTCRtpReceiver
from aiortc.rtp import RtcpSrPacket, RtpPacket

logger = logging.getLogger("rtc_recorder")

TESTED_AIORTC = ("1.16.",)
# Seconds a frame may wait in aiortc's jitter buffer for a missing packet, by kind: more
# than reordering takes, less than the buffer takes to fill (16 audio packets: 320 ms).
STALL_LIMITS = {"audio": 0.1, "video": 0.3}

_QUEUE = "_RTCRtpReceiver__decoder_queue"
_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
_TIMESTAMP_MAPPER = "_RTCRtpReceiver__timestamp_mapper"

_peer_connections: weakref.WeakSet[RTCPeerConnection] = weakref.WeakSet()
_taps: weakref.WeakKeyDictionary[MediaStreamTrack, ReceiverTap] = weakref.WeakKeyDictionary()
_warned: set[str] = set()


def _register_peer_connections() -> None:
    """Remember every RTCPeerConnection created from now on: a remote track does not
    know its receiver, but the peer connection's transceivers do."""
    original = RTCPeerConnection.__init__
    if getattr(original, "_rtc_recorder", False):
        return

    def __init__(self: RTCPeerConnection, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        _peer_connections.add(self)

    __init__._rtc_recorder = True  # type: ignore[attr-defined]
    RTCPeerConnection.__init__ = __init__  # type: ignore[method-assign]


_register_peer_connections()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


@dataclass(slots=True)
class EncodedFrame:
    """One re-assembled encoded frame, as the receiver would have decoded it.

    ``timestamp`` is the RTP timestamp unwrapped to start at 0 for the track, in
    ``clock_rate`` units; ``arrival`` is ``time.monotonic()`` when it was complete.
    ``complete`` is False when packets of this frame were lost; ``gap`` is True when
    packets were lost between the previous frame and this one.
    """

    codec: str
    data: bytes
    timestamp: int
    clock_rate: int
    arrival: float
    complete: bool = True
    gap: bool = False


@dataclass(slots=True)
class SenderReport:
    """The latest RTCP sender report: the sender's wall clock (NTP, seconds) at an RTP
    timestamp expressed on the same unwrapped scale as :attr:`EncodedFrame.timestamp`."""

    ntp_seconds: float
    timestamp: int


@dataclass(slots=True)
class _FrameParts:
    start: int | None = None
    end: int | None = None
    sizes: dict[int, int] | None = None


FrameListener = Callable[[EncodedFrame], None]
EndListener = Callable[[], None]


def _frame_start(codec: str, payload: bytes) -> bool:
    """Whether an RTP payload begins a frame (VP8 S bit with partition 0; H.264 anything
    but a FU-A continuation)."""
    if not payload:
        return False
    if codec == "vp8":
        return bool(payload[0] & 0x10) and payload[0] & 0x07 == 0
    if codec == "h264":
        return payload[0] & 0x1F != 28 or (len(payload) > 1 and bool(payload[1] & 0x80))
    return True


class ReceiverTap:
    """Encoded frames, sender reports and keyframe requests of one ``RTCRtpReceiver``."""

    def __init__(self, receiver: RTCRtpReceiver, track: MediaStreamTrack) -> None:
        self.kind = track.kind
        self.ssrc: int | None = None
        self.sender_report: SenderReport | None = None
        # (arrival, timestamp, clock rate) of the latest frame, listened to or not
        self.last_frame: tuple[float, int, int] | None = None
        self.decoding = False
        self.frames_to_decoder = 0
        self._receiver = receiver
        self._track = track
        self._frame_listeners: list[FrameListener] = []
        self._end_listeners: list[EndListener] = []
        self._parts: dict[int, _FrameParts] = {}
        self._codec_names: dict[int, str] = {}  # payload type -> codec name
        self._arrivals: dict[int, float] = {}
        self._padding: set[int] = set()
        self._last_end: int | None = None
        self._latest: tuple[int, int] | None = (
            None  # (raw, unwrapped) RTP timestamp of the latest frame
        )
        self._audio = _ReorderWindow(STALL_LIMITS["audio"])
        self._ended = False
        self._keyframe_pending = False
        self._last_frame_at = time.monotonic()
        self.stalls_skipped = 0
        self._pli_tasks: set[asyncio.Future[None]] = set()
        self._install()

    # -- hooks ------------------------------------------------------------------

    def _install(self) -> None:
        receiver = self._receiver
        inner: queue.Queue[Any] = getattr(receiver, _QUEUE)
        setattr(receiver, _QUEUE, _TapQueue(self, inner))

        jitter_buffer = getattr(receiver, _JITTER_BUFFER)
        add = jitter_buffer.add

        def observed_add(packet: RtpPacket) -> Any:
            if self.ssrc != packet.ssrc:
                self.ssrc = packet.ssrc
                if self._keyframe_pending:
                    self._keyframe_pending = False
                    self.request_keyframe()
            if self.kind == "audio":
                # An audio packet is a whole frame: the recording takes them straight from
                # here, in order, and aiortc's buffer only feeds aiortc's decoder.
                for held, arrival in self._audio.add(packet, time.monotonic()):
                    self._deliver_packet(held, arrival)
                return add(packet)
            self._arrivals.setdefault(packet.timestamp, time.monotonic())
            self._observe(packet)
            pli, frame = add(packet)
            frame = frame or self._unstall(jitter_buffer)
            if frame is not None:
                self._last_frame_at = time.monotonic()
                # The jitter buffer releases a frame only once later packets arrive: the
                # first packet's arrival is when the frame was live.
                frame._rtc_recorder_arrival = self._arrivals.pop(frame.timestamp, None)
                while len(self._arrivals) > 128:
                    del self._arrivals[next(iter(self._arrivals))]
                frame._rtc_recorder_complete, frame._rtc_recorder_gap = self._judge(frame)
            return pli, frame

        jitter_buffer.add = observed_add

        handle_rtcp = receiver._handle_rtcp_packet

        async def observed_rtcp(packet: Any) -> None:
            if isinstance(packet, RtcpSrPacket) and packet.ssrc == self.ssrc:
                self._on_sender_report(packet)
            await handle_rtcp(packet)

        receiver._handle_rtcp_packet = observed_rtcp  # type: ignore[method-assign]

        recv = self._track.recv

        async def observed_recv() -> Any:
            if not self.decoding:
                self.decoding = True
                self.request_keyframe()
            return await recv()

        self._track.recv = observed_recv  # type: ignore[method-assign]

    def _unstall(self, jitter_buffer: Any) -> Any:
        """Give up on a packet the video jitter buffer has been waiting for too long.

        aiortc's video jitter buffer holds everything behind a missing packet until 512
        packets have piled up: with retransmissions lost too, that freezes video for
        seconds. When no frame has come out for :data:`STALL_LIMITS` while packets keep
        arriving, skip past the hole to the next packet held; the frame that comes out is
        judged incomplete or after a gap, and video resumes on a keyframe.
        """
        now = time.monotonic()
        if now - self._last_frame_at < STALL_LIMITS["video"]:
            return None
        capacity = jitter_buffer._capacity
        slots = jitter_buffer._packets
        origin = jitter_buffer._origin
        if origin is None:
            return None
        hole = next((i for i in range(capacity) if slots[(origin + i) % capacity] is None), None)
        if hole is None:
            return None
        held = next(
            (i for i in range(hole, capacity) if slots[(origin + i) % capacity] is not None), None
        )
        if held is None:
            return None  # nothing behind the hole: just waiting for the next packet
        self.stalls_skipped += 1
        self._last_frame_at = now
        jitter_buffer.remove(held)
        return jitter_buffer._remove_frame(jitter_buffer._origin)

    def _deliver_packet(self, packet: RtpPacket, arrival: float) -> None:
        """An audio packet, in order, to the listeners (as its own frame)."""
        data = getattr(packet, "_data", b"")
        codecs: dict[int, Any] = getattr(self._receiver, "_RTCRtpReceiver__codecs", {})
        codec = codecs.get(packet.payload_type)
        if not data or codec is None:
            return
        timestamp = self._unwrap(packet.timestamp)
        self._notify(codec, data, timestamp, arrival, True, False)

    def _unwrap(self, raw: int) -> int:
        """An audio RTP timestamp on the track's unwrapped scale (0 at its first frame)."""
        if self._latest is None:
            return self._remember(raw, 0)
        last_raw, last = self._latest
        return self._remember(raw, last + _signed32(raw - last_raw))

    def _remember(self, raw: int, unwrapped: int) -> int:
        self._latest = (raw, unwrapped)
        return unwrapped

    def _codec_of(self, packet: RtpPacket) -> str:
        name = self._codec_names.get(packet.payload_type)
        if name is None:
            codecs: dict[int, Any] = getattr(self._receiver, "_RTCRtpReceiver__codecs", {})
            codec = codecs.get(packet.payload_type)
            name = codec.mimeType.split("/")[1].lower() if codec is not None else ""
            self._codec_names[packet.payload_type] = name
        return name

    def _observe(self, packet: RtpPacket) -> None:
        """Note which packets make up each frame (keyed by RTP timestamp)."""
        data = getattr(packet, "_data", b"")
        sequence = packet.sequence_number
        if not data:
            self._padding.add(sequence)
            if len(self._padding) > 512:
                self._padding = {s for s in self._padding if (sequence - s) % 65536 < 256}
            return
        parts = self._parts.get(packet.timestamp)
        if parts is None:
            while len(self._parts) > 128:
                # Frames the jitter buffer gave up on are never judged: forget the oldest.
                del self._parts[next(iter(self._parts))]
            parts = self._parts[packet.timestamp] = _FrameParts(sizes={})
        assert parts.sizes is not None
        parts.sizes[sequence] = len(data)
        if _frame_start(self._codec_of(packet), packet.payload):
            parts.start = sequence if parts.start is None else _earlier(parts.start, sequence)
        if packet.marker:
            parts.end = sequence

    def _judge(self, frame: Any) -> tuple[bool, bool]:
        """(complete, gap) for a frame the jitter buffer just re-assembled."""
        parts = self._parts.pop(frame.timestamp, None)
        if parts is None or parts.start is None or parts.end is None or parts.sizes is None:
            return False, True
        count = (parts.end - parts.start) % 65536 + 1
        sequences = [(parts.start + i) % 65536 for i in range(count)]
        complete = all(s in parts.sizes for s in sequences) and (
            sum(parts.sizes[s] for s in sequences) == len(frame.data)
        )
        gap = False
        if self._last_end is not None:
            between = (parts.start - self._last_end - 1) % 65536
            gap = between > 1000 or any(
                (self._last_end + 1 + i) % 65536 not in self._padding for i in range(between)
            )
        self._last_end = parts.end
        return complete, gap

    def _on_sender_report(self, packet: RtcpSrPacket) -> None:
        if self._latest is None:
            return
        info = packet.sender_info
        last_raw, last = self._latest
        ntp = info.ntp_timestamp
        self.sender_report = SenderReport(
            (ntp >> 32) + (ntp & 0xFFFFFFFF) / (1 << 32),
            last + _signed32(info.rtp_timestamp - last_raw),
        )

    # -- called by the receiver through _TapQueue ---------------------------------

    def _on_frame(self, item: tuple[Any, Any]) -> bool:
        """A frame on its way to aiortc's decoder (video: to the listeners first); return
        whether the decoder wants it."""
        codec, frame = item
        if self.kind == "video":
            mapper = getattr(self._receiver, _TIMESTAMP_MAPPER)
            self._remember((frame.timestamp + mapper._origin) % (1 << 32), frame.timestamp)
            arrival = getattr(frame, "_rtc_recorder_arrival", None) or time.monotonic()
            complete = getattr(frame, "_rtc_recorder_complete", True)
            gap = getattr(frame, "_rtc_recorder_gap", False)
            self._notify(codec, frame.data, frame.timestamp, arrival, complete, gap)
        if self.decoding:
            self.frames_to_decoder += 1
        return self.decoding

    def _notify(
        self, codec: Any, data: bytes, timestamp: int, arrival: float, complete: bool, gap: bool
    ) -> None:
        self.last_frame = (arrival, timestamp, codec.clockRate)
        if not self._frame_listeners:
            return
        encoded = EncodedFrame(
            codec=codec.mimeType.split("/")[1].lower(),
            data=data,
            timestamp=timestamp,
            clock_rate=codec.clockRate,
            arrival=arrival,
            complete=complete,
            gap=gap,
        )
        for listener in list(self._frame_listeners):
            listener(encoded)

    def _on_end(self) -> None:
        if self._ended:
            return
        for held, arrival in self._audio.flush():
            self._deliver_packet(held, arrival)
        self._ended = True
        for listener in list(self._end_listeners):
            listener()
        if not self.decoding:
            # Nobody reads the track, so nobody would see aiortc end it.
            self._track.stop()

    # -- public -------------------------------------------------------------------

    @property
    def sync_key(self) -> object:
        """Identifies the sender: tracks over one transport come from one peer's clock."""
        return self._receiver.transport

    @property
    def ended(self) -> bool:
        """Whether the receiver has stopped (hang-up, BYE, transport closed)."""
        return self._ended

    def predicted_codec(self) -> str | None:
        """The codec the sender will most likely use: the first one negotiated."""
        for pc in list(_peer_connections):
            for transceiver in pc.getTransceivers():
                if transceiver.receiver is self._receiver:
                    for codec in transceiver._codecs:
                        name = codec.mimeType.split("/")[1].lower()
                        if name not in ("rtx", "red", "ulpfec", "flexfec-03"):
                            return str(name)
        return None

    def subscribe(self, on_frame: FrameListener, on_end: EndListener) -> None:
        """Receive every frame from now on, and a call when the receiver stops."""
        self._frame_listeners.append(on_frame)
        self._end_listeners.append(on_end)

    def unsubscribe(self, on_frame: FrameListener, on_end: EndListener) -> None:
        """Stop receiving frames."""
        if on_frame in self._frame_listeners:
            self._frame_listeners.remove(on_frame)
        if on_end in self._end_listeners:
            self._end_listeners.remove(on_end)

    def request_keyframe(self) -> bool:
        """Send a picture loss indication to the sender (with its first packet, if none has
        arrived yet); False for audio and for an ended receiver."""
        if self.kind != "video" or self._ended:
            return False
        if self.ssrc is None:
            self._keyframe_pending = True
            return True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        coroutine: Coroutine[Any, Any, None] = self._receiver._send_rtcp_pli(self.ssrc)
        task = loop.create_task(coroutine)
        self._pli_tasks.add(task)
        task.add_done_callback(self._pli_done)
        return True

    def _pli_done(self, task: asyncio.Future[None]) -> None:
        self._pli_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("PLI failed: %s", task.exception())


def _signed32(delta: int) -> int:
    """A 32-bit RTP timestamp difference, as the signed distance it stands for."""
    delta %= 1 << 32
    return delta - (1 << 32) if delta >= 1 << 31 else delta


class _ReorderWindow:
    """Puts packets back in sequence order, waiting at most ``wait`` seconds for a missing
    one; packets that come later than that, and duplicates, are dropped."""

    def __init__(self, wait: float, depth: int = 64) -> None:
        self._wait = wait
        self._depth = depth
        self._held: dict[int, tuple[RtpPacket, float]] = {}
        self._next: int | None = None

    def add(self, packet: RtpPacket, arrival: float) -> list[tuple[RtpPacket, float]]:
        """Take a packet; return the packets now due, in order."""
        sequence = packet.sequence_number
        if self._next is None:
            self._next = sequence
        if (sequence - self._next) % 65536 >= 32768 or sequence in self._held:
            return []
        self._held[sequence] = (packet, arrival)
        return self._release(arrival)

    def _release(self, now: float) -> list[tuple[RtpPacket, float]]:
        due: list[tuple[RtpPacket, float]] = []
        while self._held and self._next is not None:
            if self._next in self._held:
                due.append(self._held.pop(self._next))
                self._next = (self._next + 1) % 65536
                continue
            oldest = min(arrival for _, arrival in self._held.values())
            if now - oldest < self._wait and len(self._held) < self._depth:
                break
            start = self._next
            self._next = min(self._held, key=lambda s: (s - start) % 65536)
        return due

    def flush(self) -> list[tuple[RtpPacket, float]]:
        """Everything still held, in order."""
        return self._release(float("inf"))


def _earlier(a: int, b: int) -> int:
    """The earlier of two 16-bit sequence numbers."""
    return b if (a - b) % 65536 < 32768 else a


class _TapQueue:
    """Stands in for the receiver's decoder queue (``put`` from the event loop, ``get`` from
    aiortc's decoder thread)."""

    def __init__(self, tap: ReceiverTap, inner: queue.Queue[Any]) -> None:
        self._tap = tap
        self._inner = inner

    def put(self, item: Any) -> None:
        if item is None:
            self._inner.put(None)
            self._tap._on_end()
        elif self._tap._on_frame(item):
            self._inner.put(item)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner.get(*args, **kwargs)


def _version_supported() -> bool:
    version = getattr(aiortc, "__version__", "")
    if not version.startswith(TESTED_AIORTC):
        _warn_once(
            f"rtc_recorder: aiortc {version} is not a version pass-through was tested with "
            f"({', '.join(TESTED_AIORTC)}x); recording decoded frames instead"
        )
        return False
    return True


def _find_receiver(track: MediaStreamTrack) -> RTCRtpReceiver | None:
    for pc in list(_peer_connections):
        for transceiver in pc.getTransceivers():
            if transceiver.receiver._track is track:
                return transceiver.receiver
    return None


def source_of(track: MediaStreamTrack) -> MediaStreamTrack:
    """The track a relay (``aiortc.contrib.media.MediaRelay``) subscription reads from."""
    seen = 0
    while not isinstance(track, RemoteStreamTrack) and seen < 8:
        source = getattr(track, "_source", None)
        if not isinstance(source, MediaStreamTrack):
            break
        track, seen = source, seen + 1
    return track


def tap_track(track: MediaStreamTrack) -> ReceiverTap | None:
    """The tap of the receiver behind ``track`` (installed once), or ``None`` when ``track``
    is not received by an aiortc peer connection or the internals are not as expected."""
    track = source_of(track)
    if not isinstance(track, RemoteStreamTrack):
        return None
    existing = _taps.get(track)
    if existing is not None:
        return existing
    if not _version_supported():
        return None
    receiver = _find_receiver(track)
    if receiver is None:
        _warn_once(
            "rtc_recorder: a remote track's peer connection was created before rtc_recorder "
            "was imported; recording it by decoding (import rtc_recorder first for pass-through)"
        )
        return None
    try:
        mapper = getattr(receiver, _TIMESTAMP_MAPPER)
        jitter_buffer = getattr(receiver, _JITTER_BUFFER)
        for name in ("_capacity", "_packets", "_origin"):
            getattr(jitter_buffer, name)
        required = (
            getattr(receiver, _QUEUE).put,
            jitter_buffer.add,
            jitter_buffer.remove,
            jitter_buffer._remove_frame,
            receiver._send_rtcp_pli,
            receiver._handle_rtcp_packet,
        )
        if not hasattr(mapper, "_origin") or not all(callable(r) for r in required):
            raise AttributeError("unexpected receiver internals")
    except AttributeError as exc:
        _warn_once(f"rtc_recorder: aiortc internals changed ({exc}); recording decoded frames")
        return None
    tap = ReceiverTap(receiver, track)
    _taps[track] = tap
    return tap
