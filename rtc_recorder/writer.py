"""The recording's writer thread: track processing, container, sink, chunks.

The event loop only ``submit``s frames and commands; this thread does everything that
costs: encoding, muxing, file writes. It reports back through one callback, in order:
chunks (for ``dataavailable``), a failure, and finally the last chunk once the output is
finalized.

The container header needs every track's format, which video only reveals with its
first keyframe, so samples wait (bounded by :data:`HEADER_DEADLINE`) until all tracks
are described; a track still silent by then is left out of the recording. Where the
file's time 0 lies is the timing's decision (:func:`rtc_recorder.timing.file_origin`);
samples are written at the times they come with, which the sources keep in order.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .bitstream import opus
from .containers.base import ContainerWriter, Sample, TrackFormat
from .encoding import MICROSECOND, MediaItem, TrackProcessor
from .mimetype import RecordingType
from .sink import Sink
from .timing import DEFAULT_FRAME_INTERVAL, file_origin

logger = logging.getLogger("rtc_recorder")

BATCH_SECONDS = 0.25  # how often frames go over to the thread
HEADER_DEADLINE = 3.0  # seconds of waiting for a silent track before writing without it
BACKLOG_LIMIT = 64 * 1024 * 1024  # bytes queued for the thread before frames are refused
VIDEO_FRAME_US = 33_333  # assumed length of a last video frame


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
    overlapping: dict[int, int] = field(default_factory=dict)  # audio left out at time 0
    out_of_order: dict[int, int] = field(default_factory=dict)  # samples refused (a bug)
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
        observe: Callable[[str, MediaItem], None] | None = None,
    ) -> None:
        self._recording = recording
        # Shown every item this thread takes, with its track's kind (a room's mix listens).
        self._observe = observe
        self._quantum = quantum
        self._processors = processors
        self._sink = sink
        self._notify = notify
        self._timeslice_us = timeslice_us
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._batch: list[MediaItem] = []  # gathered on the event loop
        self._batch_timer: asyncio.TimerHandle | None = None
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
        """Queue a frame; False (and nothing queued) when the thread is too far behind.

        Frames are handed over in batches, every :data:`BATCH_SECONDS`: waking the thread
        for every frame would cost more than what it does with one."""
        size = item.size
        if self.backlog + size > BACKLOG_LIMIT:
            return False
        self._submitted_bytes += size
        self._batch.append(item)
        if self._batch_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # driven from a thread of the caller's: no batching
                self._hand_over()
                return True
            self._batch_timer = loop.call_later(BATCH_SECONDS, self._hand_over)
        return True

    def _hand_over(self) -> None:
        """Give the thread the frames gathered so far."""
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        if self._batch:
            batch, self._batch = self._batch, []
            self._queue.put(batch)

    def request_data(self) -> None:
        """Ask for a chunk with everything gathered so far."""
        self._hand_over()
        self._queue.put(_RequestData())

    def close(self) -> None:
        """Finish the recording: the thread finalizes the output, reports the last chunk, ends."""
        self._hand_over()
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
            if isinstance(command, _RequestData):
                self._guarded(self._cut, requested=True)
                continue
            for item in command:
                if not self._failed:
                    self._guarded(self._handle, item)
                self._processed_bytes += item.size

    def _guarded(self, action: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        try:
            action(*args, **kwargs)
        except Exception as exc:
            self._fail(exc)

    def _handle(self, item: MediaItem) -> None:
        processor = self._processors[item.track]
        if self._observe is not None:
            self._observe(processor.kind, item)
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
        interval = self._quantum() or DEFAULT_FRAME_INTERVAL
        formats = [self._with_hint(p, interval) for p in described]
        self._container = open_container(self._recording, self._sink, formats)
        pending = sorted((s for s in self._pending if s.track in self._slots), key=lambda s: s.time)
        self._pending = []
        self._base = self.stats.base_us = self._time_zero(pending, interval)
        # Only now: the event loop reads base_us once it sees the header written.
        self.stats.header_written = True
        for sample in pending:
            self._write(sample)

    def _with_hint(self, processor: TrackProcessor, interval: float) -> TrackFormat:
        """A video track's format with its frame interval, for players to know the rate."""
        track_format = processor.format
        assert track_format is not None
        if processor.kind != "video":
            return track_format
        return replace(track_format, frame_interval=round(interval * 1_000_000_000))

    def _time_zero(self, samples: list[Sample], interval: float) -> int:
        """Where the file's time 0 goes (see :func:`~rtc_recorder.timing.file_origin`);
        ``samples`` (sorted by time) loses the audio packets left out."""
        video = [s.time / MICROSECOND for s in samples if self._is_video(s.track)]
        audio = [s for s in samples if not self._is_video(s.track)]
        # Players present audio its codec's delay earlier than its packets' times.
        presented = [(s.time - self._codec_delay(s.track)) / MICROSECOND for s in audio]
        origin, dropped = file_origin(video, presented, interval)
        for sample in audio[:dropped]:
            samples.remove(sample)
            self.stats.overlapping[sample.track] = self.stats.overlapping.get(sample.track, 0) + 1
        return round(origin * MICROSECOND)

    def _codec_delay(self, track: int) -> int:
        """An audio track's codec delay in µs (Opus's pre-skip), which players take off."""
        track_format = self._processors[track].format
        if track_format is None or track_format.codec != "opus" or len(track_format.config) < 12:
            return 0
        pre_skip = int.from_bytes(track_format.config[10:12], "little")
        return pre_skip * MICROSECOND // opus.SAMPLE_RATE

    def _is_video(self, track: int) -> bool:
        return self._processors[track].kind == "video"

    def _write(self, sample: Sample) -> None:
        assert self._container is not None
        sample.time -= self._base
        track = sample.track
        last = self._last.get(track)
        if sample.time < 0 or (
            last is not None and sample.time <= last[0] and self._is_video(track)
        ):
            # The sources keep each track in order; a sample out of order is left out
            # rather than allowed to damage the file.
            self.stats.out_of_order[track] = self.stats.out_of_order.get(track, 0) + 1
            return
        self._last[track] = (sample.time, sample.duration)
        if (
            self._timeslice_us is not None
            and self._chunk_start is not None
            and sample.time - self._chunk_start >= self._timeslice_us
        ):
            self._cut()
        if self._chunk_start is None:
            self._chunk_start = sample.time
        sample.track = self._slots[track]
        self._container.write(sample)
        self.stats.samples[track] = self.stats.samples.get(track, 0) + 1
        self.stats.bytes[track] = self.stats.bytes.get(track, 0) + len(sample.data)
        end = sample.time + (sample.duration or self._frame_length(track))
        self.stats.duration_us = max(self.stats.duration_us, end)

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
