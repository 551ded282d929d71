"""Sources: how each recorded track's media reaches the writer, on the event loop.

- :class:`EncodedInput` takes the encoded frames of a track received by an aiortc peer
  connection, straight from its receiver's tap (no decoding), asks the sender for
  keyframes (RTCP PLI) on start, on resume and after loss, and drops video until one
  arrives.
- :class:`DecodedInput` reads decoded frames from any track (``track.recv()``).

Both ask the timing (:mod:`rtc_recorder.timing`) where each frame lands: its stream's
clock gives its reference instant, the recording's timeline its output time (or none, in
a pause). What falls outside the recording is dropped (media keeps being consumed); the
rest goes to the writer thread. Nothing here costs more than a few arithmetic operations
per frame.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .bitstream import opus
from .codecs import is_keyframe
from .encoding import MICROSECOND, MediaItem
from .errors import NotSupportedError
from .receive.hooks import EncodedFrame, ReceiverTap, Subscription
from .timing import RecordingTimeline, SenderClock, StreamClock
from .writer import RecordingWriter

logger = logging.getLogger("rtc_recorder")

KEYFRAME_RETRY = 0.25  # at most one keyframe request per this many seconds
CONTAINER_TICK_US = 1000  # the coarsest container tick (Matroska's millisecond)
OVERLAP_TOLERANCE_US = 1000  # audio may start this much before the previous one ends
MAX_PENDING = 600  # frames held while a stream waits for its sender's first report
UNSYNCHRONISED_WAIT = 6.0  # seconds a frame may wait for its sender's clock
DEFAULT_AUDIO_US = 20_000
# After a stop, media taken before it is awaited for at most this long (seconds).
STOP_DRAIN = 0.5
# Audio settles a (re)start video has left open this long (a video stream that is silent).
AUDIO_OPEN_DEADLINE = 5.0


@dataclass
class InputCounters:
    """What happened to one track's frames on the event loop."""

    frames_received: int = 0
    frames_dropped_paused: int = 0
    frames_dropped_waiting_for_keyframe: int = 0
    frames_dropped_incomplete: int = 0
    frames_dropped_backlog: int = 0
    frames_dropped_late: int = 0
    frames_dropped_overlapping: int = 0
    frames_dropped_unsynchronised: int = 0
    keyframe_requests: int = 0


Ended = Callable[["TrackInput", BaseException | None], None]


