"""Forwarding a publisher's media to subscribers as it arrives: no decoding, no encoding.

A :class:`Forwarder` stands for one publisher (the tracks a session receives). Each
subscriber is an aiortc ``RTCPeerConnection`` that has taken the subscriber's offer;
:meth:`Forwarder.subscribe` answers it with the publisher's codecs only and gives each of
its senders a :class:`ForwardTrack`, whose ``recv()`` returns ``av.Packet``\\ s: the
publisher's encoded frames as its :class:`~.hooks.ReceiverTap` assembles them. aiortc's
``RTCRtpSender`` packetizes packets it gets from a track as they are (``pack()``, never
``encode()``), so the frames leave as they came, under the subscriber's SSRC, sequence
numbers and payload types.

- **Keyframes.** Video goes out from a keyframe on: a subscriber gets nothing until one,
  and one is asked of the publisher when it subscribes. Loss between publisher and server
  (an incomplete frame, packets given up on before a frame) holds its video again until
  the next keyframe. Keyframe requests the subscriber's own decoder sends (RTCP PLI or
  FIR, which aiortc's sender turns into ``_send_keyframe``) are passed to the publisher.
  All requests for one publisher go through one :class:`KeyframeGate`: one at once, the
  next no sooner than ``keyframe_interval`` later, and a deferred one is dropped when a
  keyframe arrives first, so N subscribers cost the publisher no more than one.
- **Timing.** A frame's ``pts`` is its RTP timestamp counted from the publisher's first
  forwarded frame (:class:`ForwardTimestamps`), so it keeps the publisher's cadence.
  aiortc's sender reports pair the RTP timestamp of the last packet sent with the wall
  clock when it was sent: for a forwarder that is the publisher's capture time plus
  whatever the frame waited on its way (retransmissions, assembly), which differs between
  audio and video. Chromium keeps a subscriber's audio and video in sync by mapping each
  stream's RTP timestamps to its sender's NTP clock with those reports (its
  ``RtpToNtpEstimator``, a fit over the last reports, one per stream of a sync group: the
  tracks of one ``msid`` stream) and delaying the earlier stream; only the two mappings'
  agreement matters, not the NTP clock's absolute time. So each report's RTP timestamp is
  corrected (:func:`capture_report_timestamp`) to say when the frame was *taken*: its
  reference instant (the publisher's own sender reports, :mod:`.hooks`), or its arrival
  while the publisher's clock is not known yet. The subscriber's audio and video then
  stand in the publisher's relation whatever each waited here.
- **Cost.** Nothing is decoded: the publisher's tracks stay in their stream, nobody calls
  their ``recv()``, so aiortc starts no decoder for them. Each subscriber's track keeps a
  bounded queue (:class:`ForwardQueue`: ``max_age`` seconds, ``max_bytes``); a
  subscriber whose sender does not keep up loses what is too old and, for video, waits
  for a keyframe, asked only once its sender reads again: it never grows memory, delays
  the others or floods the publisher.
- **Lifetime.** A subscription ends when its peer connection closes or fails, when the
  publisher's tracks end, on :meth:`Subscription.close` or :meth:`Forwarder.close`; it
  then closes its peer connection and leaves nothing behind in the publisher's taps.

aiortc internals, as in :mod:`.hooks` and :mod:`.transport` (written against aiortc 1.16,
checked on use): a transceiver's negotiated codecs (``_codecs``, narrowed to the
publisher's between the offer and the answer), and, per sender, ``_send_keyframe`` (a
keyframe request) and ``_send_rtcp`` (the sender reports), both replaced on the instance
only, each guarded: a failure there logs and leaves aiortc's own behaviour. Nothing here
touches the publisher's peer connection beyond its tap's ``request_keyframe``.
"""

from __future__ import annotations

import asyncio
import enum
import fractions
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import av
from aiortc import RTCPeerConnection, RTCRtpCodecParameters, RTCRtpSender
from aiortc import sdp as aiortc_sdp
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtcpSrPacket

from .. import codecs as codec_info
from . import hooks
from .hooks import codec_name
from .transport import has_internals, version_supported

logger = logging.getLogger("rtc_recorder")

