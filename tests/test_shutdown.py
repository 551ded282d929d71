"""SIGTERM with storage that stops answering: ``/readyz`` turns 503 at once, every other
recording is finalized, and the process exits within ``--shutdown-timeout`` even though
one recording's writes never return.

The server's recordings folder is a FUSE filesystem (``tests/blocking_fs.py``) whose
writes to one chosen file block on command, so one process holds a recording whose disk
no longer answers and another whose disk is fine: the writer thread of the first is
really stuck in a ``write()`` system call."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rtc_recorder.server.lifecycle import HTTP_GRACE

from .blocking_fs import BlockingDisk, blocking_disk
from .media import ffmpeg_errors
from .server_support import publish, publisher_pc, server_log, server_process

BOUND = 4.0  # --shutdown-timeout of these tests

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse"), reason="FUSE is not available in this kernel or container"
)


async def recording(http: aiohttp.ClientSession, count: int) -> dict[str, str]:
    """Wait until ``count`` sessions each recorded 20 kB; their recordings' names by session."""
    deadline = time.monotonic() + 20
    while True:
        sessions = await (await http.get("/api/sessions")).json()
        if len(sessions) == count and all(s["bytes"] > 20000 for s in sessions):
            return {s["id"]: s["recording"] for s in sessions}
        assert time.monotonic() < deadline, f"the sessions did not all record: {sessions}"
        await asyncio.sleep(0.2)


async def draining(http: aiohttp.ClientSession) -> dict[str, Any]:
    """Wait until ``/readyz`` says the server drains; its body."""
    deadline = time.monotonic() + 5
    while True:
        response = await http.get("/readyz")
        body: dict[str, Any] = await response.json()
        if response.status == 503:
            return body
        assert time.monotonic() < deadline, f"/readyz still answers {response.status}: {body}"
        await asyncio.sleep(0.02)


async def block_writes(disk: BlockingDisk, name: str) -> None:
    """Make ``name``'s disk stop answering; return once its writer is stuck in a write."""
    disk.block(name)
    await asyncio.to_thread(disk.wait_blocked, name, 10)


def finalized(folder: Path, name: str) -> None:
    meta = json.loads((folder / f"{name}.json").read_text())
    assert meta["state"] == "complete" and meta["duration"] > 0.5, meta
    assert not ffmpeg_errors(folder / name)


async def test_sigterm_gives_up_a_recording_on_dead_storage_after_the_bound(
    tmp_path: Path,
) -> None:
    backing = tmp_path / "disk"
    with blocking_disk(backing, tmp_path / "recordings") as disk:
        async with (
            server_process(disk.mountpoint, "--auto-record", "--shutdown-timeout", str(BOUND)) as (
                process,
                base,
            ),
            aiohttp.ClientSession(base) as http,
        ):
            stuck, healthy = await publish(http), await publish(http)
            names = await recording(http, 2)
            await block_writes(disk, names[stuck.session])

            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert (await draining(http))["reason"] == "draining"
            status = await asyncio.to_thread(process.wait, BOUND + HTTP_GRACE + 15)
            elapsed = time.monotonic() - signalled
            log = server_log(process)
            for publisher in (stuck, healthy):
                await publisher.close()

        assert status == 1, log  # a recording was left unfinished
        assert elapsed < BOUND + HTTP_GRACE + 5, (elapsed, log)
        assert (
            f"WARNING not finalized session={stuck.session} recording={names[stuck.session]}" in log
        ), log
        stopped = re.search(r"INFO stopped sessions=2 unfinished=1 seconds=([\d.]+)", log)
        assert stopped is not None, log
        assert BOUND <= float(stopped.group(1)) < BOUND + 1, log  # waited the bound, no more
        finalized(backing, names[healthy.session])
        meta = json.loads((backing / f"{names[stuck.session]}.json").read_text())
        assert meta["state"] == "recording"  # never claimed to be complete


async def test_readyz_turns_503_at_sigterm_while_recordings_are_still_finalizing(
    tmp_path: Path,
) -> None:
    """The drain is held open by a disk that stops answering, then answers again within the
    bound: the recording is finalized after all and the process exits 0."""
    backing = tmp_path / "disk"
    with blocking_disk(backing, tmp_path / "recordings") as disk:
        async with (
            server_process(disk.mountpoint, "--auto-record", "--shutdown-timeout", "30") as (
                process,
                base,
            ),
            aiohttp.ClientSession(base) as http,
        ):
            publisher = await publish(http)
            names = await recording(http, 1)
            await block_writes(disk, names[publisher.session])

            process.send_signal(signal.SIGTERM)
            body = await draining(http)
            assert body["draining"] is True and body["ready"] is False
            sessions = await (await http.get("/api/sessions")).json()
            assert [s["id"] for s in sessions] == [publisher.session]  # not closed yet
            pc = publisher_pc()
            await pc.setLocalDescription(await pc.createOffer())
            offer = await http.post(
                "/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}
            )
            await pc.close()
            assert offer.status == 503 and "Retry-After" in offer.headers
            assert process.poll() is None

            disk.release()
            status = await asyncio.to_thread(process.wait, 30)
            await publisher.close()
            assert status == 0, server_log(process)
        finalized(backing, names[publisher.session])
