"""Every touch of aiortc's receiver internals, in one place, thin, and never raising.

Pass-through recording needs what aiortc keeps to itself: the RTP packets an
``RTCRtpReceiver`` receives (after SRTP, RTX unwrapping and depayloading), the RTCP
sender reports, and a way to send a picture loss indication. A :class:`ReceiverTap`
hooks one receiver:

- the jitter buffer's ``add`` is wrapped: aiortc's own ``add`` runs first and as before,
  then the packet goes to this tap's :class:`~.assembler.FrameAssembler`, whose frames go
  to the subscribers (recordings, forwarders);
- the decoder queue is wrapped so that aiortc's decoder thread only gets frames once
  somebody reads decoded frames from the track (``track.recv()`` is wrapped to notice);
  the end of the stream (aiortc puts ``None``) always goes through;
- ``_handle_rtcp_packet`` is wrapped to keep the sender reports.

Nothing a tap does can reach aiortc as an exception: every hook runs the tap's part
guarded, and a failure goes to the subscribers (each fails its own recording) while
aiortc's path goes on untouched. A tap is installed while something holds it (a
recorder the track was added to, a subscription); when the last holder lets go, the
hooks are removed and the receiver is aiortc's own again.

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

from ..timing import DEFAULT_FRAME_INTERVAL, SenderClock, SenderReport, StreamClock
from .assembler import Frame, FrameAssembler, Packet

logger = logging.getLogger("rtc_recorder")

TESTED_AIORTC = ("1.16.",)
# Seconds a missing packet may hold back what follows it, by kind: video waits for
# retransmissions (NACK); audio is not retransmitted, so only reordering is waited for.
WAITS = {"audio": 0.1, "video": 0.5}
NOT_MEDIA = ("rtx", "red", "ulpfec", "flexfec-03")

_QUEUE = "_RTCRtpReceiver__decoder_queue"
_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
_CODECS = "_RTCRtpReceiver__codecs"
_TAP = "_rtc_recorder_tap"

_peer_connections: weakref.WeakSet[RTCPeerConnection] = weakref.WeakSet()
_sender_clocks: weakref.WeakKeyDictionary[object, SenderClock] = weakref.WeakKeyDictionary()
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

    ``timestamp`` is the RTP timestamp extended past 32 bits, in ``clock_rate`` units;
    ``arrival`` is ``time.monotonic()`` when its first packet arrived; ``reference`` the
    instant its stream's clock places it at (None while that clock is not known yet).
    ``complete`` is False when packets of this frame were lost; ``gap`` is True when
    packets were lost between the previous frame and this one (or the stream restarted).
    """

    codec: str
    data: bytes
    timestamp: int
    clock_rate: int
    arrival: float
    complete: bool = True
    gap: bool = False
    ssrc: int = 0
    reference: float | None = None  # when it was live on the reference clock, if known yet


FrameListener = Callable[[EncodedFrame], None]
EndListener = Callable[[], None]
FailureListener = Callable[[BaseException], None]


@dataclass(eq=False)
class Subscription:
    """A subscriber's callbacks: every frame, the end of the stream, a failure of the tap."""

    on_frame: FrameListener
    on_end: EndListener
    on_failure: FailureListener


def frame_start(codec: str, payload: bytes) -> bool:
    """Whether an RTP payload begins a frame (VP8: S bit with partition 0; H.264: anything
    but an FU-A continuation)."""
    if not payload:
        return False
    if codec == "vp8":
        return bool(payload[0] & 0x10) and payload[0] & 0x07 == 0
    if codec == "h264":
        return payload[0] & 0x1F != 28 or (len(payload) > 1 and bool(payload[1] & 0x80))
    return True


def assembly_packet(packet: RtpPacket, codec: str, kind: str, arrival: float) -> Packet:
    """What the assembler needs of a depayloaded aiortc packet (``packet._data``)."""
    video = kind == "video"
    return Packet(
        ssrc=packet.ssrc,
        sequence=packet.sequence_number,
        timestamp=packet.timestamp,
        data=getattr(packet, "_data", b""),
        arrival=arrival,
        starts_frame=frame_start(codec, packet.payload) if video else True,
        ends_frame=bool(packet.marker) if video else True,
    )


