"""``GET /metrics``: what the server is doing, in Prometheus' text format.

Each application has its own :class:`prometheus_client.CollectorRegistry` (never the
process-wide default: tests run many applications in one process); other parts of the
server (storage, webhooks) register their own metrics on it. Everything that describes
the sessions and recordings is read at scrape time by :class:`ServerCollector`; counters
of what recordings did keep what ended recordings added (:class:`RecordingTotals`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client import Counter as PrometheusCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..mediarecorder import MediaRecorder
from .admission import Admission, AdmissionState
from .load import LoadMonitor
from .sessions import SessionManager

PREFIX = "rtc_recorder"
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LIVE_STATES = ("recording", "paused")
_DROPPED = re.compile(r"framesDropped(\w+)")
# LoadSample's fields as metrics: name, scale to the metric's unit, documentation
SIGNALS = {
    "loop_lag_p99_ms": (
        "loop_lag_p99_seconds",
        0.001,
        "Event-loop lag, 99th percentile over the last seconds",
    ),
    "loop_busy": (
        "loop_busy_ratio",
        1.0,
        "Share of the time the event-loop thread was running or waiting for a CPU",
    ),
    "cpu": ("cpu_ratio", 1.0, "Process CPU time ÷ the CPUs it may use"),
    "udp_drops": (
        "udp_drops_per_second",
        1.0,
        "UDP packets dropped at the process' full sockets, per second",
    ),
}


def snake(name: str) -> str:
    """``WaitingForKeyframe`` -> ``waiting_for_keyframe``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclass
class Totals:
    """What recordings did, summed: bytes, frames written, dropped (by kind and reason), and
    keyframe requests (by kind)."""

    bytes: int = 0
    frames_written: Counter[str] = field(default_factory=Counter)
    frames_dropped: Counter[tuple[str, str]] = field(default_factory=Counter)
    keyframe_requests: Counter[str] = field(default_factory=Counter)

    def add(self, stats: dict[str, Any]) -> None:
        """Add one recording's ``MediaRecorder.getStats()``."""
        self.bytes += int(stats.get("bytes", 0))
        for track in stats.get("tracks", []):
            kind = str(track.get("kind"))
            self.frames_written[kind] += int(track.get("framesWritten", 0))
            self.keyframe_requests[kind] += int(track.get("keyframeRequests", 0))
            for key, value in track.items():
                match = _DROPPED.fullmatch(key)
                if match is not None and isinstance(value, int):
                    self.frames_dropped[kind, snake(match.group(1))] += value

    def copy(self) -> Totals:
        return Totals(
            self.bytes,
            Counter(self.frames_written),
            Counter(self.frames_dropped),
            Counter(self.keyframe_requests),
        )


class RecordingTotals:
    """Totals over every recording of the server: those that ended (added once, when they
    stop) plus what the live ones report now, so the counters never go back."""

    def __init__(self) -> None:
        self._ended = Totals()
        self._live: set[MediaRecorder] = set()

    def watch(self, recorder: MediaRecorder) -> None:
        """Count ``recorder`` from now on (call it once its recording started)."""
        self._live.add(recorder)
        recorder.on("stop", lambda _event: self._ended_recording(recorder))

    def _ended_recording(self, recorder: MediaRecorder) -> None:
        if recorder in self._live:
            self._live.discard(recorder)
            self._ended.add(recorder.getStats())

    def now(self) -> Totals:
        """The totals at this instant."""
        totals = self._ended.copy()
        for recorder in self._live:
            totals.add(recorder.getStats())
        return totals


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=value)


