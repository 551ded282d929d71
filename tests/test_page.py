"""The page in a real browser: Debian's Chromium (fake camera and microphone) against the
server running in this process, over real WebRTC, with nothing mocked.

The server's aiortc only offers 127.0.0.1 (see ``conftest.loopback_only``); Chromium offers
its host addresses (the loopback interface too, with ``--allow-loopback-in-peer-connection``),
and every pair stays on this machine.
"""

from __future__ import annotations

import asyncio
import re
import wave
from collections.abc import Awaitable, Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from playwright.async_api import Page, expect

from rtc_recorder.timing import EARLY_KEYFRAME

from .chromium import (
    BUTTONS,
    click,
    click_timed,
    connect,
    expect_buttons,
    expect_state,
    recorded_seconds,
    wait_recorded,
)
from .page_support import ARTIFACTS, Server, browser, page, serve

__all__ = ["browser", "page", "serve"]  # fixtures the tests take

TOKEN_KEY = "rtc-recorder.token"


# -- helpers --------------------------------------------------------------------------------


async def record_briefly(page: Page) -> str:
    """Start, wait for media in the file, stop; the recording's name once it is listed."""
    await click(page, "Start")
    await expect_state(page, "recording")
    await expect(page.locator("#written")).not_to_have_text(re.compile(r"^(—|0 B)$"))
    name = await page.locator("#current-file").inner_text()
    await click(page, "Stop")
    await expect_state(page, "inactive")
    row = page.locator(f'#recordings [data-testid="recording"][data-name="{name}"]')
    await expect(row).to_have_attribute("data-state", "complete")
    return name


def decode(path: Path) -> tuple[float, dict[str, int]]:
    """The file's duration and the frames of each kind, every packet decoded with PyAV."""
    frames: dict[str, int] = {}
    with av.open(str(path)) as container:
        assert container.duration is not None, "no duration in the file"
        duration = float(Fraction(container.duration, av.time_base))
        for frame in container.decode(*container.streams):
            kind = "video" if isinstance(frame, av.VideoFrame) else "audio"
            frames[kind] = frames.get(kind, 0) + 1
    return duration, frames


async def expect_playable(page: Page, name: str) -> dict[str, Any]:
    """Plays ``name`` in the page's player; what the player reports once it plays."""
    await page.get_by_role("button", name=f"Play {name}", exact=True).click()
    player = page.locator("#player")
    await expect(player).to_have_attribute("data-name", name)
    handle = await page.wait_for_function(
        """() => {
            const p = document.querySelector('#player');
            return p.readyState >= 2 && p.duration > 0 && p.currentTime > 0.2 && {
                tag: p.tagName, readyState: p.readyState, duration: p.duration, src: p.src,
            };
        }"""
    )
    return await handle.json_value()


# -- the contract's scenario ----------------------------------------------------------------