# Seconds between two keyframe requests passed to one publisher.
KEYFRAME_INTERVAL = 0.5
# Seconds a frame may wait for a subscriber's sender (one still connecting, or stalled):
# older, it is not sent. A subscriber whose connection takes longer to come up than this
# starts on a fresh keyframe rather than on a burst of old media.
MAX_AGE = 0.5
# The most bytes one subscriber's track may hold, whatever the publisher sends.
MAX_BYTES = 4 << 20
# Seconds from the NTP epoch (1900) to the Unix epoch (1970).
NTP_UNIX_OFFSET = 2_208_988_800
# A publisher stream's RTP clock and its arrival may disagree this much (a restart under
# the same SSRC, a timestamp jump) before the subscriber's timestamps are re-based.
MAX_TIMESTAMP_SKEW = 5.0


class ForwardingError(Exception):
    """A subscription that cannot be made: the subscriber does not accept the publisher's
    codec, there is nothing to forward, or the publisher's tracks cannot be forwarded
    without decoding."""


class EndReason(enum.Enum):
    """Why a subscription ended."""

    CLOSED = "closed"  # Subscription.close() or Forwarder.close()
    SUBSCRIBER_LEFT = "subscriber-left"  # its peer connection closed
    PUBLISHER_LEFT = "publisher-left"  # the publisher's tracks ended
    FAILED = "failed"  # its peer connection failed, or the publisher's tap did
    CODEC_CHANGED = "codec-changed"  # the publisher now sends a codec it did not accept


# -- pure logic -------------------------------------------------------------------------


class KeyframeGate:
    """When keyframe requests for one publisher go out: the first at once, then at most one
    per ``interval``; a request that has to wait is sent when its turn comes, unless a
    keyframe arrived meanwhile (which answers it)."""

    def __init__(self, interval: float = KEYFRAME_INTERVAL) -> None:
        self.interval = interval
        self._last: float | None = None  # when the last request went out
        self._deferred = False

    def ask(self, now: float) -> float | None:
        """Somebody needs a keyframe at ``now``. Returns 0.0 if a request goes out now,
        the seconds until one may (call :meth:`due` then), or None when one already waits
        for its turn."""
        if self._deferred:
            return None
        if self._last is None or now - self._last >= self.interval:
            self._last = now
            return 0.0
        self._deferred = True
        return self._last + self.interval - now

    def due(self, now: float) -> bool:
        """The turn of a deferred request has come: whether it still goes out."""
        if not self._deferred:
            return False
        self._deferred = False
        self._last = now
        return True

    def keyframe(self) -> None:
        """A keyframe arrived: it answers any request still waiting."""
        self._deferred = False


class ForwardTimestamps:
    """The subscriber-side timestamp (in RTP clock units, from 0) of each frame of one
    publisher track: its RTP timestamp counted from the first frame, so the publisher's
    cadence is kept. When the publisher's stream restarts (a new SSRC) or its timestamps
    jump away from their arrival by more than ``max_skew`` seconds, the count goes on from
    where it was, by the time that passed between arrivals."""

    def __init__(self, rate: int, max_skew: float = MAX_TIMESTAMP_SKEW) -> None:
        self.rate = rate
        self.max_skew = max_skew
        self._offset: int | None = None  # subscriber timestamp minus publisher timestamp
        self._ssrc: int | None = None
        self._last: tuple[int, float] | None = None  # (subscriber timestamp, arrival)

    def of(self, ssrc: int, timestamp: int, arrival: float) -> int:
        """The subscriber's timestamp of a frame (``timestamp`` extended, as the tap has it)."""
        if self._offset is None or self._last is None:
            self._offset = -timestamp
        elif ssrc != self._ssrc or self._skewed(timestamp, arrival):
            last, last_arrival = self._last
            elapsed = max(1, round((arrival - last_arrival) * self.rate))
            self._offset = last + elapsed - timestamp
        self._ssrc = ssrc
        result = timestamp + self._offset
        self._last = (result, arrival)
        return result

    def _skewed(self, timestamp: int, arrival: float) -> bool:
        assert self._offset is not None and self._last is not None
        last, last_arrival = self._last
        media = (timestamp + self._offset - last) / self.rate
        return media < 0 or abs(media - (arrival - last_arrival)) > self.max_skew


