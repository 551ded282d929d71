"""A camera and a microphone for Chromium, fed from files made at test time: a white
flash and a beep at every whole second of source time, and each picture's frame number
written into it so that it can be read back after VP8 or H.264 compression.

The video is MJPEG (concatenated JPEG pictures), which Chromium's
``--use-file-for-fake-video-capture`` plays at a fixed 30 frames per second, like Y4M.
MJPEG because it is small: two minutes of 640x360 are a few megabytes, where Y4M (raw
I420) would be 830 MB; JPEG at high quality keeps the flat blocks of the frame number
exact enough, and the browser's own encoder is the lossy step that matters.

Each picture has two parts:

- above :data:`CODE_TOP` (the upper 80 % of the picture): the scene. Dark grey with a
  lighter square moving across it, all white during a flash (frames 30k, 30k+1, 30k+2:
  100 ms starting at every whole second). :func:`flash_level` reads its mean luma.
- a band of :data:`CELLS` square-ish cells across the full width: the guard pattern
  (white, black at the left; black at the right), the frame number in
  :data:`NUMBER_BITS` bits (most significant first, white is 1) and an even-parity cell.
  :func:`read_frame_number` reads it back at any picture size (cells are found by their
  share of the width), or answers ``None`` when the guard or the parity does not hold.

The WAV is 48 kHz mono 16-bit: silence, and 100 ms of a 1 kHz tone at half of full scale
starting at every whole second (sample 48000k), so a beep and a flash of the same second
start at the same source instant. The loop (two minutes by default) is longer than any
test recording, so frame numbers never repeat within a test.
"""

from __future__ import annotations

import statistics
import wave
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import av
import numpy as np

from .media import beep_onsets, decoded_pictures

FPS = 30
AUDIO_RATE = 48_000
FLASH_FRAMES = 3  # 100 ms of white at 30 fps
BEEP_SECONDS = 0.1
BEEP_HZ = 1000
BEEP_AMPLITUDE = 16_384  # half of 16-bit full scale
LOOP_SECONDS = 60

WIDTH, HEIGHT = 640, 360
CELLS = 16
NUMBER_BITS = 12  # 4096 frames: 136 s at 30 fps, more than LOOP_SECONDS
CODE_TOP = 0.8  # the band starts at 80 % of the height...
CODE_BOTTOM = 0.95  # ...and ends at 95 %
_GUARD_LEFT = (1, 0)
_GUARD_RIGHT = (0,)
_WHITE_AT_LEAST = 160  # after compression a white cell is brighter than this...
_BLACK_AT_MOST = 96  # ...and a black one darker than this
_SCENE_GREY = 60
_FLASH_LEVEL = 200  # mean scene luma above this: a flash

assert len(_GUARD_LEFT) + NUMBER_BITS + 1 + len(_GUARD_RIGHT) == CELLS
assert 2**NUMBER_BITS > LOOP_SECONDS * FPS


def code_cells(number: int) -> list[int]:
    """The band's cells (1 white, 0 black) for frame ``number``."""
    if not 0 <= number < 2**NUMBER_BITS:
        raise ValueError(f"frame number {number} does not fit in {NUMBER_BITS} bits")
    bits = [(number >> shift) & 1 for shift in range(NUMBER_BITS - 1, -1, -1)]
    return [*_GUARD_LEFT, *bits, sum(bits) % 2, *_GUARD_RIGHT]


def is_flash_frame(number: int) -> bool:
    """Whether source frame ``number`` is white (a flash)."""
    return number % FPS < FLASH_FRAMES


