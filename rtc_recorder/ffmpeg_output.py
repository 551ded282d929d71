"""Outputs FFmpeg writes: every format aiortc's recorder takes that rtc-recorder does not
write itself (MP3, FLV, MOV, MPEG-TS, image sequences...), muxed by PyAV on the
recording's writer thread, the way aiortc's recorder writes them.

Three pieces plug into the recording's usual pipeline (:class:`~rtc_recorder.writer.
RecordingWriter`, which keeps its timing, chunking and failure handling):

- :class:`FfmpegSink` owns the FFmpeg output. With a path, FFmpeg opens and writes the
  file(s) itself, so every muxer and option works as in aiortc (image sequences,
  ``movflags=faststart``); a chunk holds the bytes the file grew by since the previous
  one (none for outputs of several files). With a file object, or none, FFmpeg writes
  through :class:`_AppendOnly` into the sink: a chunk holds what FFmpeg appended, and
  what it rewrote in place (a header's sizes, at the end) reaches the file object once
  it is finalized, if it can seek.
- :class:`FfmpegTrack` transcodes one track (decoding what arrives encoded) with an
  encoder that is the FFmpeg output's stream.
- :class:`FfmpegMuxer` writes the header once every track is described, then muxes the
  encoded packets at the output times the timeline gave them (so pauses are cut out).

FFmpeg's muxers write their index at the end: what a crash leaves is not playable.
"""

from __future__ import annotations

import fractions
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

import av
from av.container import OutputContainer

from .containers.base import ContainerWriter, Patch, Sample, TrackFormat
from .encoding import MICROSECOND, EncoderSettings, MediaItem, TranscodeTrack
from .mimetype import FfmpegFormat
from .sink import Sink, Target

logger = logging.getLogger("rtc_recorder")

PACKET_TIME_BASE = fractions.Fraction(1, MICROSECOND)
VIDEO_RATE = 30  # the frame rate aiortc's recorder declares; frames keep their own times
# FFmpeg hands its buffered bytes over after every packet, so that chunks (and the file)
# follow the media rather than FFmpeg's buffer.
CONTAINER_OPTIONS = {"flush_packets": "1"}


class FfmpegSink(Sink):
    """Where an FFmpeg output goes (``target``: a path, a binary file object or None),
    and the FFmpeg output itself, once :meth:`open` ed (on the writer thread)."""

    def __init__(
        self,
        output: FfmpegFormat,
        target: Target,
        options: Mapping[str, str],
        *,
        keep_chunks: bool = True,
    ) -> None:
        self._name = os.fsdecode(target) if isinstance(target, (str, os.PathLike)) else None
        super().__init__(None if self._name is not None else target, keep_chunks=keep_chunks)
        self.output = output
        self._options = dict(options)
        self._read_back = keep_chunks and self._name is not None and not output.opens_files
        self._patchable = self._name is None and _can_seek(target)
        self._reader: BinaryIO | None = None
        self._io: _AppendOnly | None = None
        self.container: OutputContainer | None = None
        self.header_written = False
        self._streams: dict[str, Any] = {}

    @property
    def path(self) -> str | None:
        return self._name if self._name is not None else super().path

    def open(self) -> None:
        """Set up the FFmpeg output; a path is opened by FFmpeg when the header is written."""
        if self._name is not None:
            destination: Any = self._name
        else:
            super().open()
            self._io = destination = _AppendOnly(self, seekable=self._patchable)
        self.container = av.open(
            destination,
            "w",
            format=self.output.muxer,
            options=self._options,
            container_options=CONTAINER_OPTIONS,
        )

    def add_stream(self, kind: str, codec: str) -> Any:
        """A new stream of the output for ``kind``; returns its encoder (not yet opened)."""
        assert self.container is not None
        stream = self.container.add_stream(codec, rate=VIDEO_RATE if kind == "video" else None)
        self._streams[kind] = stream
        return stream.codec_context

    def stream(self, kind: str) -> Any:
        """The output's stream of ``kind``."""
        return self._streams[kind]

    def start(self) -> None:
        """Write the header (FFmpeg opens a path now)."""
        assert self.container is not None
        self.header_written = True
        self.container.start_encoding()
        if self._read_back:
            assert self._name is not None
            self._reader = open(self._name, "rb")  # noqa: SIM115 (open until close())

    def close_container(self) -> list[Patch]:
        """Write the trailer; the patches FFmpeg's in-place rewrites make to a file object."""
        container, self.container = self.container, None
        if container is not None:
            container.close()
        return self._io.patches if self._io is not None else []

    def take_chunk(self) -> bytes:
        self._read_new_bytes()
        return super().take_chunk()

    def _read_new_bytes(self) -> None:
        if self._reader is not None:
            self.write(self._reader.read())

    def finalize(self, patches: Sequence[Patch]) -> None:
        if self._name is None:
            super().finalize(patches)
        else:
            self.close()

    def close(self) -> None:
        """Close the FFmpeg output (after a failure, as far as it goes) and the file; the
        last bytes FFmpeg wrote still go into the next chunk. Never raises."""
        try:
            self.close_container()
            self._read_new_bytes()
        except Exception as exc:
            logger.warning("closing the FFmpeg output failed: %s", exc)
        finally:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            super().close()


