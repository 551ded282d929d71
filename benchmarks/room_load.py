"""Rooms through ``rtc-recorder serve`` as users run it: rooms of N participants (4 by
default) each publishing pre-encoded 720p30 VP8 (~2 Mbit/s, a keyframe every 2 s) + Opus
paced in real time, each watching the N - 1 others through WHEP, every room recorded.

    .venv/bin/python benchmarks/room_load.py --rooms 1 2 --seconds 30 --markdown
    ./dev bench room_load --rooms 1 2 --seconds 30 --markdown

For each count of rooms (one run each, a fresh server): the server starts
(``benchmarks/loopback_server.py``, its event loop's lag logged), one process per room
joins its participants (``POST /offer`` with ``room``) and subscribes each to the others
(``POST /whep/{session}``; what arrives is counted from the receivers' taps, not decoded);
once every subscription gets video, every room starts recording
(``POST /api/rooms/{room}/start``); after ``--warmup`` seconds the window of ``--seconds``
is measured: the server's CPU (per participant), its event loop's lag (p50, p99, max),
frames forwarded (what each subscription received, % of what its publisher sent in the
window), and the machine's load (busy cores, load average) beside them. Then the rooms
stop recording, the senders stop, the server gets SIGTERM (it must exit 0), and every
participant's file is checked with ffmpeg and counted with PyAV: frames recorded, % of the
frames the participant sent from the file's first frame to its last.

Results go to ``OUT/room_load-<date>-<time>.json`` (and ``.md`` the table, ``-N.log`` the
server's log of the run with N rooms).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import psutil
from loadbench import media, room_member
from loadbench.children import Children, cpu_seconds
from loadbench.files import ffmpeg_all
from loadbench.lag import read_lag_log
from loadbench.machine import MachineWindow
from loadbench.report import fmt, mean, percentile, table
from loadbench.results import Results, add_output_options, exit_with
from loadbench.server import BenchmarkError, ServerProcess

KEYFRAME_SECONDS = 2
FINALIZE_TIMEOUT = 60.0  # seconds for a stopped room recording's manifest to say finalized


def _log(text: str) -> None:
    print(f"[room_load] {text}", file=sys.stderr, flush=True)


# -- one run ------------------------------------------------------------------------------


def run_rooms(
    args: argparse.Namespace, rooms: int, media_path: Path, workdir: Path
) -> dict[str, Any]:
    """One server, ``rooms`` rooms joined, watched and recorded; the raw measurements."""
    recordings, lag_file = workdir / "recordings", workdir / "lag.txt"
    server = ServerProcess(
        recordings, workdir / "server.log", wrapper_args=["--lag-file", str(lag_file)]
    )
    children = Children()
    names = [f"room{index}" for index in range(rooms)]
    raw: dict[str, Any] = {"rooms": rooms, "participants": rooms * args.participants}
    try:
        server.start()
        server.wait_ready()
        timeout = 30.0 + 5.0 * args.participants
        for name in names:
            config = room_member.RoomConfig(
                name, server.url(""), args.participants, str(media_path), timeout
            )
            children.start(name, room_member.run, config)
        joined = time.monotonic()
        ready = {
            name: children.expect(name, "ready", timeout + room_member.READY_TIMEOUT)
            for name in names
        }
        raw["sessions"] = {name: message["sessions"] for name, message in ready.items()}
        raw["offersRetried"] = sum(message["retries"] for message in ready.values())
        raw["joinSeconds"] = time.monotonic() - joined
        _log(f"{rooms} room(s) of {args.participants} joined and watching each other")
        for name in names:
            status, body = server.request("POST", f"/api/rooms/{name}/start", body={})
            if status != 200:
                raise BenchmarkError(f"starting {name}'s recording answered {status}: {body}")
        time.sleep(args.warmup)  # past every file's first keyframe

        pids = [children.pid(name) for name in names]
        server_process = psutil.Process(server.pid)
        before = _ask(children, names, "mark", "marked")
        server_cpu, rooms_cpu = _cpu(server_process), cpu_seconds(pids)
        machine = MachineWindow()
        started = time.monotonic()
        _log(f"measuring for {args.seconds:g} s")
        while (remaining := args.seconds - (time.monotonic() - started)) > 0:
            time.sleep(min(0.5, remaining))
            children.check()
            server.check()
        after = _ask(children, names, "mark", "marked")
        window = time.monotonic() - started
        raw["window"] = {
            "seconds": window,
            "start": started,
            "serverCpuCores": (_cpu(server_process) - server_cpu) / window,
            "roomProcessesCpuCores": (cpu_seconds(pids) - rooms_cpu) / window,
            "machine": machine.end(),
        }
        raw["before"], raw["after"] = before, after

        status, listed = server.request("GET", "/api/rooms")
        raw["participantsAtEnd"] = {room["name"]: len(room["participants"]) for room in listed}
        for name in names:
            status, body = server.request("POST", f"/api/rooms/{name}/stop", timeout=30)
            if status == 404:  # everyone left it (their connections closed): it stopped then
                _log(f"{name} had ended before the window's end")
            elif status != 200:
                raise BenchmarkError(f"stopping {name}'s recording answered {status}: {body}")
        raw["manifests"] = _finalized(recordings, names)
        raw["sent"] = _ask(children, names, "pause", "sent")
        for name in names:
            children.send(name, {"type": "close"})
        children.join(30.0)
        raw["serverStop"] = server.stop()
        raw["lagSeconds"] = [
            lag for at, lag in read_lag_log(lag_file) if started <= at <= started + window
        ]
    finally:
        children.end()
        server.close()
    raw["files"] = _files(recordings, raw.get("manifests", {}))
    return raw


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _ask(children: Children, names: Sequence[str], request: str, reply: str) -> dict[str, Any]:
    for name in names:
        children.send(name, {"type": request})
    return {name: children.expect(name, reply, 30.0) for name in names}


def _finalized(recordings: Path, rooms: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each room's manifest once it says the recording is finalized."""
    deadline = time.monotonic() + FINALIZE_TIMEOUT
    manifests: dict[str, dict[str, Any]] = {}
    while len(manifests) < len(rooms):
        for room in rooms:
            for path in recordings.glob(f"{room}-*/manifest.json"):
                manifest = json.loads(path.read_text())
                if manifest.get("state") == "finalized":
                    manifests[room] = {**manifest, "folder": str(path.parent)}
        if time.monotonic() > deadline:
            missing = sorted(set(rooms) - set(manifests))
            raise BenchmarkError(f"room recordings not finalized in time: {missing}")
        time.sleep(0.2)
    return manifests


