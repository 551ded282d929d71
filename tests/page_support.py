"""Fixtures of the page tests: servers running in the test's process on free ports, and
Debian's Chromium with fresh pages whose JavaScript errors fail the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page

from rtc_recorder.server.app import create_app
from rtc_recorder.server.settings import Settings

from .chromium import TIMEOUT_MS, launched_chromium
from .server_support import NO_LOAD_LIMITS

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"


@dataclass
class Server:
    """A server started by :func:`serve`."""

    runner: web.AppRunner
    url: str
    folder: Path
    token: str | None = None
    running: bool = True

    async def stop(self) -> None:
        """Stops it (once)."""
        if self.running:
            self.running = False
            await self.runner.cleanup()

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        """A JSON answer of the API, asked from outside the page (as another client)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with (
            aiohttp.ClientSession() as client,
            client.request(method, self.url + path, headers=headers, json=body) as response,
        ):
            return await response.json()


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    """Starts servers on free ports (recordings in ``tmp_path``), admission by load off as
    in every server the tests start (``server_support.NO_LOAD_LIMITS``); all stopped at
    the end."""
    servers: list[Server] = []

    async def start(**settings: Any) -> Server:
        folder = tmp_path / f"recordings-{len(servers)}"
        runner = web.AppRunner(
            create_app(Settings(recordings=folder, **{**NO_LOAD_LIMITS, **settings}))
        )
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        server = Server(runner, f"http://127.0.0.1:{port}", folder, settings.get("token"))
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium with fake camera and microphone."""
    async with launched_chromium() as browser:
        yield browser


PageErrors = list[str]


async def new_page(browser: Browser, errors: PageErrors, width: int = 1280) -> Page:
    """A page in a context of its own; its uncaught JavaScript errors go to ``errors``."""
    context = await browser.new_context(viewport={"width": width, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return page


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh page; an uncaught JavaScript error fails the test."""
    errors: PageErrors = []
    page = await new_page(browser, errors)
    yield page
    await page.context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
