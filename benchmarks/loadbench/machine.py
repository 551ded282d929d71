"""The whole machine's load, stated beside every figure: busy CPU, load average, CPU
pressure."""

from __future__ import annotations

import os
import time
from typing import Any

import psutil

SATURATED = 0.9  # a machine at least this busy (share of its cores) is saturated


def busy_seconds(times: Any) -> float:
    """Non-idle CPU seconds in a ``psutil.cpu_times()`` (guest time is counted in user)."""
    skip = ("idle", "iowait", "guest", "guest_nice")
    return float(sum(getattr(times, name) for name in times._fields if name not in skip))


def cpu_pressure_seconds() -> float | None:
    """Total seconds some task waited for a CPU since boot (Linux PSI), None without PSI."""
    try:
        with open("/proc/pressure/cpu") as pressure:
            some = pressure.readline().split()
        return int(some[-1].split("=")[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return None


def load_average() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


class MachineWindow:
    """The machine over one measured window: created at its start, :meth:`end` at its end.

    ``loadBefore`` is the 1-minute load average when the window began, ``loadEnd`` when it
    ended (a window of a minute or more makes it the load *during* the window);
    ``busyCores`` is all the machine's non-idle CPU time over the window, in cores, and
    ``saturated`` says it reached :data:`SATURATED` of them: a process' CPU figure is then
    capped by the machine (a lower bound of what it would use)."""

    def __init__(self) -> None:
        self.load_before = load_average()
        self._times = psutil.cpu_times()
        self._pressure = cpu_pressure_seconds()
        self._started = time.monotonic()

    def end(self) -> dict[str, Any]:
        """The window, ended now (see the class for each figure)."""
        seconds = time.monotonic() - self._started
        busy = (busy_seconds(psutil.cpu_times()) - busy_seconds(self._times)) / seconds
        pressure = cpu_pressure_seconds()
        cores = psutil.cpu_count() or 1
        return {
            "seconds": seconds,
            "busyCores": busy,
            "cores": cores,
            "saturated": busy >= SATURATED * cores,
            "loadBefore": self.load_before,
            "loadEnd": load_average(),
            "cpuPressure": None
            if pressure is None or self._pressure is None
            else (pressure - self._pressure) / seconds,
        }