def _files(recordings: Path, manifests: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every participant's file of every room: ffmpeg's verdict and its frames."""
    entries = [
        (room, participant["session"], Path(manifest["folder"]) / participant["file"])
        for room, manifest in manifests.items()
        for participant in manifest["participants"]
    ]
    errors = ffmpeg_all([path for _, _, path in entries])
    return [
        {"room": room, "session": session, "file": path.name, "ffmpeg": errors[path]}
        | _counted(path)
        for room, session, path in entries
    ]


def _counted(path: Path) -> dict[str, Any]:
    """A file's video frames and audio packets (demuxed with PyAV), and the video frames
    its span holds at the sender's 30 fps."""
    times: dict[str, list[float]] = {"video": [], "audio": []}
    with av.open(str(path)) as container:
        for packet in container.demux():
            if packet.size and packet.pts is not None and packet.stream.type in times:
                times[packet.stream.type].append(float(packet.pts * packet.time_base))
    video = sorted(times["video"])
    span = round((video[-1] - video[0]) * 30) + 1 if video else 0
    return {
        "videoFrames": len(video),
        "videoFramesInSpan": span,
        "audioPackets": len(times["audio"]),
        "seconds": float(video[-1] - video[0]) if video else 0.0,
    }


# -- figures ------------------------------------------------------------------------------


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    """The table's figures of one run."""
    forwarded: dict[str, list[float]] = {"video": [], "audio": []}
    for room, after in raw["after"].items():
        before = raw["before"][room]
        for key, received in after["received"].items():
            publisher = received["publisher"]
            for kind in forwarded:
                sent = after["sent"][publisher][kind] - before["sent"][publisher][kind]
                got = received[kind] - before["received"][key][kind]
                forwarded[kind].append(100.0 * got / sent if sent else 0.0)
    files = raw["files"]
    recorded = [
        100.0 * f["videoFrames"] / f["videoFramesInSpan"] for f in files if f["videoFramesInSpan"]
    ]
    lag_ms = [1000 * lag for lag in raw["lagSeconds"]]
    window, machine = raw["window"], raw["window"]["machine"]
    return {
        "rooms": raw["rooms"],
        "participants": raw["participants"],
        "subscriptions": len(forwarded["video"]),
        "windowSeconds": window["seconds"],
        "serverCpuCores": window["serverCpuCores"],
        "serverCpuPerParticipantPct": 100.0 * window["serverCpuCores"] / raw["participants"],
        "roomProcessesCpuCores": window["roomProcessesCpuCores"],
        "machineBusyCores": machine["busyCores"],
        "machineCores": machine["cores"],
        "machineSaturated": machine["saturated"],
        "loadBefore": machine["loadBefore"],
        "loadEnd": machine["loadEnd"],
        "lagSamples": len(lag_ms),
        "lagP50Ms": percentile(lag_ms, 0.50),
        "lagP99Ms": percentile(lag_ms, 0.99),
        "lagMaxMs": max(lag_ms, default=None),
        "videoForwardedPctMin": min(forwarded["video"], default=None),
        "videoForwardedPctMean": mean(forwarded["video"]),
        "audioForwardedPctMin": min(forwarded["audio"], default=None),
        "audioForwardedPctMean": mean(forwarded["audio"]),
        "files": len(files),
        "filesClean": sum(not f["ffmpeg"] for f in files),
        "videoRecordedPctMin": min(recorded, default=None),
        "videoRecordedPctMean": mean(recorded),
        "participantsAtEnd": sum(raw["participantsAtEnd"].values()),
        "serverExitCode": raw["serverStop"]["exitCode"],
        "joinSeconds": raw["joinSeconds"],
    }


def markdown(command: str, summaries: list[dict[str, Any]], media_info: dict[str, Any]) -> str:
    """One column per run."""

    def row(label: str, value: Any) -> tuple[str, ...]:
        return (label, *(value(s) for s in summaries))

    def pair(first: str, second: str, digits: int = 1) -> Any:
        return lambda s: f"{fmt(s[first], digits)} / {fmt(s[second], digits)}"

    rows = [
        row(
            "Participants (subscriptions)", lambda s: f"{s['participants']} ({s['subscriptions']})"
        ),
        row("Window (s)", lambda s: fmt(s["windowSeconds"])),
        row(
            "Participants still in their room at the window's end",
            lambda s: f"{s['participantsAtEnd']} / {s['participants']}",
        ),
        row("Server CPU (cores)", lambda s: fmt(s["serverCpuCores"], 2)),
        row(
            "Server CPU per participant (% of a core)",
            lambda s: fmt(s["serverCpuPerParticipantPct"]),
        ),
        row(
            "Event-loop lag p50 / p99 / max (ms)",
            lambda s: f"{fmt(s['lagP50Ms'])} / {fmt(s['lagP99Ms'])} / {fmt(s['lagMaxMs'])}",
        ),
        row(
            "Video frames forwarded, min / mean (% of sent)",
            pair("videoForwardedPctMin", "videoForwardedPctMean", 2),
        ),
        row(
            "Audio packets forwarded, min / mean (% of sent)",
            pair("audioForwardedPctMin", "audioForwardedPctMean", 2),
        ),
        row(
            "Video frames recorded, min / mean (% of sent in the file's span)",
            pair("videoRecordedPctMin", "videoRecordedPctMean", 2),
        ),
        row("Files clean (ffmpeg)", lambda s: f"{s['filesClean']} / {s['files']}"),
        row(
            "Machine busy (cores of N), saturated",
            lambda s: (
                f"{fmt(s['machineBusyCores'], 2)} of {s['machineCores']}"
                + (", saturated" if s["machineSaturated"] else "")
            ),
        ),
        row("Load average before / after", pair("loadBefore", "loadEnd", 2)),
        row(
            "Room processes' CPU (senders + subscribers, cores)",
            lambda s: fmt(s["roomProcessesCpuCores"], 2),
        ),
        row("Server exit status on SIGTERM", lambda s: fmt(s["serverExitCode"])),
    ]
    header = ("Rooms", *(str(s["rooms"]) for s in summaries))
    return "\n".join(
        [
            f"Command: `{command}`",
            "",
            f"Each participant: {media_info['video']} ({media_info['videoKbps']:.0f} kbit/s, a "
            f"keyframe every {media_info['keyframeEveryFrames']} frames) + {media_info['audio']}, "
            "pre-encoded, paced in real time; each watches every other one by WHEP; every room "
            "recorded.",
            "",
            *table(header, rows, "l" + "r" * len(summaries)),
        ]
    )


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Rooms of pre-encoded 720p participants watching each other by WHEP, "
        "recorded, through rtc-recorder serve: CPU, loop lag, frames forwarded and recorded.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rooms", type=int, nargs="+", default=[1, 2], help="a run per count")
    parser.add_argument("--participants", type=int, default=4, help="per room")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=4.0, help="recording before the window")
    add_output_options(parser, "keep the recordings in OUT", "markdown table")
    args = parser.parse_args(argv)
    if min(args.rooms) < 1 or args.participants < 2:
        parser.error("at least 1 room of 2 participants")
    if args.seconds <= 0 or args.warmup < 0:
        parser.error("--seconds must be positive and --warmup not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = Results.begin("room_load", args, argv)
    media_path = results.media(media.MediaSpec(keyframe_seconds=KEYFRAME_SECONDS))
    media_info = media.load(media_path).describe()
    summaries, runs = [], []
    for rooms in args.rooms:
        with results.workdir() as workdir:
            try:
                raw = run_rooms(args, rooms, media_path, workdir)
            finally:
                results.keep(workdir / "server.log", f"-{rooms}.log")
                if args.keep_recordings:
                    results.keep(workdir / "recordings", f"-{rooms}-recordings")
        summaries.append(summarise(raw))
        runs.append(raw)
        _log(f"{rooms} room(s): {json.dumps(summaries[-1])}")
    table_text = markdown(results.command, summaries, media_info)
    results.save(
        results.document(args, media=media_info, summaries=summaries, raw=runs), table_text
    )
    if args.markdown:
        print(table_text)
    return 0


if __name__ == "__main__":
    exit_with(main)
