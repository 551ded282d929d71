"""``rtc-recorder compose`` on a room recorded here (tests/room_folder.py): the composite is
decoded back (PyAV, Debian's ffmpeg) and checked on its pixels and its sound against the
room's own files."""

from __future__ import annotations

import asyncio
import itertools
import json
import resource
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from rtc_recorder.cli import main as cli_main
from rtc_recorder.compose import CompositionCancelled, compose, partial_path

from .media import beep_onsets, ffmpeg_errors, probe
from .room_folder import ADA, BOB, CY, record_room

SIZE = (640, 360)
FPS = 30
FRAME = 1 / FPS
COLOURS = {
    "Ada": ADA.colour,
    "Bob": BOB.colour,
    "white": (255, 255, 255),
    "name": (52, 58, 72),  # the tile of a participant without a picture
    "background": (17, 19, 24),
}
# Where tiles are, by how many are shown (640x360, 16:9 cells): two side by side; three
# as two on top and one centred below. The speaker's picture is above a strip of others.
TWO = ((160, 180), (480, 180))
THREE = ((160, 90), (480, 90), (320, 270))
SPEAKER = (320, 135)
POINTS = (*TWO, *THREE, SPEAKER)


@dataclass
class Room:
    """The recorded room: its folder and manifest, and when things happen in it."""

    folder: Path
    manifest: dict[str, Any]

    def participant(self, session: str) -> dict[str, Any]:
        return next(p for p in self.manifest["participants"] if p["session"] == session)

    def event(self, kind: str, session: str) -> float:
        return next(
            float(e["t"])
            for e in self.manifest["events"]
            if e["type"] == kind and e.get("session") == session
        )

    def beeps(self, session: str) -> list[float]:
        """Where the participant's beeps are in the recording (from its own file)."""
        participant = self.participant(session)
        onsets = beep_onsets(self.folder / participant["file"], spacing=0.3)
        return [participant["start"] + float(onset) for onset in onsets]


@dataclass
class Composite:
    """A composite decoded: per frame (time, {probe point: (colour name, brightest luma
    around it)})."""

    path: Path
    frames: list[tuple[float, dict[tuple[int, int], tuple[str, int]]]]
    progress: list[tuple[float, float]]

    def at(self, point: tuple[int, int], begin: float, end: float) -> list[str]:
        """The colours shown at ``point`` in frames from ``begin`` to ``end``."""
        return [probes[point][0] for t, probes in self.frames if begin <= t < end]


def colour_name(patch: np.ndarray) -> str:
    """The named colour nearest the patch's median (``other`` if none is near)."""
    median = np.median(patch.reshape(-1, 3), axis=0)
    name, colour = min(
        COLOURS.items(), key=lambda item: float(np.linalg.norm(median - np.array(item[1])))
    )
    return name if np.linalg.norm(median - np.array(colour)) < 60 else "other"


def decode_composite(path: Path, progress: list[tuple[float, float]]) -> Composite:
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            picture = frame.to_ndarray(format="rgb24")
            probes = {}
            for x, y in POINTS:
                patch = picture[y - 8 : y + 8, x - 8 : x + 8]
                around = picture[y - 20 : y + 20, x - 40 : x + 40]
                probes[(x, y)] = (colour_name(patch), int(around.min(axis=2).max()))
            frames.append((float(frame.time or 0.0), probes))
    return Composite(path, frames, progress)


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory) -> Room:
    folder = tmp_path_factory.mktemp("recordings") / "standup-20261201T101500Z"
    return Room(folder, asyncio.run(record_room(folder)))


def render(room: Room, name: str, layout: str) -> Composite:
    progress: list[tuple[float, float]] = []
    path = compose(
        room.folder,
        room.folder / name,
        layout=layout,
        size=SIZE,
        fps=FPS,
        on_progress=lambda done, duration: progress.append((done, duration)),
    )
    return decode_composite(path, progress)


@pytest.fixture(scope="module")
def grid(room: Room) -> Composite:
    return render(room, "composite-grid.mp4", "grid")


@pytest.fixture(scope="module")
def speaker(room: Room) -> Composite:
    return render(room, "composite-speaker.mp4", "speaker")


# -- the grid ---------------------------------------------------------------------------


def test_the_composite_lasts_the_recording_and_decodes_cleanly(room: Room, grid: Composite) -> None:
    assert not ffmpeg_errors(grid.path)
    info = probe(grid.path)
    assert (info["video"].codec, info["audio"].codec) == ("h264", "aac")
    assert (info["video"].width, info["video"].height) == SIZE
    duration = room.manifest["duration"]
    assert abs(info["video"].end - duration) <= FRAME, (info["video"].end, duration)
    assert abs(info["audio"].end - duration) <= FRAME, (info["audio"].end, duration)
    assert info["video"].start == 0.0
    assert np.allclose(np.diff(info["video"].frames), FRAME, atol=0.002)
    head = grid.path.read_bytes()
    assert head.index(b"moov") < head.index(b"mdat")  # the index first: plays as it loads


