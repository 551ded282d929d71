"""The page's room mode in real browsers: three pages of Debian's Chromium (fake camera and
microphone) join one room on the server running in this process, see and hear each other
through it (WHEP), record the room with a pause and make its composite, with nothing
mocked. Every file is checked by an independent decoder (FFmpeg) and the manifest by its
schema."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import av
import pytest
from playwright.async_api import Browser, Page, expect

from rtc_recorder.compose.layout import grid_cells

from .chromium import click, click_timed, expect_state, recorded_seconds, wait_recorded
from .media import duration, ffmpeg_errors, probe
from .page_support import ARTIFACTS, PageErrors, Server, browser, new_page, serve
from .room_support import valid_manifest

__all__ = ["browser", "serve"]  # fixtures the tests take

# Three browsers joining, a recording, and a composite, on two cores shared with others.
pytestmark = pytest.mark.timeout(300)

ROOM = "standup"
NAMES = ("Ada", "Bob", "Cy")
PAUSE = 1.5  # seconds the room recording is paused for
# A server taking sessions one by one may ask a new one to wait for a few seconds.
JOIN_TIMEOUT_MS = 45_000
COMPOSE_TIMEOUT_MS = 120_000  # a composite of a few seconds, on a busy two-core machine
# A small camera for every page (three encoders and six decoders share two cores).
SMALL_CAMERA = """
(() => {
  const original = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = (constraints) =>
    original({ ...constraints, video: { width: 320, height: 180, frameRate: 15 } });
})();
"""
# "joined", or what the page says went wrong.
JOINED_OR_FAILED = """
() => document.querySelector("#link").dataset.state === "joined" ? "joined"
  : !document.querySelector("#error").hidden && document.querySelector("#error-text").textContent
"""
# Each other participant's video plays with frames and time advancing beyond `since`
# (per session), and their sound moves the tile's level meter.
REMOTE_VIDEO_PLAYS = """
([count, since]) => {
  const tiles = [...document.querySelectorAll('[data-testid="participant-tile"]')];
  if (tiles.length !== count) return false;
  const now = {};
  for (const tile of tiles) {
    const video = tile.querySelector("video");
    if (video.readyState < 2 || video.videoWidth === 0) return false;
    const frames = video.getVideoPlaybackQuality().totalVideoFrames;
    const before = since[tile.dataset.session];
    if (before && (frames <= before.frames + 5 || video.currentTime <= before.time + 0.3)) {
      return false;
    }
    now[tile.dataset.session] = { frames, time: video.currentTime };
  }
  return now;
}
"""
# Each other participant's sound is heard: their tile's level meter (WebAudio on the
# received stream) goes above `loud` and takes several values (it follows the beeps).
SOUND_MOVES = """
(loud) => {
  const seen = (window.levelsSeen = window.levelsSeen || {});
  const meters = [...document.querySelectorAll('[data-testid="participant-tile"]')];
  return meters.length > 0 && meters.every((tile) => {
    const level = Number(tile.querySelector("canvas").dataset.level);
    const levels = (seen[tile.dataset.session] = seen[tile.dataset.session] || new Set());
    levels.add(level);
    return Math.max(...levels) >= loud && levels.size >= 4;
  });
}
"""
# Every value the composite's progress bar takes, kept from before the button is pressed.
WATCH_PROGRESS = """
(name) => {
  window.composeProgress = [];
  new MutationObserver(() => {
    const box = document.querySelector(`li[data-name="${name}"] .compose`);
    if (box && box.dataset.progress) window.composeProgress.push(Number(box.dataset.progress));
  }).observe(document.querySelector("#recordings"), {
    subtree: true, attributes: true, attributeFilter: ["data-progress"],
  });
}
"""


async def join(browser: Browser, errors: PageErrors, server: Server, name: str) -> Page:
    """A page that joined the room as ``name``."""
    page = await new_page(browser, errors, width=1100)
    await page.add_init_script(SMALL_CAMERA)
    await page.goto(f"{server.url}/static/room.html?room={ROOM}")
    await expect(page.get_by_label("Room", exact=True)).to_have_value(ROOM)
    await page.get_by_label("Your name").fill(name)
    await page.get_by_role("button", name="Join", exact=True).click()
    outcome = await page.wait_for_function(JOINED_OR_FAILED, timeout=JOIN_TIMEOUT_MS)
    assert await outcome.json_value() == "joined", await outcome.json_value()
    return page


async def sees_and_hears_the_others(page: Page) -> None:
    """The two others' video plays (its frames and time advance) and their sound moves
    the level meters of their tiles."""
    first = await page.wait_for_function(REMOTE_VIDEO_PLAYS, arg=[2, {}])
    await page.wait_for_function(REMOTE_VIDEO_PLAYS, arg=[2, await first.json_value()])
    await page.wait_for_function(SOUND_MOVES, arg=0.3, polling=100)


async def on_all(pages: list[Page], step: Callable[[Page], Awaitable[None]]) -> None:
    await asyncio.gather(*(step(page) for page in pages))


@dataclass
class CellMotion:
    """How the middle of one grid cell of the composite looked over a second of it."""

    brightest: float  # the highest mean
    darkest: float  # the lowest mean
    spread: float  # the highest standard deviation

    @property
    def camera(self) -> bool:
        """A camera's moving picture, not a flat colour, black or a frozen frame."""
        return self.brightest > 20 and self.spread > 10 and self.brightest - self.darkest > 5


