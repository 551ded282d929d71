"""What uploading costs: ``rtc-recorder serve --auto-record`` recording N sessions of
pre-encoded 720p, once to disk only and once uploading to S3 (SeaweedFS on loopback) while
it records; the server's CPU and ``/healthz`` latency side by side, and for every recording
the time from its stop to its upload being confirmed.

    .venv/bin/python benchmarks/storage_load.py --sessions 4 --seconds 20
    ./dev bench storage_load --sessions 20 --seconds 60 --markdown

Each run is :func:`server_load.run_load` (the same senders, probes, hang-up and SIGTERM);
the upload run adds ``--storage s3://...``, ``--keep-local`` (so the spool can be verified
as in the disk run: the same bytes are uploaded either way) and a webhook receiver. The
stop-to-upload time is the difference of the server's own timestamps on
``recording.stopped`` and ``recording.uploaded``. SeaweedFS runs on this machine too: its
CPU is reported apart from the server's. Target: the upload run's server CPU at most 20 %
above the disk run's.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import psutil
import server_load
from loadbench.accounting import verify
from loadbench.object_store import (
    BUCKET,
    WEBHOOK_SECRET,
    SeaweedFS,
    WebhookReceiver,
    webhook_receiver,
)
from loadbench.results import Results, exit_with
from loadbench.server import NO_LOAD_LIMITS, BenchmarkError

CPU_TARGET_RATIO = 1.2
UPLOAD_TIMEOUT = 180.0  # from hang-up to every recording.uploaded


def _log(text: str) -> None:
    print(f"[storage_load] {text}", file=sys.stderr, flush=True)


class Receiver:
    """The webhook receiver (the one the tests use), on a thread and event loop of its own."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.receiver: WebhookReceiver | None = None
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)

    def start(self) -> str:
        """Start receiving; the URL to give the server."""
        self._thread.start()
        if not self._ready.wait(10) or self.receiver is None:
            raise BenchmarkError("the webhook receiver did not start")
        return self.receiver.url

    def payloads(self) -> list[dict[str, Any]]:
        """What arrived so far, signature checked."""
        assert self.receiver is not None
        return list(self.receiver.accepted)

    def stop(self) -> None:
        """Stop receiving."""
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with AsyncExitStack() as stack:
            self.receiver = await stack.enter_async_context(webhook_receiver())
            self._ready.set()
            await self._stop.wait()