@dataclass(slots=True)
class ForwardedFrame:
    """A publisher's frame as a subscriber's track holds it."""

    data: bytes
    timestamp: int  # the subscriber's (see ForwardTimestamps)
    instant: float  # when it was taken, on the monotonic clock (its arrival if not known)
    keyframe: bool = False
    complete: bool = True
    gap: bool = False


@dataclass
class QueueStats:
    """What became of one subscriber track's frames."""

    received: int = 0
    forwarded: int = 0
    skipped: int = 0  # video waiting for a keyframe
    dropped: int = 0  # queued but too old or over the size limit
    waits: int = 0  # times video began waiting for a keyframe


class ForwardQueue:
    """One subscriber track's frames on their way to its sender (pure: instants are given).

    Video starts on a keyframe, and waits for the next one after loss (an incomplete frame,
    or a gap before a frame that is not a keyframe) or after frames had to be dropped.
    Nothing waits longer than ``max_age`` (from when it was pushed) and the queue holds at
    most ``max_bytes``: audio loses its oldest frames, video everything before its latest
    keyframe (all of it if none is queued, and then waits).
    """

    def __init__(
        self, *, video: bool, max_age: float = MAX_AGE, max_bytes: int = MAX_BYTES
    ) -> None:
        self.video = video
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.stats = QueueStats()
        self.waiting = video  # for a keyframe
        self._items: deque[tuple[float, ForwardedFrame]] = deque()  # (pushed at, frame)
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size(self) -> int:
        """Bytes held."""
        return self._bytes

    def push(self, frame: ForwardedFrame, now: float) -> bool:
        """Take a frame arrived by ``now``; False if it is not to be sent."""
        self.stats.received += 1
        self._trim(now)
        if self.video:
            if not frame.complete or (frame.gap and not frame.keyframe):
                self._wait()
            if self.waiting and not (frame.keyframe and frame.complete):
                self.stats.skipped += 1
                return False
            self.waiting = False
        self._items.append((now, frame))
        self._bytes += len(frame.data)
        self._trim(now)
        return bool(self._items) and self._items[-1][1] is frame

    def pop(self, now: float) -> ForwardedFrame | None:
        """The next frame to send, if any (what became too old is dropped first)."""
        self._trim(now)
        if not self._items:
            return None
        _, frame = self._items.popleft()
        self._bytes -= len(frame.data)
        self.stats.forwarded += 1
        return frame

    def clear(self) -> None:
        """Drop everything (the track ended)."""
        self._items.clear()
        self._bytes = 0

    def _wait(self) -> None:
        if not self.waiting:
            self.waiting = True
            self.stats.waits += 1

    def _over(self, now: float) -> bool:
        return self._bytes > self.max_bytes or now - self._items[0][0] > self.max_age

    def _trim(self, now: float) -> None:
        while self._items and self._over(now):
            if not self.video:
                self._drop(1)
                continue
            keyframes = [i for i, (_, f) in enumerate(self._items) if f.keyframe and i > 0]
            if not keyframes:
                self._drop(len(self._items))
                self._wait()
                return
            self._drop(keyframes[-1])

    def _drop(self, count: int) -> None:
        for _ in range(count):
            self._bytes -= len(self._items.popleft()[1].data)
        self.stats.dropped += count


def ntp_seconds(ntp: int) -> float:
    """A 64-bit NTP timestamp in seconds since 1900."""
    return (ntp >> 32) + (ntp & 0xFFFFFFFF) / (1 << 32)


def capture_report_timestamp(
    ntp: int, rtp: int, taken: float, rate: int, wall_minus_monotonic: float
) -> int:
    """The RTP timestamp a sender report made at ``ntp`` should carry so that it maps RTP
    time to when frames were taken rather than sent: ``rtp`` is the timestamp of the last
    frame sent (sent at ``ntp``, aiortc's pairing), ``taken`` the monotonic instant that
    frame was taken, ``wall_minus_monotonic`` the offset of the wall clock (which NTP
    time is read from) from the monotonic clock."""
    sent = ntp_seconds(ntp) - NTP_UNIX_OFFSET - wall_minus_monotonic
    return (rtp + round((sent - taken) * rate)) % (1 << 32)