def _can_seek(target: Target) -> bool:
    """Whether a file object can take the patches of in-place rewrites."""
    seekable = getattr(target, "seekable", None)
    try:
        return seekable is not None and bool(seekable())
    except (OSError, ValueError):
        return False


class _AppendOnly:
    """The file object FFmpeg writes through when the target is not a path: appended bytes
    go to the sink as they come; rewrites of earlier bytes become patches."""

    def __init__(self, sink: Sink, *, seekable: bool) -> None:
        self._sink = sink
        self._seekable = seekable
        self.position = 0
        self.end = 0
        self.patches: list[Patch] = []

    def seekable(self) -> bool:
        return self._seekable

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.position, os.SEEK_END: self.end}[whence]
        self.position = base + offset
        return self.position

    def write(self, data: bytes) -> int:
        if self.position > self.end:
            raise OSError(f"FFmpeg wrote at {self.position}, past the end ({self.end})")
        overlap = min(len(data), self.end - self.position)
        if overlap:
            self.patches.append(Patch(self.position, bytes(data[:overlap])))
        if overlap < len(data):
            self._sink.write(bytes(data[overlap:]))
            self.end += len(data) - overlap
        self.position += len(data)
        return len(data)


class FfmpegTrack(TranscodeTrack):
    """One track transcoded into a stream of an FFmpeg output, with the codec aiortc's
    recorder uses there; what arrives encoded (a remote track) is decoded first."""

    def __init__(
        self, index: int, kind: str, codec: str, settings: EncoderSettings, sink: FfmpegSink
    ) -> None:
        super().__init__(index, kind, codec, settings)
        self._sink = sink
        self._joined = False  # the track has its stream in the output
        self._encoded = False  # and its encoder has given a packet

    @property
    def format(self) -> TrackFormat | None:
        """Known once the encoder has given its first packet (the recording's time 0
        cannot come after that packet's time)."""
        return self.describer.hints if self._encoded else None

    def process(self, item: MediaItem) -> list[Sample]:
        if not self._joined and self._sink.header_written:
            # Too late to join the output: it was written without this track.
            self.counters.frames_in += 1
            return []
        return super().process(item)

    def _new_encoder(self, name: str) -> Any:
        encoder = self._sink.add_stream(self.kind, name)
        self._joined = True
        return encoder

    def _packet_sample(self, packet: Any, time: int) -> Sample | None:
        self._encoded = True
        duration = int(packet.duration * packet.time_base * MICROSECOND) if packet.duration else 0
        return Sample(self.index, time, bool(packet.is_keyframe), bytes(packet), duration)


class FfmpegMuxer(ContainerWriter):
    """Writes the header of an :class:`FfmpegSink` 's output on opening, then its packets."""

    def __init__(self, sink: FfmpegSink, tracks: Sequence[TrackFormat]) -> None:
        super().__init__(sink, tracks)
        self._sink = sink
        self._streams = [sink.stream(track.kind) for track in tracks]
        sink.start()

    def write(self, sample: Sample) -> None:
        assert self._sink.container is not None
        packet = av.Packet(sample.data)
        packet.stream = self._streams[sample.track]
        packet.time_base = PACKET_TIME_BASE
        packet.pts = packet.dts = sample.time
        packet.duration = sample.duration
        packet.is_keyframe = sample.keyframe
        self._sink.container.mux(packet)

    def flush(self) -> None:
        """Nothing to do: FFmpeg hands over its bytes after every packet."""

    def close(self, duration: int) -> list[Patch]:
        return self._sink.close_container()
