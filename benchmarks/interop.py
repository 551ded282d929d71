"""The interoperability table: each independent WHIP client publishes each codec to
``rtc-recorder serve --auto-record`` in a network namespace of its own (root needed),
then hangs up; the table says what was recorded.

    ./dev bench interop [--markdown]

The cases and their checks are the test suite's (``tests/interop_support.py``); this
only runs them all and prints one row per case.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.interop_support import Case, Outcome, run_case  # noqa: E402

MKV = "video/x-matroska;codecs=avc1,opus"
MP4 = "video/mp4;codecs=avc1,opus"
WEBM = "video/webm;codecs=vp8,opus"

CASES = [
    Case("ffmpeg", "h264", "baseline", MKV, certificate="own"),
    Case("ffmpeg", "h264", "baseline", MKV, certificate="p256"),
    Case("ffmpeg", "h264", "high", MKV, certificate="p256"),
    Case("ffmpeg", "h264", "high", MP4, certificate="p256"),
    Case("gstreamer", "vp8", "constrained-baseline", WEBM),
    Case("gstreamer", "h264", "constrained-baseline", MKV),
    Case("gstreamer", "h264", "high", MP4),
]


def verdict(outcome: Outcome) -> str:
    """'recorded' when the file is clean, ≥ 95 % complete and passed through."""
    error = outcome.published.get("error")
    if error:
        # FFmpeg names the URL last; its port changes from run to run.
        return f"failed (client: {str(error).rsplit(': ' + chr(39), 1)[0]})"
    if outcome.recording is None:
        return "failed: nothing recorded"
    passthrough = all(
        t["path"] == "passthrough" and t["framesDecoded"] == 0 for t in outcome.tracks
    )
    clean = outcome.ffmpeg_errors == ""
    if outcome.video_ratio >= 0.95 and passthrough and clean:
        return "recorded"
    return f"incomplete (passthrough={passthrough}, ffmpeg clean={clean})"


def row(case: Case, outcome: Outcome) -> list[str]:
    sent = outcome.published.get("video_frames", 0)
    paths = ", ".join(sorted({f"{t['kind']} {t['path']}" for t in outcome.tracks})) or "—"
    return [
        case.client,
        (f"H.264 {case.profile}" if case.codec == "h264" else case.codec.upper())
        + (", `cert_file` P-256" if case.certificate == "p256" else ""),
        case.mime_type.split(";")[0],
        f"{outcome.video_frames} / {sent}",
        outcome.profile if case.codec == "h264" and outcome.profile else "—",
        paths,
        verdict(outcome),
    ]


HEADER = ["client", "video", "into", "video frames recorded / sent", "profile", "path", "result"]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    arguments = parser.parse_args()
    rows = []
    for case in CASES:
        rows.append(row(case, await run_case(case)))
        print(f"done: {case.label}", file=sys.stderr)
    if arguments.markdown:
        print("| " + " | ".join(HEADER) + " |")
        print("|" + "---|" * len(HEADER))
        for cells in rows:
            print("| " + " | ".join(cells) + " |")
    else:
        for cells in rows:
            print("\t".join(cells))


if __name__ == "__main__":
    asyncio.run(main())