def cell_motion(path: Path, start: float, end: float, count: int) -> list[CellMotion]:
    """Each of the ``count`` grid cells of the composite's pictures from ``start`` to
    ``end`` seconds. Chromium's fake camera cycles through bright and dark pictures, so a
    single picture can be dark in a cell that shows a camera: the second is judged."""
    means: list[list[float]] = [[] for _ in range(count)]
    spreads: list[list[float]] = [[] for _ in range(count)]
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            time = frame.time or 0.0
            if time < start:
                continue
            if time > end:
                break
            picture = frame.to_ndarray(format="gray")
            height, width = picture.shape
            for index, cell in enumerate(grid_cells(count, width, height, max(2, height // 90))):
                middle = picture[
                    cell.y + cell.height // 4 : cell.y + 3 * cell.height // 4,
                    cell.x + cell.width // 4 : cell.x + 3 * cell.width // 4,
                ]
                means[index].append(float(middle.mean()))
                spreads[index].append(float(middle.std()))
    assert means[0], f"no picture from {start} to {end} s"
    return [
        CellMotion(max(mean), min(mean), max(spread))
        for mean, spread in zip(means, spreads, strict=True)
    ]


async def test_three_pages_call_record_and_compose_a_room(
    serve: Callable[..., Awaitable[Server]], browser: Browser
) -> None:
    server = await serve()
    errors: PageErrors = []
    pages = [await join(browser, errors, server, name) for name in NAMES]

    # Everyone is listed everywhere, and sees and hears the two others.
    for page in pages:
        people = page.locator('[data-testid="participant"] .person-name')
        await expect(people).to_have_count(3)
        assert sorted(await people.all_inner_texts()) == sorted(NAMES)
    await on_all(pages, sees_and_hears_the_others)

    # Ada records the room, with a pause; every page follows the recording's state.
    ada = pages[0]
    await click(ada, "Start")
    await on_all(pages, lambda page: expect_state(page, "recording"))
    await wait_recorded(ada, 3.0)
    paused = await click_timed(ada, "Pause", "pause")
    await on_all(pages, lambda page: expect_state(page, "paused"))
    frozen = await recorded_seconds(ada)
    await asyncio.sleep(PAUSE)  # the pause itself
    assert await recorded_seconds(ada) == frozen
    resumed = await click_timed(ada, "Resume", "resume")
    await on_all(pages, lambda page: expect_state(page, "recording"))
    await wait_recorded(ada, frozen + 3.0)
    await click(ada, "Stop")
    await on_all(pages, lambda page: expect_state(page, "inactive"))
    recorded = await recorded_seconds(ada)

    # The recording is listed once, in every page, with its participants and files.
    listing = [entry for entry in await server.api("GET", "/api/recordings") if entry["room"]]
    assert len(listing) == 1 and listing[0]["room"] == ROOM, listing
    entry = listing[0]
    name = entry["name"]
    for page in pages:
        row = page.locator(f'[data-testid="room-recording"][data-name="{name}"]')
        await expect(row).to_have_attribute("data-state", "complete")
        people = row.locator('[data-testid="recording-participant"]')
        assert sorted(await people.all_inner_texts()) == sorted(NAMES)
        links = row.locator("a.rec-download")
        await expect(links).to_have_count(len(entry["files"]))
        await expect(row.locator("audio.rec-mix")).to_have_count(1)

    # The mix plays in the page; each file downloads.
    row = ada.locator(f'[data-testid="room-recording"][data-name="{name}"]')
    mix = row.locator("audio.rec-mix")
    await mix.evaluate("audio => audio.play()")
    await ada.wait_for_function(
        "audio => audio.readyState >= 2 && audio.duration > 0 && audio.currentTime > 0.3",
        arg=await mix.element_handle(),
    )
    for file in entry["files"]:
        href = await row.get_by_label(f"Download {file} of {name}").get_attribute("href")
        download = await ada.request.get(server.url + str(href))
        assert download.ok and "attachment" in download.headers["content-disposition"], file
    ARTIFACTS.mkdir(exist_ok=True)
    await ada.screenshot(path=str(ARTIFACTS / "room-page.png"), full_page=True)

    # The files: the manifest valid, every participant's file and the mix decoded cleanly.
    folder = server.folder / name
    manifest = valid_manifest(await server.api("GET", f"/recordings/{name}/manifest.json"))
    assert manifest["state"] == "finalized"
    assert sorted(p["name"] for p in manifest["participants"]) == sorted(NAMES)
    assert abs(manifest["duration"] - recorded) < 0.5, (manifest["duration"], recorded)
    assert len(manifest["cuts"]) == 1, manifest["cuts"]
    assert abs(manifest["cuts"][0]["removed"] - (resumed - paused)) < 0.3, (
        manifest["cuts"],
        resumed - paused,
    )
    # Chromium's fake camera stamps its frames as a busy machine lets it (jitter over half
    # a frame), and the files keep those stamps: FFmpeg's constant-rate null output may then
    # put two frames on one tick, so each is decoded with variable-rate output (README,
    # Timing). The mix is the server's own and decodes cleanly as it is.
    for entry in manifest["participants"]:
        path = folder / entry["file"]
        assert not await asyncio.to_thread(ffmpeg_errors, path, "-vsync", "vfr"), entry
    assert not await asyncio.to_thread(ffmpeg_errors, folder / manifest["mix"])

    # The composite, from the page's button: its progress shows, then its link.
    await ada.evaluate(WATCH_PROGRESS, name)
    await row.get_by_role("button", name=f"Composite {name}").click()
    box = row.locator(".compose")
    await expect(box).to_have_attribute("data-state", "done", timeout=COMPOSE_TIMEOUT_MS)
    shown = await ada.evaluate("() => window.composeProgress")
    assert shown[-1] == 1 and any(0 < value < 1 for value in shown), shown
    output = await box.locator("a.compose-output").get_attribute("href")
    assert output == f"/recordings/{name}/composite-grid.mp4", output

    # Everyone is still in the call, and leaves it.
    for page in pages:
        still = await (await page.wait_for_function(JOINED_OR_FAILED)).json_value()
        assert still == "joined", still
        await page.get_by_role("button", name="Leave", exact=True).click()
        await expect(page.locator("#link")).to_have_attribute("data-state", "idle")
        await expect(page.locator('[data-testid="participant-tile"]')).to_have_count(0)
    assert await server.api("GET", "/api/sessions") == []
    for page in pages:
        await page.context.close()
    assert not errors, f"JavaScript errors on the pages: {errors}"

    # The composite, decoded once the call is over (this process is the server too).
    composite = folder / "composite-grid.mp4"
    assert not await asyncio.to_thread(ffmpeg_errors, composite)
    length = duration(await asyncio.to_thread(probe, composite))
    assert abs(length - manifest["duration"]) < 0.15, (length, manifest["duration"])
    # While everyone's file has pictures (each begins on its first keyframe), each of the
    # three cells shows a camera's moving picture (not one flat colour, not black, not
    # frozen) in the second after the first keyframes and in the last second.
    first = max(entry["start"] for entry in manifest["participants"]) + 0.5
    last = min(entry["end"] for entry in manifest["participants"]) - 0.5
    assert first + 1 < manifest["cuts"][0]["at"] < last - 1, manifest
    for start, end in ((first, first + 1), (last - 1, last)):
        cells = await asyncio.to_thread(cell_motion, composite, start, end, 3)
        assert all(cell.camera for cell in cells), (start, end, cells)
