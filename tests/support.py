"""Observing a recorder from tests."""

from __future__ import annotations

import asyncio
from typing import Any

from rtc_recorder import MediaRecorder


class EventLog:
    """Records a recorder's events with the state seen inside each handler.

    ``style`` "on" registers with ``rec.on(...)``; "attribute" sets ``rec.onX``.
    """

    NAMES = ("start", "stop", "pause", "resume", "dataavailable", "error")

    def __init__(self, recorder: MediaRecorder, style: str = "on") -> None:
        self.recorder = recorder
        self.entries: list[tuple[str, str, Any]] = []
        self._waiters: dict[str, asyncio.Future[Any]] = {}
        for name in self.NAMES:
            handler = self._handler(name)
            if style == "on":
                recorder.on(name, handler)
            else:
                setattr(recorder, "on" + name, handler)

    def _handler(self, name: str) -> Any:
        def handle(event: Any) -> None:
            assert event.type == name
            self.entries.append((name, self.recorder.state, event))
            waiter = self._waiters.pop(name, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(event)

        return handle

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.entries]

    def states(self, name: str) -> list[str]:
        return [state for event, state, _ in self.entries if event == name]

    def events(self, name: str) -> list[Any]:
        return [event for n, _, event in self.entries if n == name]

    async def next(self, name: str, timeout: float = 15.0) -> Any:
        """Wait for the next ``name`` event."""
        waiter = self._waiters.setdefault(name, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(waiter, timeout)


async def log_media(recorder: MediaRecorder, seconds: float) -> None:
    """Let ``seconds`` of media reach the recording (waits on the recorder's own counters)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while recorder.getStats()["recordedTime"] < seconds or not any(
        t["framesWritten"] for t in recorder.getStats()["tracks"]
    ):
        assert loop.time() < deadline, "no media reached the recording"
        await asyncio.sleep(0.02)
