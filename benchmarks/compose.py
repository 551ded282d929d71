"""What ``rtc-recorder compose`` costs: time, CPU and peak memory against the length of
the room recording.

    .venv/bin/python benchmarks/compose.py --seconds 30 120 --markdown

For each length, a room folder is written offline (no network, not in real time;
``tests/room_folder.py``): three participants of 320x240 30 fps VP8 + Opus (one joins a
third of the way in, one leaves at two thirds), the mix as Ogg/Opus, and ``manifest.json``
as the rooms contract shows it. Each layout is then composed (1280x720 30 fps MP4 by
default) by ``python -m rtc_recorder compose`` in a process of its own, whose peak RSS and
CPU time come from ``wait4``; the machine's load over each composition is stated beside
it. A peak RSS that stays the same whatever the length is what "bounded memory" means
here. Results go to ``OUT/compose-<date>-<time>.json`` (and ``.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loadbench.machine import MachineWindow
from loadbench.results import Results, add_output_options, exit_with

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.room_folder import write_room_offline  # noqa: E402


class ComposeFailed(OSError):
    """The composing process did not finish its work."""


def measure(folder: Path, layout: str, size: str) -> dict[str, Any]:
    """Compose ``folder`` in a process of its own: wall and CPU seconds, peak RSS, and the
    machine over that time."""
    output = folder / f"composite-{layout}.mp4"
    command = [sys.executable, "-m", "rtc_recorder", "compose", str(folder)]
    command += ["-o", str(output), "--layout", layout, "--size", size, "--progress", "none"]
    machine = MachineWindow()
    began = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - began
    if process.returncode != 0:
        raise ComposeFailed(f"compose ended with status {process.returncode}")
    return {
        "layout": layout,
        "size": size,
        "wallSeconds": round(wall, 2),
        "cpuSeconds": round(usage.ru_utime + usage.ru_stime, 2),
        "peakRssMb": round(usage.ru_maxrss / 1024, 1),
        "outputMb": round(output.stat().st_size / 1e6, 2),
        "machine": machine.end(),
    }


def run(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    rows = []
    for seconds in args.seconds:
        folder = workdir / f"bench-{round(seconds)}s"
        print(f"[compose] writing a room of {seconds:g} s …", file=sys.stderr, flush=True)
        write_room_offline(folder, seconds)
        for layout in args.layouts:
            row = {"seconds": seconds, **measure(folder, layout, args.size)}
            row["realTimeFactor"] = round(seconds / row["wallSeconds"], 2)
            rows.append(row)
            print(f"[compose] {json.dumps(row)}", file=sys.stderr, flush=True)
    return rows


def markdown(command: str, rows: list[dict[str, Any]]) -> str:
    lines = [
        f"`{command}`",
        "",
        "| recording | layout | wall | CPU | × real time | peak RSS | busy cores | load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        machine = row["machine"]
        lines.append(
            f"| {row['seconds']:g} s | {row['layout']} | {row['wallSeconds']} s "
            f"| {row['cpuSeconds']} s | {row['realTimeFactor']} | {row['peakRssMb']} MB "
            f"| {machine['busyCores']:.2f} of {machine['cores']} | {machine['loadEnd']:.1f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="rtc-recorder compose on rooms of growing length: time, CPU, peak RSS.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, nargs="+", default=[30.0, 120.0])
    parser.add_argument("--layouts", nargs="+", choices=["grid", "speaker"], default=["grid"])
    parser.add_argument("--size", default="1280x720")
    add_output_options(parser, "(no recordings to keep)", "table")
    args = parser.parse_args(argv)
    if min(args.seconds) <= 0:
        parser.error("--seconds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = Results.begin("compose", args, argv)
    with results.workdir() as workdir:
        rows = run(args, workdir)
    table = markdown(results.command, rows)
    results.save(results.document(args, runs=rows), table)
    print(table if args.markdown else json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    exit_with(main)