class ReceiverTap:
    """Encoded frames, sender reports and keyframe requests of one ``RTCRtpReceiver``."""

    def __init__(self, receiver: RTCRtpReceiver, track: MediaStreamTrack) -> None:
        self.kind = track.kind
        self.ssrc: int | None = None
        self.decoding = False
        self.frames_to_decoder = 0
        self.failures = 0
        self.frames_seen = 0  # frames received (assembled or, with nobody taking them, begun)
        # The frame interval of the stream's grid (a plain float, read by writer threads).
        self.frame_grid = DEFAULT_FRAME_INTERVAL
        self.assembler = FrameAssembler(wait=WAITS.get(track.kind, WAITS["video"]))
        self._receiver = receiver
        self._track = track
        self._subscriptions: list[Subscription] = []
        self._holders: dict[int, weakref.finalize[Any, Any]] = {}
        self._codec_names: dict[int, tuple[str, int]] = {}  # payload type -> (name, rate)
        self._clocks: dict[int, StreamClock] = {}  # ssrc -> its clock
        self._reports: dict[int, tuple[float, int]] = {}  # ssrc -> (NTP seconds, RTP ts)
        self._latest: tuple[int, int] | None = None  # (32-bit, extended) last timestamp
        self._ended = False
        self._keyframe_pending = False
        self._pli_tasks: set[asyncio.Future[None]] = set()
        self._originals: dict[str, Any] = {}

    # -- installing ---------------------------------------------------------------

    def install(self) -> None:
        """Hook the receiver (see the module's documentation)."""
        receiver = self._receiver
        inner: queue.Queue[Any] = getattr(receiver, _QUEUE)
        jitter_buffer = getattr(receiver, _JITTER_BUFFER)
        self._originals = {
            "queue": inner,
            "add": jitter_buffer.add,
            "rtcp": receiver._handle_rtcp_packet,
            "recv": self._track.recv,
        }
        add = jitter_buffer.add
        handle_rtcp = receiver._handle_rtcp_packet
        recv = self._track.recv

        def observed_add(packet: RtpPacket) -> Any:
            result = add(packet)
            self._guarded(self._on_packet, packet)
            return result

        async def observed_rtcp(packet: Any) -> None:
            if isinstance(packet, RtcpSrPacket):
                self._guarded(self._on_sender_report, packet)
            await handle_rtcp(packet)

        async def observed_recv() -> Any:
            if not self.decoding:
                self._guarded(self._start_decoding)
            return await recv()

        setattr(receiver, _QUEUE, _TapQueue(self, inner))
        jitter_buffer.add = observed_add
        receiver._handle_rtcp_packet = observed_rtcp  # type: ignore[method-assign]
        self._track.recv = observed_recv  # type: ignore[method-assign]
        setattr(receiver, _TAP, self)

    def uninstall(self) -> None:
        """Give the receiver back to aiortc as it was."""
        if not self._originals:
            return
        receiver = self._receiver
        setattr(receiver, _QUEUE, self._originals["queue"])
        jitter_buffer = getattr(receiver, _JITTER_BUFFER)
        for owner, name in ((jitter_buffer, "add"), (receiver, "_handle_rtcp_packet")):
            owner.__dict__.pop(name, None)
        self._track.__dict__.pop("recv", None)
        receiver.__dict__.pop(_TAP, None)
        self._originals = {}

    # -- holders ------------------------------------------------------------------

    def hold(self, owner: object) -> None:
        """Keep the tap installed while ``owner`` lives (or until :meth:`release`)."""
        key = id(owner)
        if key not in self._holders:
            self._holders[key] = weakref.finalize(owner, self._drop, key)

    def release(self, owner: object) -> None:
        """``owner`` no longer needs the tap."""
        finalizer = self._holders.get(id(owner))
        if finalizer is not None:
            finalizer.detach()
            self._drop(id(owner))

    def _drop(self, key: int) -> None:
        self._holders.pop(key, None)
        if not self._holders and not self._subscriptions:
            self.uninstall()

    @property
    def installed(self) -> bool:
        """Whether the hooks are in place."""
        return bool(self._originals)

    # -- the guard ------------------------------------------------------------------

    def _guarded(self, action: Callable[..., None], *args: Any) -> None:
        """Run the tap's own part of a hook; a failure goes to the subscribers, never to
        aiortc."""
        try:
            action(*args)
        except Exception as exc:
            self.failures += 1
            if self.failures == 1:
                logger.exception("rtc_recorder: the receiver tap failed; aiortc goes on")
            else:
                logger.debug("rtc_recorder: the receiver tap failed again: %s", exc)
            for subscription in list(self._subscriptions):
                self._notify_failure(subscription, exc)

    def _notify_failure(self, subscription: Subscription, exc: BaseException) -> None:
        try:
            subscription.on_failure(exc)
        except Exception:
            logger.exception("rtc_recorder: a subscriber failed to take a failure")

    # -- packets ----------------------------------------------------------------------

    def _on_packet(self, packet: RtpPacket) -> None:
        if self.ssrc != packet.ssrc:
            self.ssrc = packet.ssrc
            if self._keyframe_pending:
                self._keyframe_pending = False
                self.request_keyframe()
        codec = self._codec(packet.payload_type)
        if codec is None:
            return
        now = time.monotonic()
        if not self._subscriptions:
            self._observe(packet, codec, now)
            return
        frames = self.assembler.push(assembly_packet(packet, codec[0], self.kind, now), now)
        for frame in frames:
            self._deliver(codec, frame)

    def _observe(self, packet: RtpPacket, codec: tuple[str, int], now: float) -> None:
        """Nobody takes frames: only keep learning the sender's clock, from each frame's
        first packet (a few operations, where assembling frames nobody wants costs more
        than everything else the recorder does)."""
        name, rate = codec
        if self.kind == "video" and not frame_start(name, packet.payload):
            return
        extended = self._extend(packet.timestamp)
        self.frames_seen += 1
        clock = self.clock(packet.ssrc, rate)
        clock.reference(extended, now)
        self.frame_grid = clock.frames.grid

    def _extend(self, timestamp: int) -> int:
        """A 32-bit RTP timestamp on the stream's extended scale (the assembler's)."""
        if self._latest is None:
            self._latest = (timestamp, timestamp)
            return timestamp
        raw, extended = self._latest
        extended += _signed32(timestamp - raw)
        self._latest = (timestamp, extended)
        return extended

    def _codec(self, payload_type: int) -> tuple[str, int] | None:
        known = self._codec_names.get(payload_type)
        if known is None:
            codecs: dict[int, Any] = getattr(self._receiver, _CODECS, {})
            codec = codecs.get(payload_type)
            if codec is None:
                return None
            known = self._codec_names[payload_type] = (
                codec.mimeType.split("/")[1].lower(),
                int(codec.clockRate),
            )
        return known

    def _deliver(self, codec: tuple[str, int], frame: Frame) -> None:
        name, rate = codec
        self._latest = (frame.timestamp % (1 << 32), frame.timestamp)
        self.frames_seen += 1
        encoded = EncodedFrame(
            codec=name,
            data=frame.data,
            timestamp=frame.timestamp,
            clock_rate=rate,
            arrival=frame.arrival,
            complete=frame.complete,
            gap=frame.gap,
            ssrc=frame.ssrc,
        )
        clock = self.clock(frame.ssrc, rate)
        encoded.reference = clock.reference(frame.timestamp, frame.arrival)
        self.frame_grid = clock.frames.grid
        for subscription in list(self._subscriptions):
            try:
                subscription.on_frame(encoded)
            except Exception as exc:
                logger.exception("rtc_recorder: a subscriber failed on a frame")
                self._notify_failure(subscription, exc)

    # -- timing -----------------------------------------------------------------------

    def clock(self, ssrc: int, rate: int) -> StreamClock:
        """The clock of this receiver's stream ``ssrc`` (its sender's reports applied)."""
        clock = self._clocks.get(ssrc)
        if clock is None:
            self._clocks.clear()  # a new SSRC: the old stream is over
            clock = self._clocks[ssrc] = StreamClock(
                rate, sender_clock(self.sync_key), leading=self.kind == "video"
            )
        report = self._reports.get(ssrc)
        if report is not None and self._latest is not None:
            ntp, raw = report
            last_raw, last = self._latest
            clock.sender_report(SenderReport(ntp, last + _signed32(raw - last_raw)))
            del self._reports[ssrc]
        return clock

    @property
    def synchronised(self) -> bool:
        """Whether the stream being received is placed by its sender's reports."""
        return any(clock.synchronised for clock in list(self._clocks.values()))

    def _on_sender_report(self, packet: RtcpSrPacket) -> None:
        info = packet.sender_info
        ntp = info.ntp_timestamp
        self._reports[packet.ssrc] = (
            (ntp >> 32) + (ntp & 0xFFFFFFFF) / (1 << 32),
            info.rtp_timestamp,
        )

    # -- decoding on demand -------------------------------------------------------------

    def _start_decoding(self) -> None:
        self.decoding = True
        self.request_keyframe()

    def _to_decoder(self) -> bool:
        """Whether a frame aiortc's jitter buffer let out goes on to aiortc's decoder."""
        if self.decoding:
            self.frames_to_decoder += 1
        return self.decoding

    def _on_end(self) -> None:
        if self._ended:
            return
        self._ended = True
        codec = next(iter(self._codec_names.values()), ("", 90000))
        for frame in self.assembler.flush():
            self._deliver(codec, frame)
        for subscription in list(self._subscriptions):
            try:
                subscription.on_end()
            except Exception as exc:
                self._notify_failure(subscription, exc)
        if not self.decoding:
            # Nobody reads the track, so nobody would see aiortc end it.
            self._track.stop()

    # -- public -------------------------------------------------------------------------

    @property
    def sync_key(self) -> object:
        """Identifies the sender: tracks over one transport come from one peer's clock."""
        return self._receiver.transport

    @property
    def ended(self) -> bool:
        """Whether the receiver has stopped (hang-up, BYE, transport closed)."""
        return self._ended

    def negotiated_codecs(self) -> list[str]:
        """The media codecs negotiated for this receiver, the preferred first."""
        for pc in list(_peer_connections):
            for transceiver in pc.getTransceivers():
                if transceiver.receiver is self._receiver:
                    names = [c.mimeType.split("/")[1].lower() for c in transceiver._codecs]
                    return [str(n) for n in names if n not in NOT_MEDIA]
        return []

    def predicted_codec(self) -> str | None:
        """The codec the sender will most likely use: the first one negotiated."""
        codecs = self.negotiated_codecs()
        return codecs[0] if codecs else None

    def subscribe(self, subscription: Subscription) -> None:
        """Receive every frame from now on, the end of the stream, and the tap's failures.
        A subscription holds the tap installed until :meth:`unsubscribe`."""
        if not self.installed:
            self.install()
        if not self._subscriptions:
            # Frames are assembled again from here, on the scale of the timestamps seen.
            self.assembler = FrameAssembler(wait=self.assembler.wait, timestamps=self._latest)
        self._subscriptions.append(subscription)

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop receiving frames."""
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
        if not self._holders and not self._subscriptions:
            self.uninstall()

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


def sender_clock(key: object) -> SenderClock:
    """The clock of the sender identified by ``key`` (shared by its tracks)."""
    clock = _sender_clocks.get(key)
    if clock is None:
        clock = _sender_clocks[key] = SenderClock()
    return clock


class _TapQueue:
    """Stands in for the receiver's decoder queue (``put`` from the event loop, ``get`` from
    aiortc's decoder thread)."""

    def __init__(self, tap: ReceiverTap, inner: queue.Queue[Any]) -> None:
        self._tap = tap
        self._inner = inner

    def put(self, item: Any) -> None:
        if item is None:
            self._inner.put(None)
            self._tap._guarded(self._tap._on_end)
            return
        try:
            wanted = self._tap._to_decoder()
        except Exception:
            wanted = True
        if wanted:
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


