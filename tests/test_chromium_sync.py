"""Lip sync of a real browser's media through the server, against the browser's own
recording of the same source in the same run.

Chromium publishes a file-fed camera and microphone (a white flash and a beep at every
whole second, frame numbers in the picture: see :mod:`tests.browser_media`) through the
page to ``rtc-recorder serve``, which records with pauses from the page's controls. At
the same time the browser's own ``MediaRecorder`` records the very stream the page sends
(the preview's ``srcObject``), without pauses. The browser's recording is the reference:
its flash→beep offset is where Chromium's own clocks put the sound against the picture,
after capture and audio processing, and the server's recording must keep it, before and
after every pause. (The browser's recorder is not paused: Chromium's own pause handling
moves its offset by a few milliseconds, which would blur the reference.)

The comparison is flash by flash: each flash is known by its source frame number in
both files. Chromium's file-fed devices do not hold their own A/V phase on a busy
machine (at a load average of 4-5 the browser's own recording moved by 20-40 ms within
one run, and the server's recording moved with it, flash for flash), so what is held to
10 ms across the pauses is the server's offset *relative to the browser's for the same
flash*; on a quiet machine, where the browser's offset holds within a millisecond or
two, that is the server's offset itself.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

from playwright.async_api import Page, expect

from .browser_media import SyncTrace, describe_segments, fake_capture_args, trace_recording
from .chromium import (
    TIMEOUT_MS,
    click_timed,
    connect,
    expect_state,
    launched_chromium,
    recorded_seconds,
    wait_recorded,
)
from .media import ffmpeg_errors
from .server_support import server_process

PAUSES = 3
PAUSE_SECONDS = 2.0  # how long each pause lasts: the test's input
RECORD_SECONDS = 2.2  # recorded before, between and after the pauses (two flashes each)
SPREAD_LIMIT = 0.010  # the server's offsets, less the browser's, agree within this...
BROWSER_LIMIT = 0.020  # ...and each is the browser's within this
CUT_LIMIT = 0.070  # a cut removes the pause's length within two frame intervals
KEYFRAME_WAIT_LIMIT = 0.200  # output time from the last frame before a cut to the next

# The browser's own MediaRecorder on the stream the page previews (and sends).
START_LOCAL_RECORDER = """() => new Promise((resolve, reject) => {
    const stream = document.querySelector('#preview').srcObject;
    const recorder = new MediaRecorder(stream, {
        mimeType: 'video/webm;codecs=vp8,opus', videoBitsPerSecond: 1000000,
    });
    window.localRecording = { recorder, chunks: [] };
    recorder.ondataavailable = (event) => window.localRecording.chunks.push(event.data);
    recorder.onstart = () => resolve(Date.now() / 1000);
    recorder.onerror = (event) => reject(String(event.error));
    recorder.start(1000);
})"""
STOP_LOCAL_RECORDER = """() => new Promise((resolve) => {
    const { recorder, chunks } = window.localRecording;
    recorder.onstop = async () => {
        const bytes = new Uint8Array(await new Blob(chunks).arrayBuffer());
        let text = '';
        for (let i = 0; i < bytes.length; i += 8192) {
            text += String.fromCharCode(...bytes.subarray(i, i + 8192));
        }
        resolve(btoa(text));
    };
    recorder.stop();
})"""


async def record_with_pauses(page: Page) -> tuple[float, list[tuple[float, float]]]:
    """Starts the browser's own recorder, then with the page's buttons: Start, then Pause
    and Resume :data:`PAUSES` times. Returns when the browser's recorder started, and
    when the server carried out each pause and its resume (seconds, the browser's
    wall clock)."""
    pauses = []
    local_start = await page.evaluate(START_LOCAL_RECORDER)
    await click_timed(page, "Start", "start")
    await expect_state(page, "recording")
    for _ in range(PAUSES):
        await wait_recorded(page, await recorded_seconds(page) + RECORD_SECONDS)
        paused = await click_timed(page, "Pause", "pause")
        await expect_state(page, "paused")
        await asyncio.sleep(PAUSE_SECONDS)
        resumed = await click_timed(page, "Resume", "resume")
        await expect_state(page, "recording")
        pauses.append((paused, resumed))
    await wait_recorded(page, await recorded_seconds(page) + RECORD_SECONDS)
    return local_start, pauses


async def stop_both(page: Page, recordings: Path) -> tuple[Path, Path]:
    """Stops the server's recording and the browser's; both files once complete."""
    name = await page.locator("#current-file").inner_text()
    await click_timed(page, "Stop", "stop")
    await expect_state(page, "inactive")
    row = page.locator(f'#recordings [data-testid="recording"][data-name="{name}"]')
    await expect(row).to_have_attribute("data-state", "complete")
    local = recordings.parent / "browser.webm"
    local.write_bytes(base64.b64decode(await page.evaluate(STOP_LOCAL_RECORDER)))
    return recordings / name, local


def spread(values: list[float]) -> float:
    return max(values) - min(values)


def chromium_decode_errors(ffmpeg_said: str) -> list[str]:
    """What ffmpeg said about a file of Chromium's own MediaRecorder, less the one
    complaint its timestamps earn by design: Chromium stamps each video frame with the
    instant it was delivered (±15 ms around the frame grid), and ffmpeg's null muxer,
    which puts video on a 1/30 s grid, then sees two frames on one tick ("non
    monotonically increasing dts to muxer"). Every other message counts."""
    return [
        line
        for line in ffmpeg_said.splitlines()
        if "non monotonically increasing dts to muxer" not in line
    ]


async def test_server_recording_keeps_the_browsers_flash_to_beep_offset_across_pauses(
    tmp_path: Path,
) -> None:
    flags = await asyncio.to_thread(fake_capture_args, tmp_path)
    recordings = tmp_path / "recordings"
    async with (
        server_process(recordings) as (_, base),
        launched_chromium(*flags) as browser,
    ):
        page = await browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(base)
        await connect(page)
        local_start, pauses = await record_with_pauses(page)
        served, local = await stop_both(page, recordings)
        assert not errors, f"JavaScript errors on the page: {errors}"

    errors_served, errors_local = ffmpeg_errors(served), ffmpeg_errors(local)
    server: SyncTrace = await asyncio.to_thread(trace_recording, served)
    browser_trace: SyncTrace = await asyncio.to_thread(trace_recording, local)
    lengths = [resumed - paused for paused, resumed in pauses]
    # The browser's recording in stretches matching the server's segments (its own time:
    # seconds since its recorder started).
    edges = [local_start, *(t for pause in pauses for t in pause), float("inf")]
    windows = [(edges[i] - local_start, edges[i + 1] - local_start) for i in range(0, 8, 2)]
    print()
    print(describe_segments("browser", browser_trace, windows))
    print(describe_segments("server ", server, reference=browser_trace))
    print("pauses (server, browser clock):", ", ".join(f"{1000 * s:.0f} ms" for s in lengths))
    print("ffmpeg, server's file:", errors_served.splitlines()[:2] or "clean")
    print("ffmpeg, browser's file:", errors_local.splitlines()[:2] or "clean")

    assert not errors_served, errors_served
    assert not chromium_decode_errors(errors_local), errors_local

    # Each pause is cut out: frame numbers jump by the pause while output time goes on by
    # a frame interval, plus the frames that went by while video waited for the keyframe
    # asked for at resume (a round trip on loopback and an encode).
    cuts = server.cuts()
    assert len(cuts) == PAUSES, describe_segments("server", server)
    for cut, length in zip(cuts, lengths, strict=True):
        assert abs(cut.skipped - length) <= CUT_LIMIT, (cut, length)
        assert cut.advance <= KEYFRAME_WAIT_LIMIT, cut

    # Lip sync: every segment has flashes, and each flash's offset is the browser's for
    # the same flash, within 20 ms, and the same difference throughout within 10 ms.
    assert not browser_trace.cuts(), describe_segments("browser", browser_trace)
    report = describe_segments("server", server, reference=browser_trace)
    theirs = {flash.number: flash.offset for flash in browser_trace.offsets()}
    segments = server.segments()
    assert all(any(f.number in theirs for f in flashes) for flashes in segments), report
    differences = [f.offset - theirs[f.number] for s in segments for f in s if f.number in theirs]
    assert spread(differences) <= SPREAD_LIMIT, report
    assert all(abs(difference) <= BROWSER_LIMIT for difference in differences), report
