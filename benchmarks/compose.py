"""What ``rtc-recorder compose`` costs: time, CPU and peak memory against the length of
the room recording.

    .venv/bin/python benchmarks/compose.py --seconds 30 120 --markdown

For each length, a room folder is written offline (no network, not in real time): three
participants of 320x240 30 fps VP8 + Opus (one joins a third of the way in, one leaves at
two thirds), the mix as Ogg/Opus, and ``manifest.json`` as the rooms contract shows it.
Each layout is then composed to 1280x720 30 fps MP4 by ``python -m rtc_recorder compose``
in a process of its own, whose peak RSS and CPU time come from ``wait4``. Memory that
stays the same whatever the length is memory bounded by the design (the files are read
forward, never loaded whole).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.room_folder import write_room_offline  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def measure(folder: Path, layout: str, size: str) -> dict[str, Any]:
    """Compose ``folder`` in a process of its own: wall and CPU seconds, peak RSS."""
    output = folder / f"composite-{layout}.mp4"
    command = [sys.executable, "-m", "rtc_recorder", "compose", str(folder)]
    command += ["-o", str(output), "--layout", layout, "--size", size, "--progress", "none"]
    began = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - began
    if process.returncode != 0:
        raise RuntimeError(f"compose failed with status {process.returncode}")
    return {
        "layout": layout,
        "size": size,
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "output_mb": round(output.stat().st_size / 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[30.0, 120.0])
    parser.add_argument("--layouts", nargs="+", default=["grid", "speaker"])
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="compose-bench-") as scratch:
        for seconds in args.seconds:
            folder = Path(scratch) / f"bench-{round(seconds)}s"
            write_room_offline(folder, seconds)
            for layout in args.layouts:
                row = {"seconds": seconds, **measure(folder, layout, args.size)}
                row["realtime_x"] = round(seconds / row["wall_s"], 2)
                row["load_average"] = round(os.getloadavg()[0], 2)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (RESULTS / f"compose-{stamp}.json").write_text(json.dumps(rows, indent=1))
    if args.markdown:
        print("| recording | layout | wall | CPU | × real time | peak RSS | load average |")
        print("|---:|---|---:|---:|---:|---:|---:|")
        for row in rows:
            print(
                f"| {row['seconds']:g} s | {row['layout']} | {row['wall_s']} s | {row['cpu_s']} s "
                f"| {row['realtime_x']} | {row['peak_rss_mb']} MB | {row['load_average']} |"
            )


if __name__ == "__main__":
    main()
