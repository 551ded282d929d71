"""A long recording through the server: duration, lip sync and memory after N minutes.

    .venv/bin/python benchmarks/long_run.py --minutes 30 --pauses 10 --markdown

A sender process publishes pre-encoded 720p30 VP8 that flashes white and Opus that beeps
at the same instants, once a second (the test suite's sync source, encoded once, sent
without encoding), to ``rtc-recorder serve`` in a process of its own. The run records for
``--minutes`` with ``--pauses`` pause/resume cycles spread over it, sampling the server's
RSS every 10 s. At the end it checks the file: its duration against the time spent
recording (measured here, from the API's answers), and the offset between flash and beep
over the last minute (decoded back). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import av
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.media import (  # noqa: E402
    Clock,
    PacketTrack,
    encode_sync_source,
    ffmpeg_errors,
)
from tests.server_support import server_process  # noqa: E402


def sender_main(base: str, ready: Path) -> None:
    """The sender process: publish the looping sync media until killed."""
    import aioice.ice
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []

    video, audio = encode_sync_source(10.0, 1280, 720, keyframe_every=30)

    async def run() -> None:
        clock = Clock()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTrack(PacketTrack("video", video, clock))
        pc.addTrack(PacketTrack("audio", audio, clock))
        await pc.setLocalDescription(await pc.createOffer())
        async with (
            aiohttp.ClientSession(base) as http,
            http.post("/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}) as response,
        ):
            answer = await response.json()
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        ready.write_text(answer["session"])
        await asyncio.Event().wait()

    asyncio.run(run())


def server_rss(process: psutil.Process) -> float:
    return process.memory_info().rss / 1e6


def last_minute_offsets(path: Path, seconds: float) -> list[float]:
    """Flash minus beep, for every flash of the file's last ``seconds``."""
    flashes: list[float] = []
    beeps: list[float] = []
    import numpy as np

    with av.open(str(path)) as container:
        length = float(container.duration or 0) / av.time_base
        container.seek(int((length - seconds) * av.time_base), any_frame=False)
        streams = [s for s in container.streams if s.type in ("audio", "video")]
        for frame in container.decode(*streams):
            if frame.pts is None:
                continue
            t = float(frame.pts * frame.time_base)
            if t < length - seconds:
                continue
            if isinstance(frame, av.VideoFrame):
                bright = float(frame.to_ndarray(format="gray").mean()) > 230
                if bright and (not flashes or t - flashes[-1] > 0.5):
                    flashes.append(t)
            else:
                samples = frame.to_ndarray().astype(np.float64)[0] * (
                    32768 if frame.format.name.startswith("flt") else 1
                )
                for offset in range(0, len(samples) - 240 + 1, 240):
                    at = t + offset / frame.sample_rate
                    loud = np.sqrt(np.mean(samples[offset : offset + 240] ** 2)) > 3000
                    if loud and (not beeps or at - beeps[-1] > 0.5):
                        beeps.append(at)
    return [f - min(beeps, key=lambda b, f=f: abs(b - f)) for f in flashes if beeps]


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recordings = out / "long-run-recordings"
    recordings.mkdir(exist_ok=True)
    for old in recordings.iterdir():
        old.unlink()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ready = out / "long-run-session"
    ready.unlink(missing_ok=True)
    sender = None
    try:
        async with (
            server_process(
                recordings, "--timeslice", "1000", "--idle-timeout", "60", port=args.port
            ) as (server, base),
            aiohttp.ClientSession(base) as http,
        ):
            sender = subprocess.Popen(
                [sys.executable, __file__, "--sender", base, "--ready", str(ready)],
                cwd=ROOT,
                env=env,
            )
            while not ready.exists():
                await asyncio.sleep(0.2)
            session = ready.read_text()
            api = f"/api/sessions/{session}"
            while (await (await http.get(api)).json())["connectionState"] != "connected":
                await asyncio.sleep(0.2)
            await asyncio.sleep(2)  # past the first sender reports
            total = args.minutes * 60
            segment = (total - args.pauses * args.pause_seconds) / (args.pauses + 1)
            rss: list[tuple[float, float]] = []
            watched = psutil.Process(server.pid)
            began = time.monotonic()

            async def sample() -> None:
                while True:
                    rss.append((time.monotonic() - began, server_rss(watched)))
                    await asyncio.sleep(10)

            sampler = asyncio.ensure_future(sample())
            recorded = 0.0
            answer = await (await http.post(f"{api}/start")).json()
            name = answer["recording"]
            mark = time.monotonic()
            for cycle in range(args.pauses + 1):
                await asyncio.sleep(segment)
                if cycle == args.pauses:
                    break
                await http.post(f"{api}/pause")
                recorded += time.monotonic() - mark
                await asyncio.sleep(args.pause_seconds)
                await http.post(f"{api}/resume")
                mark = time.monotonic()
            await http.post(f"{api}/stop")
            recorded += time.monotonic() - mark
            stats = await (await http.get(api)).json()
            sampler.cancel()
            while json.loads((recordings / f"{name}.json").read_text()).get("state") != "complete":
                await asyncio.sleep(0.2)
            server.terminate()
            server.wait(30)
    finally:
        if sender is not None:
            sender.kill()
            sender.wait(10)
    path = recordings / name
    with av.open(str(path)) as container:
        file_duration = float(container.duration or 0) / av.time_base
    offsets = last_minute_offsets(path, 60.0)
    tail = [mb for t, mb in rss if t >= 120]
    slope = 0.0
    if len(tail) > 2:
        times = [t / 60 for t, _ in rss if t >= 120]
        slope = statistics.linear_regression(times, tail).slope
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "minutes": args.minutes,
        "pauses": args.pauses,
        "recordedSeconds": recorded,
        "serverRecordedSeconds": stats.get("recordedSeconds"),
        "fileDuration": file_duration,
        "durationError": file_duration - recorded,
        "avOffsetsLastMinute": offsets,
        "avOffsetMax": max((abs(o) for o in offsets), default=None),
        "ffmpegClean": not ffmpeg_errors(path),
        "fileBytes": path.stat().st_size,
        "rssCurve": rss,
        "rssStart": rss[0][1] if rss else None,
        "rssEnd": rss[-1][1] if rss else None,
        "rssSlopeMBPerMinute": slope,
    }


