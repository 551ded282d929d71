"""Admission by measured load: publish sessions to ``rtc-recorder serve --auto-record`` one
by one (a new one every ``--fill-interval`` seconds, as sessions arrive at a busy node)
until the server refuses one, keep trying to add as many again (every ``--interval``
seconds), then record for ``--seconds`` and check every admitted session's recording.

    .venv/bin/python benchmarks/admission.py --markdown
    ./dev bench admission --seconds 30 --markdown
    ./dev bench admission --server-arg=--admission-loop-busy=0.3 --markdown

What it shows: past its capacity the server refuses new sessions (503 with Retry-After,
``/readyz`` 503) instead of letting every session degrade, and the sessions it took keep
recording completely (>= 99 % of the video frames and audio packets sent while
recording). Each attempt records the server's ``/readyz`` (its measured load) right after
the answer. Over the recording window: the server's event-loop lag p99 (its
``/metrics`` histogram), its CPU, the machine's busy CPU and load average.

Sessions are the pre-encoded 720p30 VP8 + Opus loop of ``loadbench.media``, sent by
processes of ``--sessions-per-sender`` sessions (so the senders never encode). Results go
to ``OUT/admission-<date>-<time>.json`` (and ``.md``, ``.log``: the server's log).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any
from urllib.request import urlopen

from loadbench import sender
from loadbench.accounting import RECORDED_TARGET_PCT, verify
from loadbench.children import Children
from loadbench.monitor import Monitor
from loadbench.report import fmt, mean
from loadbench.results import Results, add_output_options, exit_with
from loadbench.server import (
    HANGUP_TIMEOUT,
    ServerProcess,
    log_summary,
    wait_complete,
)
from prometheus_client.parser import text_string_to_metric_families

IDLE_SECONDS = 2.0


def _log(text: str) -> None:
    print(f"[admission] {text}", file=sys.stderr, flush=True)


class Publishers:
    """Sender processes opening sessions on demand, ``per_sender`` sessions per process."""

    def __init__(self, offer_url: str, media_path: Path, per_sender: int, timeout: float) -> None:
        self.senders = Children()
        self.offer_url = offer_url
        self.media_path = media_path
        self.per_sender = per_sender
        self.timeout = timeout
        self.opened: dict[str, int] = {}  # sessions the server took, per sender

    def open(self, number: int) -> dict[str, Any]:
        """Offer session ``number``; the sender's ``opened`` report."""
        name = self._sender_with_room()
        reply = sender.open_sessions(self.senders, name, [number], self.timeout + 10)[str(number)]
        if reply["status"] == 200:
            self.opened[name] += 1
        return reply

    def _sender_with_room(self) -> str:
        for name, count in self.opened.items():
            if count < self.per_sender:
                return name
        index = len(self.opened)
        name = f"sender-{index}"
        config = sender.SenderConfig(index, self.offer_url, (), str(self.media_path), self.timeout)
        self.senders.start(name, sender.run, config)
        self.senders.expect(name, "connected", timeout=30)
        self.opened[name] = 0
        return name

    def pids(self) -> list[int]:
        return [self.senders.pid(name) for name in self.opened]

    def sent(self) -> dict[str, Any]:
        """Pause every sender; what each admitted session sent."""
        return sender.ask_all(self.senders, list(self.opened), "pause", "sent")

    def close(self) -> None:
        sender.close_all(self.senders, list(self.opened))


def _get_json(server: ServerProcess, path: str) -> Any:
    status, body = server.request("GET", path)
    return {"status": status, **body} if isinstance(body, dict) else {"status": status}


def _lag_buckets(server: ServerProcess) -> dict[float, float]:
    """The server's event-loop lag histogram: cumulative count by upper bound (seconds)."""
    with urlopen(server.url("/metrics"), timeout=10) as response:
        text = response.read().decode()
    buckets = {}
    for family in text_string_to_metric_families(text):
        if family.name == "rtc_recorder_event_loop_lag_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    buckets[float(sample.labels["le"])] = sample.value
    return buckets


