"""Sessions that come and go: does ``rtc-recorder serve`` keep memory for closed sessions?

    .venv/bin/python benchmarks/churn.py --sessions 40          # a quick check (about 1 min)
    .venv/bin/python benchmarks/churn.py --sessions 500 --markdown
    ./dev bench churn --sessions 500 --markdown

Against ``rtc-recorder serve`` (its own process, on 127.0.0.1), sessions come and go
``--batch`` at a time until ``--sessions`` have been made: each publishes the pre-encoded
720p30 VP8 + Opus loop of ``loadbench.media`` from a sender process, is started recording
with ``POST /api/sessions/{id}/start``, records ``--record-seconds``, and is hung up (one
batch with ``DELETE /whip/{id}``, the next with ``DELETE /api/sessions/{id}``; each answers
once the recording is finalized). After every batch the server's RSS is sampled from
outside (psutil). Reported: RSS over time, the MB kept per closed session after warm-up
(least-squares slope of RSS against sessions closed, over the batches after the first
``--warmup-sessions``), every recording finalized, a spot-check of the files with ffmpeg
and PyAV, and the time taken. Results go to ``OUT/churn-<date>-<time>.json``;
``--markdown`` prints the table (also written as ``.md``). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from loadbench import files, sender
from loadbench.children import Children
from loadbench.files import ffmpeg_all
from loadbench.machine import MachineWindow
from loadbench.report import MB, fmt, slope, table
from loadbench.results import Results, add_output_options, exit_with
from loadbench.server import (
    HANGUP_TIMEOUT,
    NO_LOAD_LIMITS,
    BenchmarkError,
    ServerProcess,
    log_summary,
    require_ok,
    sidecars,
    wait_complete,
)

TARGET_MB_PER_SESSION = 0.05
STATE_TIMEOUT = 30.0  # for a batch's sessions to connect, or to start recording
IDLE_SECONDS = 2.0  # before the first session: the server's RSS with nothing to do
HANGUPS = ("/whip/{}", "/api/sessions/{}")  # alternating, batch by batch


def _log(text: str) -> None:
    print(f"[churn] {text}", file=sys.stderr, flush=True)


def _server_sample(process: psutil.Process) -> dict[str, Any]:
    return {
        "rssBytes": int(process.memory_info().rss),
        "fds": process.num_fds(),
        "threads": process.num_threads(),
    }


def run_batch(
    server: ServerProcess,
    senders: Children,
    numbers: list[int],
    hangup: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One batch: publish, start recording, record, hang up; what happened and when."""
    started = time.monotonic()
    opened = sender.open_sessions(senders, "sender", numbers, args.connect_timeout + 10)
    refused = {n: a["status"] for n, a in opened.items() if a["status"] != 200}
    if refused:
        raise BenchmarkError(f"/offer refused sessions (number: status): {refused}")
    ids = [opened[str(number)]["session"] for number in numbers]
    server.wait_sessions(len(ids), None, STATE_TIMEOUT, ids)
    connected = time.monotonic()
    if not args.no_record:
        server.call_all(ids, "start", STATE_TIMEOUT)
        server.wait_sessions(len(ids), "recording", STATE_TIMEOUT, ids)
    time.sleep(args.record_seconds)
    hangups = server.request_all("DELETE", [hangup.format(i) for i in ids], HANGUP_TIMEOUT)
    require_ok(hangups, "hang-up")
    hung_up = time.monotonic()
    senders.send("sender", {"type": "hang_up", "sessions": numbers})
    sent = senders.expect("sender", "hung_up", timeout=30)["sessions"]
    return {
        "ids": ids,
        "hangup": hangup.format("{id}"),
        "connectSeconds": connected - started,
        "hangupSeconds": max(a["seconds"] for a in hangups.values()),
        "seconds": hung_up - started,
        "sent": sent,
    }


