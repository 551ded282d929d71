"""Recordings that leave the machine: ``rtc-recorder serve --storage s3://...`` as a real
process, aiortc publishers sending pre-encoded VP8 of random blocks (over a megabyte a
second, so 5 MiB parts fill in seconds), SeaweedFS as the store and a webhook receiver
checking signatures."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from benchmarks.loadbench.object_store import BUCKET, WEBHOOK_SECRET, SeaweedFS, webhook_receiver

from .media import (
    Clock,
    EncodedMedia,
    PacketTrack,
    SyntheticAudio,
    ffmpeg_errors,
    probe,
    wait_for,
)
from .server_support import publish, server_log, server_process
from .storage_support import object_bytes, uploaded_parts
from .test_operations import metric, scrape, until

PART = 5 * 1024 * 1024
CLUSTER_ID = bytes.fromhex("1f43b675")  # Matroska's
BITRATE = 10_000_000  # about 1.1 MB/s: a part every 4.5 s


@pytest.fixture(scope="module")
def dense_video() -> EncodedMedia:
    from .media import encode_dense_video

    return encode_dense_video(1.0, BITRATE)


def dense_publisher(media: EncodedMedia) -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    clock = Clock()
    pc.addTrack(PacketTrack("video", media, clock))
    pc.addTrack(SyntheticAudio(clock))
    return pc


def storage_args(seaweedfs: SeaweedFS, prefix: str, *extra: str) -> list[str]:
    return [
        "--storage",
        f"s3://{BUCKET}/{prefix}",
        "--s3-endpoint",
        seaweedfs.endpoint,
        "--part-size",
        str(PART),
        "--auto-record",
        *extra,
    ]


@asynccontextmanager
async def storage_server(
    seaweedfs: SeaweedFS, folder: Path, *extra: str
) -> AsyncIterator[tuple[subprocess.Popen[str], aiohttp.ClientSession]]:
    """``serve --auto-record`` spooling to ``folder/spool`` and uploading under the prefix
    ``folder.name``; the process and an HTTP client for it."""
    args = storage_args(seaweedfs, folder.name, *extra)
    async with (
        server_process(folder / "spool", *args, env=seaweedfs.environment) as (process, base),
        aiohttp.ClientSession(base) as http,
    ):
        yield process, http


async def recording_of(http: aiohttp.ClientSession, session: str) -> str:
    """The name of the session's recording, once it has one."""
    async with asyncio.timeout(15):
        while True:
            async with http.get(f"/api/sessions/{session}") as response:
                name = (await response.json())["recording"]
            if name:
                return str(name)
            await asyncio.sleep(0.05)


async def recorded_seconds(http: aiohttp.ClientSession, session: str) -> float:
    """How much the session's recording has recorded so far (its file's time)."""
    async with http.get(f"/api/sessions/{session}") as response:
        return float((await response.json())["recordedSeconds"])


async def until_parts(s3: Any, key: str, least: int, timeout: float = 30) -> list[int]:
    """Wait until the unfinished upload of ``key`` holds parts 2..``least`` (never the
    head, part 1: it is sent once the file is final)."""
    async with asyncio.timeout(timeout):
        while True:
            parts = await uploaded_parts(s3, key)
            assert 1 not in parts, parts
            if parts and parts[-1] >= least:
                return parts
            await asyncio.sleep(0.1)


async def until_stored(s3: Any, key: str, timeout: float) -> bytes:
    """The object once it exists (uploads complete atomically)."""
    async with asyncio.timeout(timeout):
        while True:
            listing = await s3.list_objects_v2(Bucket=BUCKET, Prefix=key)
            if any(item["Key"] == key for item in listing.get("Contents", [])):
                return await object_bytes(s3, key)
            await asyncio.sleep(0.2)


def of_session(payloads: list[dict[str, Any]], session: str) -> list[str]:
    return [p["type"] for p in payloads if p["data"].get("session") == session]


