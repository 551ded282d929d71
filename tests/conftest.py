"""Shared fixtures: every async test fails if anything reaches the event loop's exception
handler (an error escaping a callback or a task nobody awaited)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from benchmarks.loadbench.object_store import SeaweedFS

from .server_support import hold_ice_to_loopback


@pytest.fixture(autouse=True)
async def strict_loop() -> AsyncIterator[None]:
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield
    await asyncio.sleep(0)
    assert not errors, f"unhandled exceptions reached the event loop: {errors}"


@pytest.fixture(autouse=True, scope="session")
def loopback_only() -> None:
    """WebRTC in the tests stays on 127.0.0.1 (see :func:`hold_ice_to_loopback`)."""
    hold_ice_to_loopback()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A SeaweedFS S3 store for the whole test session (started on first use)."""
    store = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    store.start()
    yield store
    store.stop()


@pytest.fixture
def decoder_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every decoder aiortc's decoder threads create (one per stream, on its first frame)."""
    import aiortc.rtcrtpreceiver as receiver_module

    calls: list[str] = []
    original = receiver_module.get_decoder

    def counting(codec: Any) -> Any:
        calls.append(codec.mimeType)
        return original(codec)

    monkeypatch.setattr(receiver_module, "get_decoder", counting)
    return calls
