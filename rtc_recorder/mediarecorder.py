"""``MediaRecorder``: the W3C MediaStream Recording API for aiortc tracks.

This module is the conductor: the state machine, the events and their order, and the
wiring of one recording's pieces (sources -> timeline -> writer thread -> sink). It holds
no media code.

Methods change :attr:`MediaRecorder.state` at once and queue their events on the event
loop; each returns a future that resolves once its event has been dispatched (``stop``:
once the output is finalized too). The futures never fail, so leaving them un-awaited
is fine. Events of one recording come in the specification's order (``start`` first,
``stop`` last); a new recording's events wait until the previous one has fired ``stop``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from aiortc.mediastreams import MediaStreamTrack

from .codecs import RECEIVED_AUDIO, RECEIVED_VIDEO
from .encoding import (
    EncoderSettings,
    MediaItem,
    PassthroughTrack,
    TrackProcessor,
    TranscodeTrack,
)
from .errors import (
    InvalidModificationError,
    InvalidStateError,
    NotSupportedError,
    RecorderError,
    as_recorder_error,
)
from .events import BlobEvent, ErrorEvent, Event, EventEmitter, Handler, call_from_thread
from .ffmpeg_output import FfmpegSink, FfmpegTrack
from .mediastream import MediaStream
from .mimetype import is_type_supported, resolve_type
from .receive import hooks as _aiortc
from .sink import Sink, Target
from .sources import DecodedInput, EncodedInput, TrackInput
from .timing import (
    DEFAULT_FRAME_INTERVAL,
    LOCAL_SETTLING,
    MemberTimeline,
    RecordingTimeline,
    SenderClock,
    Timeline,
)
from .writer import Chunk, Failure, RecordingWriter, WriterEvent

logger = logging.getLogger("rtc_recorder")

DEFAULT_AUDIO_BITRATE = 128_000
DEFAULT_VIDEO_BITRATE = 2_500_000
MIN_TIMESLICE_MS = 10


@dataclass
class _Run:
    """One recording, from ``start()`` to its ``stop`` event."""

    number: int
    timeline: RecordingTimeline
    writer: RecordingWriter
    inputs: list[TrackInput] = field(default_factory=list)
    processors: list[TrackProcessor] = field(default_factory=list)
    outbox: deque[tuple[Event, list[asyncio.Future[None]]]] = field(default_factory=deque)
    data_waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    stop_waiters: list[asyncio.Future[None]] = field(default_factory=list)
    stopping: bool = False
    error: RecorderError | None = None
    bytes: int = 0
    name: str | None = None
    # The clock of the tracks that are not received over RTP (their timestamps sync them).
    local_clock: SenderClock = field(default_factory=lambda: SenderClock(LOCAL_SETTLING))


class MediaRecorder(EventEmitter):
    """Records an aiortc :class:`MediaStream` the way a browser's MediaRecorder does.

    :param file: a path, a binary file object, or None (data only through ``dataavailable``).
    :param format: an FFmpeg format name, as aiortc's recorder takes it: "webm",
        "matroska", "mp4", "ogg", "wav" are written by rtc-recorder, any other by FFmpeg;
        normally derived from ``mimeType`` or the file name.
    :param options: FFmpeg options, as in aiortc's recorder: passed to FFmpeg when it
        writes the output; rtc-recorder's own containers log them as ignored.
    :param stream: the :class:`MediaStream` (or tracks) to record; :meth:`addTrack` adds more.
    :param mimeType: the type to write, e.g. ``"video/webm;codecs=vp8,opus"``.
    """

    def __init__(
        self,
        file: Target = None,
        format: str | None = None,
        options: Mapping[str, str] | None = None,
        *,
        stream: MediaStream | Iterable[MediaStreamTrack] | None = None,
        mimeType: str = "",
        audioBitsPerSecond: int | None = None,
        videoBitsPerSecond: int | None = None,
        bitsPerSecond: int | None = None,
        audioBitrateMode: str = "variable",
        videoKeyFrameIntervalDuration: float | None = None,
        videoKeyFrameIntervalCount: int | None = None,
        _timeline: Timeline | None = None,
        _observe: Callable[[str, MediaItem], None] | None = None,
    ) -> None:
        """``_timeline`` and ``_observe`` are a room's (:mod:`rtc_recorder.room`), not part
        of the API: the room's shared timeline, which this recording places its media on
        and whose start, pauses and cuts the room alone decides; and what is shown every
        item the writer thread takes (the room's mix listens to the sound)."""
        super().__init__()
        if not isinstance(mimeType, str):
            raise TypeError("mimeType must be a string")
        self._recording = resolve_type(mimeType, file, format)
        if not (
            file is None
            or isinstance(file, str)
            or hasattr(file, ("write"))
            or hasattr(file, "__fspath__")
        ):
            raise TypeError("file must be a path, a binary file object or None")
        self._file = file
        self._options = dict(options or {})
        if options and self._recording.ffmpeg is None:
            logger.info("rtc_recorder writes containers itself; ignoring options %s", dict(options))
        if audioBitrateMode not in ("variable", "constant"):
            raise ValueError("audioBitrateMode must be 'variable' or 'constant'")
        self.mimeType = mimeType
        self.stream = stream if isinstance(stream, MediaStream) else MediaStream(stream or ())
        self.audioBitrateMode = audioBitrateMode
        self.audioBitsPerSecond, self.videoBitsPerSecond = _bitrates(
            audioBitsPerSecond, videoBitsPerSecond, bitsPerSecond
        )
        self.videoKeyFrameIntervalDuration = _positive(
            videoKeyFrameIntervalDuration, "videoKeyFrameIntervalDuration"
        )
        self.videoKeyFrameIntervalCount = _positive(
            videoKeyFrameIntervalCount, "videoKeyFrameIntervalCount"
        )
        self.onstart: Handler | None = None
        self.onstop: Handler | None = None
        self.ondataavailable: Handler | None = None
        self.onpause: Handler | None = None
        self.onresume: Handler | None = None
        self.onerror: Handler | None = None
        self._state = "inactive"
        self._runs: deque[_Run] = deque()
        self._current: _Run | None = None
        self._last: _Run | None = None
        self._count = 0
        self._drain_scheduled = False
        self._shared_timeline = _timeline
        self._observe = _observe

    # -- the specification's API -------------------------------------------------------

    @property
    def state(self) -> str:
        """ "inactive", "recording" or "paused"."""
        return self._state

    @staticmethod
    def isTypeSupported(type: str) -> bool:
        """Whether ``type`` can be recorded ("" always can)."""
        return is_type_supported(type)

    def addTrack(self, track: MediaStreamTrack) -> None:
        """Add a track to :attr:`stream` (as aiortc's recorder does).

        A track received by an aiortc peer connection stops being decoded from here on
        (unless somebody reads decoded frames from it), for as long as it stays in
        :attr:`stream` (see :class:`MediaStream`): the recording takes its encoded frames.
        """
        self.stream.addTrack(track)

    def start(self, timeslice: float | None = None) -> asyncio.Future[None]:
        """Start recording; with ``timeslice`` (ms), ``dataavailable`` fires every
        ``timeslice`` ms of media."""
        if self._state != "inactive":
            raise InvalidStateError(f"start() called while {self._state}")
        timeslice_us = timeslice_micros(timeslice)
        tracks = self._tracks_to_record()
        loop = self._running_loop()
        now = time.monotonic()
        self._count += 1
        keep_chunks = self._file is None or self.has_listeners("dataavailable")
        sink = (
            FfmpegSink(self._recording.ffmpeg, self._file, self._options, keep_chunks=keep_chunks)
            if self._recording.ffmpeg is not None
            else Sink(self._file, keep_chunks=keep_chunks)
        )
        processors, plans = self._plan(tracks, sink)
        writer = RecordingWriter(
            self._recording,
            processors,
            sink,
            lambda event: call_from_thread(loop, self._on_writer_event, run, event),
            timeslice_us=timeslice_us,
            quantum=self._grid,
            observe=self._observe,
        )
        timeline: RecordingTimeline
        if self._shared_timeline is not None:
            timeline = MemberTimeline(self._shared_timeline)
        else:
            # Video taken from a receiver restarts on keyframes, which settle each (re)start.
            keyframed = any(t.kind == "video" and tap is not None for t, tap in plans)
            timeline = Timeline(now, self._grid, video=keyframed)
        run = _Run(self._count, timeline, writer, processors=processors, name=sink.path)
        for index, (track, tap) in enumerate(plans):
            run.inputs.append(self._input(index, track, tap, run))
        video = next((p.codec for p in processors if p.kind == "video"), None)
        audio = next((p.codec for p in processors if p.kind == "audio"), None)
        mime = self._recording.mime
        if not self.mimeType and video is None:
            mime = self._recording.container.audio_mime
        self.mimeType = replace(self._recording, mime=mime).mime_with_codecs(video, audio)
        self._state = "recording"
        self._current = self._last = run
        self._runs.append(run)
        self.stream._observe(self._on_track_set_changed)
        run.writer.start()
        for track_input in run.inputs:
            track_input.start()
        return self._queue(run, Event("start"))

    def pause(self) -> asyncio.Future[None]:
        """Pause: media keeps arriving and is thrown away; the output has no gap."""
        run = self._active("pause")
        if self._state == "paused":
            return self._resolved()
        self._state = "paused"
        run.timeline.pause(time.monotonic())
        return self._queue(run, Event("pause"))

    def resume(self) -> asyncio.Future[None]:
        """Resume after :meth:`pause` (video restarts on a keyframe)."""
        run = self._active("resume")
        if self._state == "recording":
            return self._resolved()
        self._state = "recording"
        run.timeline.resume(time.monotonic())
        for track_input in run.inputs:
            track_input.resume()
        return self._queue(run, Event("resume"))

    def requestData(self) -> asyncio.Future[None]:
        """Fire ``dataavailable`` with everything gathered since the last one."""
        run = self._active("requestData")
        waiter = self._future()
        run.data_waiters.append(waiter)
        run.writer.request_data()
        return waiter

    def stop(self) -> asyncio.Future[None]:
        """Stop: ``dataavailable`` with the rest, then ``stop`` once the output is finalized."""
        if self._state == "inactive":
            # Idempotent; a recording still finalizing is waited for.
            stopping = self._runs[-1] if self._runs else None
            if stopping is None:
                return self._resolved()
            waiter = self._future()
            stopping.stop_waiters.append(waiter)
            return waiter
        assert self._current is not None
        run = self._current
        waiter = self._future()
        run.stop_waiters.append(waiter)
        self._finish(run, None)
        return waiter

    def getStats(self) -> dict[str, Any]:
        """What the current (or last) recording did, per track: the path taken
        (pass-through or transcode), frames and bytes written, frames dropped and why,
        keyframe requests, the time in the file (seconds) of the latest frame taken for it
        (``lastFrameTime``), and the recorded and paused time. ``pauseCuts`` are the times
        in the file (seconds) where each pause was cut out. ``fileStart`` is where the
        file's time 0 lies on the recording's timeline (seconds; None until the file has
        its header): a room's timeline, for a participant's file."""
        run = self._current or self._last
        if run is None:
            return {"state": self._state, "tracks": []}
        now = time.monotonic()
        writer = run.writer.stats
        tracks = []
        for track_input, processor in zip(run.inputs, run.processors, strict=True):
            index = track_input.index
            tracks.append(
                {
                    "id": track_input.track.id,
                    "kind": track_input.kind,
                    "path": processor.path,
                    "codec": processor.codec,
                    "senderReportSync": track_input.synchronised,
                    **{_camel(k): v for k, v in asdict(track_input.counters).items()},
                    **{_camel(k): v for k, v in asdict(processor.counters).items()},
                    "framesWritten": writer.samples.get(index, 0),
                    "framesDroppedOverlapping": track_input.counters.frames_dropped_overlapping
                    + writer.overlapping.get(index, 0),
                    "bytesWritten": writer.bytes.get(index, 0),
                    "droppedFromRecording": index in writer.dropped_tracks,
                    "lastFrameTime": track_input.last_time(writer.base_us),
                }
            )
        return {
            "state": self._state if run is self._current else "inactive",
            "mimeType": self.mimeType,
            "recordedTime": run.timeline.recorded_time(now),
            "pausedTime": run.timeline.paused_time(now),
            "duration": writer.duration_us / 1_000_000,
            "fileStart": writer.base_us / 1_000_000 if writer.header_written else None,
            "pauseCuts": [
                round(cut - writer.base_us / 1_000_000, 6) for cut in run.timeline.cuts()
            ],
            "bytes": run.bytes,
            "chunks": writer.chunks,
            "backlogBytes": run.writer.backlog,
            "tracks": tracks,
        }

    # -- planning ------------------------------------------------------------------------

    def _tracks_to_record(self) -> list[MediaStreamTrack]:
        """The first live video and the first live audio track, as far as the type takes them
        (browsers record one of each)."""
        chosen = []
        for kind in ("video", "audio"):
            if not self._recording.records(kind):
                continue
            live = [t for t in self.stream if t.kind == kind and t.readyState == "live"]
            if live:
                chosen.append(live[0])
                if len(live) > 1:
                    logger.info("recording the first of %d %s tracks", len(live), kind)
        if not chosen:
            raise NotSupportedError(
                f"nothing to record: the stream has no live track that {self._recording.mime} takes"
            )
        return chosen

    def _plan(
        self, tracks: list[MediaStreamTrack], sink: Sink
    ) -> tuple[list[TrackProcessor], list[tuple[MediaStreamTrack, _aiortc.ReceiverTap | None]]]:
        settings = EncoderSettings(
            audio_bitrate=self.audioBitsPerSecond,
            video_bitrate=self.videoBitsPerSecond,
            audio_bitrate_mode=self.audioBitrateMode,
            keyframe_interval_us=_interval_us(self.videoKeyFrameIntervalDuration, 3_000_000)
            if self.videoKeyFrameIntervalCount is None
            else _interval_us(self.videoKeyFrameIntervalDuration, None),
            keyframe_interval_count=self.videoKeyFrameIntervalCount,
        )
        container = self._recording.container
        processors: list[TrackProcessor] = []
        plans = []
        for index, track in enumerate(tracks):
            kind = track.kind
            requested = self._recording.video if kind == "video" else self._recording.audio
            holdable = container.video_codecs if kind == "video" else container.audio_codecs
            default = container.default_video if kind == "video" else container.default_audio
            tap = _aiortc.tap_track(track)  # held by the stream
            incoming = tap.predicted_codec() if tap is not None else None
            received = RECEIVED_VIDEO if kind == "video" else RECEIVED_AUDIO
            codec = incoming if requested is None and incoming in holdable else requested or default
            assert codec is not None
            processor: TrackProcessor
            if isinstance(sink, FfmpegSink):
                processor = FfmpegTrack(index, kind, codec, settings, sink)
            elif tap is not None and codec in received and incoming in (codec, None):
                processor = PassthroughTrack(index, kind, codec, settings)
            else:
                processor = TranscodeTrack(index, kind, codec, settings)
            processors.append(processor)
            plans.append((track, tap))
        return processors, plans

    def _input(
        self,
        index: int,
        track: MediaStreamTrack,
        tap: _aiortc.ReceiverTap | None,
        run: _Run,
    ) -> TrackInput:
        def ended(track_input: TrackInput, error: BaseException | None) -> None:
            self._on_input_ended(run, track_input, error)

        if tap is None:
            return DecodedInput(index, track, run.timeline, run.writer, ended, run.local_clock)
        return EncodedInput(
            index,
            track,
            run.timeline,
            run.writer,
            ended,
            tap,
            keyframe_interval_us=_interval_us(self.videoKeyFrameIntervalDuration, None),
            keyframe_interval_count=self.videoKeyFrameIntervalCount,
        )

    # -- ending ----------------------------------------------------------------------------

    def _finish(self, run: _Run, error: RecorderError | None) -> None:
        """End ``run``: no more media, the error (if any) queued, the writer told to finalize;
        ``dataavailable`` and ``stop`` follow when it has."""
        if run.stopping:
            return
        run.stopping = True
        self.stream._unobserve(self._on_track_set_changed)
        if run is self._current:
            self._state = "inactive"
            self._current = None
        run.timeline.stop(time.monotonic())
        if error is not None:
            for track_input in run.inputs:
                track_input.stop()
            self._queue(run, ErrorEvent("error", error))
            run.writer.close()
            return
        draining = set(run.inputs)

        def drained(track_input: TrackInput) -> None:
            draining.discard(track_input)
            if not draining:
                run.writer.close()

        for track_input in run.inputs:
            track_input.drain(functools.partial(drained, track_input))

    def _on_input_ended(
        self, run: _Run, track_input: TrackInput, error: BaseException | None
    ) -> None:
        if run.stopping:
            return
        if error is not None:
            self._finish(run, as_recorder_error(error))
        elif all(i.ended for i in run.inputs):
            logger.info("every recorded track has ended: stopping")
            self._finish(run, None)

    def _grid(self) -> float | None:
        """The video frame interval pauses cut whole multiples of (None: audio only)."""
        run = self._current or self._last
        inputs = run.inputs if run is not None else []
        video = next((i for i in inputs if i.kind == "video"), None)
        if video is None:
            return None if inputs else DEFAULT_FRAME_INTERVAL
        return video.grid

    def _on_track_set_changed(self, stream: MediaStream) -> None:
        run = self._current
        if run is None or self._loop is None:
            return
        self._loop.call_soon(
            self._finish, run, InvalidModificationError("the recorded stream's track set changed")
        )

    def _on_writer_event(self, run: _Run, event: WriterEvent) -> None:
        if isinstance(event, Failure):
            error = as_recorder_error(event.error)
            if run.stopping:
                self._queue(run, ErrorEvent("error", error))
            else:
                self._finish(run, error)
            return
        assert isinstance(event, Chunk)
        run.bytes += len(event.data)
        waiters = []
        if event.requested and run.data_waiters:
            waiters.append(run.data_waiters.popleft())
        self._queue(run, BlobEvent("dataavailable", event.data, event.timecode), waiters)
        if event.final:
            # requestData() calls the writer never answered (it had already finished).
            waiters = list(run.data_waiters)
            run.data_waiters.clear()
            self._queue(run, Event("stop"), waiters)

    # -- event queue -------------------------------------------------------------------

    def _queue(
        self, run: _Run, event: Event, waiters: list[asyncio.Future[None]] | None = None
    ) -> asyncio.Future[None]:
        waiter = self._future()
        run.outbox.append((event, [*(waiters or []), waiter]))
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)
        return waiter

    def _drain(self) -> None:
        """Dispatch queued events, one recording at a time, in order."""
        self._drain_scheduled = False
        while self._runs:
            run = self._runs[0]
            if not run.outbox:
                return
            event, waiters = run.outbox.popleft()
            self._dispatch(event)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            if event.type == "stop":
                # stop() calls made up to now wait for this event, wherever they came in.
                for waiter in run.stop_waiters:
                    if not waiter.done():
                        waiter.set_result(None)
                self._runs.popleft()

    def _active(self, method: str) -> _Run:
        if self._state == "inactive" or self._current is None:
            raise InvalidStateError(f"{method}() called while inactive")
        return self._current


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _positive(value: float | None, name: str) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{name} must be a positive number")
    return value


