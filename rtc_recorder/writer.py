"""The recording's writer thread: track processing, container, sink, chunks.

The event loop only ``submit``s frames and commands; this thread does everything that
costs: encoding, muxing, file writes. It reports back through one callback, in order:
chunks (for ``dataavailable``), a failure, and finally the last chunk once the output is
finalized.

The container header needs every track's format, which video only reveals with its
first keyframe, so samples wait (bounded by :data:`HEADER_DEADLINE`) until all tracks
are described; a track still silent by then is left out of the recording. The output
timeline starts at the earliest sample written, so files start at 0.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .containers.base import ContainerWriter, Sample, TrackFormat
from .encoding import MediaItem, TrackProcessor
from .mimetype import RecordingType
from .sink import Sink

logger = logging.getLogger("rtc_recorder")

HEADER_DEADLINE = 3.0  # seconds of waiting for a silent track before writing without it
BACKLOG_LIMIT = 64 * 1024 * 1024  # bytes queued for the thread before frames are refused
VIDEO_FRAME_US = 33_333  # assumed length of a last video frame
MIN_VIDEO_SPACING_US = 1000  # Matroska's tick: two frames in one tick would share a timestamp
HALF_FRAME_GUARD_US = 2000  # a first audio packet this close to half a frame off the grid goes


@dataclass(frozen=True)
class Chunk:
    """Bytes for one ``dataavailable``; ``final`` is the last one, after finalization."""

    data: bytes
    timecode: float
    final: bool = False
    requested: bool = False


@dataclass(frozen=True)
class Failure:
    """The recording failed; what was written so far is kept."""

    error: BaseException


WriterEvent = Chunk | Failure


class _RequestData:
    pass


class _Close:
    pass


@dataclass
class WriterStats:
    """Counters of the writer thread (read from the event loop for ``getStats``)."""

    samples: dict[int, int] = field(default_factory=dict)
    bytes: dict[int, int] = field(default_factory=dict)
    overlapping: dict[int, int] = field(default_factory=dict)  # audio dropped, see _keep_in_order
    chunks: int = 0
    duration_us: int = 0
    base_us: int = 0  # output time (before zero-basing) of the file's time 0
    header_written: bool = False
    dropped_tracks: list[int] = field(default_factory=list)


def open_container(
    recording: RecordingType, sink: Sink, tracks: list[TrackFormat]
) -> ContainerWriter:
    """The writer for the recording's container."""
    from .ffmpeg_output import FfmpegMuxer, FfmpegSink

    if isinstance(sink, FfmpegSink):
        return FfmpegMuxer(sink, tracks)
    name = recording.container.name
    if name in ("webm", "matroska"):
        from .containers.matroska import MatroskaWriter

        return MatroskaWriter(sink, tracks, doc_type=name)
    if name == "mp4":
        from .containers.mp4 import Mp4Writer

        return Mp4Writer(sink, tracks)
    if name == "ogg":
        from .containers.ogg import OggWriter

        return OggWriter(sink, tracks)
    from .containers.wav import WavWriter

    return WavWriter(sink, tracks)


