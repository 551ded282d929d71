"""One video of a finalized room recording: the participants' pictures in a grid, or the
active speaker large, with the room's mix as the sound.

The room folder is read as the rooms contract describes it (``manifest.json``, a file
per participant placed at its ``start``, ``mix.{ext}``), and only read: each file is
decoded forward as the output advances (a few frames in memory per participant, never a
whole file). :func:`compose` does the decoding, compositing and encoding on the thread
that calls it; callers keep it off event loops (``rtc-recorder compose`` runs it on a
worker thread, the server in a process of its own).
"""

from __future__ import annotations

import contextlib
import fractions
import json
import logging
import math
import os
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import av
import numpy as np
from av.audio.frame import AudioFrame
from av.audio.resampler import AudioResampler
from av.audio.stream import AudioStream
from av.video.frame import VideoFrame
from av.video.reformatter import VideoReformatter
from av.video.stream import VideoStream
from PIL import Image, ImageDraw, ImageFont

logger = logging.getLogger("rtc_recorder.compose")

LAYOUTS = ("grid", "speaker")
SUFFIXES = (".mp4", ".webm")
MANIFEST = "manifest.json"
AUDIO_RATE = 48_000
DEFAULT_SIZE = (1280, 720)
DEFAULT_FPS = 30

BACKGROUND = (17, 19, 24)
NAME_TILE = (52, 58, 72)
TEXT = (240, 242, 246)
STALE_VIDEO = 2.0  # seconds without a new picture after which a tile shows the name
LEVEL_BLOCK = 0.05  # seconds of sound per energy measurement (speaker layout)
PROGRESS_STEPS = 1000  # the progress callback is called at most this many times


class CompositionError(Exception):
    """The folder cannot be composed (not a room recording, not finalized, a file missing
    or unreadable, an output that cannot be written); the message says which."""


class NotFinalized(CompositionError):
    """The room recording is still being made (or was left unfinished by a crash)."""


class CompositionCancelled(CompositionError):
    """The composition was cancelled; nothing was written."""


# -- the manifest ---------------------------------------------------------------------


@dataclass(frozen=True)
class Participant:
    """One participant of the room recording (times in seconds of the recording)."""

    session: str
    name: str
    file: str
    kinds: tuple[str, ...]
    start: float
    end: float


@dataclass(frozen=True)
class RoomEvent:
    """One entry of the manifest's ``events``; ``kind`` for ``mute``/``unmute``."""

    t: float
    type: str
    session: str | None = None
    kind: str | None = None


@dataclass(frozen=True)
class RoomManifest:
    """What ``manifest.json`` says of a room recording."""

    room: str
    name: str
    state: str
    duration: float
    mix: str | None
    participants: tuple[Participant, ...]
    cuts: tuple[tuple[float, float], ...] = ()
    events: tuple[RoomEvent, ...] = ()

    def video_muted(self, session: str) -> list[tuple[float, float]]:
        """The stretches in which ``session``'s video was muted (by its mute events)."""
        spans: list[tuple[float, float]] = []
        muted_at: float | None = None
        for event in sorted(self.events, key=lambda e: e.t):
            if event.session != session or event.kind not in (None, "video"):
                continue
            if event.type == "mute" and muted_at is None:
                muted_at = event.t
            elif event.type == "unmute" and muted_at is not None:
                spans.append((muted_at, event.t))
                muted_at = None
        if muted_at is not None:
            spans.append((muted_at, math.inf))
        return spans


_PLAIN_NAME = re.compile(r"[^/\\\x00]+")


