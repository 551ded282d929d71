"""Event objects and a small pyee-style emitter that also honours ``onX`` attributes.

pyee's own emitters turn a failing handler into an ``"error"`` event, which would collide
with the recorder's ``error`` event, so the recorder dispatches through this one: a
handler that raises (or whose coroutine raises) is logged and never reaches the loop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import RecorderError

logger = logging.getLogger("rtc_recorder")

Handler = Callable[..., Any]


@dataclass(frozen=True)
class Event:
    """A recorder event: ``start``, ``stop``, ``pause`` or ``resume``."""

    type: str


@dataclass(frozen=True)
class BlobEvent(Event):
    """``dataavailable``: the bytes gathered since the previous one.

    ``timecode`` is in milliseconds: 0.0 for the first chunk, then the media time of the
    chunk's first data relative to the first chunk.
    """

    data: bytes = b""
    timecode: float = 0.0


@dataclass(frozen=True)
class ErrorEvent(Event):
    """``error``: ``error.name`` is the DOMException name of what went wrong."""

    error: RecorderError = field(default_factory=RecorderError)


class EventEmitter:
    """Listeners by event name, in the style of pyee (``on``, ``once``, ``remove_listener``).

    Handlers may be plain functions or coroutine functions; coroutines are scheduled as
    tasks on the running loop. ``on<type>`` attributes (``onstart`` ...) are called before
    the listeners registered with ``on``.
    """

    def __init__(self) -> None:
        self._listeners: dict[str, list[Handler]] = {}
        self._once: set[tuple[str, Handler]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop methods are called on

    def on(self, event: str, f: Handler | None = None) -> Any:
        """Register ``f`` for ``event``; without ``f``, return a decorator that does."""

        def register(handler: Handler) -> Handler:
            self._listeners.setdefault(event, []).append(handler)
            return handler

        return register if f is None else register(f)

    add_listener = on

    def once(self, event: str, f: Handler | None = None) -> Any:
        """Like :meth:`on`, but the handler is removed after its first call."""

        def register(handler: Handler) -> Handler:
            self._once.add((event, handler))
            return self.on(event, handler)  # type: ignore[no-any-return]

        return register if f is None else register(f)

    def remove_listener(self, event: str, f: Handler) -> None:
        """Remove one registration of ``f`` for ``event``."""
        handlers = self._listeners.get(event, [])
        if f in handlers:
            handlers.remove(f)
        self._once.discard((event, f))

    off = remove_listener

    def remove_all_listeners(self, event: str | None = None) -> None:
        """Remove every listener of ``event``, or of every event."""
        if event is None:
            self._listeners.clear()
            self._once.clear()
        else:
            self._listeners.pop(event, None)
            self._once = {entry for entry in self._once if entry[0] != event}

    def listeners(self, event: str) -> list[Handler]:
        """The handlers registered with :meth:`on` for ``event``, in order."""
        return list(self._listeners.get(event, []))

    def has_listeners(self, event: str) -> bool:
        """Whether anything (a listener or an ``on<type>`` attribute) handles ``event``."""
        return bool(self._listeners.get(event)) or getattr(self, "on" + event, None) is not None

    def _dispatch(self, event: Event) -> None:
        """Call every handler of ``event.type`` now; failures are logged, never raised."""
        attribute = getattr(self, "on" + event.type, None)
        handlers = [attribute] if attribute is not None else []
        handlers += self.listeners(event.type)
        for handler in handlers:
            if (event.type, handler) in self._once:
                self.remove_listener(event.type, handler)
            self._call(handler, event)

    def _call(self, handler: Handler, event: Event) -> None:
        try:
            result = handler(event)
        except Exception:
            logger.exception("%s handler %r failed", event.type, handler)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._handler_task_done)

    def _handler_task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("event handler failed", exc_info=task.exception())

    def _future(self) -> asyncio.Future[None]:
        """A future of the running loop (what the recorders' methods return)."""
        return self._running_loop().create_future()

    def _resolved(self) -> asyncio.Future[None]:
        future = self._future()
        future.set_result(None)
        return future

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, remembered; a clear error when called from none."""
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                f"{type(self).__name__} methods must be called from a running event loop"
            ) from None
        return self._loop


def call_from_thread(loop: asyncio.AbstractEventLoop, callback: Handler, *args: Any) -> None:
    """Schedule ``callback`` on ``loop`` from another thread (nothing if the loop is closed)."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        logger.debug("event loop closed: dropping an event from a thread")