def _h264_profile(codec: RTCRtpCodecParameters) -> object:
    # aiortc reads a missing profile-level-id as constrained baseline level 3.1.
    profile = str(codec.parameters.get("profile-level-id", "42e01f"))
    return aiortc_sdp.parse_h264_profile_level_id(profile)[0]


def carries(publisher: RTCRtpCodecParameters, offered: RTCRtpCodecParameters) -> bool:
    """Whether a subscriber's codec ``offered`` takes the publisher's frames as they are:
    the same codec and clock rate (and channels); for H.264 the same profile, packetized
    as aiortc packetizes (``packetization-mode=1``: FU-A and STAP-A)."""
    if codec_name(publisher) != codec_name(offered) or publisher.clockRate != offered.clockRate:
        return False
    if (publisher.channels or 1) != (offered.channels or 1):
        return False
    if codec_name(publisher) != "h264":
        return True
    if str(offered.parameters.get("packetization-mode", "0")) != "1":
        return False
    try:
        return _h264_profile(publisher) == _h264_profile(offered)
    except ValueError:
        return False


def describe(codec: RTCRtpCodecParameters) -> str:
    """A codec as a person reads it (``H264 profile-level-id=42e01f``)."""
    name = codec.mimeType.split("/")[1]
    if codec_name(codec) == "h264":
        return f"{name} profile-level-id={codec.parameters.get('profile-level-id', '42e01f')}"
    return str(name)


# -- the subscriber's tracks --------------------------------------------------------------


