"""``rtc-recorder compose`` on a room recorded here (tests/room_folder.py): the composite is
decoded back (PyAV, Debian's ffmpeg) and checked on its pixels and its sound against the
room's own files; and the server's compose jobs."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import psutil
import pytest
from aiohttp.test_utils import TestClient, TestServer

from rtc_recorder.cli import main as cli_main
from rtc_recorder.compose import CompositionCancelled, compose, partial_path
from rtc_recorder.server import jobs
from rtc_recorder.server.app import create_app
from rtc_recorder.server.settings import Settings

from .media import beep_onsets, ffmpeg_errors, probe, wait_for
from .room_folder import ADA, BOB, CY, record_room
from .server_support import NO_LOAD_LIMITS

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
    expected = sorted(room.beeps(ADA.session) + room.beeps(BOB.session) + room.beeps(CY.session))
    assert np.allclose(mix, expected, atol=0.03), (mix, expected)


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


def test_cancelling_leaves_no_file(room: Room, tmp_path: Path) -> None:
    cancel = threading.Event()
    output = tmp_path / "cancelled.mp4"
    with pytest.raises(CompositionCancelled):
        compose(
            room.folder, output, size=(320, 180), on_progress=lambda *_: cancel.set(), cancel=cancel
        )
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


# -- the server's jobs ----------------------------------------------------------------------


@pytest.fixture
async def client(room: Room) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(Settings(recordings=room.folder.parent, **NO_LOAD_LIMITS))
    jobs.setup(app, room.folder.parent)
    test_client = TestClient(TestServer(app))
    await test_client.start_server()
    try:
        yield test_client
    finally:
        await test_client.close()


async def test_a_compose_job_runs_in_a_process_of_its_own_and_reports_progress(
    room: Room, client: TestClient[Any, Any]
) -> None:
    name = room.folder.name
    response = await client.post(f"/api/recordings/{name}/compose", json={"layout": "speaker"})
    assert response.status == 202, await response.text()
    job = await response.json()
    assert response.headers["Location"] == f"/api/jobs/{job['job']}"
    assert (job["state"], job["output"], job["recording"]) in {
        ("queued", "composite-speaker.mp4", name),
        ("running", "composite-speaker.mp4", name),
    }
    # the same composite asked again is the same job
    again = await client.post(f"/api/recordings/{name}/compose", json={"layout": "speaker"})
    assert (await again.json())["job"] == job["job"]
    seen: list[dict[str, Any]] = []
    workers: list[tuple[psutil.Process, int]] = []

    async def finished() -> bool:
        seen.append(await (await client.get(f"/api/jobs/{job['job']}")).json())
        workers.extend(_composing_children())
        return seen[-1]["state"] in ("done", "failed")

    deadline = time.monotonic() + 60
    while not await finished():
        assert time.monotonic() < deadline, seen[-1]
        await asyncio.sleep(0.05)
    assert seen[-1]["state"] == "done", seen[-1]
    assert seen[-1]["progress"] == 1.0 and seen[-1]["error"] is None
    progress = [entry["progress"] for entry in seen]
    assert progress == sorted(progress) and any(0 < p < 1 for p in progress), progress
    assert workers and all(nice >= 10 for _, nice in workers), workers
    output = room.folder / "composite-speaker.mp4"
    assert not ffmpeg_errors(output)
    assert not partial_path(output).exists()


def _composing_children() -> Iterator[tuple[psutil.Process, int]]:
    """This process' children running ``rtc-recorder compose``, with their nice value."""
    for child in psutil.Process().children(recursive=True):
        try:
            if "compose" in child.cmdline():
                yield child, child.nice()
        except psutil.Error:
            continue


async def test_the_job_routes_refuse_what_cannot_be_composed(
    room: Room, client: TestClient[Any, Any], tmp_path: Path
) -> None:
    unfinished = room.folder.parent / "standup-unfinished"
    shutil.copytree(room.folder, unfinished, ignore=shutil.ignore_patterns("composite-*"))
    manifest = json.loads((unfinished / "manifest.json").read_text())
    (unfinished / "manifest.json").write_text(json.dumps({**manifest, "state": "recording"}))
    broken = room.folder.parent / "standup-broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    cases = [
        ("/api/recordings/nothing-here/compose", {}, 404, "NotFoundError"),
        ("/api/recordings/..%2F..%2Fetc/compose", {}, 404, "NotFoundError"),
        (f"/api/recordings/{room.folder.name}/compose", {"layout": "mosaic"}, 400, "TypeError"),
        (f"/api/recordings/{room.folder.name}/compose", {"format": "avi"}, 400, "TypeError"),
        ("/api/recordings/standup-unfinished/compose", {}, 409, "InvalidStateError"),
        ("/api/recordings/standup-broken/compose", {}, 400, "DataError"),
    ]
    try:
        for path, body, status, error in cases:
            response = await client.post(path, json=body)
            answer = await response.json()
            assert (response.status, answer["error"]) == (status, error), (path, answer)
            assert answer["message"]
        response = await client.get("/api/jobs/0123456789abcdef")
        assert response.status == 404 and (await response.json())["error"] == "NotFoundError"
    finally:
        shutil.rmtree(unfinished)
        shutil.rmtree(broken)


async def test_stopping_the_server_stops_a_running_job_and_leaves_no_partial_file(
    room: Room, tmp_path: Path
) -> None:
    recordings = tmp_path / "recordings"
    folder = recordings / room.folder.name
    shutil.copytree(room.folder, folder, ignore=shutil.ignore_patterns("composite-*"))
    app = create_app(Settings(recordings=recordings, **NO_LOAD_LIMITS))
    jobs.setup(app, recordings)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        response = await client.post(f"/api/recordings/{folder.name}/compose", json={})
        job = app[jobs.JOBS].get((await response.json())["job"])
        await wait_for(lambda: job.progress > 0, 30, "the job to start composing")
        children = list(_composing_children())
    finally:
        await client.close()
    assert job.state == "cancelled"
    assert not any(child.is_running() and child.status() != "zombie" for child, _ in children)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        p.name for p in room.folder.iterdir() if not p.name.startswith("composite-")
    )
