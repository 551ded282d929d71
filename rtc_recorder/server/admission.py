"""Admission by measured load: whether the process takes new sessions, decided from load
samples, with hysteresis so the answer does not flap.

Pure logic: samples and instants come from the caller (:mod:`.load` measures them once a
second), nothing here reads a clock.

- **Open → at capacity** as soon as one sample has any signal above its limit.
- **At capacity → open** once every signal has stayed at or below ``resume`` × its limit in
  every sample for ``calm`` seconds.

A limit of 0 turns its signal off. A process without sessions always admits: its load is
not of its own making, and refusing the first session would help nobody.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from enum import StrEnum


def camel(name: str) -> str:
    """``loop_lag_p99_ms`` -> ``loopLagP99Ms`` (the JSON spelling)."""
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


class AdmissionState(StrEnum):
    """Whether new sessions are taken."""

    OPEN = "open"
    AT_CAPACITY = "at capacity"


@dataclass(frozen=True)
class LoadSample:
    """The load over the last sampling window."""

    loop_lag_p99_ms: float  # 99th percentile of how late the event loop woke a sleeping task
    loop_busy: float  # share of the time the event-loop thread was running or waiting to run
    cpu: float  # the process' CPU time over the window ÷ (window × CPUs it may use)
    udp_drops: float  # UDP packets per second the kernel dropped at the process' full sockets

    def to_json(self) -> dict[str, float]:
        return {camel(key): round(value, 4) for key, value in asdict(self).items()}


@dataclass(frozen=True)
class Limits:
    """Above any of these (those that are not 0), the process is at capacity (the defaults
    are the settings')."""

    loop_lag_p99_ms: float
    loop_busy: float
    cpu: float
    udp_drops: float
    resume: float  # admit again below this share of every limit ...
    calm: float  # ... held for this many seconds

    def signals(self) -> dict[str, float]:
        """The limit of each signal, by the name :class:`LoadSample` gives it."""
        return {f.name: getattr(self, f.name) for f in fields(LoadSample)}


@dataclass(frozen=True)
class Change:
    """A change of state, with the sample that caused it."""

    state: AdmissionState
    sample: LoadSample
    over: tuple[str, ...]  # the signals above their limit (entering "at capacity")


class Admission:
    """The admission state machine (see the module's docstring)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.state = AdmissionState.OPEN
        self.sample: LoadSample | None = None
        self.over: tuple[str, ...] = ()  # signals above their limit in the last sample
        self.since: float | None = None  # when the state was last entered
        self._calm_since: float | None = None

    def observe(self, sample: LoadSample, at: float) -> Change | None:
        """Take the sample of instant ``at`` (seconds, any monotonic origin); the change of
        state it causes, if any."""
        self.sample = sample
        self.over = self.exceeded(sample, 1.0)
        if self.state is AdmissionState.OPEN:
            if self.over:
                return self._enter(AdmissionState.AT_CAPACITY, sample, at)
            return None
        if self.exceeded(sample, self.limits.resume):
            self._calm_since = None
            return None
        if self._calm_since is None:
            self._calm_since = at
        if at - self._calm_since >= self.limits.calm:
            return self._enter(AdmissionState.OPEN, sample, at)
        return None

    def exceeded(self, sample: LoadSample, share: float) -> tuple[str, ...]:
        """The signals of ``sample`` above ``share`` × their (non-zero) limit."""
        measured = asdict(sample)
        return tuple(
            name
            for name, limit in self.limits.signals().items()
            if limit > 0 and measured[name] > share * limit
        )

    def admits(self, sessions: int) -> bool:
        """Whether a new session is taken by a process that has ``sessions``."""
        return self.state is AdmissionState.OPEN or sessions == 0

    def retry_after(self, at: float) -> int:
        """Seconds (at least 1) before the process could admit again, if load falls now."""
        if self.state is AdmissionState.OPEN:
            return 1
        calm_for = 0.0 if self._calm_since is None else at - self._calm_since
        return max(1, math.ceil(self.limits.calm - calm_for))

    def _enter(self, state: AdmissionState, sample: LoadSample, at: float) -> Change:
        self.state = state
        self.since = at
        self._calm_since = None
        return Change(state, sample, self.over)

    def to_json(self) -> dict[str, object]:
        """The state, the last sample, and the limits (for ``/readyz``)."""
        return {
            "state": self.state.value,
            "over": [camel(name) for name in self.over],
            "measured": self.sample.to_json() if self.sample is not None else None,
            "limits": {camel(name): limit for name, limit in self.limits.signals().items()},
            "resume": self.limits.resume,
            "calmSeconds": self.limits.calm,
        }