def source_picture(
    number: int, width: int = WIDTH, height: int = HEIGHT, texture: np.ndarray | None = None
) -> np.ndarray:
    """Source frame ``number`` as an RGB picture; ``texture`` (height x width x 3)
    replaces the scene's flat grey."""
    picture = np.full((height, width, 3), _SCENE_GREY, np.uint8)
    if texture is not None:
        picture[:] = texture
    top, bottom = round(height * CODE_TOP), round(height * CODE_BOTTOM)
    if is_flash_frame(number):
        picture[:top] = 255
    else:
        side = top // 3
        left = (number * 4) % (width - side)
        picture[top // 3 : top // 3 + side, left : left + side] = 150
    cell_edges = np.linspace(0, width, CELLS + 1).round().astype(int)
    for index, value in enumerate(code_cells(number)):
        picture[top:bottom, cell_edges[index] : cell_edges[index + 1]] = 255 * value
    return picture


def noise_texture(width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """A still texture of random 4x4 blocks (grey levels 20-120): pictures with this
    much detail make keyframes far larger than an RTP packet."""
    blocks = np.random.default_rng(9).integers(20, 120, (height // 4 + 1, width // 4 + 1))
    grey = np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1)[:height, :width]
    return np.repeat(grey[:, :, None], 3, axis=2).astype(np.uint8)


def write_sync_video(
    path: Path,
    seconds: float = LOOP_SECONDS,
    width: int = WIDTH,
    height: int = HEIGHT,
    textured: bool = False,
) -> None:
    """An MJPEG file of ``seconds`` at 30 fps for ``--use-file-for-fake-video-capture``
    (Chromium recognises the format by the ``.mjpeg`` suffix); ``textured`` puts
    :func:`noise_texture` behind the scene."""
    if path.suffix != ".mjpeg":
        raise ValueError(f"Chromium reads MJPEG only from a .mjpeg file, not {path.name}")
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuvj420p"
    encoder.time_base = Fraction(1, FPS)
    encoder.options = {"qmin": "2", "qmax": "4"}
    texture = noise_texture(width, height) if textured else None
    with path.open("wb") as output:
        for number in range(round(seconds * FPS)):
            picture = source_picture(number, width, height, texture)
            frame = av.VideoFrame.from_ndarray(picture, "rgb24")
            frame = frame.reformat(format="yuvj420p")
            frame.pts = number
            for packet in encoder.encode(frame):
                output.write(bytes(packet))
        for packet in encoder.encode(None):
            output.write(bytes(packet))


def sync_samples(seconds: float = LOOP_SECONDS) -> np.ndarray:
    """The sound of the WAV: silence, and a beep starting at every whole second."""
    count = round(seconds * AUDIO_RATE)
    index = np.arange(count)
    in_beep = index % AUDIO_RATE < BEEP_SECONDS * AUDIO_RATE
    tone = BEEP_AMPLITUDE * np.sin(2 * np.pi * BEEP_HZ * index / AUDIO_RATE)
    return np.where(in_beep, tone, 0).astype(np.int16)


def write_sync_audio(path: Path, seconds: float = LOOP_SECONDS) -> None:
    """A WAV file for ``--use-file-for-fake-audio-capture``."""
    with wave.open(str(path), "wb") as output:
        output.setnchannels(1)
        output.setsampwidth(2)
        output.setframerate(AUDIO_RATE)
        output.writeframes(sync_samples(seconds).tobytes())


def fake_capture_args(
    folder: Path, seconds: float = LOOP_SECONDS, textured: bool = False
) -> list[str]:
    """Writes the sync source into ``folder``; Chromium's flags to capture from it."""
    video, audio = folder / "sync.mjpeg", folder / "sync.wav"
    write_sync_video(video, seconds, textured=textured)
    write_sync_audio(audio, seconds)
    return [
        f"--use-file-for-fake-video-capture={video}",
        f"--use-file-for-fake-audio-capture={audio}",
    ]


def read_frame_number(luma: np.ndarray) -> int | None:
    """The frame number written in a decoded picture's band (``luma``: height x width),
    or ``None`` when the band does not read as one (guard or parity broken)."""
    height, width = luma.shape
    top, bottom = height * CODE_TOP, height * CODE_BOTTOM
    rows = slice(round(top + (bottom - top) / 4), round(bottom - (bottom - top) / 4))
    cells = []
    for index in range(CELLS):
        left, right = width * index / CELLS, width * (index + 1) / CELLS
        columns = slice(round(left + (right - left) / 4), round(right - (right - left) / 4))
        level = float(luma[rows, columns].mean())
        if level >= _WHITE_AT_LEAST:
            cells.append(1)
        elif level <= _BLACK_AT_MOST:
            cells.append(0)
        else:
            return None
    guard_right = CELLS - len(_GUARD_RIGHT)
    if tuple(cells[: len(_GUARD_LEFT)]) != _GUARD_LEFT:
        return None
    if tuple(cells[guard_right:]) != _GUARD_RIGHT:
        return None
    bits = cells[len(_GUARD_LEFT) : len(_GUARD_LEFT) + NUMBER_BITS]
    if sum(bits) % 2 != cells[len(_GUARD_LEFT) + NUMBER_BITS]:
        return None
    return int("".join(map(str, bits)), 2)


def flash_level(luma: np.ndarray) -> float:
    """Mean luma of the scene (the picture above the band)."""
    return float(luma[: int(luma.shape[0] * CODE_TOP * 0.95)].mean())


def is_flash(luma: np.ndarray) -> bool:
    """Whether a decoded picture shows a flash."""
    return flash_level(luma) > _FLASH_LEVEL


# -- reading a recording of the sync source back ---------------------------------------

PAUSE_CUT_AT_LEAST = 0.25  # seconds of source skipped at once: a pause was cut there
_NEAR_CUT = 0.15  # flashes this close to a cut are not measured (the beep may be cut)
_PAIRING = 0.45  # a flash's beep starts at most this far from it (beeps are 1 s apart)
_TIMELINE_WINDOW = 0.5  # seconds of pictures either side that place a flash


@dataclass(frozen=True)
class Picture:
    """One decoded video frame: output time, frame number (``None`` if unreadable) and
    whether it shows a flash."""

    time: float
    number: int | None
    flash: bool


@dataclass(frozen=True)
class Flash:
    """A flash found in a recording: the source frame it starts at (``30k``), its onset
    in output time, and the beep's onset minus the flash's (seconds)."""

    number: int
    time: float
    offset: float


@dataclass(frozen=True)
class Discontinuity:
    """Between two consecutive readable pictures, source time and output time advanced by
    different amounts. ``skipped`` is source time minus output time (seconds): positive
    where media was cut out (a pause), negative where the output has a hole."""

    before: Picture
    after: Picture
    skipped: float

    @property
    def advance(self) -> float:
        """Output time between the two pictures."""
        return self.after.time - self.before.time


@dataclass
class SyncTrace:
    """A recording of the sync source, decoded: its pictures and beep onsets."""

    pictures: list[Picture]
    beeps: list[float]
    loop_frames: int = LOOP_SECONDS * FPS
    _discontinuities: list[Discontinuity] | None = field(default=None, repr=False)

    def discontinuities(self) -> list[Discontinuity]:
        """Every place where frame numbers and output time disagree by more than 1.5 frame
        intervals (frames the encoder dropped keep the two in step)."""
        if self._discontinuities is None:
            found = []
            readable = [p for p in self.pictures if p.number is not None]
            for before, after in pairwise(readable):
                assert before.number is not None and after.number is not None
                frames = (after.number - before.number) % self.loop_frames
                skipped = frames / FPS - (after.time - before.time)
                if abs(skipped) > 1.5 / FPS:
                    found.append(Discontinuity(before, after, skipped))
            self._discontinuities = found
        return self._discontinuities

    def cuts(self) -> list[Discontinuity]:
        """The discontinuities where at least :data:`PAUSE_CUT_AT_LEAST` was cut out."""
        return [d for d in self.discontinuities() if d.skipped >= PAUSE_CUT_AT_LEAST]

    def flash_onsets(self) -> list[tuple[int, float]]:
        """(source frame number, output time) at which flashes start: for each picture
        that shows a flash after one that does not (in the same segment), where the
        segment's video timeline puts the flash's first source frame. That timeline is
        the median of (output time minus frame number / 30) over the readable pictures
        within half a second either side: Chromium stamps frames with the instant they
        were delivered, which wanders by up to ±15 ms from frame to frame (its own
        MediaRecorder's files show it), while the timeline around them is what pauses
        and lip-sync corrections move."""
        cuts = [cut.after.time for cut in self.cuts()]
        readable = [p for p in self.pictures if p.number is not None]
        onsets = []
        for previous, picture in pairwise(self.pictures):
            if not picture.flash or previous.flash or picture.number is None:
                continue
            if any(previous.time < at <= picture.time for at in cuts):
                continue
            segment = sum(picture.time >= at for at in cuts)
            around = [
                p.time - self._unwrapped(p.number, picture.number) / FPS
                for p in readable
                if abs(p.time - picture.time) <= _TIMELINE_WINDOW
                and sum(p.time >= at for at in cuts) == segment
            ]
            first = picture.number - picture.number % FPS
            at = statistics.median(around) + self._unwrapped(first, picture.number) / FPS
            onsets.append((first, at))
        return onsets

    def time_of(self, number: int) -> float:
        """Output time of source frame ``number``: that of the picture showing it, or if
        none does, of the readable picture nearest in frame numbers, moved by the frames
        between at 30 fps."""
        readable = [p for p in self.pictures if p.number is not None]
        if not readable:
            raise ValueError("no readable picture")
        nearest = min(readable, key=lambda p: abs(self._unwrapped(p.number, number) - number))
        return nearest.time + (number - self._unwrapped(nearest.number, number)) / FPS

    def _unwrapped(self, number: int | None, near: int) -> int:
        """``number`` on a scale without the loop's wrap, as seen from ``near``."""
        assert number is not None
        half = self.loop_frames // 2
        return near + (number - near + half) % self.loop_frames - half

    def offsets(self, expected: dict[int, float] | None = None) -> list[Flash]:
        """Each flash that lies at least 150 ms from any pause cut, with its beep's offset:
        the beep nearest the flash, within 450 ms. ``expected`` (offsets by frame number,
        e.g. another recording's of the same source) moves the aim for the flashes it
        names: the beep nearest where the expected offset puts it (within 450 ms) is the
        same beep of the source when a busy machine moved beeps half a second from their
        flashes, where the beep nearest the flash may be the next one."""
        cut_times = [cut.after.time for cut in self.cuts()]
        beeps = np.array(self.beeps)
        flashes = []
        for number, flash in self.flash_onsets():
            if any(abs(flash - at) < _NEAR_CUT for at in cut_times) or not self.beeps:
                continue
            aim = flash + (expected or {}).get(number, 0.0)
            beep = float(beeps[int(np.argmin(np.abs(beeps - aim)))])
            if abs(beep - aim) <= _PAIRING:
                flashes.append(Flash(number, flash, beep - flash))
        return flashes

    def segments(
        self,
        windows: list[tuple[float, float]] | None = None,
        expected: dict[int, float] | None = None,
    ) -> list[list[Flash]]:
        """The measured flashes (see :meth:`offsets`) of each stretch between pause cuts
        (before the first cut, after it, ...), or of each output-time window of
        ``windows``."""
        if windows is None:
            edges = [0.0, *(cut.after.time for cut in self.cuts()), float("inf")]
            windows = list(pairwise(edges))
        measured = self.offsets(expected)
        return [[f for f in measured if start <= f.time < end] for start, end in windows]


def trace_recording(path: Path) -> SyncTrace:
    """Decodes a recording of the sync source (PyAV): every picture's frame number and
    flash, and the beeps' onsets to the sample."""
    pictures = [
        Picture(t, read_frame_number(luma), is_flash(luma)) for t, luma in decoded_pictures(path)
    ]
    return SyncTrace(pictures, beep_onsets(path))


def describe_segments(
    name: str,
    trace: SyncTrace,
    windows: list[tuple[float, float]] | None = None,
    reference: SyncTrace | None = None,
) -> str:
    """One line per segment (see :meth:`SyncTrace.segments`): each flash's offset in
    milliseconds, and with ``reference`` (flashes paired with beeps as the reference's
    offsets expect) the difference from the reference's offset for the same source
    flash; then the trace's discontinuities."""
    lines = []
    theirs = {f.number: f.offset for f in reference.offsets()} if reference else None
    segments = trace.segments(windows, theirs)
    labels = ["before pause 1", *[f"after pause {n + 1}" for n in range(len(segments) - 1)]]
    for label, flashes in zip(labels, segments, strict=True):
        figures = []
        for flash in flashes:
            figure = f"#{flash.number} {1000 * flash.offset:+.1f}"
            if theirs is not None and flash.number in theirs:
                figure += f" ({1000 * (flash.offset - theirs[flash.number]):+.1f})"
            figures.append(figure)
        offsets = [f.offset for f in flashes]
        mean = f", mean {1000 * statistics.fmean(offsets):+.1f}" if offsets else ""
        lines.append(f"{name} {label}: [{', '.join(figures)}] ms{mean}")
    for cut in trace.discontinuities():
        lines.append(
            f"{name} discontinuity at {cut.after.time:.3f} s: frames "
            f"{cut.before.number}->{cut.after.number}, output +{1000 * cut.advance:.1f} ms, "
            f"source time skipped {1000 * cut.skipped:.1f} ms"
        )
    return "\n".join(lines)
