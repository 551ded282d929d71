"""More than one process: how many sessions one ``rtc-recorder serve`` holds, against
``serve --workers N --redis URL`` (N node processes on this machine, placed by the cluster).

    ./dev bench cluster_load --markdown
    .venv/bin/python benchmarks/cluster_load.py --workers 1 2 --window 6 --markdown

For each configuration: the server (admission by load off, ``--auto-record``, ICE on
127.0.0.1) gets sessions of the pre-encoded 720p30 VP8 + Opus loop of ``loadbench.media``
(about 2 Mbit/s, paced in real time, no encoding in the senders), one more at a time
through ``POST /offer`` on the first port (the cluster places it, proxying the offer to
another node when that one is less loaded). Once every session records, a window of
``--window`` seconds measures, on every node: the video frames written (``/metrics``,
``rtc_recorder_frames_written_total{kind="video"}``) against the frames the sessions were
sending (30 a second each), and the event loop's lag p99 (``/readyz``: the p99 of the last
3 s, sampled each second; the window's mean, the worst node). Sessions are added until
frames recorded fall below ``--min-recorded-pct`` (99) or the lag p99 passes
``--max-lag-ms`` (20) in ``--tries`` (2) windows in a row (a second window, since other
processes on a shared machine can spoil one): the most sessions a configuration holds is
the last count with a window that met both. Redis (Debian's ``redis-server``) is started
for the clusters and killed at the end.

The senders run on the same machine and take CPU from the server(s): on a 2-core machine
the figures are what the machine holds, senders included, not what a server would on a
machine of its own. Other processes' load is printed beside the figures (load average).
Results go to ``OUT/cluster_load-<date>-<time>.json`` (and ``.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from admission import Publishers
from loadbench.redis_server import RedisServer
from loadbench.report import fmt, mean
from loadbench.results import Results, add_output_options, exit_with
from loadbench.server import NO_LOAD_LIMITS, ServerProcess
from prometheus_client.parser import text_string_to_metric_families

DESCRIPTION = "The most sessions one process holds, against --workers N."
HELP_FORMAT = argparse.ArgumentDefaultsHelpFormatter
SETTLE_HELP = (
    "seconds from the newest session recording to its window (its first second waits for "
    "its sender's clock)"
)
TRIES_HELP = "windows a count gets to meet both targets (the machine may be shared)"
FPS = 30  # the media loop's frame rate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=HELP_FORMAT)
    add_output_options(parser, "(the recordings are not kept)", "table")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-sessions", type=int, default=40)
    parser.add_argument("--window", type=float, default=6.0, help="seconds measured per count")
    parser.add_argument("--settle", type=float, default=4.0, help=SETTLE_HELP)
    parser.add_argument("--tries", type=int, default=2, help=TRIES_HELP)
    parser.add_argument("--min-recorded-pct", type=float, default=99.0)
    parser.add_argument("--max-lag-ms", type=float, default=20.0)
    parser.add_argument("--sessions-per-sender", type=int, default=4)
    parser.add_argument("--connect-timeout", type=float, default=30.0)
    return parser.parse_args(argv)


def _log(text: str) -> None:
    print(f"[cluster_load] {text}", file=sys.stderr, flush=True)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


def video_frames_written(base: str) -> float:
    """The node's ``rtc_recorder_frames_written_total{kind="video"}``."""
    text = _get(f"{base}/metrics").decode()
    for family in text_string_to_metric_families(text):
        if family.name == "rtc_recorder_frames_written":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("kind") == "video":
                    return float(sample.value)
    return 0.0


def lag_p99_ms(base: str) -> float | None:
    """The node's event-loop lag p99 over its last 3 s (``/readyz``)."""
    try:
        body = _get(f"{base}/readyz")
    except urllib.error.HTTPError as error:  # 503 still says what it measured
        body = error.read()
    measured = json.loads(body).get("admission", {}).get("measured", {})
    value = measured.get("loopLagP99Ms")
    return None if value is None else float(value)


def measure(bases: list[str], sessions: int, window: float) -> dict[str, Any]:
    """One window: frames recorded (%) over every node, each node's mean lag p99."""
    before = sum(video_frames_written(base) for base in bases)
    started = time.monotonic()
    lags: dict[str, list[float]] = {base: [] for base in bases}
    while (remaining := window - (time.monotonic() - started)) > 0:
        time.sleep(min(1.0, remaining))
        for base in bases:
            value = lag_p99_ms(base)
            if value is not None:
                lags[base].append(value)
    seconds = time.monotonic() - started
    written = sum(video_frames_written(base) for base in bases) - before
    per_node = {base: mean(values) for base, values in lags.items()}
    worst = max((v for v in per_node.values() if v is not None), default=None)
    return {
        "sessions": sessions,
        "seconds": seconds,
        "videoFramesWritten": written,
        "recordedPct": 100.0 * written / (sessions * FPS * seconds),
        "lagP99MsByNode": per_node,
        "lagP99Ms": worst,
        "loadAverage": os.getloadavg(),
    }