def run_churn(args: argparse.Namespace, media_path: Path, workdir: Path) -> dict[str, Any]:
    """The server and the sender, batch after batch; the raw measurements."""
    recordings = workdir / "recordings"
    server = ServerProcess(recordings, workdir / "server.log", NO_LOAD_LIMITS)
    senders = Children()
    raw: dict[str, Any] = {"serverCommand": shlex.join(server.command), "batches": []}
    try:
        server.start()
        server.wait_ready()
        process = psutil.Process(server.pid)
        _log(f"server pid {server.pid} on port {server.port}")
        config = sender.SenderConfig(
            0, server.url("/offer"), (), str(media_path), args.connect_timeout
        )
        senders.start("sender", sender.run, config)
        senders.expect("sender", "connected", timeout=30)
        time.sleep(IDLE_SECONDS)
        raw["before"] = _server_sample(process)
        machine = MachineWindow()
        began = time.monotonic()
        made = 0
        while made < args.sessions:
            numbers = list(range(made, min(made + args.batch, args.sessions)))
            hangup = HANGUPS[len(raw["batches"]) % len(HANGUPS)]
            batch = run_batch(server, senders, numbers, hangup, args)
            made += len(numbers)
            batch.update(_server_sample(process))
            batch["closed"] = made
            batch["at"] = time.monotonic() - began
            batch["sessionsListed"] = len(server.sessions())
            raw["batches"].append(batch)
            if len(raw["batches"]) % 10 == 0 or made == args.sessions:
                _log(
                    f"{made} sessions closed in {batch['at']:.0f} s, server RSS "
                    f"{batch['rssBytes'] / MB:.1f} MB"
                )
        raw["seconds"] = time.monotonic() - began
        raw["machine"] = machine.end()
        if not args.no_record:
            ids = {i for batch in raw["batches"] for i in batch["ids"]}
            raw["sidecarWaitSeconds"] = wait_complete(recordings, ids, HANGUP_TIMEOUT)
        sender.close_all(senders, ["sender"])
        raw["serverStop"] = server.stop()
    finally:
        senders.end()
        server.close()
    raw["serverLog"] = log_summary(server.log_path)
    return raw


def _spread(items: list[Any], count: int) -> list[Any]:
    """``count`` items evenly spread over ``items``, the first and last included."""
    if count >= len(items):
        return list(items)
    if count <= 1:
        return items[:count]
    step = (len(items) - 1) / (count - 1)
    return [items[round(i * step)] for i in range(count)]


def _read_back(path: Path, ffmpeg: str | None) -> dict[str, Any]:
    """One recording as PyAV demuxes it (and what ffmpeg printed, if it was decoded)."""
    inspected = files.inspect(path, decode=False)
    return {
        "file": path.name,
        "ffmpeg": ffmpeg,
        "pyav": inspected["error"],
        "videoPackets": inspected["video"]["packets"],
        "audioPackets": inspected["audio"]["packets"],
        "videoSeconds": inspected["video"]["seconds"],
        "audioSeconds": inspected["audio"]["seconds"],
        "clean": not ffmpeg and inspected["error"] is None,
    }


def verify(raw: dict[str, Any], recordings: Path, check: int) -> dict[str, Any]:
    """Every session has one finalized recording, and every recording both video and audio
    (PyAV demuxes them all); ``check`` of them, spread over the run, are also decoded by
    ffmpeg (which must print nothing)."""
    metas = sidecars(recordings)
    by_session: dict[str, list[str]] = {}
    for name, meta in metas.items():
        by_session.setdefault(str(meta.get("session")), []).append(name)
    ids = [i for batch in raw["batches"] for i in batch["ids"]]
    finalized = [
        i
        for i in ids
        if len(by_session.get(i, [])) == 1 and metas[by_session[i][0]].get("state") == "complete"
    ]
    names = [by_session[i][0] for i in ids if len(by_session.get(i, [])) == 1]
    paths = [recordings / name for name in _spread(names, check)]
    _log(f"demuxing {len(names)} recordings, decoding {len(paths)} with ffmpeg …")
    ffmpeg = ffmpeg_all(paths)
    read = [_read_back(recordings / name, ffmpeg.get(recordings / name)) for name in names]
    checked = [entry for entry in read if entry["ffmpeg"] is not None]
    incomplete = [e for e in read if not e["videoPackets"] or not e["audioPackets"] or e["pyav"]]
    return {
        "sessions": len(ids),
        "recordings": len(metas),
        "finalized": len(finalized),
        "notFinalized": [i for i in ids if i not in set(finalized)][:20],
        "withoutVideoOrAudio": incomplete,
        "videoSeconds": [e["videoSeconds"] for e in read],
        "checked": checked,
        "clean": sum(c["clean"] for c in checked),
    }


