"""What operators watch and what keeps the server within its means: ``/metrics``,
``/readyz``, admission by measured load, and the bounded drain on shutdown, wired into an
application by :func:`setup`."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PrometheusCounter
from prometheus_client.aiohttp import make_aiohttp_handler

from . import load
from .admission import Admission, Limits
from .lifecycle import DRAIN, Drain, Readiness, Refusal
from .load import LoadMonitor
from .metrics import (
    RecordingTotals,
    ServerCollector,
    lag_histogram,
    process_metrics,
    refusals,
)
from .sessions import SessionManager
from .settings import Settings

REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("registry", CollectorRegistry)
READINESS: web.AppKey[Readiness] = web.AppKey("readiness", Readiness)
MONITOR: web.AppKey[LoadMonitor] = web.AppKey("monitor", LoadMonitor)
REFUSED: web.AppKey[PrometheusCounter] = web.AppKey("refused", PrometheusCounter)


def limits(settings: Settings) -> Limits:
    """The admission limits the settings give."""
    return Limits(
        loop_lag_p99_ms=settings.admission_loop_lag,
        loop_busy=settings.admission_loop_busy,
        cpu=settings.admission_cpu,
        udp_drops=settings.admission_udp_drops,
        resume=settings.admission_resume,
        calm=settings.admission_calm,
    )


def setup(app: web.Application, settings: Settings, sessions: SessionManager) -> None:
    """Add ``/metrics`` and ``/readyz``, the load monitor, admission and the drain to
    ``app``, whose ``app[REGISTRY]`` the caller made (so that other parts could register
    their metrics on it first)."""
    registry = app[REGISTRY]
    admission = Admission(limits(settings), settle=load.WINDOW + load.INTERVAL)
    monitor = LoadMonitor(admission, lag_histogram(registry).observe)
    readiness = Readiness(settings, sessions, admission)
    totals = RecordingTotals()
    sessions.on_recording.append(totals.watch)
    registry.register(
        ServerCollector(
            sessions,
            totals,
            admission,
            monitor,
            lambda: (readiness.refusal(settling=False) is None, readiness.draining),
        )
    )
    process_metrics(registry)
    app[MONITOR] = monitor
    app[READINESS] = readiness
    app[REFUSED] = refusals(registry)
    app[DRAIN] = Drain(readiness, sessions, settings.shutdown_timeout)
    app.on_startup.append(_start_monitor)
    app.on_shutdown.append(_drain)
    app.on_cleanup.append(_stop_monitor)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", make_aiohttp_handler(registry))


def refusal(app: web.Application) -> Refusal | None:
    """Why a new session would be refused now (counted), or None."""
    refused = app[READINESS].refusal()
    if refused is not None:
        app[REFUSED].labels(refused.reason).inc()
    return refused


def admitted(app: web.Application) -> None:
    """A new session was taken (admission paces new sessions near capacity): said as soon
    as it is decided, before the offer is negotiated, so that offers negotiated side by side
    each count the others."""
    app[READINESS].admitted()


def withdrawn(app: web.Application) -> None:
    """The session :func:`admitted` last did not come to be."""
    app[READINESS].withdrawn()


async def readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: 200 while new sessions are taken, else 503; the body says why."""
    body = request.app[READINESS].to_json()
    return web.json_response(body, status=200 if body["ready"] else 503)


async def _start_monitor(app: web.Application) -> None:
    app[MONITOR].start()


async def _stop_monitor(app: web.Application) -> None:
    await app[MONITOR].stop()


async def _drain(app: web.Application) -> None:
    await app[DRAIN].start()
