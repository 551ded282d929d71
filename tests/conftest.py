"""Shared fixtures: every async test fails if anything reaches the event loop's exception
handler (an error escaping a callback or a task nobody awaited)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest


@pytest.fixture(autouse=True)
async def strict_loop() -> AsyncIterator[None]:
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield
    await asyncio.sleep(0)
    assert not errors, f"unhandled exceptions reached the event loop: {errors}"


@pytest.fixture(autouse=True)
def quiet_aioice() -> None:
    logging.getLogger("aioice").setLevel(logging.WARNING)
