"""What every container writer shares: track descriptions, samples, and the writer contract.

A writer is opened on a byte output with the list of tracks (which writes the header),
takes samples, ``flush()``es whenever the recording needs all data so far to be out (a
chunk boundary), and ``close()``s by writing any trailer. The bytes it produces, in order,
form one playable file even if the process dies between two flushes. ``close()`` also
returns *patches*: in-place edits (durations, sizes, index pointers) for a copy of the
output that can be rewritten, such as a file on disk; the streamed bytes never need them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# The longest stretch of media a writer keeps to itself before its bytes go out,
# which bounds what a crash can lose.
MAX_BUFFERED_US = 1_000_000


@dataclass(frozen=True)
class TrackFormat:
    """One track as the container declares it.

    ``config`` is the codec configuration in its container-neutral form: an ``avcC``
    record (H.264), an ``OpusHead`` (Opus), an AudioSpecificConfig (AAC), an ``av1C``
    record (AV1); empty for VP8, VP9 and PCM (16-bit little endian). ``frame_interval``
    (nanoseconds, video) is the interval of the frame-rate grid the frames sit on, a hint for
    players (0: none).
    """

    kind: str
    codec: str
    width: int = 0
    height: int = 0
    sample_rate: int = 0
    channels: int = 0
    config: bytes = b""
    frame_interval: int = 0


@dataclass(slots=True)
class Sample:
    """One encoded frame, ready for the container.

    ``time`` is the presentation (and decoding) time in microseconds on the output
    timeline; ``duration`` in microseconds when known (0 otherwise). H.264 data is
    length-prefixed NAL units; AV1 data has no temporal delimiters.
    """

    track: int
    time: int
    keyframe: bool
    data: bytes
    duration: int = 0


@dataclass(frozen=True)
class Patch:
    """Replace the bytes at ``offset`` of the output with ``data``."""

    offset: int
    data: bytes


class Output(Protocol):
    """Where a writer's bytes go, in order."""

    def write(self, data: bytes) -> None:
        """Append ``data``."""


class ContainerWriter(ABC):
    """Open (the constructor writes the header), ``write``, ``flush``, ``close``."""

    def __init__(self, output: Output, tracks: Sequence[TrackFormat]) -> None:
        self._output = output
        self.tracks = list(tracks)
        self.position = 0

    def _emit(self, data: bytes) -> None:
        """Send bytes to the output, counting them so offsets can be recorded."""
        if data:
            self._output.write(data)
            self.position += len(data)

    @abstractmethod
    def write(self, sample: Sample) -> None:
        """Add one sample; samples of one track come in increasing ``time``."""

    @abstractmethod
    def flush(self) -> None:
        """Emit everything held back, ending the current cluster, fragment or page."""

    @abstractmethod
    def close(self, duration: int) -> list[Patch]:
        """Flush, write the trailer; return the patches for a rewritable copy.

        ``duration`` is the recording's length in microseconds.
        """
