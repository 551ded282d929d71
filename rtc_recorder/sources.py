"""Sources: how each recorded track's media reaches the writer, on the event loop.

- :class:`EncodedInput` takes the encoded frames of a track received by an aiortc peer
  connection, straight from its receiver (no decoding), asks the sender for keyframes
  (RTCP PLI) on start, on resume and after loss, and drops video until one arrives.
- :class:`DecodedInput` reads decoded frames from any track (``track.recv()``).

Both stamp each frame with its output time through the recording's
:class:`~rtc_recorder.timeline.Timeline`, drop what falls in a pause (media keeps being
consumed), and hand the rest to the writer thread. Nothing here costs more than a few
arithmetic operations per frame.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .codecs import is_keyframe
from .encoding import MICROSECOND, MediaItem
from .errors import NotSupportedError
from .receive.hooks import EncodedFrame, ReceiverTap, SenderReport
from .timeline import FrameInterval, SyncGroup, Timeline, TrackClock
from .writer import RecordingWriter

logger = logging.getLogger("rtc_recorder")

KEYFRAME_RETRY = 1.0  # seconds before asking again for a keyframe that has not come
LOSS_PLI_INTERVAL = 0.25  # at most one keyframe request per this many seconds for losses
CONTAINER_TICK_US = 1000  # the coarsest container tick (Matroska's millisecond)


@dataclass
class InputCounters:
    """What happened to one track's frames on the event loop."""

    frames_received: int = 0
    frames_dropped_paused: int = 0
    frames_dropped_waiting_for_keyframe: int = 0
    frames_dropped_incomplete: int = 0
    frames_dropped_backlog: int = 0
    frames_dropped_late: int = 0
    keyframe_requests: int = 0


class TrackInput(ABC):
    """One recorded track, from its source to the writer."""

    def __init__(
        self,
        index: int,
        track: MediaStreamTrack,
        timeline: Timeline,
        writer: RecordingWriter,
        on_ended: Callable[[TrackInput, BaseException | None], None],
        clock: TrackClock,
    ) -> None:
        self.index = index
        self.track = track
        self.kind = track.kind
        self.counters = InputCounters()
        self.ended = False
        self._timeline = timeline
        self._writer = writer
        self._on_ended = on_ended
        self._clock = clock
        self._restart = True
        self._interval = FrameInterval()
        self._last_out: int | None = None
        self._floor = 0  # µs: video resumed after a pause starts after the cut

    @property
    def synchronised(self) -> bool:
        """Whether this track's timing comes from its sender's reports."""
        return self._clock.synchronised

    @abstractmethod
    def start(self) -> None:
        """Begin taking media."""

    @abstractmethod
    def stop(self) -> None:
        """Take no more media."""

    def resume(self) -> None:
        """Recording goes on after a pause: video must start again on a keyframe, after the
        cut (a pause removes whole frame intervals, rounded, so resumed video could land
        among the frames still arriving from before the pause)."""
        self._restart = True
        cuts = self._timeline.cuts()
        if cuts:
            self._floor = round(cuts[-1] * MICROSECOND) + CONTAINER_TICK_US

    def _end(self, error: BaseException | None = None) -> None:
        if not self.ended:
            self.ended = True
            self._on_ended(self, error)

    def _output_time(self, media: float, arrival: float) -> int | None:
        """The frame's output time in µs, or None (counted) when it falls outside the
        recording, or (video) would not come after the frame before it: a pause cuts out
        whole frame intervals, so right after a resume a frame may land on the last one's
        slot."""
        if self.kind == "video":
            interval = self._interval.add(media)
            if interval is not None:
                self._timeline.quantum = interval
        out = self._timeline.output_time(self._clock.reference(media, arrival))
        if out is None:
            self.counters.frames_dropped_paused += 1
            return None
        micros = round(out * MICROSECOND)
        if self.kind == "video" and (
            micros < self._floor or (self._last_out is not None and micros <= self._last_out)
        ):
            self.counters.frames_dropped_late += 1
            return None
        return micros

    def _submit(self, out: int, payload: EncodedFrame | av.AudioFrame | av.VideoFrame) -> bool:
        """Hand a frame to the writer; False (counted) if the writer is too far behind."""
        if not self._writer.submit(MediaItem(self.index, out, payload, self._restart)):
            self.counters.frames_dropped_backlog += 1
            return False
        self._restart = False
        self._last_out = out
        return True


