"""Trust under stress: concurrent control from the API and the WebSocket, sessions coming
and going, peers that vanish, packet loss and reordering, a full disk, a killed server,
and the limits that protect the service."""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rtc_recorder.server.app import SESSIONS

from .media import duration, ffmpeg_errors, probe, wait_for
from .server_support import ROOT, next_event, publish, running_app, server_process

METHODS = ["start", "pause", "resume", "requestData", "stop"]
ALLOWED = {  # the contract's state table: method -> states it is allowed in
    "start": {"inactive"},
    "pause": {"recording", "paused"},
    "resume": {"recording", "paused"},
    "requestData": {"recording", "paused"},
    "stop": {"inactive", "recording", "paused"},
}


def check_event_order(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Every recording's events follow the contract: start first, stop last, dataavailable
    before stop, pause and resume alternating. Returns the event names per recording."""
    per_recording: dict[str, list[str]] = defaultdict(list)
    for event in events:
        if event["type"] in ("start", "pause", "resume", "dataavailable", "error", "stop"):
            per_recording[event["name"]].append(event["type"])
    for name, sequence in per_recording.items():
        assert sequence[0] == "start" and sequence.count("start") == 1, (name, sequence)
        assert sequence[-1] == "stop" and sequence.count("stop") == 1, (name, sequence)
        assert sequence[-2] == "dataavailable", (name, sequence)
        toggles = [e for e in sequence if e in ("pause", "resume")]
        assert toggles == ["pause", "resume"] * (len(toggles) // 2) + ["pause"] * (len(toggles) % 2)
    return per_recording


async def test_random_interleavings_from_api_and_websocket_keep_the_contract(
    tmp_path: Path,
) -> None:
    async with running_app(recordings=tmp_path) as client:
        publisher = await publish(client, timeslice=200)
        base = f"/api/sessions/{publisher.session}"
        observer = await client.ws_connect(f"{base}/events")
        commander = await client.ws_connect(f"{base}/events")
        events: list[dict[str, Any]] = []
        replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def observe() -> None:
            async for message in observer:
                events.append(json.loads(message.data))

        async def route_replies() -> None:
            async for message in commander:
                data = json.loads(message.data)
                if data["type"] == "reply":
                    await replies.put(data)

        tasks = [asyncio.ensure_future(observe()), asyncio.ensure_future(route_replies())]
        outcomes: list[tuple[str, str, str | None]] = []
        lock = asyncio.Lock()  # one WebSocket command at a time, so replies match

        async def via_api(method: str) -> None:
            response = await client.post(f"{base}/{method}", json={"timeslice": 150})
            body = await response.json()
            assert response.status in (200, 409), body
            outcomes.append(("api", method, None if response.status == 200 else body["error"]))

        async def via_socket(method: str) -> None:
            async with lock:
                await commander.send_json({"call": method, "timeslice": 150})
                reply = await asyncio.wait_for(replies.get(), 10)
            assert reply["call"] == method
            outcomes.append(("ws", method, reply.get("error")))

        rng = random.Random(20261124)
        for _ in range(60):
            batch = [rng.choice(METHODS) for _ in range(rng.randint(1, 4))]
            await asyncio.gather(*(rng.choice([via_api, via_socket])(m) for m in batch))
            if rng.random() < 0.4:
                await asyncio.sleep(rng.uniform(0.0, 0.2))
        await client.post(f"{base}/stop")
        session = await (await client.get(base)).json()
        assert session["recorderState"] == "inactive"
        starts = sum(1 for e in events if e["type"] == "start")
        await wait_for(lambda: sum(e["type"] == "stop" for e in events) == starts, 20, "stops")
        for task in tasks:
            task.cancel()

    assert all(error in (None, "InvalidStateError") for _, _, error in outcomes), outcomes
    assert {source for source, _, _ in outcomes} == {"api", "ws"}
    recordings = check_event_order(events)
    assert len(recordings) >= 3
    for name in recordings:
        meta = json.loads((tmp_path / f"{name}.json").read_text())
        assert meta["state"] == "complete", meta
        if (tmp_path / name).stat().st_size:
            assert not ffmpeg_errors(tmp_path / name), name


async def test_sessions_come_and_go_while_another_records(tmp_path: Path) -> None:
    async with running_app(recordings=tmp_path, auto_record=True) as client:
        main = await publish(client)
        began = time.monotonic()
        socket = await client.ws_connect(f"/api/sessions/{main.session}/events")
        rng = random.Random(7)

        async def churn(index: int) -> None:
            await asyncio.sleep(index * 0.3)
            guest = await publish(client, video=rng.random() < 0.5)
            await asyncio.sleep(rng.uniform(0.5, 1.5))
            if index % 2:
                await client.delete(f"/api/sessions/{guest.session}")
            await guest.close()

        await asyncio.gather(*(churn(i) for i in range(6)))
        await wait_for(lambda: len(client.app[SESSIONS].sessions) == 1, 15, "guests to leave")
        await client.post(f"/api/sessions/{main.session}/stop")
        stopped = await next_event(socket, "stop")
        elapsed = time.monotonic() - began
        await main.close()
    files = sorted(tmp_path.glob("*.webm"))
    assert len(files) == 7
    for path in files:
        meta = json.loads((tmp_path / f"{path.name}.json").read_text())
        assert meta["state"] == "complete", meta
        assert not ffmpeg_errors(path), path
    main_file = tmp_path / stopped["name"]
    assert duration(probe(main_file)) >= elapsed - 1.0


async def test_a_publisher_killed_without_goodbye_is_finalized_in_bounded_time(
    tmp_path: Path,
) -> None:
    async with running_app(recordings=tmp_path, auto_record=True, idle_timeout=3) as client:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.publish_process", str(client.make_url(""))],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            assert process.stdout is not None
            session = (await asyncio.to_thread(process.stdout.readline)).strip()
            socket = await client.ws_connect(f"/api/sessions/{session}/events")
            await wait_for(
                lambda: any(p.stat().st_size > 20000 for p in tmp_path.glob("*.webm")), 15, "media"
            )
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        killed = time.monotonic()
        stopped = await next_event(socket, "stop", timeout=20)
        finalized_after = time.monotonic() - killed
        closed = await next_event(socket, "closed", timeout=10)
    assert finalized_after <= 3 + 2.5, finalized_after  # the idle timeout, plus its check
    assert closed["reason"].startswith("idle")
    path = tmp_path / stopped["name"]
    assert not ffmpeg_errors(path)
    assert json.loads((tmp_path / f"{path.name}.json").read_text())["state"] == "complete"


def lossy_and_reordered(pc: Any, loss: float, reorder: float, seed: int = 3) -> dict[str, int]:
    """Drop ``loss`` of the RTP packets a peer connection receives and hold back
    ``reorder`` of them by 20-60 ms, before aiortc sees them."""
    transport = pc.getTransceivers()[0].receiver.transport
    handle = transport._handle_rtp_data
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    counts = {"dropped": 0, "reordered": 0, "passed": 0}

    async def hostile(data: bytes, arrival_time_ms: int) -> None:
        draw = rng.random()
        if draw < loss:
            counts["dropped"] += 1
        elif draw < loss + reorder:
            counts["reordered"] += 1
            delay = rng.uniform(0.02, 0.06)
            loop.call_later(delay, lambda: asyncio.ensure_future(handle(data, arrival_time_ms)))
        else:
            counts["passed"] += 1
            await handle(data, arrival_time_ms)

    transport._handle_rtp_data = hostile
    return counts


async def test_loss_and_reordering_at_the_server_keep_the_recording_clean(tmp_path: Path) -> None:
    async with running_app(recordings=tmp_path) as client:
        publisher = await publish(client)
        session = client.app[SESSIONS].get(publisher.session)
        counts = lossy_and_reordered(session.pc, loss=0.05, reorder=0.05)
        base = f"/api/sessions/{publisher.session}"
        socket = await client.ws_connect(f"{base}/events")
        await client.post(f"{base}/start")
        began = time.monotonic()
        await wait_for(lambda: time.monotonic() - began > 6, 10)
        stats = session.recorder.getStats() if session.recorder else {}
        await client.post(f"{base}/stop")
        stopped = await next_event(socket, "stop")
        await publisher.close()
    assert counts["dropped"] > 20 and counts["reordered"] > 20, counts
    path = tmp_path / stopped["name"]
    assert not ffmpeg_errors(path)
    info = probe(path)
    assert duration(info) > 5.0
    # only what was lost is missing (5% of the packets), and video keeps flowing
    assert len(info["audio"].frames) >= 0.88 * 50 * duration(info)
    assert len(info["video"].frames) > 30
    assert stats["tracks"][0]["keyframeRequests"] >= 1


def limit_file_size(limit: int) -> Any:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


async def test_a_full_disk_fails_one_recording_and_spares_the_others(tmp_path: Path) -> None:
    limit = 600_000
    port_env = {"RTC_RECORDER_AUTO_RECORD": "1"}
    async with (
        server_process(tmp_path, preexec_fn=limit_file_size(limit), env=port_env) as (
            _,
            base,
        ),
        aiohttp.ClientSession(base) as http,
    ):
        big = await publish(http)
        small = await publish(http, video=False)
        big_events = await http.ws_connect(f"/api/sessions/{big.session}/events")
        small_events = await http.ws_connect(f"/api/sessions/{small.session}/events")
        small_url = f"/api/sessions/{small.session}"
        started = await (await http.get(small_url)).json()
        assert started["recorderState"] == "recording"  # auto-record began when it connected
        error = await next_event(big_events, "error", timeout=60)
        assert error["error"] == "UnknownError"
        assert (await next_event(big_events, "dataavailable"))["type"] == "dataavailable"
        failed = await next_event(big_events, "stop")
        after_failure = (await (await http.get(small_url)).json())["bytes"]
        deadline = time.monotonic() + 10
        while (await (await http.get(small_url)).json())["bytes"] <= after_failure + 5000:
            assert time.monotonic() < deadline, "the other recording stopped growing"
            await asyncio.sleep(0.2)
        assert (await (await http.get(small_url)).json())["recorderState"] == "recording"
        await http.post(f"/api/sessions/{small.session}/stop")
        finished = await next_event(small_events, "stop")
        assert (await http.get("/healthz")).status == 200
        await big.close()
        await small.close()
    failed_path = tmp_path / failed["name"]
    assert failed_path.stat().st_size <= limit
    assert not ffmpeg_errors(failed_path)
    assert duration(probe(failed_path)) > 0.5
    assert json.loads((tmp_path / f"{failed['name']}.json").read_text())["state"] == "failed"
    assert finished["name"] == started["recording"]
    assert not ffmpeg_errors(tmp_path / finished["name"])


async def test_a_killed_server_leaves_playable_files_losing_at_most_a_timeslice(
    tmp_path: Path,
) -> None:
    async with (
        server_process(tmp_path, "--auto-record", "--timeslice", "1000") as (process, base),
        aiohttp.ClientSession(base) as http,
    ):
        publishers = [await publish(http), await publish(http)]
        await asyncio.sleep(4.5)  # the scenario: killed some seconds into the recordings
        sessions = await (await http.get("/api/sessions")).json()
        recorded = {s["recording"]: s["recordedSeconds"] for s in sessions}
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        for publisher in publishers:
            await publisher.close()
    assert len(recorded) == 2
    for name, seconds in recorded.items():
        path = tmp_path / name
        assert not ffmpeg_errors(path), name
        assert duration(probe(path)) >= seconds - 1.0 - 0.2, (name, seconds)


async def test_recording_length_and_size_limits_stop_recordings(tmp_path: Path) -> None:
    async with running_app(recordings=tmp_path, max_recording_seconds=2) as client:
        publisher = await publish(client)
        socket = await client.ws_connect(f"/api/sessions/{publisher.session}/events")
        await client.post(f"/api/sessions/{publisher.session}/start")
        limit = await next_event(socket, "limit", timeout=10)
        stopped = await next_event(socket, "stop")
        assert limit["reason"] == "recording length limit"
        assert 1.9 <= duration(probe(tmp_path / stopped["name"])) <= 3.2
        await publisher.close()
    async with running_app(recordings=tmp_path / "b", max_recording_bytes=150_000) as client:
        publisher = await publish(client)
        socket = await client.ws_connect(f"/api/sessions/{publisher.session}/events")
        await client.post(f"/api/sessions/{publisher.session}/start", json={"timeslice": 200})
        limit = await next_event(socket, "limit", timeout=20)
        stopped = await next_event(socket, "stop")
        assert limit["reason"] == "recording size limit"
        assert (tmp_path / "b" / stopped["name"]).stat().st_size < 400_000
        await publisher.close()


async def test_a_session_that_never_connects_is_closed(tmp_path: Path) -> None:
    from .server_support import publisher_pc

    async with running_app(recordings=tmp_path, idle_timeout=1.5) as client:
        pc = publisher_pc()
        await pc.setLocalDescription(await pc.createOffer())
        reply = await (
            await client.post("/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
        ).json()
        # the answer is never applied: the session cannot connect
        await wait_for(lambda: not client.app[SESSIONS].sessions, 10, "the idle session to close")
        assert (await client.get(f"/api/sessions/{reply['session']}")).status == 404
        await pc.close()


@pytest.mark.parametrize("limit", ["max_sessions", "max_body"])
async def test_service_limits_are_enforced(tmp_path: Path, limit: str) -> None:
    async with running_app(recordings=tmp_path, max_sessions=1, max_body=8192) as client:
        if limit == "max_body":
            response = await client.post(
                "/whip",
                data=b"v=0\r\n" + b"a=x\r\n" * 4000,
                headers={"Content-Type": "application/sdp"},
            )
            assert response.status == 413
        else:
            first = await publish(client)
            from .server_support import publisher_pc

            pc = publisher_pc()
            await pc.setLocalDescription(await pc.createOffer())
            response = await client.post(
                "/whip", data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
            )
            assert response.status == 503
            await pc.close()
            await first.close()
