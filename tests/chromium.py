"""Debian's Chromium driven by Playwright, and the page's controls as a person uses them.

Chromium runs headless with fake camera and microphone (or file-fed ones: add
:func:`tests.browser_media.fake_capture_args`), without background networking, and with
host candidates on 127.0.0.1 (``--allow-loopback-in-peer-connection``) so ICE works on a
machine with no other interface.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from playwright.async_api import Browser, Page, async_playwright, expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--allow-loopback-in-peer-connection",
]
TIMEOUT_MS = 15_000
BUTTONS = {
    "connect": "Connect",
    "start": "Start",
    "pause": "Pause",
    "resume": "Resume",
    "stop": "Stop",
    "hangup": "Hang up",
}

expect.set_options(timeout=TIMEOUT_MS)


@asynccontextmanager
async def launched_chromium(*extra_args: str) -> AsyncIterator[Browser]:
    """Headless Chromium with the flags above and ``extra_args``; closed on exit."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args], headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


async def expect_buttons(page: Page, *enabled: str) -> None:
    """Exactly the buttons ``enabled`` are enabled (each waited for)."""
    for button_id in BUTTONS:
        button = page.locator(f"#{button_id}")
        if button_id in enabled:
            await expect(button).to_be_enabled()
        else:
            await expect(button).to_be_disabled()


async def expect_state(page: Page, state: str) -> None:
    """The page shows the recorder ``state``."""
    await expect(page.locator("#state")).to_have_attribute("data-state", state)
    await expect(page.locator("#state")).to_have_text(state.capitalize())


async def click(page: Page, label: str) -> None:
    """Clicks the button labelled ``label``."""
    await page.get_by_role("button", name=label, exact=True).click()


async def click_timed(page: Page, label: str, method: str) -> float:
    """Clicks ``label`` and returns when (seconds, the browser's clock) the server carried
    out ``method``: the middle of its request, between sending and the first byte back."""
    async with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.endswith(f"/{method}")
    ) as answer:
        await click(page, label)
    response = await answer.value
    assert response.ok, await response.text()
    timing = response.request.timing
    sent = max(timing["requestStart"], 0.0)
    return (timing["startTime"] + (sent + timing["responseStart"]) / 2) / 1000


async def wait_recorded(page: Page, seconds: float) -> None:
    """Until the page's recorded-time clock shows ``seconds``."""
    await page.wait_for_function(
        "s => Number(document.querySelector('#elapsed').dataset.seconds) >= s", arg=seconds
    )


async def recorded_seconds(page: Page) -> float:
    """What the page's recorded-time clock shows."""
    return float(await page.locator("#elapsed").get_attribute("data-seconds") or 0)


async def connect(page: Page) -> None:
    """Connect, and wait until the page is connected to the server."""
    await click(page, "Connect")
    await expect(page.locator("#link")).to_have_attribute("data-state", "connected")
    await expect_buttons(page, "start", "hangup")
