"""What the server tells the outside world: session and recording events, each a
:class:`Notice` with a public type (``session.started``, ``recording.stopped``, ...).

Sessions already send every event to their WebSocket subscribers; the same messages come
here through :meth:`Notices.from_session`, are given their public type, and go to every
listener (the webhook sender, the uploader). Listeners are called on the event loop and
must not block.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .recordings import utc_now

logger = logging.getLogger("rtc_recorder.server")

# A session's event messages (``type`` as on its WebSocket) and their public types.
PUBLIC_TYPES = {
    "session": "session.started",
    "closed": "session.ended",
    "start": "recording.started",
    "pause": "recording.paused",
    "resume": "recording.resumed",
    "stop": "recording.stopped",
    "error": "recording.failed",
}
# Fields of a WebSocket message that say nothing outside it.
_PRIVATE = ("type", "seq")


@dataclass(frozen=True)
class Notice:
    """One event as it leaves the server: ``{type, timestamp, data}``."""

    type: str
    data: dict[str, Any]
    timestamp: datetime.datetime = field(default_factory=utc_now)

    def to_json(self) -> dict[str, Any]:
        """The payload that leaves the server."""
        stamp = self.timestamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {"type": self.type, "timestamp": stamp, "data": self.data}

    @property
    def recording(self) -> str | None:
        """The recording this notice is about, if any."""
        name = self.data.get("name")
        return str(name) if self.type.startswith("recording.") and name else None

    @property
    def order_key(self) -> str:
        """Notices with the same key are delivered in the order they were published: one
        session's (its recordings included), one room's."""
        return str(self.data.get("room") or self.data.get("session") or self.data.get("name"))


Listener = Callable[[Notice], None]


class Notices:
    """The one path events take out of the server."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` with every notice from now on."""
        self._listeners.append(listener)

    def publish(self, notice: Notice) -> None:
        """Hand ``notice`` to every listener; a failing listener is logged, never raised."""
        for listener in self._listeners:
            try:
                listener(notice)
            except Exception:
                logger.exception("a listener failed on %s", notice.type)

    def from_session(self, session: str, message: dict[str, Any]) -> None:
        """Publish a session's event message (as sent on its WebSocket) if it is one that
        leaves the server."""
        self._from({"session": session}, message)

    def from_room(self, room: str, message: dict[str, Any]) -> None:
        """Publish a room's event message (its recording's start, stop...: the uploader
        follows the room recording's folder) if it is one that leaves the server."""
        self._from({"room": room}, message)

    def _from(self, owner: dict[str, Any], message: dict[str, Any]) -> None:
        public = PUBLIC_TYPES.get(str(message.get("type")))
        if public is None:
            return
        data = {key: value for key, value in message.items() if key not in _PRIVATE}
        self.publish(Notice(public, {**owner, **data}))
