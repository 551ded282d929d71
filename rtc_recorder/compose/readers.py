"""The room's files read forward as the composite advances: a participant's pictures, a
participant's sound level, the mix. A few frames of each in memory, never a whole file."""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.audio.frame import AudioFrame
from av.audio.resampler import AudioResampler
from av.video.frame import VideoFrame

from .errors import CompositionError

logger = logging.getLogger("rtc_recorder.compose")

AUDIO_RATE = 48_000  # the composite's sound
LEVEL_BLOCK = 0.05  # seconds of sound per energy measurement (speaker layout)


def _open_input(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise CompositionError(f"{path.name} cannot be read: {exc}") from None


def _decoded(container: av.container.InputContainer, stream: av.stream.Stream) -> Iterator[Any]:
    """The decoded frames of one stream, in order; a damaged packet is skipped, a
    damaged end ends the stream (files cut by a crash end so)."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except (av.FFmpegError, OSError) as exc:
            logger.warning("%s: reading stopped early: %s", container.name, exc)
            return
        try:
            frames = packet.decode()
        except av.FFmpegError as exc:
            logger.info("%s: a damaged packet was skipped: %s", container.name, exc)
            continue
        yield from (frame for frame in frames if getattr(frame, "pts", None) is not None)


class VideoReader:
    """A participant's pictures by time, read forward: :meth:`at` gives the picture shown
    at a time of the file (the latest whose time is not after it)."""

    def __init__(self, path: Path) -> None:
        self.container = _open_input(path)
        streams = self.container.streams.video
        self._frames: Iterator[VideoFrame] = iter(())
        if streams:
            stream = streams[0]
            stream.thread_type = "AUTO"
            self._frames = _decoded(self.container, stream)
        self._current: VideoFrame | None = None
        self._next: VideoFrame | None = next(self._frames, None)

    def at(self, t: float) -> VideoFrame | None:
        """The picture shown at ``t`` (seconds of the file), None before the first."""
        while self._next is not None and float(self._next.time or 0.0) <= t:
            self._current = self._next
            self._next = next(self._frames, None)
        return self._current

    def close(self) -> None:
        """Close the file."""
        self.container.close()


class LevelReader:
    """A participant's sound level by time, read forward: the mean power over the last
    ``window`` seconds, in dBFS."""

    def __init__(self, path: Path, window: float = 1.0) -> None:
        self.container = _open_input(path)
        self.window = window
        self._blocks: dict[int, float] = {}  # block of LEVEL_BLOCK s -> its sum of squares
        self._decoded_until = -math.inf
        self._frames: Iterator[AudioFrame] = iter(())
        if self.container.streams.audio:
            self._frames = _decoded(self.container, self.container.streams.audio[0])
        self._mono = AudioResampler(format="flt", layout="mono", rate=16_000)

    def level(self, t: float) -> float:
        """dBFS of the sound over ``[t - window, t)`` (seconds of the file)."""
        while self._decoded_until < t:
            frame = next(self._frames, None)
            if frame is None:
                self._decoded_until = math.inf
                break
            self._add(frame)
        first, last = math.floor((t - self.window) / LEVEL_BLOCK), math.floor(t / LEVEL_BLOCK)
        for stale in [block for block in self._blocks if block < first]:
            del self._blocks[stale]
        power = sum(self._blocks.get(block, 0.0) for block in range(first, last))
        count = max(1, round(self.window * 16_000))
        return 10 * math.log10(power / count) if power > 0 else -math.inf

    def _add(self, frame: AudioFrame) -> None:
        start = float(frame.time or 0.0)
        for mono in self._mono.resample(frame):
            samples = mono.to_ndarray()[0].astype(np.float64)
            times = start + np.arange(len(samples)) / 16_000
            blocks = np.floor(times / LEVEL_BLOCK).astype(np.int64)
            for block in np.unique(blocks):
                chosen = samples[blocks == block]
                self._blocks[int(block)] = self._blocks.get(int(block), 0.0) + float(
                    chosen @ chosen
                )
            start += len(samples) / 16_000
        self._decoded_until = start

    def close(self) -> None:
        """Close the file."""
        self.container.close()


class MixReader:
    """The mix as 48 kHz stereo samples on the recording's timeline: silence where it has
    none, what it has twice taken once."""

    def __init__(self, path: Path) -> None:
        self.container = _open_input(path)
        if not self.container.streams.audio:
            raise CompositionError(f"the mix, {path.name}, has no sound")
        self._frames = _decoded(self.container, self.container.streams.audio[0])
        self._resampler = AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE)
        self._pending: deque[tuple[int, np.ndarray]] = deque()  # (first sample, samples)
        self._position = 0  # samples given so far
        self._exhausted = False

    def read(self, until: int) -> np.ndarray:
        """Samples ``[position, until)`` as float32 of shape (2, n)."""
        out = np.zeros((2, max(0, until - self._position)), np.float32)
        while True:
            while self._pending and self._pending[0][0] + self._pending[0][1].shape[1] <= (
                self._position
            ):
                self._pending.popleft()
            if self._pending and self._pending[-1][0] + self._pending[-1][1].shape[1] >= until:
                break
            if not self._pull():
                break
        for first, samples in self._pending:
            begin, end = max(first, self._position), min(first + samples.shape[1], until)
            if begin < end:
                out[:, begin - self._position : end - self._position] = samples[
                    :, begin - first : end - first
                ]
        self._position = max(self._position, until)
        return out

    def _pull(self) -> bool:
        if self._exhausted:
            return False
        frame = next(self._frames, None)
        resampled = self._resampler.resample(frame)
        if frame is None:
            self._exhausted = True
        for piece in resampled:
            start = round(float(piece.time or 0.0) * AUDIO_RATE)
            self._pending.append((start, piece.to_ndarray().astype(np.float32)))
        return True

    def close(self) -> None:
        """Close the file."""
        self.container.close()
