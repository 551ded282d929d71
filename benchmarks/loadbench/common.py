"""What the benchmark's processes share: loopback-only networking, the control channel to
the orchestrating process, and shutdown on signals or when the orchestrator goes away."""

from __future__ import annotations

import asyncio
import logging
import signal
import traceback
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection
from typing import Any

from aiortc import RTCConfiguration

Message = dict[str, Any]

LOOPBACK = "127.0.0.1"


def loopback_only() -> None:
    """Keep WebRTC on the loopback interface: ICE gathers only 127.0.0.1 (aioice skips it by
    default and offers every other interface) and no STUN server is asked (see
    :func:`rtc_configuration`). Both processes call it, so they meet on 127.0.0.1 alone."""
    import aioice.ice

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [LOOPBACK] if use_ipv4 else []

    aioice.ice.get_host_addresses = host_addresses
    logging.getLogger("aioice").setLevel(logging.WARNING)
    logging.getLogger("aiortc").setLevel(logging.WARNING)


def rtc_configuration() -> RTCConfiguration:
    """No ICE servers: aiortc would otherwise ask Google's public STUN server."""
    return RTCConfiguration(iceServers=[])


class Channel:
    """The asyncio end of a child's pipe to the orchestrator.

    Messages are read on the event loop (no thread blocked in ``recv``). When the pipe
    closes (the orchestrator exited, even killed), ``on_closed`` is called once, so a child
    never outlives its parent.
    """

    def __init__(self, connection: Connection, on_closed: Callable[[], None]) -> None:
        self._connection = connection
        self._on_closed = on_closed
        self._messages: asyncio.Queue[Message] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._open = True
        self._loop.add_reader(connection.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            while self._connection.poll():
                self._messages.put_nowait(self._connection.recv())
        except (EOFError, OSError):
            self._closed()

    def _closed(self) -> None:
        if self._open:
            self._open = False
            self._loop.remove_reader(self._connection.fileno())
            self._on_closed()

    def send(self, message: Message) -> None:
        """Send ``message`` (dropped if the orchestrator is gone)."""
        if not self._open:
            return
        try:
            self._connection.send(message)
        except (BrokenPipeError, OSError):
            self._closed()

    async def receive(self, *types: str) -> Message:
        """The next message (of one of ``types``, if given; others are an error)."""
        message = await self._messages.get()
        if types and message.get("type") not in types:
            raise RuntimeError(f"expected a {' or '.join(types)} message, got {message}")
        return message

    def close(self) -> None:
        """Stop reading (the pipe itself is closed by the process' exit)."""
        if self._open:
            self._open = False
            self._loop.remove_reader(self._connection.fileno())


def run_child(connection: Connection, main: Callable[[Channel], Coroutine[Any, Any, None]]) -> None:
    """Run ``main(channel)`` as a child process' whole life.

    SIGINT (Ctrl-C reaches the whole process group) and SIGTERM (the orchestrator's
    ``terminate()``) cancel ``main``, so its ``finally`` blocks close the peer connections;
    so does the pipe closing. Only the first of these cancels: the clean-up it starts is
    not interrupted by the next (it bounds its own time). An exception is reported to the
    orchestrator before the process exits with status 1.
    """

    async def supervise() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        cancelled = False

        def cancel_once() -> None:
            nonlocal cancelled
            if not cancelled:
                cancelled = True
                task.cancel()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, cancel_once)
        channel = Channel(connection, cancel_once)
        try:
            await main(channel)
        except asyncio.CancelledError:
            pass
        except Exception:
            channel.send({"type": "error", "message": traceback.format_exc()})
            raise
        finally:
            channel.close()
            # From here a signal simply ends the process: the loop is about to close.
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    try:
        asyncio.run(supervise())
    except KeyboardInterrupt:
        # Ctrl-C before the loop installed its handler: nothing to clean up yet.
        pass
    except Exception:
        raise SystemExit(1) from None
