"""Load on loopback: ``rtc-recorder serve --auto-record`` recording N concurrent sessions of
pre-encoded 720p30 VP8 + Opus, with ``GET /healthz`` probed every 100 ms meanwhile.

    .venv/bin/python benchmarks/server_load.py --sessions 4 --seconds 15
    .venv/bin/python benchmarks/server_load.py --sessions 20 --seconds 60 --markdown
    ./dev bench server_load --markdown

The server runs as a subprocess (``benchmarks/loopback_server.py``: ``rtc-recorder serve``
with ICE confined to 127.0.0.1) recording into a temporary folder. Sender processes publish
the pre-encoded loop of ``loadbench.media`` (no encoding) through ``POST /offer``. Once every
session is recording, the load lasts ``--seconds``; a thread of this process requests
``/healthz`` every 100 ms and samples every second the server's CPU and RSS and where the
machine's CPU went (server, senders, this script, kernel, other processes). Then the
senders pause and report what they sent, every session is hung up with
``DELETE /api/sessions/{id}``, the server is stopped with SIGTERM (it must exit 0), and each
recording is checked with ffmpeg and read back with PyAV. The requirement it measures:
every session recorded completely (clean file, >= 99 % of what was sent while it recorded)
and ``/healthz`` p99 under 100 ms. See benchmarks/README.md for how everything is counted.

Results go to ``OUT/server_load-<date>-<time>.json`` (and ``.log``, the server's log);
``--markdown`` prints the table (also written as ``.md``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil
from loadbench import media, sender
from loadbench.accounting import RECORDED_TARGET_PCT, verify
from loadbench.children import Children, cpu_seconds
from loadbench.machine import SATURATED, MachineWindow
from loadbench.monitor import PROBE_INTERVAL, PROBE_TIMEOUT, SAMPLE_INTERVAL, Monitor
from loadbench.report import MB, fmt, mean, percentile, slope, table
from loadbench.results import Results, add_output_options, exit_with
from loadbench.server import (
    HANGUP_TIMEOUT,
    ServerProcess,
    log_summary,
    wait_complete,
)

HERE = Path(__file__).resolve().parent

IDLE_SECONDS = 2.0  # probing before the first offer: the unloaded baseline
HEALTHZ_P99_TARGET_MS = 100.0
RECORDING_START_TIMEOUT = 30.0  # from every sender connected to every session recording
PHASES = ("idle", "connecting", "recording", "hangup")


def _log(text: str) -> None:
    print(f"[server_load] {text}", file=sys.stderr, flush=True)


# -- one run ----------------------------------------------------------------------------------


def run_load(args: argparse.Namespace, media_path: Path, workdir: Path) -> dict[str, Any]:
    """Start the server and the senders, load it for ``--seconds``, hang up, stop it; the
    raw measurements (the files are verified afterwards)."""
    recordings = workdir / "recordings"
    server = ServerProcess(recordings, workdir / "server.log", ["--auto-record"])
    senders = Children()
    monitor: Monitor | None = None
    connect_timeout = args.connect_timeout or 20.0 + 2.0 * args.sessions
    raw: dict[str, Any] = {"serverCommand": shlex.join(server.command)}
    try:
        server.start()
        raw["serverReadySeconds"] = server.wait_ready()
        raw["serverPid"] = server.pid
        _log(f"server pid {server.pid} on port {server.port}, recording to {recordings}")
        monitor = Monitor(server.url("/healthz"), server.pid)
        monitor.start()
        time.sleep(IDLE_SECONDS)

        monitor.phase = "connecting"
        connecting = time.monotonic()
        names = sender.start_senders(
            senders,
            server.url("/offer"),
            args.sessions,
            args.sessions_per_sender,
            media_path,
            connect_timeout,
        )
        monitor.sender_pids = [senders.pid(name) for name in names]
        _log(f"{len(names)} sender process(es) connecting {args.sessions} sessions")
        for name in names:
            senders.expect(name, "connected", timeout=connect_timeout + 10)
        raw["sendersConnectedSeconds"] = time.monotonic() - connecting
        raw["sessionsAtStart"] = server.wait_sessions(
            args.sessions, "recording", RECORDING_START_TIMEOUT
        )
        raw["allRecordingSeconds"] = time.monotonic() - connecting
        _log(f"all {args.sessions} recording after {raw['allRecordingSeconds']:.1f} s")

        monitor.phase = "recording"
        sender_pids = [senders.pid(name) for name in names]
        sender_cpu, machine = cpu_seconds(sender_pids), MachineWindow()
        started = time.monotonic()
        _log(f"loading for {args.seconds:g} s")
        while (remaining := args.seconds - (time.monotonic() - started)) > 0:
            time.sleep(min(0.5, remaining))
            senders.check()
            server.check()
        window, load = time.monotonic() - started, machine.end()
        raw["window"] = {
            "seconds": window,
            "senderCpuCores": (cpu_seconds(sender_pids) - sender_cpu) / window,
            "machineBusyCores": load["busyCores"],
            "machineCores": load["cores"],
            "loadBefore": load["loadBefore"],
            "loadEnd": load["loadEnd"],
            "senderProcesses": len(names),
        }
        raw["sessionsAtEnd"] = server.sessions()

        monitor.phase = "hangup"
        raw["sent"] = sender.ask_all(senders, names, "pause", "sent")
        time.sleep(args.drain)  # what was sent reaches the recorders
        ids = [s["id"] for s in raw["sessionsAtEnd"]]
        hangup = time.monotonic()
        raw["hangups"] = server.hang_up(ids)
        raw["hangupSeconds"] = time.monotonic() - hangup
        raw["sidecarWaitSeconds"] = wait_complete(recordings, set(ids), HANGUP_TIMEOUT)
        _log(f"hung up {len(ids)} sessions in {raw['hangupSeconds']:.2f} s")
        raw["sessionsAfterHangup"] = server.sessions()
        sender.close_all(senders, names)
        monitor.stop()
        raw["serverStop"] = server.stop()
        _log(f"server exited with status {raw['serverStop']['exitCode']}")
    finally:
        if monitor is not None:
            monitor.stop()
            raw["probes"] = [asdict(p) for p in monitor.probes]
            raw["samples"] = [asdict(s) for s in monitor.samples]
            raw["probesLaunchedLate"] = monitor.late_launches
            raw["monitorError"] = monitor.error
        senders.end()
        server.close()
    return raw


# -- verification -----------------------------------------------------------------------------


# -- summary and table -------------------------------------------------------------------------


def latency(probes: list[dict[str, Any]]) -> dict[str, Any]:
    """Count, failures and percentiles of ``probes``; a failed request counts as
    :data:`PROBE_TIMEOUT` in the percentiles."""
    values = [p["ms"] if p["ok"] else 1000 * PROBE_TIMEOUT for p in probes]
    failures = [p for p in probes if not p["ok"]]
    return {
        "count": len(probes),
        "failures": len(failures),
        "timeouts": sum(p["error"] == "timeout" for p in failures),
        "p50Ms": percentile(values, 0.50),
        "p95Ms": percentile(values, 0.95),
        "p99Ms": percentile(values, 0.99),
        "maxMs": max((p["ms"] for p in probes), default=None),
        "over100Ms": sum(v >= HEALTHZ_P99_TARGET_MS for v in values),
        "errors": sorted({str(p["error"]) for p in failures})[:10],
    }


def _slow_probes(
    probes: list[dict[str, Any]], samples: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The window's probes of :data:`HEALTHZ_P99_TARGET_MS` or more, each with the sample
    of the second it started in: was the server busy, or the machine saturated?"""
    slow = []
    for probe in probes:
        if probe["phase"] != "recording" or probe["ms"] < HEALTHZ_P99_TARGET_MS:
            continue
        covering = next(
            (s for s in samples if s["at"] - SAMPLE_INTERVAL - 0.05 <= probe["at"] <= s["at"]),
            None,
        )
        slow.append(
            {
                "at": probe["at"],
                "ms": probe["ms"],
                "ok": probe["ok"],
                "serverCpuCores": covering and covering["cpu_cores"],
                "machineBusyCores": covering and covering["machine_busy_cores"],
                "otherCpuCores": covering and covering["other_cpu_cores"],
                "cpuPressure": covering and covering["cpu_pressure"],
            }
        )
    return slow


