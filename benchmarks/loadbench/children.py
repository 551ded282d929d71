"""The orchestrator's side of the benchmarks' child processes: starting them with a pipe
each, waiting for their messages, and leaving none running; plus what is measured of them
from outside."""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import time
from collections import deque
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import psutil

from .common import Message

END_TIMEOUT = 30.0  # children's clean-up is bounded by 2 x 10 s


class ChildError(RuntimeError):
    """A child process failed, exited early, or did not answer in time."""


class Children:
    """The processes of one run, with a pipe to each; :meth:`end` leaves none running.

    Children are started with ``spawn`` (a fresh interpreter: no state forked from this
    process) and as daemons (multiprocessing ends them if this process exits abruptly);
    they also end themselves when their pipe closes.
    """

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._processes: dict[str, BaseProcess] = {}
        self._pipes: dict[str, Connection] = {}
        self._inbox: dict[str, deque[Message]] = {}

    def start(self, name: str, target: Callable[[Connection, Any], None], config: Any) -> None:
        """Start ``target(pipe, config)`` in a new process called ``name``."""
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=target, args=(theirs, config), name=name, daemon=True
        )
        process.start()
        theirs.close()
        self._processes[name] = process
        self._pipes[name] = ours
        self._inbox[name] = deque()

    def pid(self, name: str) -> int:
        """The process id of child ``name``."""
        pid = self._processes[name].pid
        assert pid is not None
        return pid

    def names(self, prefix: str) -> list[str]:
        """The children whose name starts with ``prefix``, in the order they started."""
        return [name for name in self._processes if name.startswith(prefix)]

    def send(self, name: str, message: Message) -> None:
        """Send ``message`` to child ``name``."""
        self._pipes[name].send(message)

    def expect(self, name: str, kind: str, timeout: float) -> Message:
        """The next ``kind`` message from ``name``; messages from other children meanwhile
        are kept for later. An error report, an early exit or the timeout raise
        :class:`ChildError`."""
        deadline = time.monotonic() + timeout
        while True:
            inbox = self._inbox[name]
            while inbox:
                message = inbox.popleft()
                if message.get("type") == kind:
                    return message
                raise ChildError(f"{name}: expected {kind!r}, got {message.get('type')!r}")
            self._collect()
            if self._inbox[name]:
                continue
            if not self._processes[name].is_alive():
                code = self._processes[name].exitcode
                raise ChildError(f"{name} exited (status {code}) before sending {kind!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChildError(f"{name}: no {kind!r} within {timeout:.0f} s")
            waitables: list[Any] = []
            for other, process in self._processes.items():
                if process.is_alive():
                    waitables += [self._pipes[other], process.sentinel]
            multiprocessing.connection.wait(waitables, timeout=min(remaining, 1.0))

    def _collect(self) -> None:
        """Read whatever the children sent; a reported error raises at once."""
        for name, pipe in self._pipes.items():
            with contextlib.suppress(EOFError, OSError):  # it exited: its status tells
                while pipe.poll():
                    message = pipe.recv()
                    if message.get("type") == "error":
                        raise ChildError(f"{name} failed:\n{message.get('message')}")
                    self._inbox[name].append(message)
            status = self._processes[name].exitcode
            if status not in (None, 0):
                raise ChildError(f"{name} exited with status {status}")

    def check(self) -> None:
        """Raise :class:`ChildError` if a child reported an error or has exited."""
        self._collect()
        for name, process in self._processes.items():
            if not process.is_alive():
                raise ChildError(f"{name} exited (status {process.exitcode})")

    def join(self, timeout: float) -> None:
        """Wait for every child to exit by itself."""
        deadline = time.monotonic() + timeout
        for process in self._processes.values():
            process.join(max(0.0, deadline - time.monotonic()))

    def end(self) -> None:
        """Terminate (SIGTERM: they close their peer connections, in bounded time) whatever
        still runs, then kill what has not exited within :data:`END_TIMEOUT`."""
        for process in self._processes.values():
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + END_TIMEOUT
        for process in self._processes.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(5)
        for pipe in self._pipes.values():
            pipe.close()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of the processes ``pids`` so far (those gone count 0)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def groups(sessions: int, per_process: int) -> Iterator[tuple[int, ...]]:
    """Session numbers ``0 .. sessions - 1`` in groups of ``per_process``."""
    for first in range(0, sessions, per_process):
        yield tuple(range(first, min(first + per_process, sessions)))