def read_manifest(folder: Path) -> RoomManifest:
    """The manifest of room recording ``folder``, checked: a :class:`CompositionError` says
    what is wrong with anything that is not a finalized room recording whose files are
    all there."""
    if not folder.is_dir():
        raise CompositionError(f"{folder} is not a folder (a room recording is a folder)")
    path = folder / MANIFEST
    if not path.is_file():
        raise CompositionError(f"{folder} is not a room recording: it has no {MANIFEST}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CompositionError(f"{path} cannot be read as JSON: {exc}") from None
    manifest = parse_manifest(data, str(path))
    if manifest.state != "finalized":
        raise NotFinalized(
            f"{folder.name} is not finalized (its state is {manifest.state!r}): "
            "a room recording is composed once it has stopped"
        )
    needed = [(p.file, f"the file of participant {p.name!r}") for p in manifest.participants]
    if manifest.mix is not None:
        needed.append((manifest.mix, "the mix"))
    for name, what in needed:
        if not (folder / name).is_file():
            raise CompositionError(f"{what}, {name}, is missing from {folder}")
    return manifest


def parse_manifest(data: object, where: str = MANIFEST) -> RoomManifest:
    """A manifest from its JSON; :class:`CompositionError` naming the first field that is
    missing or of the wrong type."""
    fields = _Fields(data, where)
    duration = fields.number("duration", minimum=0.0)
    participants = []
    for index, item in enumerate(fields.items("participants")):
        entry = _Fields(item, f"{where}: participants[{index}]")
        start = entry.number("start", minimum=0.0)
        participant = Participant(
            session=entry.text("session"),
            name=entry.text("name"),
            file=entry.file_name("file"),
            kinds=tuple(entry.choices("kinds", ("audio", "video"))),
            start=start,
            end=entry.number("end", minimum=start),
        )
        participants.append(participant)
    cuts = []
    for index, item in enumerate(fields.items("cuts", required=False)):
        cut = _Fields(item, f"{where}: cuts[{index}]")
        cuts.append((cut.number("at", minimum=0.0), cut.number("removed", minimum=0.0)))
    events = []
    for index, item in enumerate(fields.items("events", required=False)):
        event = _Fields(item, f"{where}: events[{index}]")
        events.append(
            RoomEvent(
                t=event.number("t"),
                type=event.text("type"),
                session=event.optional_text("session"),
                kind=event.optional_text("kind"),
            )
        )
    mix = fields.optional_text("mix")
    return RoomManifest(
        room=fields.text("room"),
        name=fields.text("name"),
        state=fields.text("state"),
        duration=duration,
        mix=None if mix is None else fields.file_name("mix"),
        participants=tuple(participants),
        cuts=tuple(cuts),
        events=tuple(events),
    )


class _Fields:
    """Typed reads of one JSON object's fields, each failing with a clear message."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise CompositionError(f"{where} must be a JSON object")
        self.data: dict[str, Any] = data
        self.where = where

    def _fail(self, key: str, expected: str) -> CompositionError:
        return CompositionError(f"{self.where}: {key!r} must be {expected}")

    def text(self, key: str) -> str:
        value = self.data.get(key)
        if not isinstance(value, str) or not value:
            raise self._fail(key, "a non-empty string")
        return value

    def optional_text(self, key: str) -> str | None:
        return None if self.data.get(key) is None else self.text(key)

    def file_name(self, key: str) -> str:
        value = self.text(key)
        if not _PLAIN_NAME.fullmatch(value) or value in (".", ".."):
            raise self._fail(key, "the name of a file in the recording's folder")
        return value

    def number(self, key: str, minimum: float = -math.inf) -> float:
        value = self.data.get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < minimum
        ):
            bound = "" if minimum == -math.inf else f" of at least {minimum:g}"
            raise self._fail(key, f"a number{bound}")
        return float(value)

    def items(self, key: str, required: bool = True) -> list[object]:
        value = self.data.get(key)
        if value is None and not required:
            return []
        if not isinstance(value, list):
            raise self._fail(key, "a list")
        return value

    def choices(self, key: str, allowed: Sequence[str]) -> list[str]:
        values = self.items(key)
        if not all(isinstance(value, str) and value in allowed for value in values):
            raise self._fail(key, f"a list of {', '.join(map(repr, allowed))}")
        return [str(value) for value in values]


# -- layouts --------------------------------------------------------------------------


@dataclass(frozen=True)
class Rect:
    """A rectangle of the output picture, in pixels (the layouts make every number even:
    the picture's colour planes have half its size)."""

    x: int
    y: int
    width: int
    height: int


def _even(value: int) -> int:
    return value - value % 2


def grid_cells(count: int, width: int, height: int, gap: int = 0) -> list[Rect]:
    """``count`` equal cells in rows, the columns chosen so that 16:9 pictures fitted in
    them are largest (ties: more columns); a last row with fewer cells is centred."""
    if count <= 0:
        return []

    def picture_scale(columns: int) -> float:
        rows = math.ceil(count / columns)
        cell_width = (width - gap * (columns + 1)) / columns
        cell_height = (height - gap * (rows + 1)) / rows
        return min(cell_width / 16, cell_height / 9)

    columns = max(range(1, count + 1), key=lambda c: (round(picture_scale(c), 6), c))
    rows = math.ceil(count / columns)
    cell_width = _even((width - gap * (columns + 1)) // columns)
    cell_height = _even((height - gap * (rows + 1)) // rows)
    top = (height - rows * cell_height - (rows - 1) * gap) // 2
    cells = []
    for index in range(count):
        row, column = divmod(index, columns)
        in_row = min(columns, count - row * columns)
        indent = (width - in_row * cell_width - (in_row - 1) * gap) // 2
        x = _even(indent + column * (cell_width + gap))
        y = _even(top + row * (cell_height + gap))
        cells.append(Rect(x, y, cell_width, cell_height))
    return cells


def speaker_cells(count: int, width: int, height: int, gap: int = 0) -> list[Rect]:
    """The speaker's cell (first: the whole picture, or all but a strip at the bottom)
    and ``count - 1`` small cells side by side in that strip, centred."""
    if count <= 0:
        return []
    gap = _even(gap)
    if count == 1:
        return [Rect(gap, gap, width - 2 * gap, height - 2 * gap)]
    strip = _even(height // 4)
    main = Rect(gap, gap, width - 2 * gap, height - strip - 2 * gap)
    others = count - 1
    cell_height = strip - gap
    cell_width = _even(min((width - gap * (others + 1)) // others, cell_height * 16 // 9))
    indent = (width - others * cell_width - (others - 1) * gap) // 2
    top = height - strip
    return [main] + [
        Rect(_even(indent + index * (cell_width + gap)), top, cell_width, cell_height)
        for index in range(others)
    ]


def fit(picture_width: int, picture_height: int, cell: Rect) -> Rect:
    """The largest rectangle of the picture's aspect ratio centred in ``cell``."""
    scale = min(cell.width / picture_width, cell.height / picture_height)
    width = max(2, _even(min(cell.width, round(picture_width * scale))))
    height = max(2, _even(min(cell.height, round(picture_height * scale))))
    return Rect(
        cell.x + _even((cell.width - width) // 2),
        cell.y + _even((cell.height - height) // 2),
        width,
        height,
    )


# -- the active speaker ---------------------------------------------------------------


@dataclass
class SpeakerSelector:
    """Who is shown large: the participant whose sound is loudest, with hysteresis.

    A participant takes over only after being louder than the one shown by ``margin``
    dB (and above ``floor`` dBFS) for ``hold`` seconds in a row, so a cough or a short
    remark does not move the picture. When the one shown leaves, the loudest present
    takes over at once (the first present when all are quiet).
    """

    hold: float = 0.6
    margin: float = 6.0
    floor: float = -50.0
    current: str | None = None
    _challenger: str | None = field(default=None, repr=False)
    _since: float = field(default=0.0, repr=False)

    def choose(self, t: float, levels: Mapping[str, float], present: Sequence[str]) -> str | None:
        """The speaker at time ``t`` given each present participant's level (dBFS)."""
        if not present:
            self.current = self._challenger = None
            return None

        def level(session: str) -> float:
            return levels.get(session, -math.inf)

        loudest = max(present, key=level)
        current = self.current
        if current is None or current not in present:
            self.current = loudest if level(loudest) > self.floor else present[0]
            self._challenger = None
            return self.current
        leads = (
            loudest != current
            and level(loudest) > self.floor
            and level(loudest) >= level(current) + self.margin
        )
        if not leads:
            self._challenger = None
        elif self._challenger != loudest:
            self._challenger, self._since = loudest, t
        if self._challenger is not None and t - self._since >= self.hold:
            self.current, self._challenger = self._challenger, None
        return self.current


# -- reading the room's files ---------------------------------------------------------


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
        self.container.close()


# -- drawing --------------------------------------------------------------------------


def yuv(rgb: Sequence[int]) -> tuple[int, int, int]:
    """An RGB colour in the output's YUV (BT.601, limited range, as FFmpeg converts)."""
    r, g, b = (channel / 255 for channel in rgb)
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    u = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    v = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    return round(y), round(u), round(v)


class Canvas:
    """An output picture in YUV 4:2:0, drawn on in place (what the encoder takes, so no
    colour conversion per frame); every rectangle drawn has even corners."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.data = np.empty((height * 3 // 2, width), np.uint8)
        self.planes = _planes(self.data, width, height)

    def fill(self, cell: Rect, colour: tuple[int, int, int]) -> None:
        for plane, value, (x, y, w, h) in zip(self.planes, colour, _plane_rects(cell), strict=True):
            plane[y : y + h, x : x + w] = value

    def paste(self, cell: Rect, picture: VideoFrame) -> None:
        """A yuv420p picture of the cell's size, at the cell."""
        sources = _planes(picture.to_ndarray(), cell.width, cell.height)
        for plane, source, (x, y, w, h) in zip(
            self.planes, sources, _plane_rects(cell), strict=True
        ):
            plane[y : y + h, x : x + w] = source

    def darken(self, cell: Rect, keep: float) -> None:
        """Scale the cell's colours towards black, keeping ``keep`` of them."""
        for plane, zero, (x, y, w, h) in zip(
            self.planes, (16, 128, 128), _plane_rects(cell), strict=True
        ):
            region = plane[y : y + h, x : x + w].astype(np.float32)
            plane[y : y + h, x : x + w] = (zero + (region - zero) * keep).astype(np.uint8)

    def blend(self, mask: np.ndarray, x: int, y: int, colour: tuple[int, int, int]) -> None:
        """Paint ``colour`` through ``mask`` (coverage 0..1) at even (x, y), clipped."""
        width = min(mask.shape[1], self.width - x) // 2 * 2
        height = min(mask.shape[0], self.height - y) // 2 * 2
        if width <= 0 or height <= 0:
            return
        cover = mask[:height, :width]
        half = cover.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))
        cell = Rect(x, y, width, height)
        for plane, value, weight, (px, py, w, h) in zip(
            self.planes, colour, (cover, half, half), _plane_rects(cell), strict=True
        ):
            region = plane[py : py + h, px : px + w].astype(np.float32)
            region += (value - region) * weight
            plane[py : py + h, px : px + w] = region.astype(np.uint8)


def _planes(data: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Y, U and V planes (views) of a yuv420p picture as PyAV lays it out: the three
    planes one after the other."""
    flat = data.reshape(-1)
    luma, chroma = width * height, (width // 2) * (height // 2)
    return (
        flat[:luma].reshape(height, width),
        flat[luma : luma + chroma].reshape(height // 2, width // 2),
        flat[luma + chroma : luma + 2 * chroma].reshape(height // 2, width // 2),
    )


def _plane_rects(cell: Rect) -> tuple[tuple[int, int, int, int], ...]:
    x, y, w, h = cell.x, cell.y, cell.width, cell.height
    return (x, y, w, h), (x // 2, y // 2, w // 2, h // 2), (x // 2, y // 2, w // 2, h // 2)


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans where the system has it (most scripts), else Pillow's own font."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size)


@lru_cache(maxsize=256)
def text_mask(text: str, size: int, width: int) -> np.ndarray:
    """``text`` drawn ``size`` pixels high (smaller if it would be wider than ``width``),
    cut to ``width``: coverage 0..1 as a height x width array."""
    while True:
        font = _font(size)
        left, top, right, bottom = font.getbbox(text)
        if right - left <= width or size <= 8:
            break
        size = max(8, size * 3 // 4)
    image = Image.new("L", (max(1, math.ceil(right - left)), max(1, math.ceil(bottom - top))))
    ImageDraw.Draw(image).text((-left, -top), text, fill=255, font=font)
    return (np.asarray(image, np.float32) / 255.0)[:, :width]


def draw_name_tile(canvas: Canvas, cell: Rect, name: str) -> None:
    """A participant without a picture: a plain 16:9 tile with the name in the middle."""
    cell = fit(16, 9, cell)
    canvas.fill(cell, yuv(NAME_TILE))
    mask = text_mask(name, max(10, cell.height // 7), cell.width - 8)
    x = _even(cell.x + (cell.width - mask.shape[1]) // 2)
    y = _even(cell.y + (cell.height - mask.shape[0]) // 2)
    canvas.blend(mask, x, y, yuv(TEXT))


def draw_name_label(canvas: Canvas, cell: Rect, name: str) -> None:
    """The name in a dark box at the bottom left of a picture."""
    size = max(10, cell.height // 14)
    pad = _even(max(2, size // 3))
    mask = text_mask(name, size, max(8, cell.width - 4 * pad))
    box = Rect(
        cell.x + pad,
        _even(cell.y + cell.height - mask.shape[0] - 3 * pad),
        _even(min(cell.width - 2 * pad, mask.shape[1] + 2 * pad)),
        _even(mask.shape[0] + 2 * pad),
    )
    if box.y < cell.y or box.width <= 0:
        return
    canvas.darken(box, 0.4)
    canvas.blend(mask, box.x + pad, box.y + pad, yuv(TEXT))


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
        return self.participant.start <= t < self.participant.end

    def level(self, t: float) -> float:
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
        self.container.mux(self.video.encode(None))
        if self.audio is not None:
            self.container.mux(self.audio.encode(None))
        self.container.close()

    def abandon(self) -> None:
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
