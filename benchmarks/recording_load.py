"""What recording N WebRTC sessions costs the receiving server: aiortc's MediaRecorder
against rtc-recorder's, both writing WebM, fed by identical senders.

    .venv/bin/python benchmarks/recording_load.py --sessions 2 --seconds 20 --markdown
    ./dev bench recording_load --sessions 10 --only rtc-recorder --markdown

For each recorder in turn (aiortc first, then rtc-recorder, never both at once), a receiver
process serves ``POST /offer`` on 127.0.0.1 and records every session to WebM, while sender
processes (one per ``--sessions-per-sender`` sessions) publish a pre-encoded VP8 + Opus loop
(encoded once, cached in ``--out``), so the senders never encode. Once every session is
connected with media flowing and ``--warmup`` seconds have passed, the receiver measures
its CPU, event-loop lag and RSS for ``--seconds``. Then the senders pause and report what
they sent, the recorders are stopped, and the files are read back and counted here.

Results go to a JSON file in ``--out``; ``--markdown`` prints the comparison table.
See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from loadbench import files, media, receiver, report, sender
from loadbench.common import LOOPBACK
from loadbench.processes import ChildError, Children, cpu_seconds, groups
from loadbench.report import environment

KINDS = receiver.KINDS
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
CHECKOUT = Path(__file__).resolve().parent.parent


def _use_checkout() -> None:
    """Measure the rtc_recorder of this checkout (installed or not): its root goes on
    ``sys.path``, which spawned children inherit."""
    if (CHECKOUT / "rtc_recorder" / "__init__.py").exists() and str(CHECKOUT) not in sys.path:
        sys.path.insert(1, str(CHECKOUT))


def _log(kind: str, text: str) -> None:
    print(f"[{kind}] {text}", file=sys.stderr, flush=True)


def run_recorder(kind: str, args: argparse.Namespace, media_path: Path) -> dict[str, Any]:
    """One receiver process recording every session with ``kind``'s recorder, and its
    senders; returns the raw measurements (the files are inspected later)."""
    connect_timeout = args.connect_timeout or 20.0 + 2.0 * args.sessions
    children = Children()
    try:
        children.start(
            "receiver",
            receiver.run,
            receiver.ReceiverConfig(
                kind=kind,
                sessions=args.sessions,
                seconds=args.seconds,
                warmup=args.warmup,
                sample_interval=args.sample_interval,
                recordings=str(args.out / "recordings" / kind),
                connect_timeout=connect_timeout,
                max_rss_mb=args.max_rss_mb,
            ),
        )
        ready = children.expect("receiver", "ready", timeout=60)
        url = f"http://{LOOPBACK}:{ready['port']}/offer"
        for index, numbers in enumerate(groups(args.sessions, args.sessions_per_sender)):
            children.start(
                f"sender-{index}",
                sender.run,
                sender.SenderConfig(index, url, numbers, str(media_path), connect_timeout),
            )
        senders = children.names("sender-")
        _log(kind, f"receiver pid {ready['pid']}; {len(senders)} sender process(es) connecting")
        connected = children.expect("receiver", "connected", timeout=connect_timeout + 10)
        for name in senders:
            children.expect(name, "connected", timeout=10)
        _log(kind, f"{args.sessions} sessions flowing after {connected['seconds']:.1f} s")
        children.expect("receiver", "window_start", timeout=args.warmup + 30)
        sender_pids = [children.pid(name) for name in senders]
        sender_cpu, window_start = cpu_seconds(sender_pids), time.monotonic()
        _log(kind, f"measuring for {args.seconds:g} s")
        children.expect("receiver", "window_end", timeout=args.seconds + 30)
        sender_cpu = cpu_seconds(sender_pids) - sender_cpu
        window = time.monotonic() - window_start
        for name in senders:
            children.send(name, {"type": "pause"})
        sent: dict[str, Any] = {}
        for name in senders:
            sent.update(children.expect(name, "sent", timeout=30)["sessions"])
        time.sleep(args.drain)  # what was sent reaches the recorders
        children.send("receiver", {"type": "stop"})
        result = children.expect("receiver", "result", timeout=receiver.STOP_TIMEOUT + 60)
        _log(kind, f"recorders stopped in {result['stopSeconds']:.2f} s")
        for name in senders:
            children.send(name, {"type": "close"})
        children.join(timeout=30)
    finally:
        children.end()
    result.pop("type")
    return {
        "receiver": result,
        "sent": sent,
        "senders": {"processes": len(senders), "cpuSeconds": sender_cpu, "windowSeconds": window},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Receiving-server cost of recording N WebRTC sessions to WebM: "
        "aiortc's MediaRecorder vs rtc-recorder's.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--sessions", type=int, default=2, help="concurrent sessions")
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="measured window, once all are recording"
    )
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--only", choices=KINDS, help="run one recorder only (default: both)")
    parser.add_argument(
        "--sample-interval", type=float, default=0.5, help="seconds between RSS samples"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    parser.add_argument("--markdown", action="store_true", help="print the markdown table")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds between all flowing and the window"
    )
    parser.add_argument(
        "--drain", type=float, default=1.0, help="seconds between senders pausing and stop()"
    )
    parser.add_argument("--sessions-per-sender", type=int, default=5)
    parser.add_argument("--video-kbps", type=int, default=2000, help="VP8 target bitrate")
    parser.add_argument(
        "--connect-timeout", type=float, help="seconds for all sessions to connect (20 + 2/session)"
    )
    parser.add_argument(
        "--max-rss-mb",
        type=float,
        default=4096.0,
        help="end the window early if the receiver's RSS passes this",
    )
    parser.add_argument(
        "--no-decode", action="store_true", help="count packets in the files without decoding"
    )
    parser.add_argument(
        "--keep-recordings", action="store_true", help="keep the WebM files in OUT/recordings"
    )
    args = parser.parse_args(argv)
    for name in ("sessions", "sessions_per_sender", "fps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("seconds", "sample_interval"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _use_checkout()
    command = shlex.join(sys.orig_argv if argv is None else [sys.argv[0], *argv])
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now().astimezone()
    kinds = [args.only] if args.only else list(KINDS)
    spec = media.MediaSpec(args.width, args.height, args.fps, video_bitrate=args.video_kbps * 1000)
    print(f"preparing the media loop in {args.out} …", file=sys.stderr, flush=True)
    media_path = media.prepare(spec, args.out)
    media_info = media.load(media_path).describe()
    runs: dict[str, dict[str, Any]] = {}
    try:
        for kind in kinds:
            runs[kind] = run_recorder(kind, args, media_path)
    except ChildError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1

    print("reading the recordings back …", file=sys.stderr, flush=True)
    results = {}
    for kind, run in runs.items():
        directory = args.out / "recordings" / kind
        run["files"] = {
            number: files.inspect(directory / f"session-{int(number):03d}.webm", not args.no_decode)
            for number in run["sent"]
        }
        results[kind] = report.summarise(run)
        if not args.keep_recordings:
            shutil.rmtree(directory, ignore_errors=True)
    if not args.keep_recordings:
        with contextlib.suppress(OSError):
            (args.out / "recordings").rmdir()  # if empty

    output = args.out / f"recording_load-{started:%Y%m%d-%H%M%S}.json"
    document = {
        "command": command,
        "started": started.isoformat(timespec="seconds"),
        "environment": environment(),
        "options": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(args).items()
        },
        "media": media_info,
        "order": kinds,
        "results": results,
        "runs": runs,
    }
    output.write_text(json.dumps(document, indent=1, default=str))
    print(f"results: {output}", file=sys.stderr)
    if args.markdown:
        notes = [
            f"Recorders ran one after the other ({' then '.join(kinds)}), each in its own "
            "receiver process with identical sender processes."
            if len(kinds) > 1
            else f"Only {kinds[0]} ran."
        ]
        print(report.markdown(command, results, media_info, notes))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # run_recorder's finally has ended every child by now.
        print("interrupted: every process ended", file=sys.stderr)
        sys.exit(130)
