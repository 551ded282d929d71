"""``/metrics`` and ``/readyz`` with real aiortc publishers: counters that move as sessions
record and keep their totals after the sessions end, the lag histogram, the token,
and admission refusing new sessions when the measured load is over a limit."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rtc_recorder.server.lifecycle import DRAIN

from .media import ffmpeg_errors, probe
from .server_support import publish, publisher_pc, running_app

Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: Any, token: str | None = None) -> Scrape:
    """Every sample of ``/metrics``, parsed by prometheus-client's own parser."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.get("/metrics", headers=headers)
    assert response.status == 200, await response.text()
    values: Scrape = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            values[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return values


def metric(values: Scrape, name: str, **labels: str) -> float:
    return values.get((f"rtc_recorder_{name}", tuple(sorted(labels.items()))), 0.0)


async def until(check: Callable[[], Awaitable[bool]], timeout: float, message: str) -> None:
    """Poll ``check()`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {message}"
        await asyncio.sleep(0.1)


async def test_metrics_count_what_sessions_record_and_keep_it_after_they_end(
    tmp_path: Path,
) -> None:
    async with running_app(recordings=tmp_path, auto_record=True) as client:
        first = await publish(client)
        values: Scrape = {}

        async def recorded(frames: float) -> bool:
            nonlocal values
            values = await scrape(client)
            return metric(values, "frames_written_total", kind="video") >= frames

        await until(lambda: recorded(30), 20, "a second of video in the metrics")
        assert metric(values, "sessions") == 1
        assert metric(values, "recordings", state="recording") == 1
        assert metric(values, "recorded_bytes_total") > 0
        assert metric(values, "frames_written_total", kind="audio") > 0
        assert metric(values, "keyframe_requests_total", kind="video") >= 1  # at start

        await first.close()
        ended = {}

        async def closed() -> bool:
            nonlocal ended
            ended = await scrape(client)
            return metric(ended, "sessions") == 0

        await until(closed, 20, "the session to close")
        assert metric(ended, "sessions") == 0
        assert metric(ended, "recordings", state="recording") == 0
        (path,) = tmp_path.glob("*.webm")
        assert not ffmpeg_errors(path)
        streams = probe(path, decode=False)
        # What the counters say is what the file holds.
        assert metric(ended, "recorded_bytes_total") == path.stat().st_size
        for kind in ("video", "audio"):
            assert metric(ended, "frames_written_total", kind=kind) == len(streams[kind].packets)

        second = await publish(client)
        await until(
            lambda: recorded(metric(ended, "frames_written_total", kind="video") + 30),
            20,
            "the second session's video added to the first's",
        )
        assert metric(values, "recorded_bytes_total") > metric(ended, "recorded_bytes_total")
        assert metric(values, "event_loop_lag_seconds_count") > 0
        assert metric(values, "event_loop_lag_seconds_bucket", le="+Inf") == metric(
            values, "event_loop_lag_seconds_count"
        )
        await second.close()


async def test_metrics_need_the_token_and_readyz_does_not(tmp_path: Path) -> None:
    async with running_app(recordings=tmp_path, token="s3cret") as client:
        refused = await client.get("/metrics")
        assert refused.status == 401
        assert (await refused.json())["error"] == "NotAllowedError"
        assert (await client.get("/metrics", headers={"Authorization": "Bearer nope"})).status == (
            401
        )
        values = await scrape(client, token="s3cret")
        assert metric(values, "ready") == 1 and metric(values, "draining") == 0
        ready = await client.get("/readyz")
        body = await ready.json()
        assert ready.status == 200 and body["ready"] is True and body["reason"] is None
        assert body["admission"]["state"] == "open"


async def test_readyz_is_503_once_max_sessions_are_open(tmp_path: Path) -> None:
    async with running_app(recordings=tmp_path, max_sessions=1) as client:
        publisher = await publish(client)
        response = await client.get("/readyz")
        body = await response.json()
        assert response.status == 503 and body["reason"] == "max_sessions", body
        await publisher.close()


async def test_a_server_over_its_load_limit_refuses_new_sessions_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The limit is set so low that one real recording session exceeds it: the server must
    notice from its own measurements, say so in ``/readyz``, ``/metrics`` and the log, and
    refuse new sessions (``/offer`` and WHIP) while the admitted one goes on recording."""
    caplog.set_level(logging.INFO, logger="rtc_recorder.server")
    limits = {
        "admission_loop_lag": 0,
        "admission_loop_busy": 0.0001,  # 0.01 % of the loop thread's time
        "admission_cpu": 0,
        "admission_udp_drops": 0,
        "admission_calm": 60,
    }
    async with running_app(recordings=tmp_path, auto_record=True, **limits) as client:
        admitted = await publish(client)  # a server without sessions always admits
        body: dict[str, Any] = {}

        async def unready() -> bool:
            nonlocal body
            response = await client.get("/readyz")
            body = await response.json()
            return response.status == 503

        await until(unready, 10, "/readyz to report the load")
        assert body["reason"] == "capacity" and body["admission"]["over"] == ["loopBusy"]
        assert body["admission"]["measured"]["loopBusy"] > 0.0001

        pc = publisher_pc()
        await pc.setLocalDescription(await pc.createOffer())
        offer = await client.post("/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
        whip = await client.post(
            "/whip", data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
        )
        await pc.close()
        for response in (offer, whip):
            assert response.status == 503
            assert (await response.json())["error"] == "QuotaExceededError"
            assert 1 <= int(response.headers["Retry-After"]) <= 60

        values = await scrape(client)
        assert metric(values, "at_capacity") == 1 and metric(values, "ready") == 0
        assert metric(values, "sessions_refused_total", reason="capacity") == 2
        assert metric(values, "loop_busy_ratio") > 0.0001
        assert metric(values, "admission_limit", signal="loop_busy_ratio") == 0.0001
        assert [r for r in caplog.records if r.getMessage() == "at capacity"]

        frames = metric(values, "frames_written_total", kind="video")

        async def still_recording() -> bool:
            return metric(await scrape(client), "frames_written_total", kind="video") > frames + 30

        await until(still_recording, 20, "the admitted session to go on recording")
        await admitted.close()


def test_load_limits_and_the_shutdown_bound_come_from_flags_and_environment() -> None:
    from rtc_recorder.server.settings import parse

    settings = parse(
        ["--admission-loop-busy", "0.3", "--shutdown-timeout", "5"],
        {"RTC_RECORDER_ADMISSION_UDP_DROPS": "0", "RTC_RECORDER_ADMISSION_CALM": "30"},
    )
    assert settings.admission_loop_busy == 0.3 and settings.shutdown_timeout == 5
    assert settings.admission_udp_drops == 0 and settings.admission_calm == 30
    defaults = parse([], {})
    assert (defaults.admission_loop_lag, defaults.admission_loop_busy) == (200, 0.6)
    assert defaults.shutdown_timeout == 20
    for bad in (
        ["--admission-cpu", "-1"],
        ["--admission-resume", "0"],
        ["--shutdown-timeout", "x"],
    ):
        with pytest.raises(ValueError):
            parse(bad, {})


async def test_the_drain_ends_what_follows_the_sessions_in_order_with_the_rest_of_its_bound(
    tmp_path: Path,
) -> None:
    given: list[tuple[str, float]] = []

    async def uploads(left: float) -> None:
        given.append(("uploads", left))
        await asyncio.sleep(left)  # takes every second it is given

    async def webhooks(left: float) -> None:
        given.append(("webhooks", left))

    async with running_app(recordings=tmp_path, shutdown_timeout=0.5) as client:
        drain = client.app[DRAIN]
        drain.afterwards += [uploads, webhooks]
        assert await drain.start() == []  # no recording left unfinished
    # The application's shutdown found the drain done: it ran once.
    assert [step for step, _ in given] == ["uploads", "webhooks"]
    assert 0 < given[0][1] <= 0.5
    assert given[1][1] == 0.0


async def test_a_fresh_server_takes_a_burst_a_few_at_a_time(tmp_path: Path) -> None:
    """Six offers at once to a server that has measured none of its sessions: it knows no
    cost per session, so it takes four (each counted from the moment it is taken, while
    the others are still being negotiated) and asks the others to come back (503,
    ``settling``, Retry-After). A failed offer holds no place."""
    limits = {
        "admission_loop_lag": 200.0,
        "admission_loop_busy": 0.6,
        "admission_cpu": 0.9,
        "admission_udp_drops": 10.0,
    }
    async with running_app(recordings=tmp_path, **limits) as client:
        bad = await client.post("/offer", json={"sdp": "v=0\r\nnot an offer", "type": "offer"})
        assert bad.status == 400
        pcs = [publisher_pc() for _ in range(6)]
        try:
            for pc in pcs:
                await pc.setLocalDescription(await pc.createOffer())
            responses = await asyncio.gather(
                *(
                    client.post("/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
                    for pc in pcs
                )
            )
            statuses = sorted(response.status for response in responses)
            assert statuses == [200, 200, 200, 200, 503, 503], statuses
            for response in responses:
                if response.status == 503:
                    assert (await response.json())["error"] == "QuotaExceededError"
                    assert 1 <= int(response.headers["Retry-After"]) <= 5
            values = await scrape(client)
            assert metric(values, "sessions_refused_total", reason="settling") == 2
        finally:
            await asyncio.gather(*(pc.close() for pc in pcs))