def _stamp(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def upload_times(payloads: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds from ``recording.stopped`` to ``recording.uploaded``, by recording."""
    stopped = {
        p["data"]["name"]: _stamp(p["timestamp"])
        for p in payloads
        if p["type"] == "recording.stopped"
    }
    return {
        p["data"]["name"]: _stamp(p["timestamp"]) - stopped[p["data"]["name"]]
        for p in payloads
        if p["type"] == "recording.uploaded" and p["data"]["name"] in stopped
    }


def wait_uploaded(receiver: Receiver, raw: dict[str, Any]) -> None:
    """Until every session's recording is confirmed in the bucket (or the timeout)."""
    sessions = {s["id"] for s in raw["sessionsAtEnd"]}
    started = time.monotonic()
    while time.monotonic() - started < UPLOAD_TIMEOUT:
        uploaded = {
            p["data"].get("session")
            for p in receiver.payloads()
            if p["type"] == "recording.uploaded"
        }
        if sessions <= uploaded:
            break
        time.sleep(0.2)
    raw["uploadWaitSeconds"] = time.monotonic() - started


def run_once(
    args: argparse.Namespace,
    results: Results,
    media_path: Path,
    label: str,
    serve_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    receiver: Receiver | None = None,
) -> dict[str, Any]:
    """One server_load run; its summary (and the upload times, with a receiver). The
    server's log is kept as ``OUT/<stem>-LABEL.log`` (and its recordings, with
    ``--keep-recordings``, as ``OUT/<stem>-LABEL-recordings``)."""
    with results.workdir() as workdir:
        try:
            before = functools.partial(wait_uploaded, receiver) if receiver is not None else None
            _log(f"{label}: {args.sessions} sessions for {args.seconds:g} s")
            load = os.getloadavg()[0]
            # What uploading costs, not whether the server takes the sessions: admission off.
            serve = [*NO_LOAD_LIMITS, *serve_args]
            raw = server_load.run_load(args, media_path, workdir, serve, env, before)
            recordings = workdir / "recordings"
            checked = verify(raw.get("sent", {}), recordings, media_path, args.decode)
            summary = server_load.summarise(raw, checked, args.sessions)
        finally:
            results.keep(workdir / "server.log", f"-{label}.log")
            if args.keep_recordings:
                results.keep(workdir / "recordings", f"-{label}-recordings")
    summary["loadAverageAtStart"] = load
    if receiver is not None:
        times = upload_times(receiver.payloads())
        summary["uploaded"] = len(times)
        summary["stopToUploadedSeconds"] = times
        summary["uploadWaitSeconds"] = raw.get("uploadWaitSeconds")
    return summary


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system + times.children_user + times.children_system)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _cpu_mean(summary: dict[str, Any]) -> float | None:
    """The server's mean CPU while recording."""
    return summary.get("serverCpuCoresMean")


def cpu_ratio(disk: dict[str, Any], s3: dict[str, Any]) -> float | None:
    """The upload run's server CPU over the disk run's."""
    base = _cpu_mean(disk)
    return (_cpu_mean(s3) or 0) / base if base else None


def within_target(disk: dict[str, Any], s3: dict[str, Any]) -> bool:
    """Whether uploading cost the server at most :data:`CPU_TARGET_RATIO` times its CPU."""
    ratio = cpu_ratio(disk, s3)
    return ratio is not None and ratio <= CPU_TARGET_RATIO


def markdown(disk: dict[str, Any], s3: dict[str, Any], command: str) -> str:
    """The two runs side by side."""
    cpu = _cpu_mean
    ratio = cpu_ratio(disk, s3)
    times = sorted(s3.get("stopToUploadedSeconds", {}).values())
    median = times[len(times) // 2] if times else None
    rows = [
        (
            "machine load average at the start",
            _fmt(disk["loadAverageAtStart"]),
            _fmt(s3["loadAverageAtStart"]),
            "",
        ),
        (
            "server CPU while recording, mean (cores)",
            _fmt(cpu(disk), 3),
            _fmt(cpu(s3), 3),
            f"{_fmt(ratio)}×",
        ),
        (
            "/healthz p50 / p99 while recording (ms)",
            f"{_fmt(disk['healthz']['recording']['p50Ms'], 1)} / "
            f"{_fmt(disk['healthz']['recording']['p99Ms'], 1)}",
            f"{_fmt(s3['healthz']['recording']['p50Ms'], 1)} / "
            f"{_fmt(s3['healthz']['recording']['p99Ms'], 1)}",
            "",
        ),
        (
            "recordings clean (ffmpeg) / complete",
            f"{disk['recordingsClean']} / {disk['recordingsComplete']}",
            f"{s3['recordingsClean']} / {s3['recordingsComplete']}",
            "",
        ),
        (
            "video frames recorded, worst session (%)",
            _fmt(disk["videoRecordedPctMin"]),
            _fmt(s3["videoRecordedPctMin"]),
            "",
        ),
        (
            "recordings uploaded (recording.uploaded)",
            "",
            f"{s3.get('uploaded')} / {s3['sessions']}",
            "",
        ),
        (
            "stop → recording.uploaded, median / max (s)",
            "",
            f"{_fmt(median)} / {_fmt(times[-1] if times else None)}",
            "",
        ),
        (
            "SeaweedFS CPU while the upload run lasted (cores)",
            "",
            _fmt(s3.get("storeCpuCores"), 3),
            "",
        ),
    ]
    verdict = "PASS" if within_target(disk, s3) else "FAIL"
    lines = [
        f"Command: `{command}`",
        "",
        "| | disk only | S3 (SeaweedFS) | S3 ÷ disk |",
        "|---|---:|---:|---:|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
        "",
        f"Target: server CPU with uploads ≤ {CPU_TARGET_RATIO:.1f}× disk only: {verdict}",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: ``--part-size``, and server_load.py's options for the rest."""
    parser = argparse.ArgumentParser(
        description="rtc-recorder serve with N pre-encoded 720p sessions: disk only against "
        "uploading to SeaweedFS (S3) while recording.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Every other option is server_load.py's (--sessions, --seconds, "
        "--sessions-per-sender, --out, --markdown, --keep-recordings, --drain, "
        "--connect-timeout, --decode; see its --help).",
    )
    parser.add_argument("--part-size", type=int, default=5 * 1024 * 1024, help="bytes")
    own, rest = parser.parse_known_args(argv)
    args = server_load.parse_args(rest)
    args.part_size = own.part_size
    return args


def upload_run(
    args: argparse.Namespace, results: Results, media_path: Path, store: SeaweedFS
) -> dict[str, Any]:
    """The run uploading to ``store`` (started here), with a webhook receiver."""
    receiver = Receiver()
    try:
        store.start()
        url = receiver.start()
        assert store.process is not None
        weed = psutil.Process(store.process.pid)
        weed_cpu, began = _cpu(weed), time.monotonic()
        serve_args = [
            "--storage", f"s3://{BUCKET}/storage_load",
            "--s3-endpoint", store.endpoint,
            "--part-size", str(args.part_size),
            "--keep-local",
            "--webhook", url,
            "--webhook-secret", WEBHOOK_SECRET,
        ]  # fmt: skip
        s3 = run_once(args, results, media_path, "s3", serve_args, store.environment, receiver)
        s3["storeCpuCores"] = (_cpu(weed) - weed_cpu) / (time.monotonic() - began)
        return s3
    finally:
        receiver.stop()
        store.stop()


def main(argv: list[str] | None = None) -> int:
    """Run both, write the results, print the table with ``--markdown``; 3 if uploading
    cost more than the target."""
    args = parse_args(argv)
    results = Results.begin("storage_load", args, argv)
    media_path = results.media()
    disk = run_once(args, results, media_path, "disk")
    with results.workdir() as folder:
        s3 = upload_run(args, results, media_path, SeaweedFS(folder / "seaweedfs"))
    table = markdown(disk, s3, results.command)
    results.save(results.document(args, disk=disk, s3=s3), table)
    if args.markdown:
        print(table)
    return 0 if within_target(disk, s3) else 3


if __name__ == "__main__":
    exit_with(main)
