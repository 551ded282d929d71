"""Measuring the process' load for admission and ``/metrics``: a task samples once a second
what the last few seconds cost, and hands the sample to :class:`.admission.Admission`.

What is read, and what it costs per sample (none of it per packet):

- the event loop's lag, from :class:`.looplag.LoopLagProbe` (its 99th percentile);
- how long the event-loop thread was running or waiting for a CPU (the first two fields
  of ``/proc/self/task/TID/schedstat``; its CPU time alone where that file is missing):
  near all the time, the loop cannot do more, whether its own work or other processes
  fill the CPUs;
- CPU time of the whole process (``time.process_time``), against the CPUs it may use (its
  affinity, capped by a cgroup v2 ``cpu.max`` quota);
- UDP packets the kernel dropped because one of the process' sockets was full: the
  ``drops`` column of ``/proc/net/udp`` and ``/proc/net/udp6`` for the socket inodes
  found in ``/proc/self/fd``. On loopback or a LAN, that is where packets are lost when
  the process does not read them in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .admission import Admission, AdmissionState, Change, LoadSample, camel
from .looplag import LoopLagProbe, percentile

logger = logging.getLogger("rtc_recorder.server")

INTERVAL = 1.0  # seconds between samples
WINDOW = 3.0  # seconds each sample covers
UDP_TABLES = (Path("/proc/net/udp"), Path("/proc/net/udp6"))
FD_FOLDER = Path("/proc/self/fd")


def parse_udp_table(text: str) -> dict[int, int]:
    """Drops by socket inode, from the text of ``/proc/net/udp`` or ``/proc/net/udp6``."""
    drops = {}
    for line in text.splitlines()[1:]:
        columns = line.split()
        if len(columns) >= 13 and columns[9].isdigit() and columns[12].isdigit():
            drops[int(columns[9])] = int(columns[12])
    return drops


def socket_inodes() -> set[int]:
    """The inodes of the sockets the process has open (``fstat`` of each descriptor: cheaper
    than reading the links in ``/proc/self/fd``)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for name in os.listdir(FD_FOLDER):
            try:
                status = os.fstat(int(name))
            except (OSError, ValueError):  # closed meanwhile
                continue
            if stat.S_ISSOCK(status.st_mode):
                inodes.add(status.st_ino)
    return inodes


class UdpDrops:
    """A running total of the packets dropped at the process' UDP sockets (counts of sockets
    closed between two readings are lost with them)."""

    def __init__(self, tables: Iterable[Path] = UDP_TABLES) -> None:
        self.tables = tuple(tables)
        self.total = 0
        self._last: dict[int, int] = {}

    def read(self) -> int:
        """Read the tables again; the new total."""
        ours = socket_inodes()
        now: dict[int, int] = {}
        for table in self.tables:
            try:
                text = table.read_text()
            except OSError:  # no IPv6, say
                continue
            now.update((inode, n) for inode, n in parse_udp_table(text).items() if inode in ours)
        self.total += sum(max(0, n - self._last.get(inode, 0)) for inode, n in now.items())
        self._last = now
        return self.total


def thread_busy() -> float:
    """Seconds the calling thread has been running or waiting for a CPU."""
    try:
        path = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        with open(path, "rb") as schedstat:
            running, waiting = schedstat.read().split()[:2]
        return (int(running) + int(waiting)) / 1e9
    except (OSError, ValueError):
        return time.thread_time()


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> float:
    """How many CPUs the process may use: its affinity, capped by a cgroup v2 quota."""
    cpus = float(len(os.sched_getaffinity(0)))
    with contextlib.suppress(OSError, ValueError, StopIteration):
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        relative = next(line[3:] for line in lines if line.startswith("0::"))
        quota, period = (cgroup_root / relative.lstrip("/") / "cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, int(quota) / int(period))
    return cpus


@dataclass(frozen=True)
class Reading:
    """Cumulative counters read at one instant."""

    at: float  # seconds, monotonic
    process_cpu: float  # CPU seconds of every thread of the process
    loop_busy: float  # seconds the event-loop thread was running or waiting for a CPU
    udp_drops: int  # packets dropped at the process' sockets


def sample_between(first: Reading, last: Reading, cpus: float, lags: list[float]) -> LoadSample:
    """The load from ``first`` to ``last``, with the loop lags (seconds) measured meanwhile."""
    elapsed = max(last.at - first.at, 1e-9)
    return LoadSample(
        loop_lag_p99_ms=1000 * percentile(lags, 0.99),
        loop_busy=(last.loop_busy - first.loop_busy) / elapsed,
        cpu=(last.process_cpu - first.process_cpu) / elapsed / cpus,
        udp_drops=(last.udp_drops - first.udp_drops) / elapsed,
    )


def log_change(change: Change, admission: Admission) -> None:
    """One log record per change of admission state, with what was measured."""
    fields = {
        "state": change.state.value,
        **change.sample.to_json(),
        "limits": {camel(name): limit for name, limit in admission.limits.signals().items()},
    }
    if change.state is AdmissionState.AT_CAPACITY:
        over = [camel(name) for name in change.over]
        logger.warning("at capacity", extra={"fields": {"over": over, **fields}})
    else:
        logger.info("admitting", extra={"fields": fields})


class LoadMonitor:
    """The lag probe and the sampler of one server (both tasks on its event loop)."""

    def __init__(self, admission: Admission, observe_lag: Callable[[float], None]) -> None:
        self.admission = admission
        self.udp = UdpDrops()
        self.cpus = available_cpus()
        self.lag = LoopLagProbe(WINDOW, observe_lag)
        self._readings: deque[Reading] = deque()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start measuring (on the running loop)."""
        self.lag.start()
        self._readings.append(self.read())
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        await self.lag.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def read(self) -> Reading:
        """The counters now (called on the event-loop thread)."""
        return Reading(time.monotonic(), time.process_time(), thread_busy(), self.udp.read())

    def sample(self) -> Change | None:
        """Take one sample and hand it to the admission; the change it caused, if any."""
        reading = self.read()
        self._readings.append(reading)
        while reading.at - self._readings[0].at > WINDOW + INTERVAL / 2:
            self._readings.popleft()
        load = sample_between(self._readings[0], reading, self.cpus, self.lag.recent())
        return self.admission.observe(load, reading.at)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL)
            change = self.sample()
            if change is not None:
                log_change(change, self.admission)
