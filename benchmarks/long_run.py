"""A long recording through the server: duration, lip sync and memory after N minutes.

    .venv/bin/python benchmarks/long_run.py --minutes 30 --pauses 10 --markdown

A sender process publishes pre-encoded 720p30 VP8 that flashes white and Opus that beeps
at the same instants, once a second (the test suite's sync source, ``tests/media.py``,
encoded once, sent without encoding), to ``rtc-recorder serve`` in a process of its own
(``benchmarks/loopback_server.py``). The run records for ``--minutes`` with ``--pauses``
pause/resume cycles spread over it, sampling the server's RSS every 10 s. At the end it
checks the file: its duration against the time spent recording (measured here, from the
API's answers), and the offset between flash and beep over the last minute (decoded back).
Loopback only. Results go to ``OUT/long_run-<date>-<time>.json`` (and ``.md``, ``.log``:
the server's log).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import psutil
from aiortc import RTCPeerConnection, RTCSessionDescription
from loadbench.children import Children
from loadbench.common import Channel, loopback_only, rtc_configuration, run_child
from loadbench.files import ffmpeg_errors
from loadbench.machine import MachineWindow
from loadbench.results import Results, add_output_options, exit_with
from loadbench.server import (
    HANGUP_TIMEOUT,
    NO_LOAD_LIMITS,
    BenchmarkError,
    ServerProcess,
    wait_complete,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.media import Clock, PacketTrack, encode_sync_source  # noqa: E402

RSS_INTERVAL = 10.0  # seconds between samples of the server's RSS
SETTLE_SECONDS = 2.0  # from connected to recording: past the sender's first reports
FLAT_AFTER = 120.0  # the RSS slope is fitted from this many seconds on
CONNECT_TIMEOUT = 120.0  # for the sender's session to connect (it encodes the media first)


def _log(text: str) -> None:
    print(f"[long_run] {text}", file=sys.stderr, flush=True)


# -- the sender process -------------------------------------------------------------------


@dataclass(frozen=True)
class SyncSenderConfig:
    """Where the sync source's one session is offered."""

    offer_url: str


async def _send_sync_source(channel: Channel, config: SyncSenderConfig) -> None:
    """One session of the looping sync source: ``connected`` (with the server's session
    id) once answered, then sending until ``close``."""
    loopback_only()
    # Off the event loop: the encoder drives its picture source with asyncio.run.
    video, audio = await asyncio.to_thread(encode_sync_source, 10.0, 1280, 720, 30)
    clock = Clock()
    pc = RTCPeerConnection(rtc_configuration())
    try:
        pc.addTrack(PacketTrack("video", video, clock))
        pc.addTrack(PacketTrack("audio", audio, clock))
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
        async with (
            aiohttp.ClientSession() as http,
            http.post(config.offer_url, json=offer) as response,
        ):
            if response.status != 200:
                raise RuntimeError(f"/offer answered {response.status}: {await response.text()}")
            answer = await response.json()
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        channel.send({"type": "connected", "session": answer["session"]})
        await channel.receive("close")
    finally:
        await pc.close()


def run_sync_sender(connection: Connection, config: SyncSenderConfig) -> None:
    """Process entry point of the sender."""
    run_child(connection, lambda channel: _send_sync_source(channel, config))


# -- the run --------------------------------------------------------------------------------


def server_rss(process: psutil.Process) -> float:
    """The server's resident set size in MB (10^6 bytes)."""
    return float(process.memory_info().rss) / 1e6


async def record(
    args: argparse.Namespace, server: ServerProcess, session: str
) -> tuple[float, str, dict[str, Any], list[tuple[float, float]]]:
    """One recording of ``session`` with the pause/resume cycles, the server's RSS sampled
    meanwhile: the seconds spent recording (by the API's answers), the recording's name,
    the session's state at the end, and the RSS curve ``(seconds, MB)``."""
    api = server.url(f"/api/sessions/{session}")
    total = args.minutes * 60
    segment = (total - args.pauses * args.pause_seconds) / (args.pauses + 1)
    rss: list[tuple[float, float]] = []
    watched = psutil.Process(server.pid)
    began = time.monotonic()

    async def sample() -> None:
        while True:
            rss.append((time.monotonic() - began, server_rss(watched)))
            await asyncio.sleep(RSS_INTERVAL)

    async with aiohttp.ClientSession(raise_for_status=True) as http:
        sampler = asyncio.ensure_future(sample())
        try:
            recorded = 0.0
            async with http.post(f"{api}/start") as response:
                name = str((await response.json())["recording"])
            mark = time.monotonic()
            for cycle in range(args.pauses + 1):
                await asyncio.sleep(segment)
                if cycle == args.pauses:
                    break
                await _call(http, f"{api}/pause")
                recorded += time.monotonic() - mark
                await asyncio.sleep(args.pause_seconds)
                await _call(http, f"{api}/resume")
                mark = time.monotonic()
            await _call(http, f"{api}/stop")
            recorded += time.monotonic() - mark
            async with http.get(api) as response:
                stats: dict[str, Any] = await response.json()
        finally:
            sampler.cancel()
    return recorded, name, stats, rss