async def test_record_pause_resume_stop_then_play(
    serve: Callable[..., Awaitable[Server]], page: Page
) -> None:
    server = await serve()
    await page.goto(server.url)
    for button_id, label in BUTTONS.items():
        await expect(page.locator(f"#{button_id}")).to_have_text(label)
    await expect(page.locator("#recordings-empty")).to_be_visible()
    await expect_state(page, "inactive")
    await expect_buttons(page, "connect")

    await connect(page)
    preview = page.locator("#preview")
    assert await preview.evaluate("v => v.muted && v.playsInline")
    await page.wait_for_function(
        "() => { const v = document.querySelector('#preview'); "
        "return v.readyState >= 2 && v.videoWidth > 0; }"
    )
    # The level meter follows the (fake) microphone's beeps.
    await page.wait_for_function("() => Number(document.querySelector('#meter').dataset.level) > 0")

    started = await click_timed(page, "Start", "start")
    await expect_state(page, "recording")
    await expect_buttons(page, "pause", "stop", "hangup")
    await expect(page.locator("#written")).not_to_have_text(re.compile(r"^(—|0 B)$"))
    await wait_recorded(page, 1.5)

    paused = await click_timed(page, "Pause", "pause")
    await expect_state(page, "paused")
    await expect_buttons(page, "resume", "stop", "hangup")
    frozen = await page.locator("#elapsed").inner_text()
    await asyncio.sleep(2)  # the contract's pause
    await expect(page.locator("#elapsed")).to_have_text(frozen)

    resumed = await click_timed(page, "Resume", "resume")
    await expect_state(page, "recording")
    await expect_buttons(page, "pause", "stop", "hangup")
    await wait_recorded(page, await recorded_seconds(page) + 1.5)

    stopped = await click_timed(page, "Stop", "stop")
    await expect_state(page, "inactive")
    await expect_buttons(page, "start", "hangup")
    recorded = (paused - started) + (stopped - resumed)

    # Listed in the page once the server finalized it (the stop event refreshes the list).
    rows = page.locator('#recordings [data-testid="recording"]')
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-state", "complete")
    name = await rows.first.get_attribute("data-name")
    assert name
    listing = await server.api("GET", "/api/recordings")
    assert [entry["name"] for entry in listing] == [name]
    entry = listing[0]
    minutes, seconds = divmod(int(entry["duration"] + 0.5), 60)
    await expect(rows.first.locator(".rec-duration dd")).to_have_text(f"{minutes}:{seconds:02d}")
    await expect(rows.first.locator(".rec-size dd")).to_have_text(
        re.compile(r"^\d+(\.\d)? (KB|MB)$")
    )
    await expect(rows.first.locator(".rec-type dd")).to_have_text("WebM · VP8 + Opus")

    duration, frames = await asyncio.to_thread(decode, server.folder / name)
    assert frames.get("video", 0) > 0 and frames.get("audio", 0) > 0, frames
    # The file lasts what the server says it recorded: the time between the clicks, the
    # pause excluded, and what a start or resume gave back where Chromium's keyframe that
    # answered it showed a picture taken before it (its encoder working through a queue on
    # a busy machine: up to EARLY_KEYFRAME each, as recordedTime shows).
    (said,) = [session["recordedSeconds"] for session in await server.api("GET", "/api/sessions")]
    assert abs(duration - said) <= 0.15, (duration, said)
    assert -0.25 <= said - recorded <= 0.25 + 2 * EARLY_KEYFRAME, (
        f"the server recorded {said:.3f} s, {recorded:.3f} s between the clicks (pause excluded)"
    )

    played = await expect_playable(page, name)
    assert played["tag"] == "VIDEO"
    assert abs(played["duration"] - duration) < 0.3, played
    download = page.locator(f'#recordings [data-name="{name}"] a.rec-download')
    assert (await download.get_attribute("href")) == f"/recordings/{name}?download=1"
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)

    await click(page, "Hang up")
    await expect(page.locator("#link")).to_have_attribute("data-state", "idle")
    await expect_buttons(page, "connect")
    assert await preview.evaluate("v => v.srcObject === null")
    assert await server.api("GET", "/api/sessions") == []


# -- choices from /api/config -------------------------------------------------------------


async def test_choices_come_from_the_config(
    serve: Callable[..., Awaitable[Server]], page: Page
) -> None:
    server = await serve(mime_type="video/mp4;codecs=avc1,opus", timeslice=1500)
    config = await server.api("GET", "/api/config")
    await page.goto(server.url)

    mime = page.locator("#mime-type")
    await expect(mime).to_have_value("video/mp4;codecs=avc1,opus")
    values = await mime.locator("option").evaluate_all("options => options.map(o => o.value)")
    assert sorted(values) == sorted(config["mimeTypes"])
    timeslice = page.locator("#timeslice")
    await expect(timeslice).to_have_value("1500")
    slices = await timeslice.locator("option").evaluate_all("options => options.map(o => o.value)")
    assert slices == ["250", "500", "1000", "1500", "2000", "5000"]
    await expect(page.get_by_label("Format")).to_be_enabled()

    # What is chosen is what Start asks for, and what gets recorded. Double clicks on
    # Connect and Start send one request each.
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    await mime.select_option("audio/webm;codecs=opus")
    await timeslice.select_option("500")
    await page.get_by_role("button", name="Connect", exact=True).dblclick()
    await expect(page.locator("#link")).to_have_attribute("data-state", "connected")
    await expect_buttons(page, "start", "hangup")
    async with page.expect_request(lambda r: r.url.endswith("/start")) as request:
        await page.get_by_role("button", name="Start", exact=True).dblclick()
    assert (await request.value).post_data_json == {
        "mimeType": "audio/webm;codecs=opus",
        "timeslice": 500,
    }
    await expect_state(page, "recording")
    await expect(mime).to_be_disabled()
    await expect(page.locator("#written")).not_to_have_text(re.compile(r"^(—|0 B)$"))
    name = await page.locator("#current-file").inner_text()
    await click(page, "Stop")
    row = page.locator(f'#recordings [data-name="{name}"]')
    await expect(row).to_have_attribute("data-state", "complete")
    await expect(row.locator(".rec-type dd")).to_have_text("WebM audio · Opus")
    assert name.endswith(".webm")
    played = await expect_playable(page, name)
    assert played["tag"] == "AUDIO"
    assert [url.rsplit("/", 1)[1] for url in posts] == ["offer", "start", "stop"]
    assert len(await server.api("GET", "/api/recordings")) == 1
    await click(page, "Hang up")
    await expect_buttons(page, "connect")