async def test_a_recording_reaches_the_bucket_while_it_grows_and_is_served_from_it(
    seaweedfs: SeaweedFS, dense_video: EncodedMedia, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    hook = ["--webhook", "", "--webhook-secret", WEBHOOK_SECRET]
    async with webhook_receiver() as hooks:
        hook[1] = hooks.url
        async with storage_server(seaweedfs, tmp_path, *hook) as (_, http), seaweedfs.s3() as s3:
            publisher = await publish(http, pc=dense_publisher(dense_video))
            session = publisher.session
            name = await recording_of(http, session)
            key = f"{tmp_path.name}/{name}"
            await until_parts(s3, key, 2)
            async with http.get(f"/api/sessions/{session}") as response:
                assert (await response.json())["recorderState"] == "recording"
            assert (spool / name).exists()

            await http.post(f"/api/sessions/{session}/stop")
            await hooks.until(
                lambda got: "recording.uploaded" in of_session(got, session), 30, "the upload"
            )
            assert not (spool / name).exists() and not (spool / f"{name}.json").exists()
            stored = await object_bytes(s3, key)
            listed = {
                entry["name"]: entry for entry in await (await http.get("/api/recordings")).json()
            }
            assert listed[name]["size"] == len(stored) and listed[name]["state"] == "complete"
            assert listed[name]["session"] == session
            async with http.get(f"/recordings/{name}", headers={"Range": "bytes=1000-4999"}) as r:
                assert r.status == 206, await r.text()
                assert r.headers["Content-Range"] == f"bytes 1000-4999/{len(stored)}"
                assert await r.read() == stored[1000:5000]
            beyond = {"Range": f"bytes={len(stored)}-"}
            async with http.get(f"/recordings/{name}", headers=beyond) as response:
                assert response.status == 416
            async with http.get(f"/recordings/{name}") as response:
                assert response.status == 200
                assert response.content_type == "video/webm"
                served = await response.read()
            assert served == stored
            copy = tmp_path / name
            copy.write_bytes(served)
            assert ffmpeg_errors(copy) == ""
            assert len(stored) > 2 * PART

            await http.delete(f"/api/sessions/{session}")
            await hooks.until(
                lambda got: "session.ended" in of_session(got, session), 15, "session.ended"
            )
            await publisher.close()
            values: dict[Any, float] = {}

            async def counted_deliveries() -> bool:
                nonlocal values
                values = await scrape(http)
                return metric(values, "webhook_deliveries_total", outcome="delivered") >= 5

            await until(counted_deliveries, 10, "the deliveries in /metrics")
            # Every byte of the recording (its sidecar too), some maybe sent twice.
            assert metric(values, "upload_bytes_total") > len(stored)
            assert ("rtc_recorder_upload_failures_total", ()) in values
    assert of_session(hooks.accepted, session) == [
        "session.started",
        "recording.started",
        "recording.stopped",
        "recording.uploaded",
        "session.ended",
    ]
    assert all(d.accepted for d in hooks.deliveries)  # every signature held
    stopped = next(p for p in hooks.accepted if p["type"] == "recording.stopped")
    assert {track["kind"]: track["path"] for track in stopped["data"]["tracks"]} == {
        "video": "passthrough",
        "audio": "passthrough",
    }
    uploaded = next(p for p in hooks.accepted if p["type"] == "recording.uploaded")
    assert uploaded["data"] == {
        "name": name,
        "session": session,
        "location": f"s3://{BUCKET}/{key}",
        "size": len(stored),
    }


async def test_a_recording_cut_by_sigkill_is_uploaded_whole_at_the_next_start(
    seaweedfs: SeaweedFS, dense_video: EncodedMedia, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    async with storage_server(seaweedfs, tmp_path) as (process, http), seaweedfs.s3() as s3:
        publisher = await publish(http, pc=dense_publisher(dense_video))
        name = await recording_of(http, publisher.session)
        key = f"{tmp_path.name}/{name}"
        await until_parts(s3, key, 2)
        process.kill()
        process.wait(10)
        await publisher.close()
    on_disk = (spool / name).read_bytes()
    assert json.loads((spool / f"{name}.json").read_text())["state"] == "recording"

    async with storage_server(seaweedfs, tmp_path) as (process, _), seaweedfs.s3() as s3:
        stored = await until_stored(s3, key, 60)
        sidecar = json.loads(await object_bytes(s3, f"{key}.json"))
        assert "repaired" in server_log(process)
    # Everything the crash left on disk (less an element it cut short), finished: the
    # header now says how long it is.
    media_starts = on_disk.index(CLUSTER_ID)
    assert stored[media_starts:] == on_disk[media_starts : len(stored)]
    assert len(on_disk) - len(stored) < 2_000_000
    copy = tmp_path / name
    copy.write_bytes(stored)
    assert ffmpeg_errors(copy) == ""
    assert sidecar["state"] == "interrupted" and sidecar["duration"] > 2
    with av.open(str(copy)) as container:
        assert container.duration is not None
        assert abs(container.duration / av.time_base - sidecar["duration"]) < 0.1
    assert not (spool / name).exists()


async def test_a_store_down_for_20_seconds_neither_slows_nor_damages_the_recording(
    seaweedfs: SeaweedFS, dense_video: EncodedMedia, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    async with storage_server(seaweedfs, tmp_path, "--keep-local") as (process, http):
        publisher = await publish(http, pc=dense_publisher(dense_video))
        name = await recording_of(http, publisher.session)
        key = f"{tmp_path.name}/{name}"
        async with seaweedfs.s3() as s3:
            await until_parts(s3, key, 2)
        await asyncio.to_thread(seaweedfs.stop)  # the publisher keeps sending meanwhile
        # The outage in the file's time, as the recorder counts it (so that SeaweedFS
        # starting again, a burst of CPU on a small machine, stays outside it).
        outage = [await recorded_seconds(http, publisher.session), 0.0]
        stopped = time.monotonic()
        try:
            # The outage itself (its length is the scenario, not a wait for something):
            # the server answers throughout; the file shows what recording did meanwhile.
            while time.monotonic() - stopped < 20:
                async with asyncio.timeout(2), http.get("/healthz") as response:
                    assert response.status == 200
                await asyncio.sleep(0.5)
            outage[1] = await recorded_seconds(http, publisher.session)
        finally:
            await asyncio.to_thread(seaweedfs.start)  # the publisher keeps sending meanwhile
        await http.post(f"/api/sessions/{publisher.session}/stop")
        async with seaweedfs.s3() as s3:
            stored = await until_stored(s3, key, 60)
        await publisher.close()
        assert "the object store failed, retrying" in server_log(process)
    assert stored == (spool / name).read_bytes()  # kept, and uploaded exactly
    assert ffmpeg_errors(spool / name) == ""
    video = probe(spool / name, decode=False)["video"]
    # The recording went on through the outage: its frames are there. A store that held
    # recording up would leave a hole of seconds; a machine overloaded by other work
    # loses packets, hence scattered frames, outage or not: the bounds allow that.
    start, end = outage[0] + 1, outage[1] - 1
    during = [at for at, _, _ in video.packets if start <= at <= end]
    assert len(during) >= 0.9 * 30 * (end - start), (len(during), start, end)
    gaps = [b - a for a, b in itertools.pairwise([start, *during, end])]
    assert max(gaps) < 2.0, f"video stalled {max(gaps):.3f} s during the outage"


async def test_sigterm_finalizes_and_uploads_every_recording_before_the_process_exits(
    seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    async with storage_server(seaweedfs, tmp_path) as (process, http):
        publisher = await publish(http)
        name = await recording_of(http, publisher.session)
        file = spool / name
        await wait_for(lambda: file.exists() and file.stat().st_size > 50_000, 15, "media")
        process.terminate()
        assert await asyncio.to_thread(process.wait, 30) == 0
        await publisher.close()
    async with seaweedfs.s3() as s3:
        stored = await object_bytes(s3, f"{tmp_path.name}/{name}")
        sidecar = json.loads(await object_bytes(s3, f"{tmp_path.name}/{name}.json"))
    assert sidecar["state"] == "complete" and not (spool / name).exists()
    copy = tmp_path / name
    copy.write_bytes(stored)
    assert ffmpeg_errors(copy) == ""


async def test_sigterm_with_the_store_down_exits_within_the_bound_and_the_next_start_uploads(
    seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    key = f"{tmp_path.name}/"
    async with storage_server(seaweedfs, tmp_path, "--shutdown-timeout", "3") as (process, http):
        publisher = await publish(http)
        name = await recording_of(http, publisher.session)
        key += name
        file = spool / name
        await wait_for(lambda: file.exists() and file.stat().st_size > 50_000, 15, "media")
        await asyncio.to_thread(seaweedfs.stop)  # the publisher keeps sending meanwhile
        try:
            process.terminate()
            # The upload can never finish meanwhile: a server that waited for it, past the
            # 3 s drain and 2 s of HTTP grace, would still be running after 30 s.
            assert await asyncio.to_thread(process.wait, 30) == 0
            assert "uploads left for the next start: 1" in server_log(process)
        finally:
            await asyncio.to_thread(seaweedfs.start)
        await publisher.close()
    assert json.loads((spool / f"{name}.json").read_text())["state"] == "complete"
    on_disk = file.read_bytes()

    async with storage_server(seaweedfs, tmp_path), seaweedfs.s3() as s3:
        assert await until_stored(s3, key, 60) == on_disk
        sidecar = json.loads(await object_bytes(s3, f"{key}.json"))
        await wait_for(lambda: not file.exists(), 10, "the spooled file to go")
    assert sidecar["state"] == "complete"