def summarise(
    raw: dict[str, Any], verified: dict[str, Any], warmup: int, recorded: bool
) -> dict[str, Any]:
    """The figures of the table (see the README for their definitions); ``recorded``:
    whether the sessions recorded (without, only the memory is judged)."""
    batches = raw["batches"]
    after = [(b["closed"], b["rssBytes"] / MB) for b in batches if b["closed"] > warmup]
    kept = slope(after)
    rss = [b["rssBytes"] / MB for b in batches]
    durations = verified["videoSeconds"]
    return {
        "sessions": verified["sessions"],
        "warmupSessions": warmup,
        "batchesAfterWarmup": len(after),
        "mbPerClosedSession": kept,
        "rssBeforeMB": raw["before"]["rssBytes"] / MB,
        "rssAfterFirstBatchMB": rss[0] if rss else None,
        "rssAtWarmupMB": next((b["rssBytes"] / MB for b in batches if b["closed"] >= warmup), None),
        "rssEndMB": rss[-1] if rss else None,
        "rssPeakMB": max(rss, default=None),
        "fdsBefore": raw["before"]["fds"],
        "fdsEnd": batches[-1]["fds"] if batches else None,
        "threadsBefore": raw["before"]["threads"],
        "threadsEnd": batches[-1]["threads"] if batches else None,
        "sessionsListedAfterBatchMax": max((b["sessionsListed"] for b in batches), default=None),
        "finalized": verified["finalized"],
        "checked": len(verified["checked"]),
        "clean": verified["clean"],
        "videoSecondsMin": min(durations, default=None),
        "videoSecondsMax": max(durations, default=None),
        "withoutVideoOrAudio": len(verified["withoutVideoOrAudio"]),
        "seconds": raw["seconds"],
        "batchSecondsMean": raw["seconds"] / len(batches) if batches else None,
        "machineBusyCores": raw["machine"]["busyCores"],
        "machineCores": raw["machine"]["cores"],
        "loadBefore": raw["machine"]["loadBefore"],
        "loadEnd": raw["machine"]["loadEnd"],
        "serverExitCode": raw["serverStop"]["exitCode"],
        "serverLogWarnings": raw["serverLog"]["warningsOrErrors"],
        "recorded": recorded,
        "met": kept is not None
        and kept <= TARGET_MB_PER_SESSION
        and (
            not recorded
            or (
                verified["finalized"] == verified["sessions"]
                and verified["clean"] == len(verified["checked"])
                and not verified["withoutVideoOrAudio"]
            )
        ),
    }


def rss_curve(raw: dict[str, Any], points: int = 12) -> str:
    """RSS against sessions closed, at ``points`` batches spread over the run."""
    return ", ".join(
        f"{b['closed']}: {b['rssBytes'] / MB:.1f}" for b in _spread(raw["batches"], points)
    )


