"""The event loop's lag: how late the loop wakes a task that sleeps a fixed period.

A loop busy with other work (packets, recordings, requests) wakes the probe late; a few
milliseconds is normal, tens of milliseconds mean packets wait in the sockets that long.
Each wake-up costs a few microseconds (100 a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Callable

PERIOD = 0.01  # seconds the probe sleeps


def percentile(values: list[float], share: float) -> float:
    """The ``share`` quantile of ``values`` (nearest rank; 0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(share * len(ordered))))
    return ordered[rank - 1]


class LoopLagProbe:
    """A task measuring the running loop's lag every :data:`PERIOD`; each measurement goes
    to ``observe`` (seconds) and into a window of the last ``window`` seconds."""

    def __init__(self, window: float, observe: Callable[[float], None]) -> None:
        self.window = window
        self._observe = observe
        self._recent: deque[tuple[float, float]] = deque()  # (loop time, lag seconds)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def recent(self) -> list[float]:
        """The lags measured in the last ``window`` seconds."""
        return [lag for _, lag in self._recent]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + PERIOD
            await asyncio.sleep(PERIOD)
            woke = loop.time()
            lag = max(0.0, woke - due)
            self._recent.append((woke, lag))
            while self._recent[0][0] < woke - self.window:
                self._recent.popleft()
            self._observe(lag)
