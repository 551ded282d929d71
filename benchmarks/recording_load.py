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
import shutil
import sys
from typing import Any

from loadbench import media, receiver, report
from loadbench.bare import BareOptions, inspect_files, run_bare
from loadbench.environment import use_checkout
from loadbench.results import Results, add_output_options, exit_with

KINDS = receiver.KINDS


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
    add_output_options(parser, "keep the WebM files in OUT/recordings", "markdown table")
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
    use_checkout()
    results_file = Results.begin("recording_load", args, argv)
    kinds = [args.only] if args.only else list(KINDS)
    spec = media.MediaSpec(args.width, args.height, args.fps, video_bitrate=args.video_kbps * 1000)
    media_path = results_file.media(spec)
    media_info = media.load(media_path).describe()
    options = BareOptions(
        sessions=args.sessions,
        seconds=args.seconds,
        warmup=args.warmup,
        drain=args.drain,
        sample_interval=args.sample_interval,
        sessions_per_sender=args.sessions_per_sender,
        connect_timeout=args.connect_timeout,
        max_rss_mb=args.max_rss_mb,
    )
    runs: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        runs[kind] = run_bare(kind, options, media_path, args.out / "recordings" / kind)

    print("reading the recordings back …", file=sys.stderr, flush=True)
    results = {}
    for kind, run in runs.items():
        directory = args.out / "recordings" / kind
        inspect_files(run, directory, not args.no_decode)
        results[kind] = report.summarise(run)
        if not args.keep_recordings:
            shutil.rmtree(directory, ignore_errors=True)
    if not args.keep_recordings:
        with contextlib.suppress(OSError):
            (args.out / "recordings").rmdir()  # if empty

    document = results_file.document(
        args, media=media_info, order=kinds, results=results, runs=runs
    )
    results_file.save(document)
    if args.markdown:
        notes = [
            f"Recorders ran one after the other ({' then '.join(kinds)}), each in its own "
            "receiver process with identical sender processes."
            if len(kinds) > 1
            else f"Only {kinds[0]} ran."
        ]
        print(report.markdown(results_file.command, results, media_info, notes))
    return 0


if __name__ == "__main__":
    exit_with(main)
