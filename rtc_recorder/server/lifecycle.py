"""Whether the server takes new sessions (and why not), and how it ends.

- :class:`Readiness`: a new session is refused while the server drains, when it has
  ``--max-sessions``, or while its measured load says it is at capacity
  (:mod:`.admission`). ``/readyz``, ``/offer`` and ``/whip`` ask it.
- :class:`Drain`: on SIGTERM, readiness turns off at once; then every session is closed
  (its recording finalized), then uploads and webhook deliveries are given the rest of
  the time, all within ``--shutdown-timeout`` seconds. A recording that has not finalized
  by then (its storage stopped answering, say) is logged and left behind; an upload not
  confirmed by then is resumed at the next start.
- :func:`serve`: the HTTP server until SIGINT/SIGTERM, then the drain, then the HTTP
  server closes (requests still in flight get :data:`HTTP_GRACE` seconds).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .admission import Admission, camel
from .sessions import Session, SessionManager
from .settings import Settings

logger = logging.getLogger("rtc_recorder.server")

HTTP_GRACE = 2.0  # seconds requests in flight get once the sessions are closed
MAX_SESSIONS_RETRY = 5  # Retry-After (seconds) when --max-sessions is reached


@dataclass(frozen=True)
class Refusal:
    """Why a new session is not taken now, and when to try again."""

    reason: str  # "draining", "max_sessions", "capacity" or "settling"
    message: str
    retry_after: int  # seconds


class Readiness:
    """Whether a new session would be taken now (see the module's docstring)."""

    def __init__(self, settings: Settings, sessions: SessionManager, admission: Admission) -> None:
        self.settings = settings
        self.sessions = sessions
        self.admission = admission
        self.draining = False

    def refusal(self, settling: bool = True) -> Refusal | None:
        """Why a new session would be refused, or None if it would be taken. ``/readyz``
        leaves out settling: a pause of seconds between sessions is no reason to send
        them elsewhere."""
        count = len(self.sessions.sessions)
        if self.draining:
            return Refusal(
                "draining", "the server is shutting down", int(self.settings.shutdown_timeout) + 1
            )
        if count >= self.settings.session_limit:
            return Refusal(
                "max_sessions",
                f"{self.settings.session_limit} sessions already",
                MAX_SESSIONS_RETRY,
            )
        refused = self.admission.refusal(count, time.monotonic(), settling)
        if refused is None:
            return None
        if refused.reason == "settling":
            message = "a new session waits until the load of the last ones taken shows"
        else:
            over = ", ".join(camel(name) for name in self.admission.over) or "calming down"
            message = f"the server is at capacity ({over})"
        return Refusal(refused.reason, message, refused.retry_after)

    def admitted(self) -> None:
        """A new session was taken."""
        self.admission.admitted(time.monotonic())

    def withdrawn(self) -> None:
        """The session taken last did not come to be."""
        self.admission.withdrawn()

    def to_json(self) -> dict[str, Any]:
        """``/readyz``'s body."""
        refusal = self.refusal(settling=False)
        return {
            "ready": refusal is None,
            "reason": refusal.reason if refusal else None,
            "message": refusal.message if refusal else None,
            "draining": self.draining,
            "sessions": len(self.sessions.sessions),
            "maxSessions": self.settings.session_limit,
            "admission": self.admission.to_json(),
        }


class Drain:
    """SIGTERM's drain (see the module's docstring); :meth:`start` may be called any number
    of times, the drain runs once."""

    def __init__(self, readiness: Readiness, sessions: SessionManager, timeout: float) -> None:
        self.readiness = readiness
        self.sessions = sessions
        self.timeout = timeout
        # What else ends once the sessions are closed, in this order; each is given the
        # seconds left of the bound (none, if the sessions took them all).
        self.afterwards: list[Callable[[float], Awaitable[None]]] = []
        # Told at once when the drain starts (a cluster node tells the others).
        self.starting: list[Callable[[], None]] = []
        self._task: asyncio.Task[list[Session]] | None = None

    def start(self) -> asyncio.Task[list[Session]]:
        """Stop taking sessions now; the task closing them, whose result is the sessions
        whose recording did not finalize within the bound."""
        if self._task is None:
            self.readiness.draining = True
            logger.info("draining", extra={"fields": {"timeout": self.timeout}})
            for callback in self.starting:
                callback()
            self._task = asyncio.ensure_future(self._run())
        return self._task

    async def _run(self) -> list[Session]:
        deadline = time.monotonic() + self.timeout
        unfinished = await self.sessions.close_all(self.timeout)
        for step in self.afterwards:
            await step(max(0.0, deadline - time.monotonic()))
        return unfinished


DRAIN: web.AppKey[Drain] = web.AppKey("drain", Drain)


async def serve(app: web.Application, settings: Settings, context: ssl.SSLContext | None) -> int:
    """Serve ``app`` until SIGINT or SIGTERM, drain, close; how many recordings were left
    unfinished."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=HTTP_GRACE)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port, ssl_context=context).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        unfinished = await app[DRAIN].start()
    finally:
        await runner.cleanup()
    return len(unfinished)