class ForwardTrack(MediaStreamTrack):
    """One kind of a publisher's media for one subscriber's sender: ``recv()`` returns the
    publisher's encoded frames as ``av.Packet``\\ s (``pts`` in ``1/clock rate``)."""

    def __init__(
        self,
        feed: _Feed,
        codec: RTCRtpCodecParameters,
        on_stop: Callable[[ForwardTrack], None],
        on_failure: Callable[[EndReason], None],
        *,
        max_age: float = MAX_AGE,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        super().__init__()
        self.kind = feed.kind
        self.codec = codec  # as negotiated with the subscriber
        self.queue = ForwardQueue(video=feed.kind == "video", max_age=max_age, max_bytes=max_bytes)
        self.keyframe_requests = 0  # asked for by the subscriber (PLI, FIR)
        self.publisher_ended = False
        self._feed: _Feed | None = feed
        self._time_base = fractions.Fraction(1, codec.clockRate)
        self._wakeup = asyncio.Event()
        self._reading = False  # the sender waits in recv()
        self._sent: ForwardedFrame | None = None  # the frame recv() returned last
        self._on_stop: Callable[[ForwardTrack], None] | None = on_stop
        self._on_failure: Callable[[EndReason], None] | None = on_failure
        feed.add(self)

    async def recv(self) -> av.Packet[Any]:
        """The next frame to send (waits for one); ``MediaStreamError`` once ended."""
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            frame = self.queue.pop(time.monotonic())
            if frame is not None:
                break
            if self.queue.waiting:
                self._ask_keyframe()
            self._wakeup.clear()
            self._reading = True
            try:
                await self._wakeup.wait()
            finally:
                self._reading = False
        self._sent = frame
        packet = av.Packet(frame.data)
        packet.pts = frame.timestamp
        packet.time_base = self._time_base
        return packet

    def stop(self) -> None:
        """End the track (the sender's loop ends with it)."""
        if self.readyState == "ended":
            return
        super().stop()
        self.queue.clear()
        self._wakeup.set()
        feed, self._feed = self._feed, None
        if feed is not None:
            feed.remove(self)
        on_stop, self._on_stop, self._on_failure = self._on_stop, None, None
        if on_stop is not None:
            on_stop(self)

    def push(self, frame: ForwardedFrame, now: float) -> None:
        """A publisher's frame for this subscriber (from its feed)."""
        queued = self.queue.push(frame, now)
        if queued and self._reading:
            self._wakeup.set()
        elif self.queue.waiting and self._reading:
            self._ask_keyframe()

    def request_keyframe(self) -> None:
        """The subscriber asked for a keyframe (its decoder lost the picture)."""
        self.keyframe_requests += 1
        self._ask_keyframe()

    def report_timestamp(self, ntp: int, rtp: int) -> int:
        """The RTP timestamp for a sender report aiortc made as (``ntp``, ``rtp``): see
        :func:`capture_report_timestamp`; ``rtp`` as it is before anything was sent."""
        sent = self._sent
        if sent is None or ntp == 0:
            return rtp
        offset = time.time() - time.monotonic()
        return capture_report_timestamp(ntp, rtp, sent.instant, self.codec.clockRate, offset)

    def _ask_keyframe(self) -> None:
        if self._feed is not None:
            self._feed.ask_keyframe()

    def _publisher_ended(self) -> None:
        self.publisher_ended = True
        self.stop()

    def _fail(self, reason: EndReason) -> None:
        if self._on_failure is not None:
            self._on_failure(reason)


# -- one publisher track and its subscribers ------------------------------------------------


class _Feed:
    """One publisher track's frames, fanned out to its subscribers' tracks (one tap
    subscription however many there are), with the keyframe requests to its publisher."""

    def __init__(
        self,
        tap: hooks.ReceiverTap,
        codec: RTCRtpCodecParameters,
        keyframe_interval: float,
        on_empty: Callable[[_Feed], None],
    ) -> None:
        self.tap = tap
        self.kind = tap.kind
        self.codec = codec
        self.name = codec_name(codec)
        self.requests_sent = 0  # keyframe requests passed to the publisher
        self._tracks: list[ForwardTrack] = []
        self._timestamps = ForwardTimestamps(codec.clockRate)
        self._gate = KeyframeGate(keyframe_interval)
        self._timer: asyncio.TimerHandle | None = None
        self._on_empty = on_empty
        self._listener = hooks.Subscription(self._on_frame, self._on_end, self._on_failure)
        tap.subscribe(self._listener)

    def add(self, track: ForwardTrack) -> None:
        """Feed ``track``."""
        self._tracks.append(track)

    def remove(self, track: ForwardTrack) -> None:
        """Stop feeding ``track``; the last one gone, the tap is let go."""
        if track in self._tracks:
            self._tracks.remove(track)
        if not self._tracks:
            self.close()

    def close(self) -> None:
        """Let the tap go."""
        self.tap.unsubscribe(self._listener)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._on_empty(self)

    def ask_keyframe(self) -> None:
        """A subscriber needs a keyframe: ask the publisher (through the gate)."""
        if self.kind != "video" or self.tap.ended:
            return
        delay = self._gate.ask(time.monotonic())
        if delay == 0.0:
            self._send_request()
        elif delay is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(delay, self._deferred_request)

    def _deferred_request(self) -> None:
        self._timer = None
        if self._gate.due(time.monotonic()):
            self._send_request()

    def _send_request(self) -> None:
        if self.tap.request_keyframe():
            self.requests_sent += 1

    def _on_frame(self, frame: hooks.EncodedFrame) -> None:
        if frame.codec != self.name:
            self._fail_all(EndReason.CODEC_CHANGED)
            return
        keyframe = self.kind == "video" and codec_info.is_keyframe(frame.codec, frame.data)
        if keyframe and frame.complete:
            self._gate.keyframe()
        forwarded = ForwardedFrame(
            data=frame.data,
            timestamp=self._timestamps.of(frame.ssrc, frame.timestamp, frame.arrival),
            instant=frame.reference if frame.reference is not None else frame.arrival,
            keyframe=keyframe,
            complete=frame.complete,
            gap=frame.gap,
        )
        now = time.monotonic()
        for track in list(self._tracks):
            track.push(forwarded, now)

    def _on_end(self) -> None:
        for track in list(self._tracks):
            track._publisher_ended()

    def _on_failure(self, exc: BaseException) -> None:
        logger.warning("rtc_recorder: forwarding a publisher's media failed (%s)", exc)
        self._fail_all(EndReason.FAILED)

    def _fail_all(self, reason: EndReason) -> None:
        for track in list(self._tracks):
            track._fail(reason)


# -- subscriptions ----------------------------------------------------------------------


class Subscription:
    """One subscriber's peer connection receiving one publisher's media.

    It owns the peer connection from :meth:`Forwarder.subscribe` on: :meth:`close` closes
    it, and its closing (or failing) ends the subscription. ``ended`` is set once it is
    over, with ``reason`` saying why.
    """

    def __init__(self, forwarder: Forwarder, pc: RTCPeerConnection) -> None:
        self.id = secrets.token_hex(6)
        self.pc = pc
        self.tracks: dict[str, ForwardTrack] = {}
        self.ended = asyncio.Event()
        self.reason: EndReason | None = None
        self._forwarder: Forwarder | None = forwarder
        self._callbacks: list[Callable[[Subscription], None]] = []
        self._closing: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Subscription(id={self.id!r}, kinds={sorted(self.tracks)}, reason={self.reason})"

    def on_end(self, callback: Callable[[Subscription], None]) -> None:
        """Call ``callback(subscription)`` once it has ended (at once if it has)."""
        if self.ended.is_set():
            callback(self)
        else:
            self._callbacks.append(callback)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per kind: the codec, the queue's counters and the subscriber's keyframe requests."""
        return {
            kind: {
                "codec": track.codec.mimeType,
                "keyframeRequests": track.keyframe_requests,
                "waitingForKeyframe": track.queue.waiting,
                "queued": len(track.queue),
                "queuedBytes": track.queue.size,
                **asdict(track.queue.stats),
            }
            for kind, track in self.tracks.items()
        }

    async def close(self) -> None:
        """End the subscription and close its peer connection."""
        self._end(EndReason.CLOSED)
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Until the subscription has ended and its peer connection is closed."""
        await self.ended.wait()
        if self._closing is not None:
            await asyncio.shield(self._closing)

    def _watch(self, pc: RTCPeerConnection) -> None:
        def changed() -> None:
            if pc.connectionState == "closed":
                self._end(EndReason.SUBSCRIBER_LEFT)
            elif pc.connectionState == "failed":
                self._end(EndReason.FAILED)

        pc.on("connectionstatechange", changed)

    def _track_stopped(self, track: ForwardTrack) -> None:
        if all(t.readyState == "ended" for t in self.tracks.values()):
            publisher_gone = all(t.publisher_ended for t in self.tracks.values())
            self._end(EndReason.PUBLISHER_LEFT if publisher_gone else EndReason.SUBSCRIBER_LEFT)

    def _end(self, reason: EndReason) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        for track in self.tracks.values():
            track.stop()
        forwarder, self._forwarder = self._forwarder, None
        if forwarder is not None:
            forwarder._forget(self)
        if self.pc.connectionState != "closed":
            self._closing = asyncio.ensure_future(self._close_pc())
        self.ended.set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                logger.exception("rtc_recorder: a subscription's end callback failed")

    async def _close_pc(self) -> None:
        try:
            await self.pc.close()
        except Exception:
            logger.exception("rtc_recorder: closing a subscriber's peer connection failed")


@dataclass(frozen=True)
class _Route:
    """What one of a subscriber's senders sends: a publisher's track (its tap and codec),
    in the codec the subscriber's answer names (the same codec, the subscriber's payload
    type and parameters)."""

    tap: hooks.ReceiverTap
    publisher: RTCRtpCodecParameters
    answer: RTCRtpCodecParameters


class Forwarder:
    """Sends one publisher's media on to subscribers, as it arrives.

    ``stream`` holds the publisher's received tracks (a session's :class:`MediaStream`,
    read at each :meth:`subscribe`: the first audio and the first video track are
    forwarded). ``keyframe_interval`` spaces the keyframe requests passed to the
    publisher; ``max_age`` and ``max_bytes`` bound each subscriber track's queue (see
    :class:`ForwardQueue`).

    Use::

        pc = RTCPeerConnection()
        await pc.setRemoteDescription(offer)        # the subscriber's (recvonly) offer
        subscription = forwarder.subscribe(pc)      # ForwardingError if it cannot be served
        await pc.setLocalDescription(await pc.createAnswer())
        ...                                         # answer the subscriber
        await subscription.close()                  # or the subscriber hangs up
    """

    def __init__(
        self,
        stream: Iterable[MediaStreamTrack],
        *,
        keyframe_interval: float = KEYFRAME_INTERVAL,
        max_age: float = MAX_AGE,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.stream = stream
        self.keyframe_interval = keyframe_interval
        self.max_age = max_age
        self.max_bytes = max_bytes
        self._subscriptions: list[Subscription] = []
        self._feeds: dict[int, _Feed] = {}  # id(tap) -> its feed

    @property
    def subscriptions(self) -> list[Subscription]:
        """The subscriptions in progress."""
        return list(self._subscriptions)

    @property
    def keyframe_requests(self) -> int:
        """Keyframe requests passed to the publisher by the feeds in use."""
        return sum(feed.requests_sent for feed in self._feeds.values())

    def subscribe(self, pc: RTCPeerConnection) -> Subscription:
        """Make ``pc`` (which has taken a subscriber's offer and not yet answered) send the
        publisher's media: each kind the subscriber receives and the publisher sends is
        answered with the publisher's codec only; any other media section is answered
        inactive. Raises :class:`ForwardingError` (leaving ``pc`` as it was) when the
        subscriber does not accept a codec the publisher sends, or nothing is to forward."""
        plan = self._plan(pc)
        subscription = Subscription(self, pc)
        for transceiver in pc.getTransceivers():
            route = plan.get(id(transceiver))
            if route is None:
                transceiver.direction = "inactive"
                continue
            transceiver._codecs = _with_retransmission(route.answer, transceiver._codecs)
            transceiver.direction = "sendonly"
            track = ForwardTrack(
                self._feed(route.tap, route.publisher),
                route.answer,
                subscription._track_stopped,
                subscription._end,
                max_age=self.max_age,
                max_bytes=self.max_bytes,
            )
            transceiver.sender.replaceTrack(track)
            _hook_sender(transceiver.sender, track)
            subscription.tracks[track.kind] = track
        subscription._watch(pc)
        self._subscriptions.append(subscription)
        for track in subscription.tracks.values():
            track._ask_keyframe()
        return subscription

    async def close(self) -> None:
        """End every subscription (the publisher has gone) and close their connections."""
        subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription._end(EndReason.PUBLISHER_LEFT)
        await asyncio.gather(*(s.wait_closed() for s in subscriptions))

    # -- inside -----------------------------------------------------------------------------

    def _sources(self) -> dict[str, tuple[hooks.ReceiverTap, RTCRtpCodecParameters]]:
        """Per kind, the publisher's tap and codec."""
        sources: dict[str, tuple[hooks.ReceiverTap, RTCRtpCodecParameters]] = {}
        for track in self.stream:
            if track.kind in sources or track.kind not in ("audio", "video"):
                continue
            tap = hooks.tap_track(track, self)
            if tap is None:
                raise ForwardingError(
                    f"the publisher's {track.kind} track cannot be forwarded without decoding "
                    "(it is not received by an aiortc peer connection rtc_recorder can tap)"
                )
            if tap.ended:
                continue
            codec = tap.codec_parameters()
            if codec is None:
                raise ForwardingError(f"the publisher's {track.kind} codec is not negotiated yet")
            forwardable = (
                codec_info.RECEIVED_VIDEO if track.kind == "video" else codec_info.RECEIVED_AUDIO
            )
            if codec_name(codec) not in forwardable:
                raise ForwardingError(f"{describe(codec)} {track.kind} cannot be forwarded")
            sources[track.kind] = (tap, codec)
        return sources

    def _plan(self, pc: RTCPeerConnection) -> dict[int, _Route]:
        """For each transceiver that will send (by id), what it sends; every problem raised
        before anything changes."""
        if pc.signalingState != "have-remote-offer" or pc.remoteDescription is None:
            raise ForwardingError(
                "subscribe() takes a peer connection that has set the subscriber's offer as "
                "its remote description and not yet answered it"
            )
        if not version_supported("forwarding"):
            raise ForwardingError("forwarding needs the aiortc version rtc_recorder was made for")
        receiving = _receiving_mids(pc.remoteDescription.sdp)
        sources = self._sources()
        plan: dict[int, _Route] = {}
        planned: set[str] = set()  # one media section per kind
        refused: list[str] = []
        for transceiver in pc.getTransceivers():
            source = sources.get(transceiver.kind)
            if source is None or transceiver.mid not in receiving or transceiver.kind in planned:
                continue
            planned.add(transceiver.kind)
            if not has_internals("forwarding", (transceiver, "_codecs")):
                raise ForwardingError("aiortc's negotiated codecs are out of reach: cannot forward")
            tap, publisher = source
            offered: list[RTCRtpCodecParameters] = transceiver._codecs
            chosen = next((c for c in offered if carries(publisher, c)), None)
            if chosen is None:
                names = ", ".join(describe(c) for c in offered if codec_name(c) != "rtx")
                refused.append(
                    f"the publisher sends {transceiver.kind} as {describe(publisher)}, "
                    f"which the subscriber does not accept (it offers {names or 'nothing'})"
                )
                continue
            plan[id(transceiver)] = _Route(tap, publisher, chosen)
        if refused:
            raise ForwardingError("; ".join(refused))
        if not plan:
            sent = ", ".join(sorted(sources)) or "nothing"
            raise ForwardingError(
                f"nothing to forward: the publisher sends {sent}, and the subscriber's offer "
                "receives none of it"
            )
        return plan

    def _feed(self, tap: hooks.ReceiverTap, codec: RTCRtpCodecParameters) -> _Feed:
        feed = self._feeds.get(id(tap))
        if feed is None:
            feed = _Feed(tap, codec, self.keyframe_interval, self._feed_empty)
            self._feeds[id(tap)] = feed
        return feed

    def _feed_empty(self, feed: _Feed) -> None:
        if self._feeds.get(id(feed.tap)) is feed:
            del self._feeds[id(feed.tap)]

    def _forget(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)


def _receiving_mids(offer: str) -> set[str]:
    """The media sections of an offer whose sender receives (``recvonly``, ``sendrecv``)."""
    description = aiortc_sdp.SessionDescription.parse(offer)
    return {
        str(media.rtp.muxId)
        for media in description.media
        if media.kind in ("audio", "video") and media.direction in ("recvonly", "sendrecv")
    }


def _with_retransmission(
    codec: RTCRtpCodecParameters, negotiated: list[RTCRtpCodecParameters]
) -> list[RTCRtpCodecParameters]:
    """``codec`` and its retransmission format (RTX) if one was negotiated: all the answer
    offers, so the sender sends ``codec``."""
    rtx = [
        c
        for c in negotiated
        if codec_name(c) == "rtx" and c.parameters.get("apt") == codec.payloadType
    ]
    return [codec, *rtx]


def _hook_sender(sender: RTCRtpSender, track: ForwardTrack) -> None:
    """Pass the subscriber's keyframe requests to ``track`` and correct the sender
    reports' RTP timestamps to capture time (see the module's documentation); each on this
    sender instance only, guarded, and skipped (with a warning) if aiortc lacks the
    method."""
    if has_internals("forwarding keyframe requests", (sender, "_send_keyframe")):

        def send_keyframe() -> None:
            _guarded("passing on a keyframe request", track.request_keyframe)

        sender._send_keyframe = send_keyframe  # type: ignore[method-assign]
    if has_internals("sender reports in capture time", (sender, "_send_rtcp")):
        send_rtcp: Callable[[list[Any]], Coroutine[Any, Any, None]] = sender._send_rtcp
        ssrc = sender._ssrc

        async def corrected_send_rtcp(packets: list[Any]) -> None:
            for packet in packets:
                if isinstance(packet, RtcpSrPacket) and packet.ssrc == ssrc:
                    _guarded("correcting a sender report", _correct_report, packet, track)
            await send_rtcp(packets)

        sender._send_rtcp = corrected_send_rtcp  # type: ignore[method-assign]


def _correct_report(packet: RtcpSrPacket, track: ForwardTrack) -> None:
    info = packet.sender_info
    info.rtp_timestamp = track.report_timestamp(info.ntp_timestamp, info.rtp_timestamp)


_failed: set[str] = set()


def _guarded(what: str, action: Callable[..., None], *args: Any) -> None:
    """Run ``action``; a failure is logged (fully the first time) and goes no further."""
    try:
        action(*args)
    except Exception as exc:
        if what not in _failed:
            _failed.add(what)
            logger.exception("rtc_recorder: %s failed; aiortc goes on as it would", what)
        else:
            logger.debug("rtc_recorder: %s failed again: %s", what, exc)


__all__ = [
    "KEYFRAME_INTERVAL",
    "EndReason",
    "ForwardQueue",
    "ForwardTimestamps",
    "ForwardTrack",
    "Forwarder",
    "ForwardingError",
    "KeyframeGate",
    "Subscription",
    "capture_report_timestamp",
    "carries",
]
