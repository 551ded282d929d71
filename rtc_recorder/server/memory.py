"""Freed memory given back to the system once a session has ended.

A session's media passes through many short-lived buffers (packets, frames, chunks), on
the event loop and on its recording's thread. glibc's allocator keeps what they freed in
its arenas for reuse, scattered among live allocations, and a process that makes sessions
all day grows by what it never gets round to reusing. ``malloc_trim`` hands every whole
free page back to the system; doing so when a session ends keeps the server's resident
memory to what its live sessions use. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_TRIM = _malloc_trim()


def give_back_freed_memory() -> None:
    """Hand the allocator's free pages back to the system, off the event loop (it walks
    every arena, a few milliseconds for a busy server's)."""
    if _TRIM is None:
        return
    trim = _TRIM
    asyncio.get_running_loop().run_in_executor(None, trim, 0)