def markdown(result: dict[str, Any]) -> str:
    offsets = result["avOffsetsLastMinute"]
    lines = [
        f"`{result['command']}`",
        "",
        "| metric | value | target |",
        "|---|---:|---|",
        f"| recorded time (s) | {result['recordedSeconds']:.3f} | |",
        f"| file duration (s) | {result['fileDuration']:.3f} | |",
        f"| duration error (ms) | {1000 * result['durationError']:+.0f} | within ±100 |",
        f"| A/V offset over the last minute (ms, max abs) | "
        f"{1000 * (result['avOffsetMax'] or 0):.1f} ({len(offsets)} flashes) | within 20 |",
        f"| ffmpeg -v error | {'clean' if result['ffmpegClean'] else 'ERRORS'} | clean |",
        f"| server RSS start → end (MB) | {result['rssStart']:.1f} → {result['rssEnd']:.1f} "
        "| flat |",
        f"| RSS slope after 2 min (MB/min) | {result['rssSlopeMBPerMinute']:+.3f} | ≈ 0 |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--pauses", type=int, default=10)
    parser.add_argument("--pause-seconds", type=float, default=15)
    parser.add_argument("--port", type=int, default=8097)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--sender", help=argparse.SUPPRESS)
    parser.add_argument("--ready", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sender:
        sender_main(args.sender, Path(args.ready))
        return
    result = asyncio.run(orchestrate(args))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (Path(args.out) / f"long_run-{stamp}.json").write_text(json.dumps(result, indent=1))
    print(markdown(result) if args.markdown else json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