class TrackInput(ABC):
    """One recorded track, from its source to the writer."""

    def __init__(
        self,
        index: int,
        track: MediaStreamTrack,
        timeline: RecordingTimeline,
        writer: RecordingWriter,
        on_ended: Ended,
    ) -> None:
        self.index = index
        self.track = track
        self.kind = track.kind
        self.counters = InputCounters()
        self.ended = False
        self._timeline = timeline
        self._writer = writer
        self._on_ended = on_ended
        self._restart = True
        self._last_out: int | None = None
        self._last_end: int | None = None  # audio: where the last packet written ends
        self._segment = 0  # the recorded stretch (0, then one more after each pause) last written
        self._draining: Callable[[], None] | None = None  # called once drained after a stop
        self._drain_timer: asyncio.TimerHandle | None = None

    @property
    @abstractmethod
    def synchronised(self) -> bool:
        """Whether this track's timing comes from its sender's reports."""

    @property
    @abstractmethod
    def grid(self) -> float:
        """The frame interval of the grid this (video) track's frames sit on."""

    @abstractmethod
    def start(self) -> None:
        """Begin taking media."""

    @abstractmethod
    def stop(self) -> None:
        """Take no more media."""

    def drain(self, done: Callable[[], None]) -> None:
        """The recording has stopped: frames taken before the stop may still be on their
        way (a sender's queue, the network, a busy process). Take them until a frame from
        after the stop comes, or for at most :data:`STOP_DRAIN` seconds, then stop and
        call ``done``."""
        if self.ended or not self._can_drain():
            self.stop()
            done()
            return
        self._draining = done
        self._drain_timer = asyncio.get_running_loop().call_later(STOP_DRAIN, self._drained)

    def _can_drain(self) -> bool:
        """Whether frames may still come (and be placed) after a stop."""
        return True

    def _past_stop(self, reference: float) -> bool:
        """Whether a frame at ``reference`` ends the draining after a stop (it does once
        one from after the stop has come)."""
        if self._draining is not None and self._timeline.after_stop(reference):
            self._drained()
            return True
        return False

    def _drained(self) -> None:
        done, self._draining = self._draining, None
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        if done is not None:
            self.stop()
            done()

    @abstractmethod
    def resume(self) -> None:
        """Recording goes on after a pause."""

    def last_time(self, base_us: int) -> float | None:
        """Where the latest frame taken for the file lies in it (seconds; the file's time 0
        is at ``base_us`` of the output timeline)."""
        return None if self._last_out is None else (self._last_out - base_us) / MICROSECOND

    def _end(self, error: BaseException | None = None) -> None:
        if not self.ended:
            self.ended = True
            self._on_ended(self, error)

    def _place(self, reference: float, duration: int) -> int | None:
        """The output time (µs) of media at reference instant ``reference`` lasting
        ``duration`` µs (audio), or None (counted) when it falls outside the recording or
        would not come after what this track wrote last."""
        out = self._timeline.output_time(reference)
        if out is None:
            self.counters.frames_dropped_paused += 1
            return None
        segment = self._timeline.segment(reference)
        if segment < self._segment:
            # From before a pause, but this track has written media from after it.
            self.counters.frames_dropped_late += 1
            return None
        if segment > self._segment:
            self._segment = segment
            self._after_pause()
        micros = round(out * MICROSECOND)
        if self.kind == "video":
            if self._last_out is not None and micros < self._last_out + CONTAINER_TICK_US:
                self.counters.frames_dropped_late += 1
                return None
        elif self._last_end is not None and micros < self._last_end - OVERLAP_TOLERANCE_US:
            self.counters.frames_dropped_overlapping += 1
            return None
        self._timeline.placed(reference)
        return micros

    def _after_pause(self) -> None:
        """The first media from after a pause (media from before it may still come in
        late and be recorded before the cut, until this)."""
        self._restart = True

    def _submit(
        self, out: int, duration: int, payload: EncodedFrame | av.AudioFrame | av.VideoFrame
    ) -> bool:
        """Hand a frame to the writer; False (counted) if the writer is too far behind."""
        if not self._writer.submit(MediaItem(self.index, out, payload, self._restart)):
            self.counters.frames_dropped_backlog += 1
            return False
        self._restart = False
        self._last_out = out
        self._last_end = out + duration
        return True


