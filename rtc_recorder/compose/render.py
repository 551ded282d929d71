"""The composite: a tile per participant, the layout of each output frame, the encoder,
and :func:`compose`, which runs them over the recording's duration."""

from __future__ import annotations

import contextlib
import fractions
import math
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import av
import numpy as np
from av.audio.frame import AudioFrame
from av.audio.stream import AudioStream
from av.video.frame import VideoFrame
from av.video.reformatter import VideoReformatter
from av.video.stream import VideoStream

from .drawing import BACKGROUND, Canvas, draw_name_label, draw_name_tile, yuv
from .errors import CompositionCancelled, CompositionError
from .layout import Rect, SpeakerSelector, fit, grid_cells, speaker_cells
from .manifest import MANIFEST, Participant, RoomManifest, read_manifest
from .readers import AUDIO_RATE, LevelReader, MixReader, VideoReader

LAYOUTS = ("grid", "speaker")
SUFFIXES = (".mp4", ".webm")
DEFAULT_SIZE = (1280, 720)
DEFAULT_FPS = 30
STALE_VIDEO = 2.0  # seconds without a new picture after which a tile shows the name
PROGRESS_STEPS = 1000  # the progress callback is called at most this many times


class Tile:
    """One participant as drawn: their reader(s), and their picture scaled to the size
    last asked (scaled once per picture and size)."""

    def __init__(
        self,
        folder: Path,
        participant: Participant,
        muted: list[tuple[float, float]],
        lead: float = 0.0,
    ) -> None:
        self.participant = participant
        self.muted = muted
        path = folder / participant.file
        self.video = VideoReader(path) if "video" in participant.kinds else None
        self.levels: LevelReader | None = None
        self._scaler = VideoReformatter()  # keeps its scaler between pictures of one size
        self._scaled: tuple[VideoFrame, Rect, VideoFrame] | None = None
        self._path = path
        self.lead = lead  # pictures are taken this much after the time asked

    def listen(self) -> None:
        """Measure this participant's sound level too (for the speaker layout)."""
        if "audio" in self.participant.kinds and self.levels is None:
            self.levels = LevelReader(self._path)

    def present(self, t: float) -> bool:
        """Whether the participant is in the room at ``t`` (recording time)."""
        return self.participant.start <= t < self.participant.end

    def level(self, t: float) -> float:
        """The participant's sound level (dBFS) over the second before ``t``."""
        return -math.inf if self.levels is None else self.levels.level(t - self.participant.start)

    def picture(self, t: float) -> VideoFrame | None:
        """The picture to show at ``t`` (recording time), or None for the name tile."""
        if self.video is None:
            return None
        local = t - self.participant.start
        frame = self.video.at(local + self.lead)
        if frame is None or local - float(frame.time or 0.0) > STALE_VIDEO:
            return None
        if any(begin <= t < end for begin, end in self.muted):
            return None
        return frame

    def draw(self, canvas: Canvas, cell: Rect, t: float) -> None:
        """The participant at ``t``, in ``cell``: their picture fitted and named, or their
        name tile."""
        frame = self.picture(t)
        name = self.participant.name
        if frame is None:
            draw_name_tile(canvas, cell, name)
            return
        area = fit(frame.width, frame.height, cell)
        if self._scaled is None or self._scaled[0] is not frame or self._scaled[1] != area:
            scaled = self._scaler.reformat(
                frame, width=area.width, height=area.height, format="yuv420p", threads=1
            )
            self._scaled = (frame, area, scaled)
        canvas.paste(area, self._scaled[2])
        draw_name_label(canvas, area, name)

    def close(self) -> None:
        """Close the participant's file."""
        for reader in (self.video, self.levels):
            if reader is not None:
                reader.close()


# -- the output -----------------------------------------------------------------------


@dataclass(frozen=True)
class OutputFormat:
    """A container and its codecs."""

    container: str
    video: str
    audio: str
    video_options: Mapping[str, str]
    audio_options: Mapping[str, str]
    container_options: Mapping[str, str]