class EncodedInput(TrackInput):
    """Encoded frames from an aiortc receiver, written as they are (or decoded on the writer
    thread when the recording's codec differs)."""

    def __init__(
        self,
        index: int,
        track: MediaStreamTrack,
        timeline: Timeline,
        writer: RecordingWriter,
        on_ended: Callable[[TrackInput, BaseException | None], None],
        tap: ReceiverTap,
        group: SyncGroup,
        *,
        leading: bool = True,
        keyframe_interval_us: int | None = None,
        keyframe_interval_count: int | None = None,
    ) -> None:
        clock = TrackClock(group, leading=leading)
        super().__init__(index, track, timeline, writer, on_ended, clock)
        self._leading = leading
        self._tap = tap
        self._keyframe_interval_us = keyframe_interval_us
        self._keyframe_interval_count = keyframe_interval_count
        self._needs_keyframe = self.kind == "video"
        self._requested_at: float | None = None
        self._last_key_out: int | None = None
        self._frames_since_key = 0
        self._report: SenderReport | None = None

    def start(self) -> None:
        self._seed_clock()
        self._tap.subscribe(self._on_frame, self._end)
        if self._tap.ended:
            self._end()
        else:
            self._request_keyframe()

    def _seed_clock(self) -> None:
        """A leading track that was already flowing places its sender's clock now, from the
        last frame and report its receiver saw, so that the tracks following it are placed
        right from their first frame (whichever track's frame comes first)."""
        last, report = self._tap.last_frame, self._tap.sender_report
        if not self._leading or last is None or report is None:
            return
        arrival, timestamp, rate = last
        self._report = report
        self._clock.sender_report(report.ntp_seconds, report.timestamp / rate)
        self._clock.reference(timestamp / rate, arrival)

    def stop(self) -> None:
        self._tap.unsubscribe(self._on_frame, self._end)

    def resume(self) -> None:
        super().resume()
        if self.kind == "video":
            self._needs_keyframe = True
            self._request_keyframe()

    def _request_keyframe(self) -> None:
        if self._tap.request_keyframe():
            self.counters.keyframe_requests += 1
            self._requested_at = time.monotonic()

    def _lost(self) -> None:
        self._needs_keyframe = True
        if self._requested_at is None or time.monotonic() - self._requested_at > LOSS_PLI_INTERVAL:
            self._request_keyframe()

    def _on_frame(self, frame: EncodedFrame) -> None:
        self.counters.frames_received += 1
        report = self._tap.sender_report
        if report is not None and report is not self._report:
            self._report = report
            self._clock.sender_report(report.ntp_seconds, report.timestamp / frame.clock_rate)
        if self.kind == "video" and not frame.complete:
            self.counters.frames_dropped_incomplete += 1
            self._lost()
            return
        keyframe = self.kind == "video" and is_keyframe(frame.codec, frame.data)
        if frame.gap and self.kind == "video" and not keyframe:
            self.counters.frames_dropped_incomplete += 1
            self._lost()
            return
        late = self.counters.frames_dropped_late
        out = self._output_time(frame.timestamp / frame.clock_rate, frame.arrival)
        if out is None:
            if self.counters.frames_dropped_late > late:
                self._lost()  # what follows would reference the dropped frame
            return
        if self._needs_keyframe:
            if not keyframe:
                self.counters.frames_dropped_waiting_for_keyframe += 1
                if (
                    self._requested_at is None
                    or time.monotonic() - self._requested_at > KEYFRAME_RETRY
                ):
                    self._request_keyframe()
                return
            self._needs_keyframe = False
        if self.kind == "video":
            self._keyframe_schedule(out, keyframe)
        if not self._submit(out, frame) and self.kind == "video":
            self._lost()

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
    """Decoded frames read from any track with ``recv()``."""

    def __init__(
        self,
        index: int,
        track: MediaStreamTrack,
        timeline: Timeline,
        writer: RecordingWriter,
        on_ended: Callable[[TrackInput, BaseException | None], None],
    ) -> None:
        super().__init__(index, track, timeline, writer, on_ended, TrackClock())
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

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
        media = (
            float(frame.pts * frame.time_base)
            if frame.pts is not None and frame.time_base
            else arrival
        )
        out = self._output_time(media, arrival)
        if out is not None:
            self._submit(out, frame)
