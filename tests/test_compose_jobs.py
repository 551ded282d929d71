"""The server's compose jobs: ``POST /api/recordings/{name}/compose`` and ``GET
/api/jobs/{job}`` wired into the real application by ``jobs.setup``, the composing done by
real processes on rooms written here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiohttp.test_utils import TestClient, TestServer

from rtc_recorder.compose import partial_path
from rtc_recorder.server import jobs
from rtc_recorder.server.app import create_app
from rtc_recorder.server.settings import Settings

from .media import ffmpeg_errors, probe, wait_for
from .room_folder import manifest, participant, room_folder, write_room_offline
from .server_support import NO_LOAD_LIMITS

ROOM = "standup-20261201T101500Z"


SMALL = {"size": (160, 90), "fps": 10}  # composites that take the tests little time


@asynccontextmanager
async def served(recordings: Path, **options: Any) -> AsyncIterator[TestClient[Any, Any]]:
    """The server's application, its compose jobs' runner given ``options``."""
    app = create_app(Settings(recordings=recordings, **NO_LOAD_LIMITS))
    app[jobs.JOBS] = jobs.ComposeJobs(jobs.room_folder_in(recordings), **options)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def composing_children() -> Iterator[tuple[psutil.Process, int]]:
    """This process' children running ``rtc-recorder compose``, with their nice value."""
    for child in psutil.Process().children(recursive=True):
        try:
            if "compose" in child.cmdline():
                yield child, child.nice()
        except psutil.Error:
            continue


async def finished(client: TestClient[Any, Any], job: str, seen: list[dict[str, Any]]) -> None:
    """Ask for the job until it has finished (60 s at most); every answer goes to ``seen``."""
    deadline = time.monotonic() + 60
    while True:
        seen.append(await (await client.get(f"/api/jobs/{job}")).json())
        if seen[-1]["state"] in ("done", "failed", "cancelled"):
            return
        assert time.monotonic() < deadline, seen[-1]
        await asyncio.sleep(0.05)


async def test_a_job_composes_in_a_process_of_its_own_and_reports_its_progress(
    tmp_path: Path,
) -> None:
    write_room_offline(tmp_path / ROOM, 10.0, (64, 48))
    async with served(tmp_path, size=(320, 180), fps=15) as client:
        response = await client.post(f"/api/recordings/{ROOM}/compose", json={"layout": "speaker"})
        assert response.status == 202, await response.text()
        job = await response.json()
        assert response.headers["Location"] == f"/api/jobs/{job['job']}"
        assert job["state"] in ("queued", "running") and job["progress"] == 0.0
        assert (job["recording"], job["layout"], job["output"]) == (
            ROOM,
            "speaker",
            "composite-speaker.mp4",
        )
        again = await client.post(f"/api/recordings/{ROOM}/compose", json={"layout": "speaker"})
        assert (await again.json())["job"] == job["job"]  # the same composite: the same job
        await wait_for(lambda: any(composing_children()), 30, "the composing process")
        workers = list(composing_children())
        seen: list[dict[str, Any]] = []
        await finished(client, job["job"], seen)
    assert seen[-1]["state"] == "done" and seen[-1]["error"] is None, seen[-1]
    progress = [entry["progress"] for entry in seen]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert any(0 < share < 1 for share in progress), progress
    assert all(nice >= psutil.Process().nice() + 10 for _, nice in workers), workers
    output = tmp_path / ROOM / "composite-speaker.mp4"
    assert not ffmpeg_errors(output)
    info = probe(output)["video"]
    assert abs(info.end - 10.0) <= 1 / 15 and (info.width, info.height) == (320, 180)
    assert not partial_path(output).exists()


async def test_a_job_that_fails_says_why(tmp_path: Path) -> None:
    room_folder(tmp_path, manifest(), ("a.webm", "mix.ogg"), ROOM)  # a.webm is empty
    async with served(tmp_path, **SMALL) as client:
        response = await client.post(f"/api/recordings/{ROOM}/compose")
        job = await response.json()
        seen: list[dict[str, Any]] = []
        await finished(client, job["job"], seen)
    assert seen[-1]["state"] == "failed"
    assert seen[-1]["error"].startswith("a.webm cannot be read"), seen[-1]
    assert sorted(p.name for p in (tmp_path / ROOM).iterdir()) == [
        "a.webm",
        "manifest.json",
        "mix.ogg",
    ]


