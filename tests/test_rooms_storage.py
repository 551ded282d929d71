"""Room recordings with object storage: ``rtc-recorder serve --storage s3://...`` as a
real process, SeaweedFS as the store. A room recording's folder is uploaded as a folder
(its files under ``{prefix}{name}/``, the manifest with them), then listed, served and
deleted from the bucket."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from benchmarks.loadbench.object_store import BUCKET, WEBHOOK_SECRET, SeaweedFS, webhook_receiver

from .media import ffmpeg_errors
from .room_support import valid_manifest
from .server_support import publish, server_process
from .storage_support import object_bytes, object_keys

ROOM = "standup"


async def test_a_room_recording_is_uploaded_as_a_folder_and_served_from_the_bucket(
    seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    prefix = f"{tmp_path.name}/"
    args = ["--storage", f"s3://{BUCKET}/{prefix}", "--s3-endpoint", seaweedfs.endpoint]
    async with (
        webhook_receiver() as hooks,
        server_process(
            spool,
            *args,
            *("--webhook", hooks.url, "--webhook-secret", WEBHOOK_SECRET),
            env=seaweedfs.environment,
        ) as (_, base),
        aiohttp.ClientSession(base) as http,
        seaweedfs.s3() as s3,
    ):
        publishers = [await publish(http, room=ROOM, whip=index == 1) for index in range(2)]
        response = await http.post(f"/api/rooms/{ROOM}/start", json={"timeslice": 500})
        assert response.status == 200, await response.text()
        name = (await response.json())["recording"]
        async with asyncio.timeout(20):
            while (await (await http.get(f"/api/rooms/{ROOM}")).json())["recordedSeconds"] < 2:
                await asyncio.sleep(0.1)
        assert (await http.post(f"/api/rooms/{ROOM}/stop")).status == 200
        async with asyncio.timeout(30):  # uploaded, then removed from the spool
            while (spool / name).exists():
                await asyncio.sleep(0.1)
        await hooks.until(
            lambda got: any(p["type"] == "recording.uploaded" for p in got), 15, "the notice"
        )
        of_room = [p for p in hooks.accepted if p["data"].get("room") == ROOM]
        assert [p["type"] for p in of_room] == [
            "recording.started",
            "recording.stopped",
            "recording.uploaded",
        ]
        assert {p["data"]["name"] for p in of_room} == {name}

        keys = await object_keys(s3, f"{prefix}{name}/")
        files = {key.rsplit("/", 1)[1] for key in keys}
        manifest = valid_manifest(
            json.loads(await object_bytes(s3, f"{prefix}{name}/manifest.json"))
        )
        assert manifest["state"] == "finalized"
        participant_files = {p["file"] for p in manifest["participants"]}
        assert files == {"manifest.json", "mix.ogg", *participant_files}
        assert len(participant_files) == 2

        listing = await (await http.get("/api/recordings")).json()
        assert [entry["name"] for entry in listing].count(name) == 1
        entry = next(entry for entry in listing if entry["name"] == name)
        assert entry["room"] == ROOM and entry["state"] == "complete"
        assert set(entry["files"]) == files
        assert {p["session"] for p in entry["participants"]} == {p.session for p in publishers}
        for file in files:
            stored = await object_bytes(s3, f"{prefix}{name}/{file}")
            async with http.get(f"/recordings/{name}/{file}") as whole:
                assert whole.status == 200 and await whole.read() == stored
            ranged = {"Range": "bytes=10-99"}
            async with http.get(f"/recordings/{name}/{file}", headers=ranged) as part:
                assert part.status == 206 and await part.read() == stored[10:100]
            if file != "manifest.json":
                copy = tmp_path / file
                copy.write_bytes(stored)
                assert not ffmpeg_errors(copy), file

        assert (await http.delete(f"/api/recordings/{name}")).status == 200
        assert await object_keys(s3, f"{prefix}{name}/") == set()
        listing = await (await http.get("/api/recordings")).json()
        assert name not in [entry["name"] for entry in listing]
        assert (await http.get(f"/recordings/{name}/mix.ogg")).status == 404
        for publisher in publishers:
            await publisher.close()
