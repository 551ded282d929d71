"""An event channel: messages numbered in order (``seq``) and handed to every subscriber's
queue (an events WebSocket), as sessions and rooms send them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

Message = dict[str, Any]
QUEUE_SIZE = 1000  # messages a subscriber may fall behind by before it is dropped


class EventChannel:
    """Numbers every message (``seq``, from 1) so clients can order events and answers;
    ``on_message`` sees each one (the notices), then every subscriber."""

    def __init__(self, on_message: Callable[[Message], None] | None = None) -> None:
        self.sequence = 0
        self._on_message = on_message
        self._subscribers: set[asyncio.Queue[Message | None]] = set()

    def subscribe(self) -> asyncio.Queue[Message | None]:
        """A queue of messages; ``None`` arrives when the channel closes."""
        queue: asyncio.Queue[Message | None] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Message | None]) -> None:
        """Stop handing messages to ``queue``."""
        self._subscribers.discard(queue)

    def publish(self, message: Message) -> None:
        """Number ``message`` and hand it out."""
        self.sequence += 1
        message["seq"] = self.sequence
        if self._on_message is not None:
            self._on_message(message)
        self._hand_out(message)

    def close(self) -> None:
        """Tell every subscriber the channel has ended."""
        self._hand_out(None)

    def _hand_out(self, message: Message | None) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                # A subscriber that stopped reading loses its subscription, not the server.
                self._subscribers.discard(queue)