class ServerCollector:
    """Sessions, recordings, their totals, admission and load, read when scraped."""

    def __init__(
        self,
        sessions: SessionManager,
        totals: RecordingTotals,
        admission: Admission,
        monitor: LoadMonitor,
        status: Callable[[], tuple[bool, bool]],
    ) -> None:
        self.sessions = sessions
        self.totals = totals
        self.admission = admission
        self.monitor = monitor
        self.status = status  # (ready, draining)

    def collect(self) -> Iterable[Metric]:
        yield from self._sessions()
        yield from self._recorded()
        yield from self._admission()

    def _sessions(self) -> Iterable[Metric]:
        sessions = list(self.sessions.sessions.values())
        yield _gauge("sessions", "Sessions (peer connections) open", len(sessions))
        yield _gauge("rooms", "Rooms open", 0)
        states = Counter(session.state for session in sessions)
        recordings = GaugeMetricFamily(
            f"{PREFIX}_recordings", "Recordings in progress, by state", labels=["state"]
        )
        for state in LIVE_STATES:
            recordings.add_metric([state], states[state])
        yield recordings

    def _recorded(self) -> Iterable[Metric]:
        totals = self.totals.now()
        yield CounterMetricFamily(
            f"{PREFIX}_recorded_bytes", "Bytes written to recordings", value=totals.bytes
        )
        written = CounterMetricFamily(
            f"{PREFIX}_frames_written", "Frames written to recordings", labels=["kind"]
        )
        for kind, count in sorted(totals.frames_written.items()):
            written.add_metric([kind], count)
        yield written
        dropped = CounterMetricFamily(
            f"{PREFIX}_frames_dropped",
            "Frames received and not written, by kind and reason",
            labels=["kind", "reason"],
        )
        for (kind, reason), count in sorted(totals.frames_dropped.items()):
            dropped.add_metric([kind, reason], count)
        yield dropped
        requests = CounterMetricFamily(
            f"{PREFIX}_keyframe_requests", "Keyframes requested from senders", labels=["kind"]
        )
        for kind, count in sorted(totals.keyframe_requests.items()):
            requests.add_metric([kind], count)
        yield requests

    def _admission(self) -> Iterable[Metric]:
        ready, draining = self.status()
        at_capacity = self.admission.state is AdmissionState.AT_CAPACITY
        yield _gauge("ready", "1 while new sessions are taken (what /readyz says)", int(ready))
        yield _gauge("draining", "1 once SIGTERM was received", int(draining))
        yield _gauge("at_capacity", "1 while the measured load refuses new sessions", at_capacity)
        measured = asdict(self.admission.sample) if self.admission.sample else {}
        limits = GaugeMetricFamily(
            f"{PREFIX}_admission_limit",
            "Load above which new sessions are refused, by signal (0: not checked)",
            labels=["signal"],
        )
        for field_name, limit in self.admission.limits.signals().items():
            name, scale, documentation = SIGNALS[field_name]
            if field_name in measured:
                yield _gauge(name, documentation, measured[field_name] * scale)
            limits.add_metric([name], limit * scale)
        yield limits
        yield CounterMetricFamily(
            f"{PREFIX}_udp_drops",
            "UDP packets dropped at the process' full sockets",
            value=self.monitor.udp.total,
        )


def lag_histogram(registry: CollectorRegistry) -> Histogram:
    """The event loop's lag, as the probe measures it (see :mod:`.looplag`)."""
    return Histogram(
        f"{PREFIX}_event_loop_lag_seconds",
        "How late the event loop woke a task sleeping 10 ms",
        buckets=LAG_BUCKETS,
        registry=registry,
    )


def refusals(registry: CollectorRegistry) -> PrometheusCounter:
    """New sessions refused, by reason (``capacity``, ``settling``, ``max_sessions``,
    ``draining``)."""
    return PrometheusCounter(
        f"{PREFIX}_sessions_refused",
        "New sessions refused, by reason",
        labelnames=["reason"],
        registry=registry,
    )


def process_metrics(registry: CollectorRegistry) -> None:
    """CPU seconds, memory, open files of the process (``rtc_recorder_process_*``)."""
    ProcessCollector(namespace=PREFIX, registry=registry)