class RecordingWriter:
    """Owns one recording's processors, container and sink, on a thread of its own."""

    def __init__(
        self,
        recording: RecordingType,
        processors: list[TrackProcessor],
        sink: Sink,
        notify: Callable[[WriterEvent], None],
        *,
        timeslice_us: int | None = None,
        quantum: Callable[[], float | None] = lambda: None,
    ) -> None:
        self._recording = recording
        self._quantum = quantum
        self._processors = processors
        self._sink = sink
        self._notify = notify
        self._timeslice_us = timeslice_us
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="rtc-recorder-writer", daemon=True)
        self.stats = WriterStats()
        self._submitted_bytes = 0  # written by the event loop only
        self._processed_bytes = 0  # written by the writer thread only
        # writer-thread state
        self._container: ContainerWriter | None = None
        self._slots: dict[int, int] = {}  # processor index -> container track index
        self._pending: list[Sample] = []
        self._first_pending_at: float | None = None
        self._base = 0
        self._last: dict[int, tuple[int, int]] = {}  # track -> (time, duration) last written
        self._chunk_start: int | None = None
        self._chunks_cut = 0
        self._failed = False

    # -- event loop side ------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (it opens the sink first)."""
        self._thread.start()

    @property
    def backlog(self) -> int:
        """Bytes submitted and not yet processed."""
        return self._submitted_bytes - self._processed_bytes

    def submit(self, item: MediaItem) -> bool:
        """Queue a frame; False (and nothing queued) when the thread is too far behind."""
        size = item.size
        if self.backlog + size > BACKLOG_LIMIT:
            return False
        self._submitted_bytes += size
        self._queue.put(item)
        return True

    def request_data(self) -> None:
        """Ask for a chunk with everything gathered so far."""
        self._queue.put(_RequestData())

    def close(self) -> None:
        """Finish the recording: the thread finalizes the output, reports the last chunk, ends."""
        self._queue.put(_Close())

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end."""
        self._thread.join(timeout)

    # -- writer thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._sink.open()
        except Exception as exc:
            self._fail(exc)
        while True:
            command = self._queue.get()
            if isinstance(command, _Close):
                self._finish()
                return
            try:
                if isinstance(command, _RequestData):
                    self._cut(requested=True)
                elif not self._failed:
                    self._handle(command)
            except Exception as exc:
                self._fail(exc)
            finally:
                if isinstance(command, MediaItem):
                    self._processed_bytes += command.size

    def _handle(self, item: MediaItem) -> None:
        processor = self._processors[item.track]
        for sample in processor.process(item):
            self._accept(sample)
        if self._container is None:
            self._write_header_if_ready(force=False)

    def _accept(self, sample: Sample) -> None:
        if self._container is None:
            if self._first_pending_at is None:
                self._first_pending_at = time.monotonic()
            self._pending.append(sample)
        elif sample.track in self._slots:
            self._write(sample)

    def _write_header_if_ready(self, *, force: bool) -> None:
        described = [p for p in self._processors if p.format is not None]
        if not described:
            return
        waited = self._first_pending_at is not None and (
            time.monotonic() - self._first_pending_at >= HEADER_DEADLINE
        )
        if len(described) < len(self._processors) and not (force or waited):
            return
        for processor in self._processors:
            if processor.format is None:
                logger.warning(
                    "no usable %s arrived in time: recording without that track", processor.kind
                )
                self.stats.dropped_tracks.append(processor.index)
        self._slots = {p.index: slot for slot, p in enumerate(described)}
        formats = [p.format for p in described if p.format is not None]
        self._container = open_container(self._recording, self._sink, formats)
        self.stats.header_written = True
        pending = sorted((s for s in self._pending if s.track in self._slots), key=lambda s: s.time)
        self._pending = []
        self._base = self.stats.base_us = self._time_zero(pending)
        for sample in pending:
            self._write(sample)

    def _time_zero(self, samples: list[Sample]) -> int:
        """Where the file's time 0 goes: at the earliest sample, moved back (by less than a
        frame) so that video frames fall on the grid of their frame interval.

        Players and FFmpeg count video frames from the file's first packet; when that is
        audio half a frame interval off the video's grid, FFmpeg rounds neighbouring frames
        onto one tick. Such a first audio packet is dropped (counted with the overlapping
        audio): the next one, 20 ms later, is well off the half-way point. ``samples`` is
        sorted by time and loses what is dropped."""
        video = [s.time for s in samples if self._processors[s.track].kind == "video"]
        if not video:
            return samples[0].time if samples else 0
        # Until a track has shown its frame rate (a stream that begins with this keyframe),
        # assume the usual 30 frames a second; slower rates of 30/n share its grid.
        step = round((self._quantum() or VIDEO_FRAME_US / 1_000_000) * 1_000_000)
        first = min(video)
        while True:
            earliest = samples[0]
            zero = first - -(-(first - earliest.time) // step) * step
            if (
                self._processors[earliest.track].kind == "video"
                or abs(earliest.time - zero - step / 2) > HALF_FRAME_GUARD_US
            ):
                return zero
            samples.pop(0)
            self._count_dropped_audio(earliest.track)

    def _count_dropped_audio(self, track: int) -> None:
        self.stats.overlapping[track] = self.stats.overlapping.get(track, 0) + 1

    def _write(self, sample: Sample) -> None:
        assert self._container is not None
        sample.time -= self._base
        if not self._keep_in_order(sample):
            return
        if (
            self._timeslice_us is not None
            and self._chunk_start is not None
            and sample.time - self._chunk_start >= self._timeslice_us
        ):
            self._cut()
        if self._chunk_start is None:
            self._chunk_start = sample.time
        track = sample.track
        sample.track = self._slots[track]
        self._container.write(sample)
        self.stats.samples[track] = self.stats.samples.get(track, 0) + 1
        self.stats.bytes[track] = self.stats.bytes.get(track, 0) + len(sample.data)
        end = sample.time + (sample.duration or self._frame_length(track))
        self.stats.duration_us = max(self.stats.duration_us, end)

    def _keep_in_order(self, sample: Sample) -> bool:
        """Keep each track's times increasing: a video frame that would not come at least a
        millisecond (the coarsest container tick) after its predecessor is moved there;
        audio that would overlap what is written is dropped (this happens once, when a
        track's clock is corrected by a sender report)."""
        last = self._last.get(sample.track)
        audio = self._processors[sample.track].kind == "audio"
        if sample.time < 0 and not audio:
            sample.time = 0
        if audio and (
            sample.time < 0 or (last is not None and sample.time < last[0] + last[1] - 1000)
        ):
            self._count_dropped_audio(sample.track)
            return False
        if not audio and last is not None and sample.time < last[0] + MIN_VIDEO_SPACING_US:
            sample.time = last[0] + MIN_VIDEO_SPACING_US
        self._last[sample.track] = (sample.time, sample.duration)
        return True

    def _frame_length(self, track: int) -> int:
        return VIDEO_FRAME_US if self._processors[track].kind == "video" else 20_000

    def _cut(self, *, final: bool = False, requested: bool = False) -> None:
        """Emit everything gathered as one chunk."""
        if self._container is not None and not self._failed:
            self._container.flush()
        timecode = 0.0
        if self._chunks_cut:
            start = self._chunk_start if self._chunk_start is not None else self.stats.duration_us
            timecode = start / 1000
        self._chunks_cut += 1
        self._chunk_start = None
        self.stats.chunks = self._chunks_cut
        self._notify(Chunk(self._sink.take_chunk(), timecode, final, requested))

    def _finish(self) -> None:
        """Finalize: encoders drained, header written if it never was, trailer and patches.
        After a failure the container is still closed where the sink allows, so the file
        keeps an index; if that fails too, the sink has kept it cut at a whole element."""
        try:
            if not self._failed:
                for processor in self._processors:
                    for sample in processor.finish():
                        self._accept(sample)
                if self._container is None:
                    self._write_header_if_ready(force=True)
            if self._container is not None:
                container, self._container = self._container, None
                container.flush()
                self._sink.finalize(container.close(self.stats.duration_us))
        except Exception as exc:
            self._fail(exc)
        finally:
            self._sink.close()
            self._cut(final=True)

    def _fail(self, exc: BaseException) -> None:
        if self._failed:
            return
        logger.error("recording failed: %s", exc, exc_info=exc)
        self._failed = True
        self._notify(Failure(exc))