async def test_the_routes_refuse_what_cannot_be_composed(tmp_path: Path) -> None:
    room_folder(tmp_path, manifest(), ("a.webm", "mix.ogg"), ROOM)
    room_folder(tmp_path, manifest(state="recording"), ("a.webm", "mix.ogg"), "unfinished")
    room_folder(tmp_path, "{not json", (), "broken")
    room_folder(tmp_path, manifest(participants=[participant(start="soon")]), (), "invalid")
    (tmp_path / "call.webm").write_bytes(b"")  # a single session's recording
    cases = [
        ("nothing-here", {}, 404, "NotFoundError"),
        ("..%2F..%2Fetc", {}, 404, "NotFoundError"),
        ("call.webm", {}, 404, "NotFoundError"),
        (ROOM, {"layout": "mosaic"}, 400, "TypeError"),
        (ROOM, {"format": "avi"}, 400, "TypeError"),
        (ROOM, {"layout": 3}, 400, "TypeError"),
        ("unfinished", {}, 409, "InvalidStateError"),
        ("broken", {}, 400, "DataError"),
        ("invalid", {}, 400, "DataError"),
    ]
    async with served(tmp_path) as client:
        for name, body, status, error in cases:
            response = await client.post(f"/api/recordings/{name}/compose", json=body)
            answer = await response.json()
            assert (response.status, answer["error"]) == (status, error), (name, answer)
            assert answer["message"]
        response = await client.post(f"/api/recordings/{ROOM}/compose", data=b"[1]")
        assert response.status == 400
        response = await client.get("/api/jobs/0123456789abcdef")
        assert response.status == 404 and (await response.json())["error"] == "NotFoundError"


async def test_stopping_the_server_stops_a_running_job_and_leaves_no_partial_file(
    tmp_path: Path,
) -> None:
    write_room_offline(tmp_path / ROOM, 10.0, (32, 24))  # composed at 1280x720: a while
    before = sorted(p.name for p in (tmp_path / ROOM).iterdir())
    async with served(tmp_path) as client:
        response = await client.post(f"/api/recordings/{ROOM}/compose", json={})
        job = client.app[jobs.JOBS].get((await response.json())["job"])
        response = await client.post(f"/api/recordings/{ROOM}/compose", json={"format": "webm"})
        waiting = client.app[jobs.JOBS].get((await response.json())["job"])
        await wait_for(lambda: job.progress > 0, 30, "the job to start composing")
        children = [child for child, _ in composing_children()]
        assert waiting.state == "queued"
    assert job.state == "cancelled" and job.progress < 1
    assert waiting.state == "cancelled"
    assert not any(child.is_running() and child.status() != "zombie" for child in children)
    assert sorted(p.name for p in (tmp_path / ROOM).iterdir()) == before


async def test_jobs_wait_in_a_bounded_queue_and_the_finished_ones_are_forgotten_in_turn(
    tmp_path: Path,
) -> None:
    for name in ("a", "b", "c"):
        room_folder(tmp_path, manifest(participants=[], mix=None, duration=0.5), (), name)
    runner = jobs.ComposeJobs(jobs.room_folder_in(tmp_path), max_queued=1, keep=1, **SMALL)
    try:
        first = await runner.submit("a")
        second = await runner.submit("b")
        assert (first.state, second.state) == ("running", "queued")
        with pytest.raises(jobs.JobRefused) as refused:
            await runner.submit("c")
        assert refused.value.status == 503
        await wait_for(lambda: second.finished, 60, "both jobs")
        assert (first.state, second.state) == ("done", "done")
        assert list(runner.jobs) == [second.id]  # keep=1: the older one is forgotten
        with pytest.raises(KeyError):
            runner.get(first.id)
    finally:
        await runner.close()
