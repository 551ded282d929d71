"""``rtc-recorder serve --workers N --redis URL``: N node processes on one machine, on
ports ``PORT`` .. ``PORT+N-1``, so every core is used (one process runs one event loop).

Each worker is ``rtc-recorder serve`` with the same flags, its own port and, with object
storage, its own spool (``SPOOL/node-PORT``): a worker that starts again uploads what it
left, and never touches a file another worker is recording. With ``file:`` storage they
share the recordings folder (names are unique per session). SIGINT and SIGTERM are passed
on to every worker, which drains; the exit status is the highest of theirs.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType

from .settings import Settings
from .storage import BucketLocation

logger = logging.getLogger("rtc_recorder.server")


def worker_arguments(argv: Sequence[str], settings: Settings, index: int) -> list[str]:
    """The flags of worker ``index`` (0-based): the given ones, then its own (later flags
    win)."""
    port = settings.port + index
    own = ["--workers", "1", "--port", str(port)]
    if isinstance(settings.location, BucketLocation):
        own += ["--spool", str(settings.spool_folder / f"node-{port}")]
    return [*argv, *own]


def run_workers(argv: Sequence[str], settings: Settings) -> int:
    """Run the workers until they have all exited (see the module's docstring)."""
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "rtc_recorder", "serve", *worker_arguments(argv, settings, i)]
        )
        for i in range(settings.workers)
    ]
    logger.info(
        "workers",
        extra={"fields": {"count": len(workers), "pids": [w.pid for w in workers]}},
    )

    def pass_on(signum: int, _frame: FrameType | None) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, pass_on)
    return max(worker.wait() for worker in workers)