def test_the_grid_shows_everyone_present_in_their_place(room: Room, grid: Composite) -> None:
    ada, bob, cy = (room.participant(p.session) for p in (ADA, BOB, CY))
    off, on = room.event("mute", ADA.session), room.event("unmute", ADA.session)
    assert ada["start"] < 0.1 and cy["start"] < 0.1 and bob["start"] > 1.0

    def tiles(t: float) -> dict[tuple[int, int], str]:
        """Ada and Cy from the start; Bob joins (Ada and Cy on top, Bob below); Cy leaves."""
        if t < bob["start"]:
            return {TWO[0]: "Ada", TWO[1]: "Cy"}
        if t < cy["end"]:
            return {THREE[0]: "Ada", THREE[1]: "Cy", THREE[2]: "Bob"}
        return {TWO[0]: "Ada", TWO[1]: "Bob"}

    def allowed(who: str, t: float) -> set[str]:
        if who == "Cy" or (who == "Ada" and off <= t < on):  # no camera, camera off
            return {"name"}
        return {who, "white"}  # their colour, or white while they flash

    changes = (
        ada["start"],
        cy["start"],
        bob["start"],
        cy["end"],
        off,
        on,
        room.manifest["duration"],
    )
    checked: Counter[str] = Counter()
    for t, probes in grid.frames:
        if any(abs(t - change) < 0.1 for change in changes):
            continue
        for point, who in tiles(t).items():
            colour = probes[point][0]
            assert colour in allowed(who, t), (t, point, who, colour)
            checked[who if allowed(who, t) != {"name"} or who == "Cy" else "Ada off"] += 1
    assert min(checked.values()) > 20 and len(checked) == 4, checked


def test_a_participant_without_a_picture_shows_their_name(room: Room, grid: Composite) -> None:
    cy = room.participant(CY.session)
    for t, probes in grid.frames:
        if 0.1 <= t < room.participant(BOB.session)["start"] - 0.1:
            colour, brightest = probes[TWO[1]]
            assert colour == "name" and brightest > 200, (t, colour, brightest)
    assert cy["end"] < room.manifest["duration"] - 1.0


def test_each_picture_is_the_participants_own_at_that_time(room: Room, grid: Composite) -> None:
    """Flashes: a tile is white exactly when the participant's file shows white at that
    time of the recording (to the frame)."""
    ada, bob = room.participant(ADA.session), room.participant(BOB.session)
    cy_end = room.participant(CY.session)["end"]
    off, on = room.event("mute", ADA.session), room.event("unmute", ADA.session)
    for participant, where in ((ada, (TWO[0], THREE[0], TWO[0])), (bob, (None, THREE[2], TWO[1]))):
        whites = _white_frames(room.folder / participant["file"])
        checked = flashes = 0
        previous = False
        for t, probes in grid.frames:
            if not participant["start"] + 0.1 <= t < participant["end"] - 0.1:
                continue
            if participant is ada and off - 0.1 <= t < on + 0.1:
                continue
            stretch = 0 if t < bob["start"] else 1 if t < cy_end else 2
            point = where[stretch]
            if point is None or abs(t - bob["start"]) < 0.1 or abs(t - cy_end) < 0.1:
                continue
            white = probes[point][0] == "white"
            local = t - participant["start"]
            assert white in _whites_near(whites, local), (participant["name"], t, white)
            flashes += white and not previous
            previous = white
            checked += 1
        assert checked > 60 and flashes >= 3, (participant["name"], checked, flashes)


def _white_frames(path: Path) -> list[tuple[float, bool]]:
    with av.open(str(path)) as container:
        return [
            (float(frame.time or 0.0), float(frame.to_ndarray(format="gray").mean()) > 200)
            for frame in container.decode(video=0)
        ]


def _whites_near(whites: list[tuple[float, bool]], t: float) -> set[bool]:
    """Whether the file shows white within a frame of ``t`` (either, across a change)."""
    shown = [white for time_, white in whites if t - FRAME <= time_ <= t + FRAME]
    before = [white for time_, white in whites if time_ < t - FRAME][-1:]
    return set(shown + before)


def test_the_sound_is_the_mix(room: Room, grid: Composite) -> None:
    mix = beep_onsets(room.folder / room.manifest["mix"], spacing=0.3)
    heard = beep_onsets(grid.path, spacing=0.3)
    assert len(mix) >= 6 and len(heard) == len(mix), (heard, mix)
    assert np.allclose(heard, mix, atol=0.003), (heard, mix)
    # the participants' beeps are all in it (Cy's one too), where their files have them
    # (as closely as the test's separate recorders place them: a few tens of ms)
    expected = sorted(room.beeps(ADA.session) + room.beeps(BOB.session) + room.beeps(CY.session))
    assert np.allclose(mix, expected, atol=0.06), (mix, expected)


