"""Admission by measured load: whether the process takes new sessions, decided from load
samples, with hysteresis so the answer does not flap.

Pure logic: samples and instants come from the caller (:mod:`.load` measures them once a
second), nothing here reads a clock.

- **Open → at capacity** as soon as one sample has any signal above its limit.
- **At capacity → open** once every signal has stayed at or below ``resume`` × its limit in
  every sample for ``calm`` seconds.
- **Settling**: a session admitted less than ``settle`` seconds ago is not yet in the
  samples. While there are such sessions, another is taken only if the load stays under
  ``resume`` × its limit with it: for the event loop and the CPU, each unmeasured session
  (and the new one) is counted at the cost per session measured so far; a process that is
  *warm* (a signal over ``resume`` × its limit) takes one at a time; a process that has
  measured none of its sessions yet knows no cost per session and takes at most ``first``
  unmeasured ones. So a burst of offers cannot overshoot the limits before the samples
  show it, and one session at a time approaches them.

A limit of 0 turns its signal off. A process without sessions (and none being taken)
always admits: its load is not of its own making, and refusing the first session would
help nobody. A session counts from the moment it is taken (:meth:`Admission.admitted`),
before its offer is negotiated, so offers negotiated side by side each count the others.
"""

from __future__ import annotations

import math
from collections import deque
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


PROPORTIONAL = ("loop_busy", "cpu")  # signals that grow with each session's share
# Sessions a process that knows no cost per session takes before the samples show one: a
# burst at a fresh server of 20 sessions of 720p, all taken, left each with 65 % of its
# video on the 2-core development machine (one process holds about 11).
FIRST_SESSIONS = 4


@dataclass(frozen=True)
class Declined:
    """Why no new session is taken now: ``capacity`` or ``settling``; and in how many
    seconds one could be, at the earliest."""

    reason: str
    retry_after: int


def _seconds(wait: float) -> int:
    return max(1, math.ceil(wait))


@dataclass(frozen=True)
class Change:
    """A change of state, with the sample that caused it."""

    state: AdmissionState
    sample: LoadSample
    over: tuple[str, ...]  # the signals above their limit (entering "at capacity")


class Admission:
    """The admission state machine (see the module's docstring)."""

    def __init__(self, limits: Limits, settle: float, first: int = FIRST_SESSIONS) -> None:
        self.limits = limits
        self.settle = settle
        self.first = first
        self.state = AdmissionState.OPEN
        self.sample: LoadSample | None = None
        self.over: tuple[str, ...] = ()  # signals above their limit in the last sample
        self.since: float | None = None  # when the state was last entered
        self._calm_since: float | None = None
        self._admitted: deque[float] = deque()  # when the sessions not yet measured came

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

    @property
    def warm(self) -> bool:
        """Whether the last sample had a signal above ``resume`` × its limit."""
        return self.sample is not None and bool(self.exceeded(self.sample, self.limits.resume))

    def refusal(self, sessions: int, at: float, settling: bool = True) -> Declined | None:
        """Why a new session would not be taken at ``at`` by a process that has ``sessions``
        (``settling`` too, unless told otherwise), or None."""
        self._forget(at)
        if sessions == 0 and not self._admitted:
            return None
        if self.state is AdmissionState.AT_CAPACITY:
            calm_for = 0.0 if self._calm_since is None else at - self._calm_since
            return Declined("capacity", _seconds(self.limits.calm - calm_for))
        if settling and self._crowded(sessions, at):
            return Declined("settling", _seconds(self._admitted[0] + self.settle - at))
        return None

    def admitted(self, at: float) -> None:
        """A new session was taken at ``at`` (counted from the moment it was decided, before
        it exists: offers negotiated side by side must each see the others)."""
        self._admitted.append(at)

    def withdrawn(self) -> None:
        """The session taken last did not come to be (its offer failed)."""
        if self._admitted:
            self._admitted.pop()

    def _forget(self, at: float) -> None:
        """Sessions taken ``settle`` seconds before ``at`` are in the samples by now."""
        while self._admitted and self._admitted[0] <= at - self.settle:
            self._admitted.popleft()

    def _crowded(self, sessions: int, at: float) -> bool:
        """Whether one more session could overshoot before the samples show the last ones."""
        unmeasured = len(self._admitted)
        if unmeasured == 0 or not any(self.limits.signals().values()):
            return False
        if self.warm:
            return True
        measured = sessions - unmeasured
        if self.sample is None or measured <= 0:
            return unmeasured >= self.first  # no cost per session known yet
        for name in PROPORTIONAL:
            limit = getattr(self.limits, name)
            load = getattr(self.sample, name)
            if limit > 0 and load * (1 + (unmeasured + 1) / measured) > self.limits.resume * limit:
                return True
        return False

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