FORMATS = {
    ".mp4": OutputFormat(
        "mp4",
        "libx264",
        "aac",
        {"preset": "veryfast", "crf": "23"},
        {"aac_coder": "fast"},
        {"movflags": "+faststart"},
    ),
    ".webm": OutputFormat(
        "webm",
        "libvpx-vp9",
        "libopus",
        {"deadline": "realtime", "cpu-used": "8", "row-mt": "1", "crf": "33", "b": "0"},
        {},
        {},
    ),
}


def partial_path(output: Path) -> Path:
    """Where the output is written until it is complete (then renamed to ``output``)."""
    return output.with_name(f".{output.name}.part")


class Encoder:
    """The output file: H.264 + AAC in MP4, or VP9 + Opus in WebM."""

    def __init__(
        self, path: Path, kind: OutputFormat, size: tuple[int, int], fps: int, audio: bool
    ) -> None:
        try:
            self.container = av.open(
                str(path), "w", format=kind.container, options=dict(kind.container_options)
            )
        except (av.FFmpegError, OSError) as exc:
            raise CompositionError(f"{path} cannot be written: {exc}") from None
        self.video = cast(VideoStream, self.container.add_stream(kind.video, rate=fps))
        self.video.width, self.video.height = size
        self.video.pix_fmt = "yuv420p"
        self.video.options = dict(kind.video_options)
        self.video.codec_context.gop_size = 2 * fps
        self.audio: AudioStream | None = None
        if audio:
            self.audio = cast(AudioStream, self.container.add_stream(kind.audio, rate=AUDIO_RATE))
            self.audio.layout = "stereo"
            self.audio.bit_rate = 128_000
            self.audio.options = dict(kind.audio_options)
        self.fps = fps

    def add_picture(self, picture: np.ndarray, index: int) -> None:
        """A yuv420p picture (as :class:`Canvas` holds it), the ``index``-th frame."""
        frame = VideoFrame.from_ndarray(picture, format="yuv420p")
        frame.pts = index
        frame.time_base = fractions.Fraction(1, self.fps)
        self.container.mux(self.video.encode(frame))

    def add_sound(self, samples: np.ndarray, first: int) -> None:
        """48 kHz stereo samples (2 x n float32) from sample ``first`` on."""
        if self.audio is None or samples.shape[1] == 0:
            return
        frame = AudioFrame.from_ndarray(
            np.ascontiguousarray(samples), format="fltp", layout="stereo"
        )
        frame.sample_rate = AUDIO_RATE
        frame.pts = first
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self.container.mux(self.audio.encode(frame))

    def finish(self) -> None:
        """Flush the encoders and close the file."""
        self.container.mux(self.video.encode(None))
        if self.audio is not None:
            self.container.mux(self.audio.encode(None))
        self.container.close()

    def abandon(self) -> None:
        """Close the file after a failure (its removal is the caller's)."""
        with contextlib.suppress(av.FFmpegError, OSError):
            self.container.close()


# -- composing ------------------------------------------------------------------------


Progress = Callable[[float, float], None]  # (seconds rendered, duration)


def default_output(folder: Path, layout: str, suffix: str = ".mp4") -> Path:
    """``composite-{layout}.mp4`` (or ``.webm``) in the recording's folder."""
    return folder / f"composite-{layout}{suffix}"