def summarise(raw: dict[str, Any], checked: list[dict[str, Any]], sessions: int) -> dict[str, Any]:
    """The figures of the table (see the README for their definitions)."""
    probes = raw.get("probes", [])
    healthz = {phase: latency([p for p in probes if p["phase"] == phase]) for phase in PHASES}
    healthz["all"] = latency(probes)
    window = [s for s in raw.get("samples", []) if s["phase"] == "recording"]
    every = raw.get("samples", [])
    complete = [c for c in checked if c["complete"]]
    clean = [c for c in checked if c.get("clean")]
    finalized = [c for c in checked if c.get("sidecarState") == "complete"]
    pct = {
        kind: [
            c[kind]["recordedPct"]
            for c in checked
            if kind in c and c[kind]["recordedPct"] is not None
        ]
        for kind in ("video", "audio")
    }
    startup = [
        c["video"]["startToFirstRecordedSeconds"]
        for c in checked
        if "startToFirstRecordedSeconds" in c.get("video", {})
    ]
    pressure = [s["cpu_pressure"] for s in window if s["cpu_pressure"] is not None]
    cores = raw.get("window", {}).get("machineCores") or psutil.cpu_count() or 1
    slow = _slow_probes(probes, every)
    stop = raw.get("serverStop", {})
    p99 = healthz["recording"]["p99Ms"]
    healthz_ok = p99 is not None and p99 < HEALTHZ_P99_TARGET_MS
    all_complete = len(checked) == sessions and len(complete) == sessions
    return {
        "sessions": sessions,
        "sessionsRecorded": len(checked),
        "windowSeconds": raw.get("window", {}).get("seconds"),
        "healthz": healthz,
        "serverCpuCoresMean": mean([s["cpu_cores"] for s in window]),
        "serverCpuCoresPeak": max((s["cpu_cores"] for s in window), default=None),
        "serverRssMBMean": mean([s["rss_bytes"] / MB for s in window]),
        "serverRssMBPeak": max((s["rss_bytes"] / MB for s in window), default=None),
        "serverRssSlopeMBPerMin": slope([(x["at"] / 60, x["rss_bytes"] / MB) for x in window]),
        "serverRssMBPeakWholeRun": max((s["rss_bytes"] / MB for s in every), default=None),
        "serverRssMBIdle": mean([s["rss_bytes"] / MB for s in every if s["phase"] == "idle"]),
        "serverThreadsPeak": max((s["threads"] for s in every), default=None),
        "serverPreemptionsPerSecondMean": mean([s["preemptions_per_second"] for s in window]),
        "machineBusyCoresMean": mean([s["machine_busy_cores"] for s in window]),
        "sendersCpuCoresMean": mean([s["senders_cpu_cores"] for s in window]),
        "scriptCpuCoresMean": mean([s["self_cpu_cores"] for s in window]),
        "otherCpuCoresMean": mean([s["other_cpu_cores"] for s in window]),
        "interruptsCpuCoresMean": mean([s["interrupts_cpu_cores"] for s in window]),
        "stealCpuCoresMean": mean([s["steal_cpu_cores"] for s in window]),
        "cpuPressureMean": mean(pressure),
        "cpuPressureMax": max(pressure, default=None),
        "machineCores": raw.get("window", {}).get("machineCores"),
        "slowProbes": slow,
        "slowProbesWhileSaturated": sum(
            p["machineBusyCores"] is not None and p["machineBusyCores"] >= SATURATED * cores
            for p in slow
        ),
        "recordingsClean": len(clean),
        "recordingsFinalized": len(finalized),
        "recordingsComplete": len(complete),
        "videoRecordedPctMin": min(pct["video"], default=None),
        "videoRecordedPctMean": mean(pct["video"]),
        "audioRecordedPctMin": min(pct["audio"], default=None),
        "audioRecordedPctMean": mean(pct["audio"]),
        "startToFirstKeyframeSecondsMean": mean(startup),
        "startToFirstKeyframeSecondsMax": max(startup, default=None),
        "allRecordingSeconds": raw.get("allRecordingSeconds"),
        "hangupSeconds": raw.get("hangupSeconds"),
        "hangupMaxSeconds": max(
            (h["seconds"] for h in raw.get("hangups", {}).values()), default=None
        ),
        "hangupFailures": sum(h["status"] != 200 for h in raw.get("hangups", {}).values()),
        "serverExitCode": stop.get("exitCode"),
        "serverStopSeconds": stop.get("seconds"),
        "sessionsLeftAfterHangup": len(raw.get("sessionsAfterHangup", [])),
        "targets": {
            "healthzP99": healthz_ok,
            "allRecordedCompletely": all_complete,
            "cleanExit": stop.get("exitCode") == 0,
        },
        "pass": healthz_ok and all_complete,
    }