def run_configuration(
    workers: int, args: argparse.Namespace, media_path: Path, workdir: Path, redis_url: str
) -> dict[str, Any]:
    """Add sessions to one configuration until it fails a target; its steps."""
    serve_args = ["--auto-record", "--idle-timeout", "60", *NO_LOAD_LIMITS]
    if workers > 1:
        serve_args += ["--workers", str(workers), "--redis", redis_url]
    folder = workdir / f"workers-{workers}"
    folder.mkdir()
    server = ServerProcess(
        folder / "recordings",
        folder / "server.log",
        serve_args,
        env={"RTC_RECORDER_ICE_ADDRESS": "127.0.0.1"},  # the workers are not wrapped
    )
    bases = [f"http://127.0.0.1:{server.port + i}" for i in range(workers)]
    publishers = Publishers(
        server.url("/offer"), media_path, args.sessions_per_sender, args.connect_timeout
    )
    steps: list[dict[str, Any]] = []
    result: dict[str, Any] = {"workers": workers, "steps": steps}
    try:
        server.start()
        server.wait_ready()
        for base in bases[1:]:
            _until_healthy(base)
        for number in range(args.max_sessions):
            reply = publishers.open(number)
            if reply["status"] != 200:
                result["refused"] = reply
                break
            server.wait_sessions(number + 1, "recording", 30)
            time.sleep(args.settle)  # the newest recording past its first second
            for _ in range(args.tries):  # another window if other processes spoiled one
                step = measure(bases, number + 1, args.window)
                step["byNode"] = _sessions_by_node(server)
                steps.append(step)
                _log(
                    f"workers={workers} sessions={number + 1}: recorded "
                    f"{step['recordedPct']:.2f} %, lag p99 {fmt(step['lagP99Ms'])} ms, "
                    f"load {step['loadAverage'][0]:.2f}"
                )
                if _meets(step, args):
                    break
            else:
                break
    finally:
        publishers.close()
        publishers.senders.end()
        result["serverStop"] = server.stop() if server.process is not None else None
        server.close()
    held = [s["sessions"] for s in steps if _meets(s, args)]
    result["held"] = max(held, default=0)
    return result


def _meets(step: dict[str, Any], args: argparse.Namespace) -> bool:
    lag = step["lagP99Ms"]
    return bool(
        step["recordedPct"] >= args.min_recorded_pct and (lag is None or lag <= args.max_lag_ms)
    )


def _sessions_by_node(server: ServerProcess) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in server.sessions():
        node = str(entry.get("node", "single"))
        counts[node] = counts.get(node, 0) + 1
    return counts


def _until_healthy(base: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _get(f"{base}/healthz")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def markdown(command: str, results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"Command: `{command}`",
        "",
        "| configuration | most sessions held | at that count: recorded video / lag p99 "
        "(worst node) / load average | first count over a target |",
        "|---|---:|---|---|",
    ]
    for result in results:
        held = next(
            (s for s in result["steps"] if s["sessions"] == result["held"] and _meets(s, args)),
            None,
        )
        over = next((s for s in reversed(result["steps"]) if s["sessions"] > result["held"]), None)
        name = "one process" if result["workers"] == 1 else f"--workers {result['workers']}"
        at_held = (
            f"{held['recordedPct']:.2f} % / {fmt(held['lagP99Ms'])} ms / "
            f"{held['loadAverage'][0]:.1f}"
            if held
            else "-"
        )
        beyond = (
            f"{over['sessions']}: {over['recordedPct']:.2f} %, {fmt(over['lagP99Ms'])} ms"
            if over
            else "-"
        )
        lines.append(f"| {name} | {result['held']} | {at_held} | {beyond} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = Results.begin("cluster_load", args, argv)
    media_path = results.media()
    outcomes = []
    with results.workdir() as workdir:
        redis = RedisServer(workdir / "redis")
        redis.start()
        try:
            for workers in args.workers:
                outcomes.append(run_configuration(workers, args, media_path, workdir, redis.url))
        finally:
            redis.stop()
    table = markdown(results.command, outcomes, args)
    results.save(results.document(args, configurations=outcomes), table)
    if args.markdown:
        print(table)
    return 0


if __name__ == "__main__":
    exit_with(main)
