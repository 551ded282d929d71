"""``rtc-recorder compose FOLDER [-o OUT] [--layout grid|speaker]``: one video of a room
recording, rendered on a worker thread while the terminal shows the progress."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from . import DEFAULT_FPS, DEFAULT_SIZE, LAYOUTS, CompositionCancelled, CompositionError, compose

EXIT_FAILED = 1
EXIT_CANCELLED = 130
BAR_WIDTH = 30
REDRAW = 0.1  # seconds between redraws of the bar


def parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    parsed = argparse.ArgumentParser(
        prog="rtc-recorder compose",
        description="Render one video of a finalized room recording: the participants in a "
        "grid (or the active speaker large) with the room's mixed sound.",
    )
    parsed.add_argument("folder", type=Path, help="the room recording's folder")
    parsed.add_argument(
        "-o",
        "--output",
        type=Path,
        help="the video to write, .mp4 (H.264 + AAC) or .webm (VP9 + Opus); "
        "default: composite-LAYOUT.mp4 in the folder",
    )
    parsed.add_argument("--layout", choices=LAYOUTS, default="grid")
    parsed.add_argument(
        "--size",
        type=_size,
        default=DEFAULT_SIZE,
        metavar="WxH",
        help=f"picture size (default {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]})",
    )
    parsed.add_argument("--fps", type=int, default=DEFAULT_FPS, help="frames per second")
    parsed.add_argument(
        "--progress",
        choices=("auto", "bar", "text", "json", "none"),
        default="auto",
        help="a bar on a terminal, lines of text otherwise (auto); json: one "
        '{"progress": SHARE} line per percent on stdout',
    )
    return parsed


def _size(text: str) -> tuple[int, int]:
    width, separator, height = text.lower().partition("x")
    if not separator or not width.isdigit() or not height.isdigit():
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, like 1280x720, not {text!r}")
    return int(width), int(height)


class ProgressView:
    """How far the composition has come, as a bar (on a terminal), lines of text every
    10 %, or JSON lines every percent."""

    def __init__(self, style: str, stream: TextIO) -> None:
        self.style = style
        self.stream = stream
        self._shown = -1
        self._drawn_at = -math.inf

    def update(self, done: float, duration: float, now: float) -> None:
        """``done`` seconds of the ``duration`` are rendered (at ``now``, monotonic)."""
        share = done / duration if duration > 0 else 1.0
        percent = int(share * 100)
        if self.style == "bar":
            if share < 1.0 and now - self._drawn_at < REDRAW:
                return
            filled = round(share * BAR_WIDTH)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            self.stream.write(f"\r[{bar}] {percent:3d}%  {done:.1f} of {duration:.1f} s")
            self._drawn_at = now
        elif self.style == "text" and percent // 10 > self._shown // 10:
            self.stream.write(f"compose: {percent}%\n")
        elif self.style == "json" and percent > self._shown:
            self.stream.write(json.dumps({"progress": round(share, 3)}) + "\n")
        else:
            return
        self._shown = percent
        self.stream.flush()

    def finish(self) -> None:
        """Done drawing (the bar's line ends)."""
        if self.style == "bar":
            self.stream.write("\n")
            self.stream.flush()


def main(argv: Sequence[str]) -> int:
    """Run the command; the exit status (0 done, 1 failed, 130 cancelled)."""
    args = parser().parse_args(argv)
    style = args.progress
    if style == "auto":
        style = "bar" if sys.stderr.isatty() else "text"
    stream = sys.stdout if style == "json" else sys.stderr
    view = ProgressView(style, stream)
    progress: queue.Queue[tuple[float, float]] = queue.Queue()
    cancel = threading.Event()
    outcome: list[Path | BaseException] = []

    def work() -> None:
        try:
            outcome.append(
                compose(
                    args.folder,
                    args.output,
                    layout=args.layout,
                    size=args.size,
                    fps=args.fps,
                    on_progress=lambda done, duration: progress.put((done, duration)),
                    cancel=cancel,
                )
            )
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=work, name="compose", daemon=True)
    with _cancelled_by_sigterm(cancel):
        worker.start()
        _follow(worker, progress, view, cancel)
    view.finish()
    result = outcome[0]
    if isinstance(result, CompositionCancelled):
        print("rtc-recorder compose: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    if isinstance(result, CompositionError):
        print(f"rtc-recorder compose: {result}", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(result, BaseException):
        raise result
    if style == "json":
        print(json.dumps({"progress": 1.0, "output": str(result)}), flush=True)
    else:
        print(result)
    return 0


def _follow(
    worker: threading.Thread,
    progress: queue.Queue[tuple[float, float]],
    view: ProgressView,
    cancel: threading.Event,
) -> None:
    """Show the worker's progress until it ends; Ctrl-C cancels it (and is waited for)."""
    while worker.is_alive() or not progress.empty():
        try:
            done, duration = progress.get(timeout=0.2)
            view.update(done, duration, time.monotonic())
        except queue.Empty:
            continue
        except KeyboardInterrupt:
            cancel.set()


@contextlib.contextmanager
def _cancelled_by_sigterm(cancel: threading.Event) -> Iterator[None]:
    """Meanwhile (in the main thread), SIGTERM cancels the work instead of killing the
    process, so no partial file is left behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: cancel.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