def _internals_present(receiver: RTCRtpReceiver) -> bool:
    try:
        jitter_buffer = getattr(receiver, _JITTER_BUFFER)
        required = (
            getattr(receiver, _QUEUE).put,
            jitter_buffer.add,
            receiver._send_rtcp_pli,
            receiver._handle_rtcp_packet,
        )
        getattr(receiver, _CODECS)
        return all(callable(r) for r in required)
    except AttributeError as exc:
        _warn_once(f"rtc_recorder: aiortc internals changed ({exc}); recording decoded frames")
        return False


def tap_track(track: MediaStreamTrack, holder: object | None = None) -> ReceiverTap | None:
    """The tap of the receiver behind ``track``, or ``None`` when ``track`` is not
    received by an aiortc peer connection or the internals are not as expected. With a
    ``holder``, the tap is installed if needed and stays so while ``holder`` holds it;
    without, only a tap already in place is returned."""
    track = source_of(track)
    if not isinstance(track, RemoteStreamTrack):
        return None
    if not _version_supported():
        return None
    receiver = _find_receiver(track)
    if receiver is None:
        _warn_once(
            "rtc_recorder: a remote track's peer connection was created before rtc_recorder "
            "was imported; recording it by decoding (import rtc_recorder first for pass-through)"
        )
        return None
    tap: ReceiverTap | None = receiver.__dict__.get(_TAP)
    if holder is None:
        return tap
    if tap is None:
        if not _internals_present(receiver):
            return None
        tap = ReceiverTap(receiver, track)
        tap.install()
    tap.hold(holder)
    return tap