async def _call(http: aiohttp.ClientSession, url: str) -> None:
    async with http.post(url):
        pass


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The server, the sender and one recording; the file checked at the end."""
    recordings = workdir / "recordings"
    server = ServerProcess(
        recordings,
        workdir / "server.log",
        [*NO_LOAD_LIMITS, "--timeslice", "1000", "--idle-timeout", "60"],
        port=args.port,
    )
    children = Children()
    try:
        server.start()
        server.wait_ready()
        _log(f"server pid {server.pid} on port {server.port}; encoding the sync source …")
        children.start("sender", run_sync_sender, SyncSenderConfig(server.url("/offer")))
        session = str(children.expect("sender", "connected", CONNECT_TIMEOUT)["session"])
        server.wait_sessions(1, None, CONNECT_TIMEOUT, [session])
        time.sleep(SETTLE_SECONDS)
        _log(f"recording for {args.minutes:g} min with {args.pauses} pauses")
        machine = MachineWindow()
        try:
            recorded, name, stats, rss = asyncio.run(record(args, server, session))
        except aiohttp.ClientError as error:
            raise BenchmarkError(f"the server's API failed: {error!r}") from error
        load = machine.end()
        wait_complete(recordings, {session}, HANGUP_TIMEOUT)
        children.send("sender", {"type": "close"})
        children.join(30)
        stop = server.stop()
    finally:
        children.end()
        server.close()
    path = recordings / name
    with av.open(str(path)) as container:
        file_duration = float(container.duration or 0) / av.time_base
    offsets = last_minute_offsets(path, 60.0)
    tail = [(t / 60, mb) for t, mb in rss if t >= FLAT_AFTER]
    slope = 0.0
    if len(tail) > 2:
        slope = statistics.linear_regression(*zip(*tail, strict=True)).slope
    return {
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
        "serverStop": stop,
        "machine": load,
    }


def last_minute_offsets(path: Path, seconds: float) -> list[float]:
    """Flash minus nearest beep, for every flash of the file's last ``seconds``."""
    flashes: list[float] = []
    beeps: list[float] = []
    with av.open(str(path)) as container:
        length = float(container.duration or 0) / av.time_base
        container.seek(int((length - seconds) * av.time_base), any_frame=False)
        streams = [s for s in container.streams if s.type in ("audio", "video")]
        for frame in container.decode(*streams):
            if not isinstance(frame, av.VideoFrame | av.AudioFrame):
                continue
            if frame.pts is None or frame.time_base is None:
                continue
            t = float(frame.pts * frame.time_base)
            if t < length - seconds:
                continue
            if isinstance(frame, av.VideoFrame):
                bright = float(frame.to_ndarray(format="gray").mean()) > 230
                if bright and (not flashes or t - flashes[-1] > 0.5):
                    flashes.append(t)
            else:
                _beeps_in(frame, t, beeps)
    return [flash - min(beeps, key=lambda beep: abs(beep - flash)) for flash in flashes if beeps]


def _beeps_in(frame: av.AudioFrame, start: float, beeps: list[float]) -> None:
    """Append to ``beeps`` where a beep starts in ``frame`` (5 ms of loud sound at least
    0.5 s after the previous beep)."""
    samples = frame.to_ndarray().astype(np.float64)[0]
    if frame.format.name.startswith("flt"):
        samples *= 32768
    for offset in range(0, len(samples) - 240 + 1, 240):
        at = start + offset / frame.sample_rate
        loud = np.sqrt(np.mean(samples[offset : offset + 240] ** 2)) > 3000
        if loud and (not beeps or at - beeps[-1] > 0.5):
            beeps.append(at)


def markdown(command: str, result: dict[str, Any]) -> str:
    """The figures against their targets."""
    offsets = result["avOffsetsLastMinute"]
    machine = result["machine"]
    lines = [
        f"`{command}`",
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
        f"| machine CPU busy over the recording (cores of {machine['cores']}); load average "
        f"(1 min), start → end | {machine['busyCores']:.2f}; {machine['loadBefore']:.2f} → "
        f"{machine['loadEnd']:.2f} | |",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="One recording through rtc-recorder serve for N minutes with pauses: "
        "duration, lip sync and memory at the end.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--pauses", type=int, default=10)
    parser.add_argument("--pause-seconds", type=float, default=15.0)
    parser.add_argument("--port", type=int, help="the server's port (default: a free one)")
    add_output_options(parser, "keep the recording in OUT", "table")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.pauses < 0 or args.pause_seconds < 0:
        parser.error("--minutes must be positive, --pauses and --pause-seconds not negative")
    if args.pauses * args.pause_seconds >= args.minutes * 60:
        parser.error("the pauses take the whole run: nothing would be recorded")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = Results.begin("long_run", args, argv)
    with results.server_workdir(args.keep_recordings) as workdir:
        result = run(args, workdir)
    table = markdown(results.command, result)
    results.save(results.document(args, **result), table)
    print(table if args.markdown else json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    exit_with(main)