def lag_p99_bound(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The histogram bucket's upper bound (seconds) under which 99 % of the lags measured
    between two scrapes fell."""
    total = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    if total <= 0:
        return None
    for bound in sorted(after):
        if after[bound] - before.get(bound, 0.0) >= 0.99 * total:
            return bound
    return None


def attempt(
    server: ServerProcess, publishers: Publishers, number: int, admitted: int, phase: str
) -> dict[str, Any]:
    """Offer one session; once admitted, wait until it records. What happened, with the
    server's ``/readyz`` right after."""
    started = time.monotonic()
    reply = publishers.open(number)
    record: dict[str, Any] = {
        "number": number,
        "phase": phase,
        "at": time.time(),
        "status": reply["status"],
        "retryAfter": reply.get("retryAfter"),
        "session": reply.get("session"),
    }
    if reply["status"] == 200:
        server.wait_sessions(admitted + 1, "recording", 30)
    else:
        with contextlib.suppress(ValueError):
            record["error"] = json.loads(reply.get("body") or "{}")
    record["seconds"] = time.monotonic() - started
    record["readyz"] = _get_json(server, "/readyz")
    return record


def run(args: argparse.Namespace, media_path: Path, workdir: Path) -> dict[str, Any]:
    """Fill the server until it refuses, try as many again, record, stop: the raw results."""
    recordings = workdir / "recordings"
    server = ServerProcess(recordings, workdir / "server.log", ["--auto-record", *args.server_arg])
    publishers = Publishers(
        server.url("/offer"), media_path, args.sessions_per_sender, args.connect_timeout
    )
    monitor: Monitor | None = None
    raw: dict[str, Any] = {"serverCommand": shlex.join(server.command), "attempts": []}
    try:
        server.start()
        server.wait_ready()
        monitor = Monitor(server.url("/healthz"), server.pid)
        monitor.start()
        time.sleep(IDLE_SECONDS)
        raw["loadBefore"] = os.getloadavg()
        monitor.phase = "filling"
        admitted = 0
        number = 0
        while number < args.max_sessions:
            if number:
                time.sleep(args.fill_interval)
            record = attempt(server, publishers, number, admitted, "filling")
            raw["attempts"].append(record)
            monitor.sender_pids = publishers.pids()
            number += 1
            if record["status"] != 200:
                break
            admitted += 1
            _log(f"session {number}: admitted ({admitted} recording)")
        capacity = admitted
        _log(f"refused after {capacity} sessions: {raw['attempts'][-1].get('error')}")
        monitor.phase = "beyond"
        for _ in range(capacity):
            time.sleep(args.interval)
            record = attempt(server, publishers, number, admitted, "beyond")
            raw["attempts"].append(record)
            monitor.sender_pids = publishers.pids()
            number += 1
            admitted += record["status"] == 200
        _log(f"{admitted} admitted after {number} attempts; recording for {args.seconds:g} s")

        monitor.phase = "recording"
        lag_before = _lag_buckets(server)
        readiness = []
        started = time.monotonic()
        while time.monotonic() - started < args.seconds:
            time.sleep(1.0)
            server.check()
            publishers.senders.check()
            readiness.append(_get_json(server, "/readyz"))
        raw["window"] = {"seconds": time.monotonic() - started, "readyz": readiness}
        raw["lagP99BoundSeconds"] = lag_p99_bound(lag_before, _lag_buckets(server))
        raw["loadAfter"] = os.getloadavg()

        monitor.phase = "hangup"
        raw["sent"] = publishers.sent()
        time.sleep(args.drain)
        ids = [s["id"] for s in server.sessions()]
        raw["hangups"] = server.hang_up(ids)
        raw["sidecarWaitSeconds"] = wait_complete(recordings, set(ids), HANGUP_TIMEOUT)
        publishers.close()
        monitor.stop()
        raw["serverStop"] = server.stop()
    finally:
        if monitor is not None:
            monitor.stop()
            raw["samples"] = [vars(s) for s in monitor.samples]
        publishers.senders.end()
        server.close()
    return raw


def summarise(raw: dict[str, Any], checked: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of the table."""
    attempts = raw["attempts"]
    admitted = [a for a in attempts if a["status"] == 200]
    refused = [a for a in attempts if a["status"] != 200]
    filling = [a for a in attempts if a["phase"] == "filling" and a["status"] == 200]
    window = [s for s in raw.get("samples", []) if s["phase"] == "recording"]
    video = [c["video"]["recordedPct"] for c in checked if "video" in c]
    audio = [c["audio"]["recordedPct"] for c in checked if "audio" in c]
    gauges = [
        r["admission"]["measured"]
        for r in raw.get("window", {}).get("readyz", [])
        if r.get("admission", {}).get("measured")
    ]
    complete = sum(c["complete"] for c in checked)
    return {
        "capacity": len(filling),
        "admitted": len(admitted),
        "refused": len(refused),
        "refusedStatuses": sorted({a["status"] for a in refused}),
        "refusalReasons": sorted({str(a.get("readyz", {}).get("reason")) for a in refused}),
        "overAtRefusals": sorted(
            {s for a in refused for s in a.get("readyz", {}).get("admission", {}).get("over", [])}
        ),
        "retryAfter": sorted({a.get("retryAfter") for a in refused if a.get("retryAfter")}),
        "recordingsChecked": len(checked),
        "recordingsComplete": complete,
        "videoRecordedPctMin": min(video, default=None),
        "videoRecordedPctMean": mean(video),
        "audioRecordedPctMin": min(audio, default=None),
        "audioRecordedPctMean": mean(audio),
        "lagP99BoundMs": None
        if raw.get("lagP99BoundSeconds") is None
        else 1000 * raw["lagP99BoundSeconds"],
        "lagP99GaugeMsMax": max((g["loopLagP99Ms"] for g in gauges), default=None),
        "loopBusyMean": mean([g["loopBusy"] for g in gauges]),
        "serverCpuCoresMean": mean([s["cpu_cores"] for s in window]),
        "machineBusyCoresMean": mean([s["machine_busy_cores"] for s in window]),
        "sendersCpuCoresMean": mean([s["senders_cpu_cores"] for s in window]),
        "loadBefore": raw.get("loadBefore"),
        "loadAfter": raw.get("loadAfter"),
        "serverExitCode": raw.get("serverStop", {}).get("exitCode"),
        "pass": bool(refused) and complete == len(admitted) == len(checked),
    }


def markdown(command: str, s: dict[str, Any]) -> str:
    load = "/".join(f"{x:.2f}" for x in s["loadBefore"] or [])
    rows = [
        ("Sessions admitted one by one before the first refusal", s["capacity"]),
        ("Sessions admitted / refused in all", f"{s['admitted']} / {s['refused']}"),
        (
            "Refusals: status, reason, signals over their limit, Retry-After (s)",
            f"{s['refusedStatuses']}, {', '.join(s['refusalReasons'])}, "
            f"{', '.join(s['overAtRefusals']) or '-'}, {', '.join(s['retryAfter']) or '-'}",
        ),
        (
            f"Admitted recordings complete (clean, ≥ {RECORDED_TARGET_PCT:.0f} % sent)",
            f"{s['recordingsComplete']} / {s['admitted']}",
        ),
        (
            "Video frames recorded per session, min / mean (%)",
            f"{fmt(s['videoRecordedPctMin'], 2)} / {fmt(s['videoRecordedPctMean'], 2)}",
        ),
        (
            "Audio packets recorded per session, min / mean (%)",
            f"{fmt(s['audioRecordedPctMin'], 2)} / {fmt(s['audioRecordedPctMean'], 2)}",
        ),
        (
            "Event-loop lag p99 over the window (histogram bucket) / worst 3 s p99 (ms)",
            f"≤ {fmt(s['lagP99BoundMs'])} / {fmt(s['lagP99GaugeMsMax'])}",
        ),
        ("Event-loop thread running or waiting for a CPU, mean", fmt(s["loopBusyMean"], 2)),
        ("Server CPU, mean (cores)", fmt(s["serverCpuCoresMean"], 2)),
        ("Senders' CPU, mean (cores)", fmt(s["sendersCpuCoresMean"], 2)),
        ("Machine CPU busy, mean (cores)", fmt(s["machineBusyCoresMean"], 2)),
        ("Load average before (1 / 5 / 15 min)", load),
        ("Server exit status after SIGTERM", s["serverExitCode"]),
    ]
    lines = [f"Command: `{command}`", "", "| | |", "|---|---:|"]
    lines += [f"| {label} | {value} |" for label, value in rows]
    lines.append(f"| Result | {'**PASS**' if s['pass'] else '**FAIL**'} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Publish sessions one by one until rtc-recorder refuses; check the rest.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--max-sessions", type=int, default=60, help="attempts while filling")
    parser.add_argument("--seconds", type=float, default=30.0, help="recording window")
    parser.add_argument(
        "--fill-interval",
        type=float,
        default=4.0,
        help="seconds between sessions while filling (the server's samples need about 4 s "
        "to show what a new session costs)",
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between attempts past capacity"
    )
    parser.add_argument("--sessions-per-sender", type=int, default=5)
    parser.add_argument("--connect-timeout", type=float, default=30.0)
    parser.add_argument("--drain", type=float, default=1.0)
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra flag for rtc-recorder serve (repeatable), e.g. --server-arg=--max-sessions=9",
    )
    add_output_options(parser, "keep the recordings in OUT", "table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = Results.begin("admission", args, argv)
    media_path = results.media()
    with results.server_workdir(args.keep_recordings) as workdir:
        raw = run(args, media_path, workdir)
        checked = verify(raw.get("sent", {}), workdir / "recordings", media_path, decode=False)
        summary = summarise(raw, checked)
        summary["serverLog"] = log_summary(workdir / "server.log")
    table = markdown(results.command, summary)
    results.save(results.document(args, summary=summary, sessions=checked, raw=raw), table)
    if args.markdown:
        print(table)
    _log(
        f"{'PASS' if summary['pass'] else 'FAIL'}: {summary['admitted']} admitted, "
        f"{summary['recordingsComplete']} recorded completely"
    )
    return 0 if summary["pass"] else 3


if __name__ == "__main__":
    exit_with(main)