# -- a token-protected server ---------------------------------------------------------------


async def test_token_is_asked_for_stored_and_used(
    serve: Callable[..., Awaitable[Server]], page: Page
) -> None:
    token = "correct-horse-battery"
    server = await serve(token=token)
    await page.goto(server.url)

    form = page.locator("#token-form")
    await expect(form).to_be_visible()
    await page.get_by_label("Access token").fill("wrong-token")
    await page.get_by_role("button", name="Use token").click()
    await expect(form).to_be_visible()
    await expect(page.locator("#token-help")).to_contain_text("not accepted")
    assert await page.evaluate("k => localStorage.getItem(k)", TOKEN_KEY) is None

    await page.get_by_label("Access token").fill(token)
    await page.get_by_role("button", name="Use token").click()
    await expect(form).to_be_hidden()
    await expect(page.locator("#mime-type")).to_have_value("video/webm;codecs=vp8,opus")
    assert await page.evaluate("k => localStorage.getItem(k)", TOKEN_KEY) == token

    # Remembered: a new visit does not ask again.
    await page.reload()
    await expect(page.locator("#mime-type")).to_have_value("video/webm;codecs=vp8,opus")
    await expect(form).to_be_hidden()

    await connect(page)  # /offer with the header, the events WebSocket with ?token=
    name = await record_briefly(page)
    played = await expect_playable(page, name)
    assert played["src"].endswith(f"/recordings/{name}?token={token}")
    href = await page.locator(f'#recordings [data-name="{name}"] a.rec-download').get_attribute(
        "href"
    )
    assert href == f"/recordings/{name}?download=1&token={token}"
    download = await page.request.get(server.url + href)
    assert download.ok and "attachment" in download.headers["content-disposition"]
    await click(page, "Hang up")
    await expect_buttons(page, "connect")
    await expect(page.locator("#error")).to_be_hidden()


# -- errors in plain words ------------------------------------------------------------------


def write_tone(path: Path, seconds: float = 0.5, rate: int = 8000) -> None:
    """A small WAV file, as if copied into the recordings folder by hand."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\x00\x10" * int(seconds * rate))


async def test_errors_are_shown_in_plain_words(
    serve: Callable[..., Awaitable[Server]], page: Page
) -> None:
    server = await serve()
    write_tone(server.folder / "old.wav")
    await page.goto(server.url)
    error = page.locator("#error")
    await expect(error).to_be_hidden()
    row = page.locator('#recordings [data-name="old.wav"]')
    await expect(row).to_be_visible()

    # A 404 from the server (someone else deleted the file): its message, with context.
    (server.folder / "old.wav").unlink()
    await row.get_by_role("button", name="Delete old.wav").click()
    await expect(row.locator(".rec-delete")).to_have_text("Confirm delete")
    await row.get_by_role("button", name="Delete old.wav").click()
    await expect(error).to_be_visible()
    await expect(page.locator("#error-text")).to_have_text(
        "Could not delete the recording: No such recording."
    )
    await expect(page.locator("#recordings-empty")).to_be_visible()
    assert await error.get_attribute("role") == "alert"

    # The server stops during a call: the page says so and goes back to the start.
    await connect(page)
    await expect(error).to_be_hidden()
    await server.stop()
    await expect(page.locator("#error-text")).to_have_text(
        "The server is shutting down, so the call has ended."
    )
    await expect(page.locator("#link")).to_have_attribute("data-state", "idle")
    await expect_buttons(page, "connect")

    # ...and cannot be reached any more.
    await click(page, "Connect")
    await expect(page.locator("#error-text")).to_have_text(
        "The server could not be reached. Check that it is running, then try again."
    )
    await expect_buttons(page, "connect")
    assert await page.locator("#preview").evaluate("v => v.srcObject === null")