class EncodedInput(TrackInput):
    """Encoded frames from an aiortc receiver, written as they are (or decoded on the writer
    thread when the recording's codec differs)."""

    def __init__(
        self,
        index: int,
        track: MediaStreamTrack,
        timeline: RecordingTimeline,
        writer: RecordingWriter,
        on_ended: Ended,
        tap: ReceiverTap,
        *,
        keyframe_interval_us: int | None = None,
        keyframe_interval_count: int | None = None,
    ) -> None:
        super().__init__(index, track, timeline, writer, on_ended)
        self._tap = tap
        self._keyframe_interval_us = keyframe_interval_us
        self._keyframe_interval_count = keyframe_interval_count
        self._needs_keyframe = self.kind == "video"
        self._requested_at: float | None = None
        self._last_key_out: int | None = None
        self._frames_since_key = 0
        self._clock: StreamClock | None = None  # the stream's clock, once a frame came
        self._ready_since: float | None = None  # when frames could first be placed
        self._stopping = False
        self._pending: deque[EncodedFrame] = deque()
        self._subscription = Subscription(self._on_frame, self._end, self._end)

    @property
    def synchronised(self) -> bool:
        return self._clock is not None and self._clock.synchronised

    @property
    def grid(self) -> float:
        return self._tap.frame_grid

    def start(self) -> None:
        self._tap.subscribe(self._subscription)
        if self._tap.ended:
            self._end()
        else:
            self._request_keyframe()

    def stop(self) -> None:
        self._tap.unsubscribe(self._subscription)
        self._stopping = True
        self._drain()  # the recording has stopped: nothing waits for a (re)start any more
        self.counters.frames_dropped_unsynchronised += len(self._pending)
        self._pending.clear()

    def _can_drain(self) -> bool:
        return not self._tap.ended and self._clock is not None

    def drain(self, done: Callable[[], None]) -> None:
        super().drain(done)
        self._drain()

    def resume(self) -> None:
        if self.kind == "video":
            self._request_keyframe()  # for the pictures after the pause

    def _after_pause(self) -> None:
        super()._after_pause()
        if self.kind == "video":
            self._needs_keyframe = True  # a picture from after the pause cannot follow one before

    def _request_keyframe(self) -> None:
        if self._tap.request_keyframe():
            self.counters.keyframe_requests += 1
            self._requested_at = time.monotonic()

    def _lost(self) -> None:
        """A video frame is missing: what follows cannot be decoded until a keyframe."""
        self._needs_keyframe = True
        self._ask_after_loss()

    def _ask_after_loss(self) -> None:
        if self._requested_at is None or time.monotonic() - self._requested_at > KEYFRAME_RETRY:
            self._request_keyframe()

    def _on_frame(self, frame: EncodedFrame) -> None:
        self.counters.frames_received += 1
        if self._unusable(frame):
            self._ask_after_loss()  # now; the frame itself is dropped in its turn
        self._clock = self._tap.clock(frame.ssrc, frame.clock_rate)
        if self.kind == "video":
            if self._clock.ready:
                if self._ready_since is None:
                    self._ready_since = frame.arrival
                self._timeline.settle_if_late(frame.arrival, since=self._ready_since)
        else:
            self._timeline.settle_if_late(frame.arrival, AUDIO_OPEN_DEADLINE)
        self._pending.append(frame)
        if len(self._pending) > MAX_PENDING:
            self._pending.popleft()
            self.counters.frames_dropped_unsynchronised += 1
        self._drain()

    def _unusable(self, frame: EncodedFrame) -> bool:
        """Whether a video frame cannot be decoded: packets of it were lost, or packets
        before it and it is not a keyframe."""
        if self.kind != "video" or (frame.complete and not frame.gap):
            return False
        return not frame.complete or not is_keyframe(frame.codec, frame.data)

    def _drain(self) -> None:
        """Place the frames that can be placed, in order. A frame waits while its stream's
        sender has not said when it was live (its first sender report), and while the
        recording's latest (re)start waits for video to settle it (which this track's
        first keyframe does, if it is video)."""
        while self._pending:
            frame = self._pending[0]
            if self._unusable(frame):
                self._pending.popleft()
                self.counters.frames_dropped_incomplete += 1
                self._lost()
                continue
            reference = frame.reference
            if reference is None:
                clock = self._tap.clock(frame.ssrc, frame.clock_rate)
                if self._given_up(frame):
                    clock.place_by_arrival()
                reference = frame.reference = clock.reference(frame.timestamp, frame.arrival)
            if reference is None:
                return
            if self._past_stop(reference):
                return
            keyframe = self.kind == "video" and is_keyframe(frame.codec, frame.data)
            if self._timeline.holds(reference):
                if keyframe and self._timeline.can_settle_at(reference, frame.arrival):
                    self._timeline.settle(reference, after=CONTAINER_TICK_US / MICROSECOND)
                elif self.kind == "video" or self._timeline.beyond_resume(
                    reference, self._pending[-1].arrival
                ):
                    # Video before the keyframe a (re)start waits for is of no use (a
                    # keyframe taken before the resume answered our request too early: ask
                    # again); so is sound from too long before a resume still to come.
                    self._pending.popleft()
                    self.counters.frames_dropped_paused += 1
                    if keyframe and not self._timeline.paused:
                        self._request_keyframe()
                    continue
                else:
                    return
            self._pending.popleft()
            self._place_frame(frame, reference, keyframe)

    def _given_up(self, frame: EncodedFrame) -> bool:
        """Whether a frame has waited too long for its sender's clock (or the recording
        stopped while it waited): it is better placed by arrival than lost."""
        latest = self._pending[-1].arrival
        return self._stopping or latest - frame.arrival > UNSYNCHRONISED_WAIT

    def _place_frame(self, frame: EncodedFrame, reference: float, keyframe: bool) -> None:
        late = self.counters.frames_dropped_late
        out = self._place(reference, self._duration(frame))
        if out is None:
            if keyframe and self._needs_keyframe:
                # The sender answered our request with a picture it took before the
                # recording (re)started: ask again at once.
                self._request_keyframe()
            elif self.counters.frames_dropped_late > late and self.kind == "video":
                self._lost()  # what follows would reference the dropped frame
            return
        if self._needs_keyframe:
            if not keyframe:
                self._waiting_for_keyframe()
                return
            self._needs_keyframe = False
        if self.kind == "video":
            self._keyframe_schedule(out, keyframe)
        if not self._submit(out, self._duration(frame), frame) and self.kind == "video":
            self._lost()

    def _waiting_for_keyframe(self) -> None:
        """A video frame dropped while waiting for a keyframe (asked again now and then)."""
        self.counters.frames_dropped_waiting_for_keyframe += 1
        if self._requested_at is None or time.monotonic() - self._requested_at > KEYFRAME_RETRY:
            self._request_keyframe()

    def _duration(self, frame: EncodedFrame) -> int:
        """How long an audio frame lasts (µs); 0 for video."""
        if self.kind == "video":
            return 0
        if frame.codec == "opus":
            try:
                return opus.packet_samples(frame.data) * MICROSECOND // opus.SAMPLE_RATE
            except ValueError:
                return DEFAULT_AUDIO_US
        return DEFAULT_AUDIO_US

    def _keyframe_schedule(self, out: int, keyframe: bool) -> None:
        """Honour the recorder's keyframe interval by asking the sender for keyframes."""
        if keyframe:
            self._last_key_out = out
            self._frames_since_key = 0
            return
        self._frames_since_key += 1
        assert self._last_key_out is not None
        due = (
            self._keyframe_interval_us is not None
            and out - self._last_key_out >= self._keyframe_interval_us
        ) or (
            self._keyframe_interval_count is not None
            and self._frames_since_key >= self._keyframe_interval_count
        )
        if due and (
            self._requested_at is None or time.monotonic() - self._requested_at > KEYFRAME_RETRY
        ):
            self._request_keyframe()


