"""``rtc-recorder serve`` confined to the loopback interface, for the benchmarks.

    .venv/bin/python benchmarks/loopback_server.py [--stop-on-stdin-eof] SERVE-ARGS...

It calls :func:`loadbench.common.loopback_only` (ICE gathers 127.0.0.1 only, instead of
aioice's default of every interface but loopback), then runs
``rtc_recorder.cli.main(["serve", *SERVE-ARGS])`` in this process, unchanged: same
settings, same signals (SIGTERM or SIGINT finalize every recording, then exit 0).

With ``--stop-on-stdin-eof`` (first argument), the server sends itself SIGTERM when its
standard input closes: a benchmark keeps the write end open, so the server shuts down
cleanly even if the benchmark is killed outright.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from loadbench.common import loopback_only

STOP_FLAG = "--stop-on-stdin-eof"
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


def main(argv: list[str]) -> int:
    """Run the server with ``argv`` (``serve``'s arguments, optionally after the flag)."""
    if argv and argv[0] == STOP_FLAG:
        argv = argv[1:]
        _stop_when_stdin_closes()
    loopback_only()
    from rtc_recorder import cli  # after loopback_only, before any peer connection

    return int(cli.main(["serve", *argv]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