def _percent(share: float | None) -> float | None:
    return None if share is None else 100.0 * share


def _pair(first: Any, second: Any, digits: int = 1) -> str:
    return f"{fmt(first, digits)} / {fmt(second, digits)}"


def _verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"


def markdown(
    command: str, summary: dict[str, Any], checked: list[dict[str, Any]], media_info: dict[str, Any]
) -> str:
    """The results table, the targets, and one row per session."""
    s = summary
    h = s["healthz"]["recording"]
    n = s["sessions"]

    def phase(name: str) -> str:
        stats = s["healthz"][name]
        return (
            f"{stats['count']} req, p50 {fmt(stats['p50Ms'])} / p99 {fmt(stats['p99Ms'])} / "
            f"max {fmt(stats['maxMs'])} ms, {stats['failures']} failed"
        )

    breakdown = " + ".join(
        fmt(s[key], 2)
        for key in (
            "serverCpuCoresMean",
            "sendersCpuCoresMean",
            "scriptCpuCoresMean",
            "interruptsCpuCoresMean",
            "stealCpuCoresMean",
            "otherCpuCoresMean",
        )
    )
    rows = [
        ("Sessions (recorded / requested)", f"{s['sessionsRecorded']} / {n}"),
        ("Load window, all sessions recording (s)", fmt(s["windowSeconds"])),
        ("/healthz requests in the window", f"{h['count']:,}"),
        (
            "/healthz p50 / p95 / p99 (ms)",
            f"{fmt(h['p50Ms'])} / {fmt(h['p95Ms'])} / {fmt(h['p99Ms'])}",
        ),
        ("/healthz max (ms)", fmt(h["maxMs"])),
        ("/healthz failures (of which timeouts > 2 s)", f"{h['failures']} ({h['timeouts']})"),
        ("/healthz requests ≥ 100 ms", f"{h['over100Ms']}"),
        ("/healthz while connecting", phase("connecting")),
        ("/healthz while hanging up", phase("hangup")),
        ("/healthz before any session", phase("idle")),
        (
            "Server CPU, mean / peak (cores)",
            f"{fmt(s['serverCpuCoresMean'], 2)} / {fmt(s['serverCpuCoresPeak'], 2)}",
        ),
        (
            "Server RSS, mean / peak (MB)",
            f"{fmt(s['serverRssMBMean'])} / {fmt(s['serverRssMBPeak'])}",
        ),
        ("Server RSS before any session (MB)", fmt(s["serverRssMBIdle"])),
        ("Server RSS slope over the window (MB/min)", fmt(s["serverRssSlopeMBPerMin"])),
        (
            "Server preempted (involuntary context switches / s), mean",
            fmt(s["serverPreemptionsPerSecondMean"], 0),
        ),
        (
            f"Machine CPU busy, mean (cores of {s['machineCores']}): all = server + senders "
            "+ this script + kernel interrupts + stolen + other processes",
            f"{fmt(s['machineBusyCoresMean'], 2)} = {breakdown}",
        ),
        (
            "Time some task waited for a CPU (PSI), mean / worst second (%)",
            _pair(_percent(s["cpuPressureMean"]), _percent(s["cpuPressureMax"]), 0),
        ),
        (
            f"/healthz ≥ 100 ms in a second with the machine ≥ {SATURATED:.0%} busy",
            f"{s['slowProbesWhileSaturated']} of {len(s['slowProbes'])}",
        ),
        ("Recordings clean (ffmpeg, PyAV)", f"{s['recordingsClean']} / {n}"),
        ('Recordings finalized (sidecar "complete")', f"{s['recordingsFinalized']} / {n}"),
        (
            "Video frames recorded, min / mean (%)",
            f"{fmt(s['videoRecordedPctMin'], 2)} / {fmt(s['videoRecordedPctMean'], 2)}",
        ),
        (
            "Audio packets recorded, min / mean (%)",
            f"{fmt(s['audioRecordedPctMin'], 2)} / {fmt(s['audioRecordedPctMean'], 2)}",
        ),
        (
            "Recording start → first keyframe, mean / max (s)",
            _pair(s["startToFirstKeyframeSecondsMean"], s["startToFirstKeyframeSecondsMax"], 2),
        ),
        ("Time until all sessions recording (s)", fmt(s["allRecordingSeconds"], 2)),
        (
            "Hang-up: all DELETEs / slowest (s); not answered 200",
            f"{_pair(s['hangupSeconds'], s['hangupMaxSeconds'], 2)}; {s['hangupFailures']}",
        ),
        (
            "SIGTERM → exit (s), status",
            f"{fmt(s['serverStopSeconds'], 2)}, {fmt(s['serverExitCode'])}",
        ),
    ]
    lines = [
        f"Command: `{command}`",
        "",
        f"{n} sessions of {media_info['video']} ({media_info['videoKbps']:.0f} kbit/s, keyframe "
        f"every {media_info['keyframeEveryFrames']} frames) + {media_info['audio']}, pre-encoded, "
        "published over loopback to `rtc-recorder serve --auto-record` (WebM).",
        "",
        *table(("Metric", "Value"), rows, "lr"),
        "",
        "| Target | Measured | Result |",
        "|---|---|---|",
        f"| /healthz p99 < {HEALTHZ_P99_TARGET_MS:.0f} ms during the load | "
        f"{fmt(h['p99Ms'])} ms | {_verdict(s['targets']['healthzP99'])} |",
        f"| every session recorded completely (clean file, ≥ {RECORDED_TARGET_PCT:.0f} % of video "
        f"frames and audio packets sent while recording) | {s['recordingsComplete']} / {n} | "
        f"{_verdict(s['targets']['allRecordedCompletely'])} |",
        f"| Overall (the two targets above) | | {_verdict(s['pass'])} |",
        f"| (check) the server exits 0 on SIGTERM | status {fmt(s['serverExitCode'])} | "
        f"{_verdict(s['targets']['cleanExit'])} |",
        "",
        "| Session | File duration (s) | Video recorded / sent | Audio recorded / sent "
        "| Video % | Audio % | Start → keyframe (s) | Clean |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in checked:
        if "video" not in c:
            lines.append(
                f"| {c['session']} | n/a | n/a | n/a | n/a | n/a | n/a | {c.get('error')} |"
            )
            continue
        v, a = c["video"], c["audio"]
        lines.append(
            f"| {c['session']} | {fmt(c['fileSeconds']['video'], 2)} "
            f"| {v['recorded']:,} / {v['sentWhileRecording']:,} "
            f"| {a['recorded']:,} / {a['sentWhileRecording']:,} "
            f"| {fmt(v['recordedPct'], 2)} | {fmt(a['recordedPct'], 2)} "
            f"| {fmt(v.get('startToFirstRecordedSeconds'), 2)} | {'yes' if c['clean'] else 'NO'} |"
        )
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Load rtc-recorder serve with N pre-encoded 720p sessions on loopback; "
        "probe /healthz; verify every recording.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--sessions", type=int, default=20, help="concurrent sessions")
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="load window, once every session records"
    )
    parser.add_argument("--sessions-per-sender", type=int, default=5)
    add_output_options(parser, "keep the recordings in OUT", "markdown table")
    parser.add_argument(
        "--drain", type=float, default=1.0, help="seconds between the senders pausing and hang-up"
    )
    parser.add_argument(
        "--connect-timeout", type=float, help="seconds for all sessions to connect (20 + 2/session)"
    )
    parser.add_argument(
        "--decode",
        action="store_true",
        help="also decode every file with PyAV (ffmpeg always does)",
    )
    args = parser.parse_args(argv)
    for name in ("sessions", "sessions_per_sender"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.seconds <= 0 or args.drain < 0:
        parser.error("--seconds must be positive and --drain not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = Results.begin("server_load", args, argv)
    media_path = results.media()
    media_info = media.load(media_path).describe()
    with results.server_workdir(args.keep_recordings) as workdir:
        raw = run_load(args, media_path, workdir)
        checked = verify(raw.get("sent", {}), workdir / "recordings", media_path, args.decode)
        summary = summarise(raw, checked, args.sessions)
        summary["serverLog"] = log_summary(workdir / "server.log")

    table = markdown(results.command, summary, checked, media_info)
    document = results.document(
        args,
        media=media_info,
        targets={
            "healthzP99Ms": HEALTHZ_P99_TARGET_MS,
            "recordedPct": RECORDED_TARGET_PCT,
            "probeIntervalSeconds": PROBE_INTERVAL,
            "probeTimeoutSeconds": PROBE_TIMEOUT,
        },
        summary=summary,
        sessions=checked,
        raw=raw,
    )
    results.save(document, table)
    if args.markdown:
        print(table)
    verdict = "PASS" if summary["pass"] else "FAIL"
    _log(
        f"{verdict}: healthz p99 {fmt(summary['healthz']['recording']['p99Ms'])} ms, "
        f"{summary['recordingsComplete']}/{args.sessions} recorded completely"
    )
    return 0 if summary["pass"] else 3


if __name__ == "__main__":
    exit_with(main)