def markdown(command: str, summary: dict[str, Any], raw: dict[str, Any]) -> str:
    s = summary
    kept = s["mbPerClosedSession"]
    rows = [
        (
            "Sessions made, recorded and closed"
            if s["recorded"]
            else "Sessions made and closed (--no-record: none recorded)",
            f"{s['sessions']:,}",
        ),
        (
            "Time taken (s); per batch, mean (s)",
            f"{fmt(s['seconds'])}; {fmt(s['batchSecondsMean'], 2)}",
        ),
        ("Server RSS before any session (MB)", fmt(s["rssBeforeMB"])),
        (
            "Server RSS after the first batch / at warm-up / at the end / peak (MB)",
            " / ".join(
                fmt(s[k])
                for k in ("rssAfterFirstBatchMB", "rssAtWarmupMB", "rssEndMB", "rssPeakMB")
            ),
        ),
        ("Server RSS over time (sessions closed: MB)", rss_curve(raw)),
        (
            f"MB kept per closed session after warm-up ({s['warmupSessions']} sessions; "
            f"slope over {s['batchesAfterWarmup']} batches)",
            fmt(kept, 4),
        ),
        ("Server file descriptors, before → end", f"{s['fdsBefore']} → {fmt(s['fdsEnd'])}"),
        ("Server threads, before → end", f"{s['threadsBefore']} → {fmt(s['threadsEnd'])}"),
        (
            "Sessions still listed after a batch's hang-up (max)",
            fmt(s["sessionsListedAfterBatchMax"]),
        ),
        ('Recordings finalized (sidecar "complete")', f"{s['finalized']} / {s['sessions']}"),
        ("Spot-checked recordings clean (ffmpeg, PyAV)", f"{s['clean']} / {s['checked']}"),
        ("Recordings without video or audio (PyAV, all)", str(s["withoutVideoOrAudio"])),
        (
            "Recordings' video, min / max (s)",
            f"{fmt(s['videoSecondsMin'], 2)} / {fmt(s['videoSecondsMax'], 2)}",
        ),
        (
            f"Machine CPU busy over the run (cores of {s['machineCores']})",
            fmt(s["machineBusyCores"], 2),
        ),
        (
            "Load average (1 min), start → end",
            f"{fmt(s['loadBefore'], 2)} → {fmt(s['loadEnd'], 2)}",
        ),
        (
            "Server warnings/errors logged; exit status on SIGTERM",
            f"{s['serverLogWarnings']}; {fmt(s['serverExitCode'])}",
        ),
    ]
    verdict = "**met**" if kept is not None and kept <= TARGET_MB_PER_SESSION else "**missed**"
    if kept is None:
        verdict = "not measured (too few batches after warm-up)"
    return "\n".join(
        [
            f"Command: `{command}`",
            "",
            *table(("Metric", "Value"), rows, "lr"),
            "",
            *table(
                ("Target", "Measured", "Result"),
                [
                    (
                        f"≤ {TARGET_MB_PER_SESSION} MB kept per closed session after warm-up",
                        f"{fmt(kept, 4)} MB",
                        verdict,
                    )
                ],
                "lll",
            ),
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Sessions come and go through rtc-recorder serve, each recording; the "
        "server's memory per closed session.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--sessions", type=int, default=500, help="sessions to make in all")
    parser.add_argument("--batch", type=int, default=5, help="sessions at a time")
    parser.add_argument(
        "--record-seconds", type=float, default=3.0, help="each session's recording"
    )
    parser.add_argument(
        "--warmup-sessions",
        type=int,
        default=50,
        help="sessions closed before the slope is fitted (at most half of --sessions)",
    )
    parser.add_argument("--check", type=int, default=20, help="recordings spot-checked")
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="sessions connect and hang up without recording: the memory a session keeps "
        "by itself, to compare",
    )
    parser.add_argument(
        "--connect-timeout", type=float, default=30.0, help="seconds for a batch to connect"
    )
    add_output_options(parser, "keep the recordings in OUT", "table")
    args = parser.parse_args(argv)
    if min(args.sessions, args.batch) < 1 or args.check < 0 or args.warmup_sessions < 0:
        parser.error("--sessions and --batch must be at least 1, --check and --warmup not < 0")
    if args.record_seconds <= 0:
        parser.error("--record-seconds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = Results.begin("churn", args, argv)
    warmup = min(args.warmup_sessions, args.sessions // 2)
    if warmup < args.warmup_sessions:
        _log(f"warm-up: {warmup} sessions (half of --sessions)")
    media_path = results.media()
    with results.server_workdir(args.keep_recordings) as workdir:
        raw = run_churn(args, media_path, workdir)
        verified = verify(raw, workdir / "recordings", args.check)
    summary = summarise(raw, verified, warmup, not args.no_record)
    table = markdown(results.command, summary, raw)
    document = results.document(
        args,
        targets={"mbPerClosedSession": TARGET_MB_PER_SESSION},
        summary=summary,
        verified=verified,
        raw=raw,
    )
    results.save(document, table)
    if args.markdown:
        print(table)
    else:
        kept = summary["mbPerClosedSession"]
        recorded = (
            f"{summary['finalized']} finalized, {summary['withoutVideoOrAudio']} without video "
            f"or audio, {summary['clean']} / {summary['checked']} spot-checked clean"
            if summary["recorded"]
            else "nothing recorded (--no-record)"
        )
        print(
            f"{summary['sessions']} sessions in {summary['seconds']:.0f} s; server RSS "
            f"{summary['rssBeforeMB']:.1f} → {fmt(summary['rssEndMB'])} MB "
            f"({rss_curve(raw)}); {fmt(kept, 4)} MB kept per closed session after "
            f"{warmup} (target ≤ {TARGET_MB_PER_SESSION}); {recorded}; machine "
            f"{summary['machineBusyCores']:.2f} of {summary['machineCores']} cores busy, load "
            f"{summary['loadBefore']:.2f} → {summary['loadEnd']:.2f}"
        )
    return 0 if summary["met"] else 3


if __name__ == "__main__":
    exit_with(main)
