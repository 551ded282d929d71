"""The event loop's lag: how late it wakes a task sleeping :data:`LAG_PERIOD`.

A recorder that holds the loop (decoding, encoding, writing) delays everything else the
process does: the lag is what a server's other sessions and requests wait.
:class:`LagProbe` measures it inside the process; :class:`LagLog` does so in a server the
benchmark runs as a subprocess (``loopback_server.py --lag-file``), writing every sample to
a file that :func:`read_lag_log` reads back.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

LAG_PERIOD = 0.01  # seconds the probe sleeps
FLUSH_PERIOD = 1.0  # seconds between writes of the lag log


class LagProbe:
    """How late the event loop wakes a task sleeping :data:`LAG_PERIOD`, in seconds.

    Samples are kept while :attr:`recording`, each with the monotonic time it woke
    (:attr:`times`; the same clock in every process of the machine)."""

    def __init__(self) -> None:
        self.recording = False
        self.samples: list[float] = []
        self.times: list[float] = []

    async def run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(LAG_PERIOD)
            late = time.perf_counter() - before - LAG_PERIOD
            if self.recording:
                self.samples.append(max(0.0, late))
                self.times.append(time.monotonic())


class LagLog:
    """A :class:`LagProbe` always recording, whose samples are appended to ``path`` (one
    ``monotonic-time lag-seconds`` line each) every :data:`FLUSH_PERIOD` and when it is
    stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.probe = LagProbe()
        self.probe.recording = True
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start probing and writing (on the running loop)."""
        self.path.write_text("")
        self._tasks = [
            asyncio.create_task(self.probe.run()),
            asyncio.create_task(self._flush_periodically()),
        ]

    async def stop(self) -> None:
        """Stop probing; write what is left."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.flush()

    def flush(self) -> None:
        samples, times = self.probe.samples, self.probe.times
        self.probe.samples, self.probe.times = [], []
        with self.path.open("a") as log:
            log.writelines(f"{at:.6f} {lag:.6f}\n" for at, lag in zip(times, samples, strict=True))

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_PERIOD)
            self.flush()


def read_lag_log(path: Path) -> list[tuple[float, float]]:
    """Every sample of a :class:`LagLog` file: (monotonic time it woke, lag in seconds);
    none if the file is missing."""
    if not path.exists():
        return []
    samples = []
    for line in path.read_text().splitlines():
        at, lag = line.split()
        samples.append((float(at), float(lag)))
    return samples