def compose(
    folder: Path,
    output: Path | None = None,
    *,
    layout: str = "grid",
    size: tuple[int, int] = DEFAULT_SIZE,
    fps: int = DEFAULT_FPS,
    on_progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Render room recording ``folder`` into one video (see the module's docstring) and
    return its path: ``output``, or :func:`default_output`. The file appears complete or
    not at all (it is written beside and renamed at the end).

    ``on_progress(done, duration)`` gets the seconds of output rendered and the recording's
    duration (rising, at most :data:`PROGRESS_STEPS` times, the last with ``done ==
    duration``); setting ``cancel`` stops the work
    (:class:`CompositionCancelled`). Bad input is a :class:`CompositionError`.
    """
    folder = Path(folder)
    if layout not in LAYOUTS:
        raise CompositionError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    width, height = size
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise CompositionError(f"the size must be even numbers of 16 pixels or more: {size}")
    if not 1 <= fps <= 120:
        raise CompositionError(f"fps must be between 1 and 120, not {fps}")
    manifest = read_manifest(folder)
    target = Path(output) if output is not None else default_output(folder, layout)
    kind = FORMATS.get(target.suffix.lower())
    if kind is None:
        raise CompositionError(f"the output must end in {' or '.join(SUFFIXES)}: {target}")
    own = {MANIFEST, manifest.mix, *(p.file for p in manifest.participants)}
    if target.resolve().parent == folder.resolve() and target.name in own:
        raise CompositionError(f"{target} is a file of the recording itself")
    part = partial_path(target)
    with contextlib.ExitStack() as stack:
        tiles = _tiles(folder, manifest, layout, fps, stack)
        mix = MixReader(folder / manifest.mix) if manifest.mix is not None else None
        if mix is not None:
            stack.callback(mix.close)
        encoder = Encoder(part, kind, size, fps, audio=mix is not None)
        try:
            _render(manifest, tiles, mix, encoder, layout, on_progress, cancel)
            encoder.finish()
        except (av.FFmpegError, OSError) as exc:  # a full disk, say
            encoder.abandon()
            part.unlink(missing_ok=True)
            raise CompositionError(f"composing {folder.name} into {target} failed: {exc}") from exc
        except BaseException:
            encoder.abandon()
            part.unlink(missing_ok=True)
            raise
    os.replace(part, target)
    return target


def _tiles(
    folder: Path, manifest: RoomManifest, layout: str, fps: int, stack: contextlib.ExitStack
) -> list[Tile]:
    """A tile per participant, in the order they joined (the manifest's among equals).
    Each output frame shows the pictures shown halfway through its interval."""
    order = sorted(manifest.participants, key=lambda p: p.start)
    tiles = []
    for participant in order:
        muted = manifest.video_muted(participant.session)
        tile = Tile(folder, participant, muted, lead=0.5 / fps)
        stack.callback(tile.close)
        if layout == "speaker":
            tile.listen()
        tiles.append(tile)
    return tiles


def _render(
    manifest: RoomManifest,
    tiles: list[Tile],
    mix: MixReader | None,
    encoder: Encoder,
    layout: str,
    on_progress: Progress | None,
    cancel: threading.Event | None,
) -> None:
    fps = encoder.fps
    width, height = encoder.video.width, encoder.video.height
    frames = max(1, round(manifest.duration * fps))
    total_samples = round(manifest.duration * AUDIO_RATE)
    gap = max(2, height // 90)
    selector = SpeakerSelector()
    reported = 0
    canvas = Canvas(width, height)
    whole = Rect(0, 0, width, height)
    background = yuv(BACKGROUND)
    for index in range(frames):
        if cancel is not None and cancel.is_set():
            raise CompositionCancelled("the composition was cancelled")
        t = index / fps
        present = [tile for tile in tiles if tile.present(t)]
        if layout == "speaker":
            levels = {tile.participant.session: tile.level(t) for tile in present}
            sessions = [tile.participant.session for tile in present]
            speaker = selector.choose(t, levels, sessions)
            present.sort(key=lambda tile: tile.participant.session != speaker)
            cells = speaker_cells(len(present), width, height, gap)
        else:
            cells = grid_cells(len(present), width, height, gap)
        canvas.fill(whole, background)
        for tile, cell in zip(present, cells, strict=True):
            tile.draw(canvas, cell, t)
        encoder.add_picture(canvas.data, index)
        if mix is not None:
            first = round(index * AUDIO_RATE / fps)
            last = total_samples if index == frames - 1 else round((index + 1) * AUDIO_RATE / fps)
            encoder.add_sound(mix.read(last), first)
        step = (index + 1) * PROGRESS_STEPS // frames
        if on_progress is not None and step > reported:
            reported = step
            on_progress(manifest.duration * step / PROGRESS_STEPS, manifest.duration)