def _interval_us(milliseconds: float | None, default: int | None) -> int | None:
    return default if milliseconds is None else int(milliseconds * 1000)


def timeslice_micros(timeslice: float | None) -> int | None:
    """A ``start(timeslice)`` argument (ms, or None) in µs, at least :data:`MIN_TIMESLICE_MS`;
    ``TypeError`` for anything but a non-negative number."""
    if timeslice is None:
        return None
    if isinstance(timeslice, bool) or not isinstance(timeslice, (int, float)) or timeslice < 0:
        raise TypeError("timeslice must be a non-negative number of milliseconds")
    return int(max(timeslice, MIN_TIMESLICE_MS) * 1000)


def _bitrates(audio: int | None, video: int | None, total: int | None) -> tuple[int, int]:
    """(audio, video) bits per second: explicit values win; ``total`` is split with up to
    128 kb/s (a tenth at least 6 kb/s) for audio and the rest for video."""
    for name, value in (("audio", audio), ("video", video), ("bitsPerSecond", total)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value <= 0
        ):
            raise ValueError(f"{name} bits per second must be a positive integer")
    if total is not None:
        split_audio = min(DEFAULT_AUDIO_BITRATE, max(6_000, total // 10))
        audio = audio if audio is not None else split_audio
        video = video if video is not None else max(100_000, total - audio)
    audio = min(max(audio or DEFAULT_AUDIO_BITRATE, 6_000), 510_000)
    video = max(video or DEFAULT_VIDEO_BITRATE, 100_000)
    return audio, video
