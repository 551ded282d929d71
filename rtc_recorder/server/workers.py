"""``rtc-recorder serve --workers N --redis URL``: N node processes on one machine, on
ports ``PORT`` .. ``PORT+N-1``, so every core is used (one process runs one event loop).

Each worker is ``rtc-recorder serve`` with the same flags, its own port and, with object
storage, its own spool (``SPOOL/node-PORT``): a worker that starts again uploads what it
left, and never touches a file another worker is recording. With ``file:`` storage they
share the recordings folder (names are unique per session).

A worker that exits on its own (killed, crashed) is started again on its port, after
:data:`RESTART_DELAY` seconds, doubled each time it dies again within
:data:`STABLE_SECONDS` of starting, up to :data:`RESTART_DELAY_MAX`: meanwhile its
sessions are listed ``lost`` by the others, and once it is back it uploads its spool.
SIGINT and SIGTERM are passed on to every worker, which drains, and nothing is started
again; the exit status is the highest of the workers' last ones.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from .settings import Settings
from .storage import BucketLocation

logger = logging.getLogger("rtc_recorder.server")

RESTART_DELAY = 1.0  # seconds before a worker that exited is started again ...
RESTART_DELAY_MAX = 30.0  # ... doubled while it keeps dying young, up to this
STABLE_SECONDS = 10.0  # a worker that ran this long starts again after RESTART_DELAY
POLL_SECONDS = 0.2  # how often the supervisor looks at its workers


def worker_arguments(argv: Sequence[str], settings: Settings, index: int) -> list[str]:
    """The flags of worker ``index`` (0-based): the given ones, then its own (later flags
    win)."""
    port = settings.port + index
    own = ["--workers", "1", "--port", str(port)]
    if isinstance(settings.location, BucketLocation):
        own += ["--spool", str(settings.spool_folder / f"node-{port}")]
    return [*argv, *own]


def restart_delay(previous: float | None, ran: float) -> float:
    """Seconds to wait before starting again a worker that ran ``ran`` seconds, the last
    wait having been ``previous`` (None: it never had to start again)."""
    if previous is None or ran >= STABLE_SECONDS:
        return RESTART_DELAY
    return min(previous * 2, RESTART_DELAY_MAX)


@dataclass
class Worker:
    """One worker process and its restarts."""

    command: list[str]
    process: subprocess.Popen[bytes]
    started: float
    delay: float | None = None  # the last wait before a restart
    due: float | None = None  # when it is to start again, while it is down

    @classmethod
    def start(cls, command: list[str]) -> Worker:
        return cls(command, subprocess.Popen(command), time.monotonic())


def run_workers(argv: Sequence[str], settings: Settings) -> int:
    """Run the workers until they have all exited (see the module's docstring)."""
    workers = [
        Worker.start(
            [sys.executable, "-m", "rtc_recorder", "serve", *worker_arguments(argv, settings, i)]
        )
        for i in range(settings.workers)
    ]
    logger.info(
        "workers",
        extra={"fields": {"count": len(workers), "pids": [w.process.pid for w in workers]}},
    )
    stopping = threading.Event()

    def pass_on(signum: int, _frame: FrameType | None) -> None:
        stopping.set()
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, pass_on)
    while not stopping.is_set():
        now = time.monotonic()
        for worker in workers:
            _supervise(worker, now, stopping)
        stopping.wait(POLL_SECONDS)
    return max(worker.process.wait() for worker in workers)


def _supervise(worker: Worker, now: float, stopping: threading.Event) -> None:
    """Notice a worker that exited, and start it again when its wait is over (and, if a
    signal came while it was being started, pass that on to it)."""
    status = worker.process.poll()
    if status is None:
        return
    if worker.due is None:
        worker.delay = restart_delay(worker.delay, now - worker.started)
        worker.due = now + worker.delay
        logger.warning(
            "worker exited: starting it again",
            extra={
                "fields": {
                    "pid": worker.process.pid,
                    "status": status,
                    "after": worker.delay,
                }
            },
        )
    elif now >= worker.due and not stopping.is_set():
        worker.process = subprocess.Popen(worker.command)
        worker.started, worker.due = now, None
        if stopping.is_set():
            worker.process.send_signal(signal.SIGTERM)
        logger.info("worker started again", extra={"fields": {"pid": worker.process.pid}})
