"""``rtc-recorder serve`` confined to the loopback interface, for the benchmarks.

    .venv/bin/python benchmarks/loopback_server.py [WRAPPER-OPTIONS] SERVE-ARGS...

It calls :func:`loadbench.common.loopback_only` (ICE gathers 127.0.0.1 only, instead of
aioice's default of every interface but loopback), then runs
``rtc_recorder.cli.main(["serve", *SERVE-ARGS])`` in this process, unchanged: same
settings, same signals (SIGTERM or SIGINT finalize every recording, then exit 0).

Its own options, before ``serve``'s:

- ``--stop-on-stdin-eof``: the server sends itself SIGTERM when its standard input closes:
  a benchmark keeps the write end open, so the server shuts down cleanly even if the
  benchmark is killed outright.
- ``--lag-file PATH``: the server's event loop is probed all along (how late a 10 ms sleep
  wakes) and every sample is appended to ``PATH`` (see :class:`loadbench.lag.LagLog`).
- ``--recorder aiortc``: the server records with aiortc's ``MediaRecorder`` (through
  :class:`loadbench.aiortc_recorder.AiortcRecorder`) instead of rtc-recorder's, for the
  comparison in ``session_cost.py``; ``--recorder rtc-recorder`` (the default) changes
  nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadbench.common import loopback_only

STOP_FLAG = "--stop-on-stdin-eof"
LAG_FILE = "--lag-file"
RECORDER = "--recorder"
RECORDERS = ("rtc-recorder", "aiortc")
STDIN = 0


def _stop_when_stdin_closes() -> None:
    """SIGTERM to this process once stdin reaches end of file (its writer is gone)."""

    def watch() -> None:
        # The raw descriptor, not sys.stdin: a daemon thread blocked in a buffered read
        # holds its lock, and the interpreter aborts at exit if it cannot take it.
        while os.read(STDIN, 4096):
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


def _probe_lag(cli: Any, path: Path) -> None:
    """Run a :class:`loadbench.lag.LagLog` on the server's loop, from its start to its
    clean-up (the application ``cli.serve`` makes is given the two hooks)."""
    from aiohttp import web
    from loadbench.lag import LagLog

    create_app: Callable[..., web.Application] = cli.create_app

    def with_probe(*args: Any, **kwargs: Any) -> web.Application:
        app = create_app(*args, **kwargs)
        log = LagLog(path)

        async def start(_: web.Application) -> None:
            log.start()

        async def stop(_: web.Application) -> None:
            await log.stop()

        app.on_startup.append(start)
        app.on_cleanup.append(stop)
        return app

    cli.create_app = with_probe


def _record_with_aiortc() -> None:
    """The server's sessions make aiortc's recorder (adapted) for each recording."""
    from loadbench.aiortc_recorder import AiortcRecorder

    from rtc_recorder.server import sessions

    sessions.MediaRecorder = AiortcRecorder  # type: ignore[attr-defined, assignment]


def main(argv: list[str]) -> int:
    """Run the server with ``argv``: the wrapper's options, then ``serve``'s arguments."""
    lag_file: Path | None = None
    recorder = "rtc-recorder"
    while argv and argv[0] in (STOP_FLAG, LAG_FILE, RECORDER):
        option, argv = argv[0], argv[1:]
        if option == STOP_FLAG:
            _stop_when_stdin_closes()
            continue
        if not argv:
            print(f"loopback_server: {option} needs a value", file=sys.stderr)
            return 2
        value, argv = argv[0], argv[1:]
        if option == LAG_FILE:
            lag_file = Path(value)
        elif value in RECORDERS:
            recorder = value
        else:
            print(f"loopback_server: {RECORDER} is one of {', '.join(RECORDERS)}", file=sys.stderr)
            return 2
    loopback_only()
    from rtc_recorder import cli  # after loopback_only, before any peer connection

    if lag_file is not None:
        _probe_lag(cli, lag_file)
    if recorder == "aiortc":
        _record_with_aiortc()
    return int(cli.main(["serve", *argv]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