class DecodedInput(TrackInput):
    """Decoded frames read from any track with ``recv()``, placed by their own timestamps."""

    def __init__(
        self,
        index: int,
        track: MediaStreamTrack,
        timeline: RecordingTimeline,
        writer: RecordingWriter,
        on_ended: Ended,
        source: SenderClock,
    ) -> None:
        super().__init__(index, track, timeline, writer, on_ended)
        # The recording's local tracks share one clock: their timestamps keep them in sync.
        self.clock = StreamClock(MICROSECOND, source, own_time=True)
        self._pending: deque[tuple[av.AudioFrame | av.VideoFrame, int, float]] = deque()
        self._task: asyncio.Task[None] | None = None

    @property
    def synchronised(self) -> bool:
        return False

    def resume(self) -> None:
        """Nothing to do: what is encoded here restarts on a keyframe by itself."""

    @property
    def grid(self) -> float:
        return self.clock.frames.grid

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.counters.frames_dropped_unsynchronised += len(self._pending)
        self._pending.clear()

    async def _read(self) -> None:
        try:
            while True:
                frame = await self.track.recv()
                self._on_frame(frame)
        except MediaStreamError:
            self._end()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("reading a %s track failed", self.kind)
            self._end(exc)

    def _on_frame(self, frame: object) -> None:
        if not isinstance(frame, (av.AudioFrame, av.VideoFrame)):
            raise NotSupportedError(
                f"a {self.kind} track gave {type(frame).__name__}; only decoded frames are recorded"
            )
        self.counters.frames_received += 1
        arrival = time.monotonic()
        if frame.pts is not None and frame.time_base:
            timestamp = round(frame.pts * frame.time_base * MICROSECOND)
        else:
            timestamp = round(arrival * MICROSECOND)
        self._pending.append((frame, timestamp, arrival))
        if len(self._pending) > MAX_PENDING:
            self._pending.popleft()
            self.counters.frames_dropped_unsynchronised += 1
        if self.clock.reference(timestamp, arrival) is None:
            return  # the local clock is still learning: a moment's frames wait
        while self._pending:
            self._place_frame(*self._pending.popleft())

    def _place_frame(
        self, frame: av.AudioFrame | av.VideoFrame, timestamp: int, arrival: float
    ) -> None:
        reference = self.clock.reference(timestamp, arrival)
        assert reference is not None
        if self._past_stop(reference):
            return
        duration = 0
        if isinstance(frame, av.AudioFrame) and frame.sample_rate:
            duration = frame.samples * MICROSECOND // frame.sample_rate
        out = self._place(reference, duration)
        if out is not None:
            self._submit(out, duration, frame)
