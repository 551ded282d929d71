"""The uploader on its own, against a real SeaweedFS: recordings made of files this test
writes (a single growing file, a room's folder of files), so every byte is known."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry

from benchmarks.loadbench.object_store import BUCKET, SeaweedFS
from rtc_recorder.server.notices import Notice, Notices
from rtc_recorder.server.recordings import RecordingStore, upload_state_path
from rtc_recorder.server.storage import MIB, BucketLocation
from rtc_recorder.server.uploader import Uploader

from .media import wait_for
from .storage_support import object_bytes, object_keys, uploaded_parts

PART = 5 * MIB


class Uploaded:
    """Collects the ``recording.uploaded`` notices."""

    def __init__(self, notices: Notices) -> None:
        self.names: list[str] = []
        self.data: dict[str, dict[str, object]] = {}
        notices.subscribe(self.take)

    def take(self, notice: Notice) -> None:
        if notice.type == "recording.uploaded":
            self.names.append(str(notice.data["name"]))
            self.data[str(notice.data["name"])] = notice.data


@asynccontextmanager
async def uploading(
    seaweedfs: SeaweedFS, spool: Path, prefix: str, keep_local: bool = False
) -> AsyncIterator[tuple[Uploader, Notices, Uploaded, CollectorRegistry]]:
    for key, value in seaweedfs.environment.items():
        os.environ.setdefault(key, value)
    notices, registry = Notices(), CollectorRegistry()
    uploader = Uploader(
        RecordingStore(spool),
        BucketLocation(BUCKET, prefix),
        seaweedfs.endpoint,
        PART,
        keep_local,
        registry,
        notices,
    )
    notices.subscribe(uploader.on_notice)
    uploaded = Uploaded(notices)
    uploader.start()
    try:
        yield uploader, notices, uploaded, registry
    finally:
        await uploader.close(10)


def append(path: Path, size: int) -> bytes:
    data = secrets.token_bytes(size)
    with open(path, "ab") as file:
        file.write(data)
    return data


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(data)


def started(name: str, **data: object) -> Notice:
    return Notice("recording.started", {"name": name, **data})


def stopped(name: str, **data: object) -> Notice:
    return Notice("recording.stopped", {"name": name, **data})


async def test_a_room_folder_uploads_while_it_grows_and_arrives_as_its_final_files(
    seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    prefix = f"{tmp_path.name}/"
    room = "standup-20261201T101500Z"
    folder = tmp_path / room
    async with uploading(seaweedfs, tmp_path, prefix) as (uploader, notices, uploaded, registry):
        folder.mkdir()
        notices.publish(started(room, room="standup"))
        (folder / "manifest.json").write_text('{"room": "standup", "state": "recording"}')
        append(folder / "a1b2c3.webm", 2 * PART + 1000)
        append(folder / "d4e5f6.webm", 1000)
        async with seaweedfs.s3() as s3:
            key = f"{prefix}{room}/a1b2c3.webm"
            await wait_for_parts(s3, key, [2])
            assert uploader.busy(room)
            # What finalizing does: more media, then patches in place, in the head and
            # in a part that was sent already; the manifest is rewritten.
            append(folder / "a1b2c3.webm", PART // 2)
            patch(folder / "a1b2c3.webm", 4, b"HEAD")
            patch(folder / "a1b2c3.webm", PART + 10, b"PATCHED")
            append(folder / "d4e5f6.webm", PART + 5)
            (folder / "manifest.json").write_text('{"room": "standup", "state": "finalized"}')
            expected = {
                f"{room}/{path.name}": path.read_bytes() for path in sorted(folder.iterdir())
            }
            notices.publish(stopped(room, room="standup"))
            await wait_for(lambda: room in uploaded.names, 30, "the upload to complete")
            assert await object_keys(s3, f"{prefix}{room}/") == {prefix + k for k in expected}
            for name, data in expected.items():
                assert await object_bytes(s3, prefix + name) == data, name
            assert await uploaded_parts(s3, key) == []  # nothing left unfinished
    assert not folder.exists() and not upload_state_path(tmp_path, room).exists()
    assert uploaded.data[room]["room"] == "standup"
    sent = registry.get_sample_value("rtc_recorder_upload_bytes_total")
    # Every byte once, plus the part that changed after it was sent.
    assert sent == sum(map(len, expected.values())) + PART
    assert registry.get_sample_value("rtc_recorder_upload_failures_total") == 0


async def wait_for_parts(s3: object, key: str, parts: list[int]) -> None:
    async with asyncio.timeout(20):
        while (found := await uploaded_parts(s3, key)) != parts:
            assert all(number in parts for number in found), found
            await asyncio.sleep(0.1)


async def test_a_small_recording_is_one_object_and_stays_in_the_spool_with_keep_local(
    seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    prefix = f"{tmp_path.name}/"
    name = "abcdef012345-20261201T101500Z.webm"
    media = tmp_path / name
    sidecar = tmp_path / f"{name}.json"
    async with uploading(seaweedfs, tmp_path, prefix, keep_local=True) as (_, notices, up, _r):
        notices.publish(started(name, session="abcdef012345"))
        data = append(media, 300_000)
        sidecar.write_text('{"session": "abcdef012345", "state": "complete"}')
        notices.publish(stopped(name, session="abcdef012345"))
        await wait_for(lambda: name in up.names, 30, "the upload to complete")
        async with seaweedfs.s3() as s3:
            assert await object_bytes(s3, prefix + name) == data
            assert await object_bytes(s3, f"{prefix}{name}.json") == sidecar.read_bytes()
    assert media.read_bytes() == data and sidecar.exists()
    assert up.data[name]["location"] == f"s3://{BUCKET}/{prefix}{name}"
    # A restart finds nothing to send again.
    async with uploading(seaweedfs, tmp_path, prefix, keep_local=True) as (uploader, *rest):
        assert uploader.pending() == []
    assert rest[2].get_sample_value("rtc_recorder_upload_bytes_total") == 0


async def test_an_upload_the_store_dropped_is_started_again_and_completes(
    seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    prefix = f"{tmp_path.name}/"
    name = "abcdef012345-20261201T101500Z.webm"
    media = tmp_path / name
    async with uploading(seaweedfs, tmp_path, prefix) as (_, notices, uploaded, registry):
        notices.publish(started(name, session="abcdef012345"))
        append(media, 2 * PART + 10)
        async with seaweedfs.s3() as s3:
            key = prefix + name
            await wait_for_parts(s3, key, [2])
            # What a bucket's lifecycle rule does to an upload left open too long.
            listing = await s3.list_multipart_uploads(Bucket=BUCKET, Prefix=key)
            for upload in listing["Uploads"]:
                await s3.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload["UploadId"])
            append(media, PART)
            data = media.read_bytes()
            notices.publish(stopped(name, session="abcdef012345"))
            await wait_for(lambda: name in uploaded.names, 30, "the upload to complete")
            assert await object_bytes(s3, key) == data
    assert registry.get_sample_value("rtc_recorder_upload_bytes_total") == len(data) + PART
