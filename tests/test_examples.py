"""The examples are real programs: run them against real servers and check what they leave."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import av

from .media import duration, ffmpeg_errors, make_media_file, probe, wait_for
from .server_support import ROOT, free_port, publisher_pc, server_process


def run_example(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def test_publish_file_drives_a_recording_over_offer_and_whip(tmp_path: Path) -> None:
    source = tmp_path / "source.mp4"
    make_media_file(source, seconds=8.0)
    recordings = tmp_path / "recordings"
    async with server_process(recordings, "--token", "t0ken") as (_, base):
        for whip in (False, True):
            flags = ["--whip"] if whip else []
            result = await asyncio.to_thread(
                run_example,
                "examples/publish_file.py",
                str(source),
                "--server",
                base,
                "--token",
                "t0ken",
                "--record",
                "1.5",
                "--pause",
                "1",
                *flags,
            )
            assert result.returncode == 0, result.stderr
            lines = result.stdout.splitlines()
            events = [line.split(":")[0] for line in lines if line.startswith("< ")]
            for expected in ("< start", "< pause", "< resume", "< dataavailable", "< stop"):
                assert expected in events, result.stdout
            assert "> stop: inactive" in lines
    files = sorted(recordings.glob("*.webm"))
    assert len(files) == 2
    for path in files:
        assert not ffmpeg_errors(path)
        assert abs(duration(probe(path)) - 3.0) < 0.35  # 1.5 s + 1.5 s, the pause cut out


async def test_dropin_server_records_a_browser_like_client(tmp_path: Path) -> None:
    target = tmp_path / "call.webm"
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "examples/dropin_server.py",
            "--record-to",
            str(target),
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(base) as http:
            for _ in range(200):
                try:
                    pc = publisher_pc()
                    await pc.setLocalDescription(await pc.createOffer())
                    body = {"sdp": pc.localDescription.sdp, "type": "offer"}
                    async with http.post("/offer", json=body) as response:
                        answer = await response.json()
                    break
                except aiohttp.ClientConnectionError:
                    await pc.close()
                    await asyncio.sleep(0.05)
            from aiortc import RTCSessionDescription

            await pc.setRemoteDescription(RTCSessionDescription(**answer))
            await wait_for(lambda: target.exists() and target.stat().st_size > 30000, 20, "media")
            await pc.close()  # the peer goes away: the recorder stops, the file is finalized

            def finalized() -> bool:
                try:
                    with av.open(str(target)) as container:
                        return bool(container.duration)
                except av.FFmpegError:
                    return False

            await wait_for(finalized, 20, "the file to be finalized")
    finally:
        process.terminate()
        process.wait(15)
    assert not ffmpeg_errors(target)
    assert duration(probe(target)) > 0.5