def test_progress_rises_to_the_whole_duration(room: Room, grid: Composite) -> None:
    done = [d for d, _ in grid.progress]
    assert {duration for _, duration in grid.progress} == {room.manifest["duration"]}
    assert len(done) >= 100 and all(b > a for a, b in itertools.pairwise(done))
    assert done[0] > 0 and done[-1] == room.manifest["duration"]


# -- the speaker layout -------------------------------------------------------------------


def test_the_speaker_layout_shows_who_beeps_large(room: Room, speaker: Composite) -> None:
    ada_beeps, bob_beeps = room.beeps(ADA.session), room.beeps(BOB.session)
    assert len(ada_beeps) >= 2 and len(bob_beeps) >= 2 and ada_beeps[-1] < bob_beeps[0]
    off = room.event("mute", ADA.session)
    # Ada talks first (Cy says one word meanwhile: not enough to take the picture)...
    early = speaker.at(SPEAKER, 0.2, min(bob_beeps[0], off))
    assert set(early) <= {"Ada", "white"} and early.count("Ada") > 30, sorted(set(early))
    # ... then Bob does, and has the picture within a second of starting.
    late = speaker.at(SPEAKER, bob_beeps[0] + 1.0, room.manifest["duration"])
    assert set(late) <= {"Bob", "white"} and late.count("Bob") > 30, sorted(set(late))
    # one change of speaker, no flicker
    people = [c for c in speaker.at(SPEAKER, 0.0, 3600.0) if c in ("Ada", "Bob")]
    changes = sum(1 for a, b in itertools.pairwise(people) if a != b)
    assert changes == 1, people
    assert not ffmpeg_errors(speaker.path)


# -- other outputs, damaged input, cancelling ---------------------------------------------


def test_a_webm_composite_is_vp9_and_opus(room: Room, tmp_path: Path) -> None:
    path = compose(room.folder, tmp_path / "room.webm", size=(320, 180), fps=15)
    assert not ffmpeg_errors(path)
    info = probe(path)
    assert (info["video"].codec, info["audio"].codec) == ("vp9", "opus")
    assert abs(info["video"].end - room.manifest["duration"]) <= 1 / 15
    assert not partial_path(path).exists()


def test_a_file_cut_short_is_composed_as_far_as_it_goes(room: Room, tmp_path: Path) -> None:
    folder = tmp_path / "cut"
    shutil.copytree(room.folder, folder)
    bob = folder / room.participant(BOB.session)["file"]
    bob.write_bytes(bob.read_bytes()[: bob.stat().st_size // 2])
    path = compose(folder, size=(320, 180), fps=10)
    assert path == folder / "composite-grid.mp4"
    assert not ffmpeg_errors(path)
    assert abs(probe(path)["video"].end - room.manifest["duration"]) <= 0.1


def test_a_full_disk_is_a_clear_error_and_leaves_no_file(room: Room, tmp_path: Path) -> None:
    def small_disk() -> None:  # writes past 50 kB fail (EFBIG), as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))

    output = tmp_path / "full.mp4"
    command = [sys.executable, "-m", "rtc_recorder", "compose", str(room.folder)]
    result = subprocess.run(
        [*command, "-o", str(output), "--size", "320x180"],
        preexec_fn=small_disk,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("rtc-recorder compose: composing") and "File too large" in last, last
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_cancelling_leaves_no_file(room: Room, tmp_path: Path) -> None:
    cancel = threading.Event()
    output = tmp_path / "cancelled.mp4"
    with pytest.raises(CompositionCancelled):
        compose(
            room.folder, output, size=(320, 180), on_progress=lambda *_: cancel.set(), cancel=cancel
        )
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_cancels_the_command_and_leaves_no_file(room: Room, tmp_path: Path) -> None:
    output = tmp_path / "interrupted.mp4"
    command = [sys.executable, "-m", "rtc_recorder", "compose", str(room.folder)]
    process = subprocess.Popen(
        [*command, "-o", str(output), "--progress", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as in a terminal: a suite started in the background (a non-interactive
        # shell's `&`) ignores SIGINT, and its children would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())  # composing has begun
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert 0 < first["progress"] < 1
    assert process.returncode == 130, errors
    assert errors.strip() == "rtc-recorder compose: cancelled"
    assert list(tmp_path.iterdir()) == []


def test_the_command_writes_the_composite_and_prints_its_progress(
    room: Room, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "cli.mp4"
    status = cli_main(
        ["compose", str(room.folder), "-o", str(output), "--size", "320x180", "--fps", "10"]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert captured.out.strip() == str(output)
    lines = captured.err.splitlines()  # not a terminal: a line every 10 %
    assert lines[-1] == "compose: 100%" and len(lines) == 11, lines
    assert not ffmpeg_errors(output)
