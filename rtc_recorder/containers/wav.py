"""RIFF WAVE holding 16-bit little-endian PCM.

Layout: the RIFF header, a ``fmt `` chunk and a ``data`` chunk that runs to the end of the
file. Both sizes are written as 0xFFFFFFFF (length unknown, as when streaming), which
readers take as "up to the end of the file"; ``close`` returns patches with the real
sizes. WAV has no timestamps, so the writer keeps the sample clock itself: a gap in the
sample times becomes silence and an overlap is cut off the later sample.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from .base import MAX_BUFFERED_US, ContainerWriter, Output, Patch, Sample, TrackFormat

UNKNOWN_SIZE = 0xFFFFFFFF
BITS_PER_SAMPLE = 16
FORMAT_PCM = 1
RIFF_SIZE_OFFSET = 4
HEADER_SIZE = 44
DATA_SIZE_OFFSET = HEADER_SIZE - 4
# Sizes counted by the RIFF size besides the sample data: "WAVE", the fmt chunk, the data
# chunk header.
RIFF_OVERHEAD = 4 + 8 + 16 + 8


def wav_header(sample_rate: int, channels: int, riff_size: int, data_size: int) -> bytes:
    """The 44-byte header of a PCM WAVE file."""
    block_align = channels * BITS_PER_SAMPLE // 8
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVEfmt "
        + struct.pack(
            "<IHHIIHH",
            16,
            FORMAT_PCM,
            channels,
            sample_rate,
            sample_rate * block_align,
            block_align,
            BITS_PER_SAMPLE,
        )
        + b"data"
        + struct.pack("<I", data_size)
    )


class WavWriter(ContainerWriter):
    """Writes one PCM track (``codec="pcm"``, interleaved s16le) as a WAVE file.

    ``gap_tolerance_us`` is how late a sample may start before silence is put in front of
    it; smaller differences are timing jitter and the sample follows on directly.
    """

    def __init__(
        self,
        output: Output,
        tracks: Sequence[TrackFormat],
        *,
        gap_tolerance_us: int = 1000,
        max_buffered_us: int = MAX_BUFFERED_US,
    ) -> None:
        super().__init__(output, tracks)
        if len(self.tracks) != 1 or self.tracks[0].codec != "pcm":
            raise ValueError("WAVE holds exactly one PCM track")
        track = self.tracks[0]
        if track.sample_rate <= 0 or track.channels <= 0:
            raise ValueError("a PCM track needs its sample rate and channel count")
        self._rate = track.sample_rate
        self._frame_size = track.channels * BITS_PER_SAMPLE // 8
        self._tolerance = gap_tolerance_us * self._rate // 1_000_000
        self._max_held = max_buffered_us * self._rate // 1_000_000 * self._frame_size
        self._held = bytearray()
        self._frames = 0
        self._data_size = 0
        self._emit(wav_header(self._rate, track.channels, UNKNOWN_SIZE, UNKNOWN_SIZE))

    @property
    def frames(self) -> int:
        """Sample frames taken so far (silence included): the position of the next one."""
        return self._frames

    def write(self, sample: Sample) -> None:
        """Add PCM data at its place on the sample clock (silence before, overlap trimmed)."""
        data = sample.data
        if len(data) % self._frame_size:
            raise ValueError("PCM data must hold whole sample frames")
        start = round(sample.time * self._rate / 1_000_000)
        if start - self._frames > self._tolerance:
            self._held += bytes((start - self._frames) * self._frame_size)
            self._frames = start
        elif start < self._frames:
            data = data[(self._frames - start) * self._frame_size :]
        self._held += data
        self._frames += len(data) // self._frame_size
        if len(self._held) >= self._max_held:
            self.flush()

    def flush(self) -> None:
        """Write the held PCM data."""
        if self._held:
            self._data_size += len(self._held)
            self._emit(bytes(self._held))
            self._held = bytearray()

    def close(self, duration: int) -> list[Patch]:
        """Write the held data; patch the RIFF and data sizes where they fit in 32 bits."""
        self.flush()
        patches = []
        if RIFF_OVERHEAD + self._data_size < UNKNOWN_SIZE:
            patches.append(
                Patch(RIFF_SIZE_OFFSET, struct.pack("<I", RIFF_OVERHEAD + self._data_size))
            )
        if self._data_size < UNKNOWN_SIZE:
            patches.append(Patch(DATA_SIZE_OFFSET, struct.pack("<I", self._data_size)))
        return patches
