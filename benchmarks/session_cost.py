"""What a session costs: by state through the server, and the server against the bare
recorder against aiortc's recorder, at several session counts.

    .venv/bin/python benchmarks/session_cost.py --counts 2 --seconds 10
    .venv/bin/python benchmarks/session_cost.py --markdown        # 2, 20 and 40 sessions
    ./dev bench session_cost --markdown

Every session publishes the pre-encoded loop of ``loadbench.media`` (720p30 VP8 at about
2 Mbit/s with a keyframe every second, and Opus) from sender processes, on 127.0.0.1.

1. **By state**, through ``rtc-recorder serve`` (without ``--auto-record``): N sessions
   connect, then every session is driven through the HTTP API
   (``POST /api/sessions/{id}/{start,pause,resume,stop}``) and the server is measured for
   ``--seconds`` in each state: connected (never recorded), recording, paused, stopped
   (after its recording).
2. **The comparison**, at each of ``--counts``: (a) ``rtc-recorder serve --auto-record``;
   (b) rtc-recorder's ``MediaRecorder`` in a plain aiortc receiver; (c) aiortc's
   ``MediaRecorder`` in the same plain receiver, and (d) through the server
   (``loopback_server.py --recorder aiortc``). aiortc's recorder decodes and re-encodes
   every frame: it runs only at ``--aiortc-counts`` (2 by default).

For each: the CPU of the process doing the recording per session, its event loop's lag,
the frames recorded against those sent, RTP packets lost before it read them, its RSS per
session; and beside every figure the machine's load (busy CPU, load average before and
at the end of the window). The results go to ``OUT/session_cost-<date>-<time>.json``;
``--markdown`` prints the tables (also written as ``.md``). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
from loadbench import media, report, sender
from loadbench.accounting import verify
from loadbench.bare import BareOptions, inspect_files, run_bare
from loadbench.children import ChildError, Children, cpu_seconds
from loadbench.environment import use_checkout
from loadbench.files import ffmpeg_all
from loadbench.lag import read_lag_log
from loadbench.machine import SATURATED, MachineWindow
from loadbench.receiver import file_name
from loadbench.report import MB, fmt, mean, percentile, table
from loadbench.results import Results, add_output_options, exit_with
from loadbench.server import (
    HANGUP_TIMEOUT,
    NO_LOAD_LIMITS,
    BenchmarkError,
    ServerProcess,
    log_summary,
    sidecars,
    wait_complete,
)

MODES = ("server", "bare", "aiortc-bare", "aiortc-server")
AIORTC_MODES = ("aiortc-bare", "aiortc-server")
SERVER_MODES = ("server", "aiortc-server")
LABELS = {
    "server": "rtc-recorder serve",
    "bare": "rtc-recorder, bare",
    "aiortc-bare": "aiortc, bare",
    "aiortc-server": "aiortc through the server",
}
STATES = ("connected", "recording", "paused", "stopped")

TARGET_RATIO = 25.0  # aiortc's recorder ÷ ours, CPU per session, through the server
TARGET_RATIO_SESSIONS = 2
TARGET_CPU = 0.015  # core-s/s per session, ours through the server
TARGET_CPU_SESSIONS = 20
TARGET_LAG_P99_MS = 5.0  # ours through the server
TARGET_LAG_SESSIONS = 40

SAMPLE_INTERVAL = 0.5  # seconds between RSS samples of the server
STATE_TIMEOUT = 30.0  # for every session to reach a state
COOL_DOWN = 3.0  # seconds between runs, for the last one's processes to be gone
KEPT_UP_PCT = 99.0  # a recorder that recorded less of what was sent fell behind


def _log(text: str) -> None:
    print(f"[session_cost] {text}", file=sys.stderr, flush=True)


# -- one server run ---------------------------------------------------------------------------


class ServerRun:
    """``rtc-recorder serve`` (through the loopback wrapper, its event loop's lag logged,
    admission by load off) with ``sessions`` sessions from sender processes, measured
    window by window.

    Use as a context manager: whatever happens, no sender and no server is left running.
    """

    def __init__(
        self,
        folder: Path,
        sessions: int,
        media_path: Path,
        args: argparse.Namespace,
        serve_args: Sequence[str] = (),
        wrapper_args: Sequence[str] = (),
    ) -> None:
        folder.mkdir(parents=True)
        self.folder = folder
        self.recordings = folder / "recordings"
        self.lag_file = folder / "lag.txt"
        self.sessions = sessions
        self.media_path = media_path
        self.args = args
        self.server = ServerProcess(
            self.recordings,
            folder / "server.log",
            [*NO_LOAD_LIMITS, *serve_args],
            ["--lag-file", str(self.lag_file), *wrapper_args],
        )
        self.senders = Children()
        self.sender_pids: list[int] = []
        self.ids: list[str] = []
        self.windows: dict[str, dict[str, Any]] = {}
        self.raw: dict[str, Any] = {"serverCommand": shlex.join(self.server.command)}
        self._process: psutil.Process | None = None

    def __enter__(self) -> ServerRun:
        return self

    def __exit__(self, *_: object) -> None:
        self.senders.end()
        self.server.close()

    def start(self) -> None:
        """The server up, then measured with no session (its idle cost)."""
        self.server.start()
        self.raw["serverReadySeconds"] = self.server.wait_ready()
        self._process = psutil.Process(self.server.pid)
        _log(f"server pid {self.server.pid} on port {self.server.port}")
        self.measure("idle", self.args.idle_seconds)

    def connect(self, recorder_state: str) -> None:
        """Start the senders; wait until every session is connected and its recorder in
        ``recorder_state``."""
        timeout = 20.0 + 2.0 * self.sessions
        started = time.monotonic()
        names = sender.start_senders(
            self.senders,
            self.server.url("/offer"),
            self.sessions,
            self.args.sessions_per_sender,
            self.media_path,
            timeout,
        )
        self.sender_pids = [self.senders.pid(name) for name in names]
        for name in names:
            self.senders.expect(name, "connected", timeout=timeout + 10)
        listed = self.server.wait_sessions(self.sessions, recorder_state, STATE_TIMEOUT)
        self.ids = [session["id"] for session in listed]
        self.raw["connectSeconds"] = time.monotonic() - started
        _log(f"{self.sessions} sessions {recorder_state} after {self.raw['connectSeconds']:.1f} s")

    def call_all(self, method: str, then: str) -> None:
        """``POST /api/sessions/{id}/{method}`` for every session; wait until every
        recorder is in state ``then``."""
        answers = self.server.call_all(self.ids, method, STATE_TIMEOUT)
        self.raw.setdefault("calls", {})[method] = {
            "slowestSeconds": max(a["seconds"] for a in answers.values())
        }
        self.server.wait_sessions(self.sessions, then, STATE_TIMEOUT)

    def measure(self, name: str, seconds: float) -> None:
        """The server's CPU and RSS, the senders' CPU and the machine over ``seconds``
        (the lag is read from the server's log at the end)."""
        assert self._process is not None
        machine = MachineWindow()
        before = self._process.cpu_times()
        senders_before = cpu_seconds(self.sender_pids)
        started = time.monotonic()
        rss: list[int] = []
        while (elapsed := time.monotonic() - started) < seconds:
            rss.append(int(self._process.memory_info().rss))
            self.server.check()
            if self.sender_pids:
                self.senders.check()
            time.sleep(min(SAMPLE_INTERVAL, seconds - elapsed))
        after = self._process.cpu_times()
        ended = time.monotonic()
        rss.append(int(self._process.memory_info().rss))
        if self.ids:
            self._check_sessions(name)
        self.windows[name] = {
            "start": started,
            "end": ended,
            "seconds": ended - started,
            "cpuSeconds": after.user + after.system - before.user - before.system,
            "senderCpuSeconds": cpu_seconds(self.sender_pids) - senders_before,
            "rssBytes": rss,
            "machine": machine.end(),
        }

    def _check_sessions(self, window: str) -> None:
        """Raise if a session ended or disconnected during ``window``."""
        connected = {s["id"] for s in self.server.sessions() if s["connectionState"] == "connected"}
        lost = [i for i in self.ids if i not in connected]
        if lost:
            raise BenchmarkError(
                f"{len(lost)} of {len(self.ids)} sessions no longer connected at the end of the "
                f"{window} window (see the server's log: on an overloaded machine, ICE consent "
                "checks time out and connections end about 30 s after they began)"
            )

    def finish(self) -> None:
        """Senders pause and report; RTP statistics; every session hung up
        (``DELETE /api/sessions/{id}``) and its recording finalized; the server stopped
        (SIGTERM); the lag of every window read back."""
        names = self.senders.names("sender-")
        sent = sender.ask_all(self.senders, names, "pause", "sent")
        time.sleep(self.args.drain)  # what was sent reaches the recorders
        rtp = sender.ask_all(self.senders, names, "rtp", "rtp")
        hangups = self.server.hang_up(self.ids)
        self.raw["hangupFailures"] = sum(h["status"] != 200 for h in hangups.values())
        self.raw["sidecarWaitSeconds"] = wait_complete(
            self.recordings, set(self.ids), HANGUP_TIMEOUT
        )
        sender.close_all(self.senders, names)
        self.raw["serverStop"] = self.server.stop()
        self.raw["sent"], self.raw["rtp"] = sent, rtp
        self.raw["serverLog"] = log_summary(self.server.log_path)
        self._read_lags()

    def _read_lags(self) -> None:
        samples = read_lag_log(self.lag_file)
        for window in self.windows.values():
            window["lagSeconds"] = [
                lag for at, lag in samples if window["start"] <= at <= window["end"]
            ]


# -- figures ------------------------------------------------------------------------------------


def _machine_figures(machine: dict[str, Any]) -> dict[str, Any]:
    return {
        "machineBusyCores": machine["busyCores"],
        "machineCores": machine["cores"],
        "saturated": machine["saturated"],
        "loadBefore": machine["loadBefore"],
        "loadEnd": machine["loadEnd"],
    }


def window_figures(window: dict[str, Any], idle: dict[str, Any], sessions: int) -> dict[str, Any]:
    """The cost of one window of a server run, per session where that means something
    (``idle``: the same server's window with no session)."""
    cores = window["cpuSeconds"] / window["seconds"]
    idle_cores = idle["cpuSeconds"] / idle["seconds"]
    lag_ms = [1000 * lag for lag in window.get("lagSeconds", [])]
    rss = mean(window["rssBytes"]) or 0.0
    idle_rss = mean(idle["rssBytes"]) or 0.0
    return {
        "sessions": sessions,
        "windowSeconds": window["seconds"],
        "cpuCores": cores,
        "cpuPerSession": cores / sessions,
        "cpuIdleCores": idle_cores,
        "cpuPerSessionNet": max(0.0, cores - idle_cores) / sessions,
        "lagSamples": len(lag_ms),
        "lagP50Ms": percentile(lag_ms, 0.50),
        "lagP99Ms": percentile(lag_ms, 0.99),
        "lagMaxMs": max(lag_ms, default=None),
        "rssBeforeMB": idle_rss / MB,
        "rssWithSessionsMB": rss / MB,
        "rssPerSessionMB": (rss - idle_rss) / MB / sessions,
        "senderCpuCores": window["senderCpuSeconds"] / window["seconds"],
        **_machine_figures(window["machine"]),
    }


def _rtp_lost_pct(rtp: dict[str, Any]) -> float | None:
    """RTP packets the server's receiver reports lost, % of those sent, all sessions."""
    sent = lost = 0
    for kinds in rtp.values():
        for stats in kinds.values():
            if stats.get("packetsLost") is None:
                return None
            sent += stats["packetsSent"]
            lost += max(0, stats["packetsLost"])
    return 100.0 * lost / sent if sent else None


def recorded_figures(checked: list[dict[str, Any]]) -> dict[str, Any]:
    """Frames recorded (% of those sent while recording) and clean files, over the
    sessions of a server run (``loadbench.accounting.verify``'s result)."""
    result: dict[str, Any] = {"recordings": len(checked)}
    for kind in ("video", "audio"):
        tracks = [c[kind] for c in checked if kind in c]
        expected = sum(t["sentWhileRecording"] for t in tracks)
        recorded = sum(t["recorded"] for t in tracks)
        shares = [t["recordedPct"] for t in tracks if t["recordedPct"] is not None]
        result[f"{kind}RecordedPct"] = 100.0 * recorded / expected if expected else None
        result[f"{kind}LowestSessionPct"] = min(shares, default=None)
    result["recordingsClean"] = sum(bool(c.get("clean")) for c in checked)
    result["recordingsFinalized"] = sum(c.get("sidecarState") == "complete" for c in checked)
    return result


def run_server_mode(
    mode: str, count: int, media_path: Path, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """(a) or (d): ``count`` sessions recorded by the server from their connection on."""
    wrapper = ["--recorder", "aiortc"] if mode == "aiortc-server" else []
    with ServerRun(
        workdir / f"{mode}-{count}", count, media_path, args, ["--auto-record"], wrapper
    ) as run:
        run.start()
        run.connect("recording")
        time.sleep(args.warmup)
        _log(f"{LABELS[mode]}, {count} sessions: measuring for {args.seconds:g} s")
        run.measure("recording", args.seconds)
        run.finish()
    checked = verify(run.raw["sent"], run.recordings, media_path, decode=False)
    figures = window_figures(run.windows["recording"], run.windows["idle"], count)
    figures.update(recorded_figures(checked))
    figures["rtpLostPct"] = _rtp_lost_pct(run.raw["rtp"])
    figures["serverLogWarnings"] = run.raw["serverLog"]["warningsOrErrors"]
    figures["serverExitCode"] = run.raw["serverStop"]["exitCode"]
    _keep(args, run.recordings, f"{mode}-{count}")
    return {
        "figures": figures,
        "raw": {**run.raw, "windows": run.windows},
        "sessions": checked,
    }


def run_bare_mode(
    mode: str, count: int, media_path: Path, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """(b) or (c): ``count`` sessions recorded in a plain aiortc receiver process."""
    kind = "aiortc" if mode == "aiortc-bare" else "rtc-recorder"
    options = BareOptions(
        sessions=count,
        seconds=args.seconds,
        warmup=args.warmup,
        drain=args.drain,
        sample_interval=SAMPLE_INTERVAL,
        sessions_per_sender=args.sessions_per_sender,
    )
    recordings = workdir / f"{mode}-{count}"
    _log(f"{LABELS[mode]}, {count} sessions")
    run = run_bare(kind, options, media_path, recordings)
    inspect_files(run, recordings, decode=False)
    paths = [recordings / file_name(int(number)) for number in run["sent"]]
    ffmpeg = ffmpeg_all([path for path in paths if path.exists()])
    summary = report.summarise(run)
    window = run["receiver"]["window"]
    busy, cores = window["machineBusyCores"], window["machineCores"]
    figures = {
        key: summary[key]
        for key in (
            "sessions",
            "windowSeconds",
            "cpuCores",
            "cpuPerSession",
            "cpuIdleCores",
            "cpuPerSessionNet",
            "lagP50Ms",
            "lagP99Ms",
            "lagMaxMs",
            "rssBeforeMB",
            "rssWithSessionsMB",
            "rssPerSessionMB",
            "videoRecordedPct",
            "audioRecordedPct",
            "videoLowestSessionPct",
            "rtpLostPct",
            "senderCpuCores",
        )
    }
    figures.update(
        {
            "lagSamples": len(run["receiver"]["lagSeconds"]),
            "recordings": len(paths),
            "recordingsClean": sum(
                path.exists() and not ffmpeg.get(path) and not run["files"][n]["error"]
                for n, path in zip(run["sent"], paths, strict=True)
            ),
            "machineBusyCores": busy,
            "machineCores": cores,
            "saturated": busy >= SATURATED * cores,
            "loadBefore": run["load"]["before"],
            "loadEnd": run["load"]["windowEnd"],
        }
    )
    _keep(args, recordings, f"{mode}-{count}")
    run["ffmpeg"] = {str(path): output for path, output in ffmpeg.items()}
    return {"figures": figures, "raw": run}


def run_states(media_path: Path, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Part 1: one server, ``--state-sessions`` sessions, a window in every state."""
    count = args.state_sessions
    settle = args.settle
    with ServerRun(workdir / f"states-{count}", count, media_path, args) as run:
        run.start()
        run.connect("inactive")
        steps: list[tuple[str, Callable[[], None]]] = [
            ("connected", lambda: None),
            ("recording", lambda: run.call_all("start", "recording")),
            ("paused", lambda: run.call_all("pause", "paused")),
            ("stopped", lambda: _resume_then_stop(run)),
        ]
        for state, enter in steps:
            enter()
            time.sleep(settle)
            _log(f"{count} sessions {state}: measuring for {args.seconds:g} s")
            run.measure(state, args.seconds)
        run.finish()
    recordings = sorted(p for p in run.recordings.iterdir() if not p.name.endswith(".json"))
    ffmpeg = ffmpeg_all(recordings)
    figures = {
        state: window_figures(run.windows[state], run.windows["idle"], count) for state in STATES
    }
    idle = run.windows["idle"]
    _keep(args, run.recordings, f"states-{count}")
    return {
        "sessions": count,
        "figures": figures,
        "idle": {
            "cpuCores": idle["cpuSeconds"] / idle["seconds"],
            "rssMB": (mean(idle["rssBytes"]) or 0.0) / MB,
            "lagP99Ms": percentile([1000 * x for x in idle.get("lagSeconds", [])], 0.99),
            **_machine_figures(idle["machine"]),
        },
        "recordings": len(recordings),
        "recordingsClean": sum(not output for output in ffmpeg.values()),
        "recordingsFinalized": sum(
            meta.get("state") == "complete" for meta in sidecars(run.recordings).values()
        ),
        "ffmpeg": {path.name: output for path, output in ffmpeg.items()},
        "raw": {**run.raw, "windows": run.windows},
    }


def _resume_then_stop(run: ServerRun) -> None:
    run.call_all("resume", "recording")
    time.sleep(run.args.settle)
    run.call_all("stop", "inactive")
    wait_complete(run.recordings, set(run.ids), HANGUP_TIMEOUT)


def _keep(args: argparse.Namespace, recordings: Path, name: str) -> None:
    if args.keep_recordings and recordings.exists():
        kept = args.kept / name
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(recordings, kept)


# -- the tables ---------------------------------------------------------------------------------


def lower_bound(figures: dict[str, Any]) -> bool:
    """Whether a CPU figure is only a lower bound of what the recording needs: the machine
    was saturated, and the recorder fell behind (less than :data:`KEPT_UP_PCT` of the
    video or audio sent was recorded) or, in a window with nothing to count (a state of
    the by-state part), could not be shown to keep up."""
    if not figures["saturated"]:
        return False
    shares: list[float | None] = [figures.get(f"{kind}RecordedPct") for kind in ("video", "audio")]
    counted = [share for share in shares if share is not None]
    return len(counted) < len(shares) or min(counted) < KEPT_UP_PCT


def _cpu(figures: dict[str, Any]) -> str:
    """CPU per session, "≥" when it is a lower bound."""
    bound = "≥ " if lower_bound(figures) else ""
    return f"{bound}{fmt(figures['cpuPerSession'], 4)}"


def _lag(figures: dict[str, Any]) -> str:
    return " / ".join(
        fmt(figures[k], d) for k, d in (("lagP50Ms", 2), ("lagP99Ms", 2), ("lagMaxMs", 1))
    )


def _machine(figures: dict[str, Any]) -> str:
    return f"{fmt(figures['machineBusyCores'], 2)} of {figures['machineCores']}"


def _load(figures: dict[str, Any]) -> str:
    return f"{fmt(figures['loadBefore'], 2)} → {fmt(figures['loadEnd'], 2)}"


def ratio(numerator: dict[str, Any], denominator: dict[str, Any]) -> dict[str, Any] | None:
    """``numerator``'s CPU per session ÷ ``denominator``'s, and how far it can be trusted:
    a lower bound when only the numerator's figure is one, unreliable when the
    denominator's is (see :func:`lower_bound`)."""
    below = denominator["cpuPerSession"]
    if not below:
        return None
    return {
        "value": numerator["cpuPerSession"] / below,
        "lowerBound": lower_bound(numerator) and not lower_bound(denominator),
        "unreliable": lower_bound(denominator),
        "perFrameRecorded": _per_frame(numerator) / _per_frame(denominator)
        if _per_frame(numerator) and _per_frame(denominator)
        else None,
    }


def _per_frame(figures: dict[str, Any]) -> float | None:
    """CPU per session for each share of the video frames sent that was recorded: what a
    recorder pays per frame it delivers, which a recorder held back by a saturated machine
    (its CPU capped, most frames lost) cannot hide."""
    share = figures["videoRecordedPct"] / 100
    return figures["cpuPerSession"] / share if share else None


def _ratio_text(value: dict[str, Any] | None) -> str:
    if value is None:
        return "n/a"
    bound = "≥ " if value["lowerBound"] else ""
    mark = " †" if value["unreliable"] else ""
    return f"{bound}{value['value']:,.1f}×{mark}"


def targets(compare: dict[int, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The three targets, judged where they were measured (``met`` None otherwise)."""

    def ours(count: int) -> dict[str, Any] | None:
        found = compare.get(count, {}).get("server")
        return None if found is None else found["figures"]

    result = []
    server = ours(TARGET_RATIO_SESSIONS)
    theirs = compare.get(TARGET_RATIO_SESSIONS, {}).get("aiortc-server")
    measured = None
    if server is not None and theirs is not None:
        measured = ratio(theirs["figures"], server)
    result.append(
        {
            "target": f"through the server, aiortc's recorder uses ≥ {TARGET_RATIO:g}× the CPU "
            f"of ours, at {TARGET_RATIO_SESSIONS} sessions",
            "measured": measured,
            "text": _ratio_text(measured) + _per_frame_text(measured)
            if measured
            else "not measured",
            "result": _ratio_result(measured),
        }
    )
    figures = ours(TARGET_CPU_SESSIONS)
    result.append(
        {
            "target": f"≤ {TARGET_CPU} core-s/s per session at {TARGET_CPU_SESSIONS} sessions "
            "(rtc-recorder serve)",
            "measured": None if figures is None else figures["cpuPerSession"],
            "text": "not measured" if figures is None else _cpu(figures),
            "result": _cpu_result(figures),
        }
    )
    figures = ours(TARGET_LAG_SESSIONS)
    p99 = None if figures is None else figures["lagP99Ms"]
    result.append(
        {
            "target": f"event-loop lag p99 ≤ {TARGET_LAG_P99_MS:g} ms at {TARGET_LAG_SESSIONS} "
            "sessions (rtc-recorder serve)",
            "measured": p99,
            "text": "not measured" if p99 is None else f"{p99:.2f} ms",
            "result": "not measured" if p99 is None else _met(p99 <= TARGET_LAG_P99_MS),
        }
    )
    return result


def _per_frame_text(measured: dict[str, Any]) -> str:
    value = measured["perFrameRecorded"]
    return "" if value is None else f" (per video frame recorded: {value:,.1f}×)"


def _met(ok: bool) -> str:
    return "met" if ok else "missed"


def _ratio_result(measured: dict[str, Any] | None) -> str:
    """A lower bound can only meet the ratio target; an unreliable ratio decides nothing."""
    if measured is None:
        return "not measured"
    if measured["unreliable"]:
        return "inconclusive"
    if measured["lowerBound"] and measured["value"] < TARGET_RATIO:
        return "inconclusive"
    return _met(measured["value"] >= TARGET_RATIO)


def _cpu_result(figures: dict[str, Any] | None) -> str:
    """A lower bound can only miss the CPU target."""
    if figures is None:
        return "not measured"
    within = figures["cpuPerSession"] <= TARGET_CPU
    if within and lower_bound(figures):
        return "inconclusive"
    return _met(within)


def _verdict(result: str) -> str:
    return f"**{result}**" if result in ("met", "missed") else result


STATE_COLUMNS = (
    "State",
    "CPU per session",
    "÷ recording",
    "net of idle",
    "Lag p50 / p99 / max (ms)",
    "RSS per session (MB)",
    "Machine CPU busy (cores)",
    "Load average",
)
COMPARE_COLUMNS = (
    "Sessions",
    "Recorder",
    "CPU per session",
    "÷ rtc-recorder serve",
    "÷ serve, per video frame recorded",
    "Lag p50 / p99 / max (ms)",
    "Video / audio recorded (%)",
    "RTP lost before read (%)",
    "RSS per session (MB)",
    "Files ffmpeg-clean",
    "Machine CPU busy (cores)",
    "Load average",
)


def _state_row(state: str, states: dict[str, Any]) -> tuple[str, ...]:
    f = states["figures"][state]
    base = states["figures"]["recording"]["cpuPerSession"]
    share = f"{f['cpuPerSession'] / base:.2f}×" if base else "n/a"
    return (
        state,
        _cpu(f),
        share,
        fmt(f["cpuPerSessionNet"], 4),
        _lag(f),
        fmt(f["rssPerSessionMB"], 2),
        _machine(f),
        _load(f),
    )


def _compare_row(count: int, mode: str, modes: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    f = modes[mode]["figures"]
    server = modes.get("server")
    versus = per_frame = ""
    if server is not None and mode != "server":
        measured = ratio(f, server["figures"])
        versus = _ratio_text(measured)
        if measured is not None and measured["perFrameRecorded"] is not None:
            per_frame = f"{measured['perFrameRecorded']:,.1f}×"
    return (
        str(count),
        LABELS[mode],
        _cpu(f),
        versus,
        per_frame,
        _lag(f),
        f"{fmt(f['videoRecordedPct'], 2)} / {fmt(f['audioRecordedPct'], 2)}",
        fmt(f["rtpLostPct"], 2),
        fmt(f["rssPerSessionMB"], 2),
        f"{f['recordingsClean']} / {f['recordings']}",
        _machine(f),
        _load(f),
    )


def markdown(
    command: str,
    states: dict[str, Any] | None,
    compare: dict[int, dict[str, dict[str, Any]]],
    media_info: dict[str, Any],
) -> str:
    """The tables: by state, the comparison, the targets."""
    lines = [
        f"Command: `{command}`",
        "",
        f"Every session: {media_info['video']} ({media_info['videoKbps']:.0f} kbit/s, keyframe "
        f"every {media_info['keyframeEveryFrames']} frames) + {media_info['audio']}, "
        "pre-encoded, over loopback. CPU in core-seconds per second (cores); "
        "“≥”: the machine was saturated (≥ 90 % of its cores busy) and the recorder fell "
        "behind (recorded < 99 % of what was sent; in the by-state table, where nothing is "
        "counted per window, saturation alone), so the figure is a lower bound of what it "
        "needs; load average is the 1-minute one, before the window → at its end.",
    ]
    if states is not None:
        n = states["sessions"]
        idle = states["idle"]
        lines += [
            "",
            f"**By state, through `rtc-recorder serve`, {n} sessions** (server idle before "
            f"any session: {fmt(idle['cpuCores'], 4)} cores, {fmt(idle['rssMB'])} MB; "
            f"recordings: {states['recordingsFinalized']} / {states['recordings']} finalized, "
            f"{states['recordingsClean']} ffmpeg-clean)",
            "",
            *table(STATE_COLUMNS, (_state_row(state, states) for state in STATES), "lrrrrrrr"),
        ]
    if compare:
        rows = [
            _compare_row(count, mode, modes)
            for count, modes in sorted(compare.items())
            for mode in MODES
            if mode in modes
        ]
        lines += [
            "",
            "**The server, the bare recorder and aiortc's recorder**",
            "",
            *table(COMPARE_COLUMNS, rows, "rlrrrrrrrrrr"),
        ]
        if any("†" in row[3] for row in rows):
            lines += ["", "† rtc-recorder serve's own figure is a lower bound: unreliable ratio."]
    rows = [(t["target"], t["text"], _verdict(t["result"])) for t in targets(compare)]
    lines += ["", *table(("Target", "Measured", "Result"), rows, "lll")]
    return "\n".join(lines)


def summary_text(
    states: dict[str, Any] | None, compare: dict[int, dict[str, dict[str, Any]]]
) -> str:
    """A few lines: the costs as ratios, and the targets."""
    lines = []
    if states is not None:
        figures = states["figures"]
        base = figures["recording"]["cpuPerSession"]
        parts = [
            f"{state} {_cpu(figures[state])}"
            + (f" ({figures[state]['cpuPerSession'] / base:.2f}× recording)" if base else "")
            for state in STATES
        ]
        lines.append(
            f"by state, {states['sessions']} sessions through the server, CPU per session "
            f"(core-s/s): " + "; ".join(parts)
        )
    for count, modes in sorted(compare.items()):
        server = modes.get("server")
        parts = []
        for mode in MODES:
            if mode in modes:
                f = modes[mode]["figures"]
                text = f"{LABELS[mode]} {_cpu(f)}, lag p99 {fmt(f['lagP99Ms'], 2)} ms"
                if server is not None and mode != "server":
                    text += f" ({_ratio_text(ratio(f, server['figures']))})"
                parts.append(text)
        load = ", ".join(
            f"{mode}: {_machine(modes[mode]['figures'])} busy, load {_load(modes[mode]['figures'])}"
            for mode in MODES
            if mode in modes
        )
        lines.append(f"{count} sessions, CPU per session: " + "; ".join(parts))
        lines.append(f"  machine: {load}")
    for target in targets(compare):
        lines.append(f"target: {target['target']}: {target['text']} → {_verdict(target['result'])}")
    return "\n".join(line.replace("**", "") for line in lines)


# -- main ------------------------------------------------------------------------------------------


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("a session count is at least 1")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="A session's cost: by state through rtc-recorder serve, and the server "
        "vs the bare recorder vs aiortc's recorder at several session counts.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--counts",
        type=_count,
        nargs="+",
        default=[2, 20, 40],
        metavar="N",
        help="session counts of the comparison",
    )
    parser.add_argument(
        "--aiortc-counts",
        type=_count,
        nargs="+",
        default=[2],
        metavar="N",
        help="counts at which aiortc's recorder runs too (it saturates a small machine)",
    )
    parser.add_argument(
        "--state-sessions",
        type=int,
        metavar="N",
        help="sessions of the by-state part; if not given, the largest count up to 20",
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=("states", "compare"),
        default=["states", "compare"],
        help="what to run",
    )
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, default=list(MODES), help="recorders to compare"
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="every measured window")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds from all recording to the window"
    )
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds from a state change to its window"
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=3.0, help="the server measured with no session"
    )
    parser.add_argument(
        "--drain", type=float, default=1.0, help="seconds from the senders pausing to hang-up"
    )
    parser.add_argument("--sessions-per-sender", type=int, default=5)
    add_output_options(parser, "keep the recordings in OUT", "tables")
    args = parser.parse_args(argv)
    args.counts = sorted(set(args.counts))
    args.aiortc_counts = sorted(set(args.aiortc_counts))
    if args.state_sessions is None:
        small = [c for c in args.counts if c <= 20]
        args.state_sessions = max(small) if small else min(args.counts)
    if args.state_sessions < 1 or args.sessions_per_sender < 1:
        parser.error("--state-sessions and --sessions-per-sender must be at least 1")
    if args.seconds <= 0 or min(args.warmup, args.settle, args.drain) < 0:
        parser.error("--seconds must be positive, --warmup, --settle and --drain not negative")
    if args.idle_seconds <= 0:
        parser.error("--idle-seconds must be positive")
    return args


def _runs(args: argparse.Namespace) -> list[tuple[int, str]]:
    """The comparison's runs, in order: by count, ours first."""
    return [
        (count, mode)
        for count in args.counts
        for mode in MODES
        if mode in args.modes and (mode not in AIORTC_MODES or count in args.aiortc_counts)
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    use_checkout()
    results = Results.begin("session_cost", args, argv)
    args.kept = results.path("-recordings")
    media_path = results.media()
    media_info = media.load(media_path).describe()
    states: dict[str, Any] | None = None
    compare: dict[int, dict[str, dict[str, Any]]] = {}
    with results.workdir() as workdir:
        try:
            if "states" in args.parts:
                states = run_states(media_path, args, workdir)
            if "compare" in args.parts:
                for count, mode in _runs(args):
                    time.sleep(COOL_DOWN)
                    run = run_server_mode if mode in SERVER_MODES else run_bare_mode
                    compare.setdefault(count, {})[mode] = run(
                        mode, count, media_path, args, workdir
                    )
        except (ChildError, BenchmarkError, OSError) as error:
            _log(f"benchmark failed: {error}")
            for log in workdir.glob("*/server.log"):
                results.keep(log, f"-{log.parent.name}.log")
            return 1

    table = markdown(results.command, states, compare, media_info)
    checked = targets(compare)
    document = results.document(
        args,
        media=media_info,
        targets=checked,
        states=states,
        compare={str(count): modes for count, modes in compare.items()},
    )
    results.save(document, table)
    print(table if args.markdown else summary_text(states, compare))
    return 3 if any(target["result"] == "missed" for target in checked) else 0


if __name__ == "__main__":
    exit_with(main)
