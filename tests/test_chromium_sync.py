"""Lip sync of a real browser's media through the server, against the instants Chromium's
own capture stamped on the same source in the same run.

Chromium publishes a file-fed camera and microphone (a white flash and a beep at every
whole second, frame numbers in the picture: see :mod:`tests.browser_media`) through the
page to ``rtc-recorder serve``, which records with pauses from the page's controls. At
the same time a tap in the page collects the capture timestamps of the very tracks the
page sends (:mod:`tests.chromium_capture`): for each source flash, the beep's stamp less
the flash's is where Chromium's capture put the sound against the picture. Chromium's
WebRTC sender states those same instants in its RTCP sender reports, and its own receiver
reads them back; the server's recording must keep them, before and after every pause.

Chromium's ``MediaRecorder`` also records the stream, without pauses; its file is decoded
and its offsets printed against the capture's, but it is no reference: its WebM/Opus
encoder stamps sound 40 ms late (and writes no Opus pre-skip: 6.5 ms more), so it puts
every beep 46-47 ms later than the capture did.

The comparison is flash by flash: each flash is known by its source frame number in
both, and each of the server's offsets is the capture's for the same flash within 20 ms
(on a quiet machine within about a millisecond). Across the pauses the server's offsets
hold within 10 ms of each other, beyond what Chromium's capture itself moved: its file-fed
devices do not hold their own A/V phase (at a load average of 4-10 the capture's offset
moves by tens, even hundreds of milliseconds within one run, and the server's recording
moves with it, flash for flash; on a quiet machine its microphone once slipped 10 ms
between two pauses). A camera's slip is in the video's timestamps at once; a
microphone's reaches the server with Chromium's next audio sender report, 2.5-7.5 s on,
and is followed from there at the slew's pace (:data:`rtc_recorder.timing.SLEW`).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from playwright.async_api import Page, expect

from rtc_recorder.timing import SLEW

from .browser_media import (
    Flash,
    SyncTrace,
    describe_segments,
    fake_capture_args,
    trace_recording,
)
from .chromium import (
    TIMEOUT_MS,
    click_timed,
    connect,
    expect_state,
    launched_chromium,
    recorded_seconds,
    wait_recorded,
)
from .chromium_capture import (
    BYTES_TO_BASE64,
    CaptureTap,
    ClockOffset,
    performance_offset,
    start_capture_tap,
    stop_capture_tap,
    trace_tap,
)
from .media import ffmpeg_errors
from .server_support import server_process

PAUSES = 3
PAUSE_SECONDS = 2.0  # how long each pause lasts: the test's input
RECORD_SECONDS = 2.2  # recorded before, between and after the pauses (two flashes each)
SPREAD_LIMIT = 0.010  # the server's offsets agree within this, beyond the capture's moves...
CAPTURE_LIMIT = 0.020  # ...and each is the capture's within this
CUT_LIMIT = 0.070  # a cut removes the pause's length within two frame intervals
KEYFRAME_WAIT_LIMIT = 0.200  # output time from the last frame before a cut to the next
# The microphone slip: Chromium's audio service stopped this long (seconds) misses three
# or four 10 ms buffers; the server has its next audio sender report (at most
# LATEST_REPORT seconds on) and the slew (0.5 %: 6 s for 30 ms) to follow, within the last
# FOLLOWED seconds recorded. On a starved machine the microphone goes on slipping (once
# 190 ms in 17 s), faster than the slew follows: the server is then held to having come
# as far as the slew reaches (FOLLOWED_REACH), not to the capture.
SLIP_SECONDS = 0.035
AFTER_SLIP_SECONDS = 17.0
SLIP_AT_LEAST = 0.020  # the capture's offset moved this much at least, or no slip was made
FOLLOWED = 2.5
LATEST_REPORT = 7.5
FOLLOWED_REACH = SLEW * (AFTER_SLIP_SECONDS - FOLLOWED - LATEST_REPORT)
FOLLOWED_LIMIT = 0.010  # the server's offsets then are the capture's within this

# What the page does between connecting and stopping: returns when the browser's own
# recorder started and the server's pauses (see record_with_pauses).
Scenario = Callable[[Page], Awaitable[tuple[float, list[tuple[float, float]]]]]

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
STOP_LOCAL_RECORDER = (
    """() => new Promise((resolve) => {
    const base64 = """
    + BYTES_TO_BASE64
    + """;
    const { recorder, chunks } = window.localRecording;
    recorder.onstop = async () => {
        resolve(base64(new Uint8Array(await new Blob(chunks).arrayBuffer())));
    };
    recorder.stop();
})"""
)


@dataclass(frozen=True)
class Run:
    """What the browser gave besides the server's recording: its own recording, the
    capture tap, the page's clock against this machine's, and the instants (the
    browser's wall clock) its recorder started and the server paused and resumed."""

    recording: Path
    tap: CaptureTap
    clock: ClockOffset
    local_start: float
    pauses: list[tuple[float, float]]


async def start_recording(page: Page) -> float:
    """Starts the capture tap, the browser's own recorder and, with the page's Start
    button, the server's recording; returns when the browser's recorder started (seconds,
    the browser's wall clock)."""
    await start_capture_tap(page)
    local_start: float = await page.evaluate(START_LOCAL_RECORDER)
    await click_timed(page, "Start", "start")
    await expect_state(page, "recording")
    return local_start


async def record_with_pauses(page: Page) -> tuple[float, list[tuple[float, float]]]:
    """Starts recording (:func:`start_recording`), then with the page's buttons Pauses
    and Resumes :data:`PAUSES` times. Returns when the browser's recorder started, and
    when the server carried out each pause and its resume (seconds, the browser's wall
    clock)."""
    pauses = []
    local_start = await start_recording(page)
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


def stop_audio_service(audio_file: str, seconds: float) -> None:
    """Stops the Chromium audio service that plays ``audio_file`` as its fake microphone
    (its command line names the file) for ``seconds``."""
    found = subprocess.run(
        ["pgrep", "-f", f"utility-sub-type=audio.mojom.AudioService .*{audio_file}"],
        capture_output=True,
        text=True,
        check=False,
    )
    pids = [int(pid) for pid in found.stdout.split()]
    assert len(pids) == 1, f"Chromium's audio service for {audio_file}: {pids}"
    os.kill(pids[0], signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pids[0], signal.SIGCONT)


async def record_with_a_microphone_slip(
    page: Page, audio_file: str
) -> tuple[float, list[tuple[float, float]]]:
    """Starts recording (:func:`start_recording`); once :data:`RECORD_SECONDS` are
    recorded, Chromium's audio service stops for :data:`SLIP_SECONDS` (its fake microphone
    misses as many 10 ms buffers, and goes on that much later against the camera), then
    recording goes on for :data:`AFTER_SLIP_SECONDS`. No pauses."""
    local_start = await start_recording(page)
    await wait_recorded(page, await recorded_seconds(page) + RECORD_SECONDS)
    await asyncio.to_thread(stop_audio_service, audio_file, SLIP_SECONDS)
    end = await recorded_seconds(page) + AFTER_SLIP_SECONDS
    while (now := await recorded_seconds(page)) < end:  # in steps the page's timeout allows
        await wait_recorded(page, min(end, now + RECORD_SECONDS))
    return local_start, []


async def stop_all(page: Page, recordings: Path) -> tuple[Path, Path, CaptureTap]:
    """Stops the server's recording, the browser's and the tap; both files once
    complete, and what the tap collected."""
    name = await page.locator("#current-file").inner_text()
    await click_timed(page, "Stop", "stop")
    await expect_state(page, "inactive")
    row = page.locator(f'#recordings [data-testid="recording"][data-name="{name}"]')
    await expect(row).to_have_attribute("data-state", "complete")
    local = recordings.parent / "browser.webm"
    local.write_bytes(base64.b64decode(await page.evaluate(STOP_LOCAL_RECORDER)))
    return recordings / name, local, await stop_capture_tap(page)


async def run_browser(
    recordings: Path, flags: list[str], scenario: Scenario = record_with_pauses
) -> tuple[Path, Run]:
    """The server records the page's camera and microphone as ``scenario`` has it, while
    the browser records them itself and taps their capture; the server's file and the
    rest."""
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
        local_start, pauses = await scenario(page)
        served, local, tap = await stop_all(page, recordings)
        clock = await performance_offset(page)
        assert not errors, f"JavaScript errors on the page: {errors}"
    return served, Run(local, tap, clock, local_start, pauses)


def spread(values: list[float]) -> float:
    return max(values) - min(values)


def paired(trace: SyncTrace, reference: SyncTrace) -> list[tuple[Flash, float]]:
    """Each flash of ``trace`` that ``reference`` has too, with the reference's offset for
    it (beeps paired as the reference's offsets expect)."""
    theirs = {flash.number: flash.offset for flash in reference.offsets()}
    return [(f, theirs[f.number]) for f in trace.offsets(theirs) if f.number in theirs]


def against(trace: SyncTrace, reference: SyncTrace) -> list[float]:
    """Each flash's offset in ``trace`` less the reference's for the same flash."""
    return [flash.offset - theirs for flash, theirs in paired(trace, reference)]


def describe_differences(name: str, differences: list[float]) -> str:
    if not differences:
        return f"{name}: no flash in common"
    mean = 1000 * sum(differences) / len(differences)
    return (
        f"{name}: mean {mean:+.1f} ms, from {1000 * min(differences):+.1f} "
        f"to {1000 * max(differences):+.1f} ({len(differences)} flashes)"
    )


def report(server: SyncTrace, capture: SyncTrace, browser: SyncTrace, run: Run) -> str:
    """Each trace by segment: the capture's and the browser recorder's in stretches
    matching the server's segments, the server's and the recorder's against the capture's
    for the same flash."""
    edges = [run.local_start, *(t for pause in run.pauses for t in pause), float("inf")]
    # The recorder's own time counts from its start; the capture's is this machine's
    # monotonic clock (the browser's wall clock is this machine's).
    recorder_windows = [
        (edges[i] - run.local_start, edges[i + 1] - run.local_start) for i in (0, 2, 4, 6)
    ]
    wall_to_monotonic = time.monotonic() - time.time()
    capture_windows = [
        (edges[i] + wall_to_monotonic, edges[i + 1] + wall_to_monotonic) for i in (0, 2, 4, 6)
    ]
    return "\n".join(
        [
            describe_segments("capture ", capture, capture_windows),
            describe_segments("server  ", server, reference=capture),
            describe_segments("recorder", browser, recorder_windows, reference=capture),
            describe_differences("server against the capture", against(server, capture)),
            describe_differences("recorder against the capture", against(browser, capture)),
            f"page clock against this machine's: within {1000 * run.clock.uncertainty:.1f} ms",
        ]
    )


async def test_server_recording_keeps_chromiums_captured_flash_to_beep_offset_across_pauses(
    tmp_path: Path,
) -> None:
    flags = await asyncio.to_thread(fake_capture_args, tmp_path)
    served, run = await run_browser(tmp_path / "recordings", flags)

    errors_served, errors_local = ffmpeg_errors(served), ffmpeg_errors(run.recording)
    decoding_served = ffmpeg_errors(served, "-vsync", "vfr")
    server: SyncTrace = await asyncio.to_thread(trace_recording, served)
    browser: SyncTrace = await asyncio.to_thread(trace_recording, run.recording)
    capture = trace_tap(run.tap, run.clock.seconds)
    lengths = [resumed - paused for paused, resumed in run.pauses]
    summary = report(server, capture, browser, run)
    print()
    print(summary)
    print("pauses (server, browser clock):", ", ".join(f"{1000 * s:.0f} ms" for s in lengths))
    print("ffmpeg, server's file:", errors_served.splitlines()[:2] or "clean")
    print("ffmpeg, browser's file:", errors_local.splitlines()[:2] or "clean")

    # Each pause is cut out: between the last frame before a cut and the first after it,
    # output time goes on by the pause's length less than capture time did (the tap's
    # stamps keep the real pace where a busy machine makes the file-fed camera fall
    # behind its frame numbers), and by little: a frame interval, plus the frames that
    # went by while video waited for the keyframe asked for at resume (a round trip on
    # loopback and an encode).
    cuts = server.cuts()
    assert len(cuts) == PAUSES, describe_segments("server", server)
    for cut, length in zip(cuts, lengths, strict=True):
        assert cut.before.number is not None and cut.after.number is not None
        captured = capture.time_of(cut.after.number) - capture.time_of(cut.before.number)
        assert abs(captured - cut.advance - length) <= CUT_LIMIT, (cut, captured, length)
        assert cut.advance <= KEYFRAME_WAIT_LIMIT, cut

    # Lip sync: every segment has flashes, and each flash's offset is the capture's for
    # the same flash, within 20 ms, and the same difference throughout within 10 ms.
    theirs = {flash.number: flash.offset for flash in capture.offsets()}
    segments = server.segments(expected=theirs)
    assert all(any(f.number in theirs for f in flashes) for flashes in segments), summary
    pairs = paired(server, capture)
    differences = [flash.offset - captured for flash, captured in pairs]
    moved = spread([flash.offset for flash, _ in pairs]) - spread([c for _, c in pairs])
    held = spread(differences) <= SPREAD_LIMIT  # moving with the capture, flash for flash
    steady = moved <= SPREAD_LIMIT  # or no more than it moved
    assert held or steady, summary
    assert all(abs(difference) <= CAPTURE_LIMIT for difference in differences), summary

    # The file decodes cleanly. Its video is timed as Chromium took it (the lip sync and
    # the cuts above hold to the capture stamps): Chromium's file-fed camera stamps frames
    # when a timer runs, ±15 ms on a busy machine, and where it stamps two frames within
    # one 1/30 s tick, FFmpeg's constant-rate handling of a null output puts them on one
    # and complains (of Chromium's own file too); its variable-rate handling does not.
    assert not decoding_served, decoding_served


async def test_server_recording_follows_chromiums_microphone_when_it_slips(
    tmp_path: Path,
) -> None:
    # Chromium's microphone slips (its audio service stalled: a busy machine does this to a
    # real one too) and goes on tens of milliseconds later against the camera; Chromium's
    # next audio sender report says so, and the server's recording follows it.
    flags = await asyncio.to_thread(fake_capture_args, tmp_path)
    microphone = str(tmp_path / "sync.wav")  # what fake_capture_args feeds it
    scenario = functools.partial(record_with_a_microphone_slip, audio_file=microphone)
    served, run = await run_browser(tmp_path / "recordings", flags, scenario)

    server: SyncTrace = await asyncio.to_thread(trace_recording, served)
    capture = trace_tap(run.tap, run.clock.seconds)
    pairs = paired(server, capture)
    summary = "\n".join(
        f"#{f.number} at {f.time:.1f} s: capture {1000 * captured:+.1f} ms, "
        f"server {1000 * f.offset:+.1f} ms ({1000 * (f.offset - captured):+.1f})"
        for f, captured in pairs
    )
    print()
    print(summary)
    assert len(pairs) >= 2, summary
    (first, captured_first), (last, captured_last) = pairs[0], pairs[-1]
    assert captured_last - captured_first >= SLIP_AT_LEAST, (
        f"Chromium's microphone did not slip:\n{summary}"
    )
    assert abs(first.offset - captured_first) <= CAPTURE_LIMIT, summary
    # In the last FOLLOWED seconds the server's offset has moved as the capture's did
    # since the first flash, as far as the slew reaches, within FOLLOWED_LIMIT.
    for flash, captured in pairs:
        if flash.time >= last.time - FOLLOWED:
            slipped = captured - captured_first
            lag = slipped - (flash.offset - first.offset)
            assert -FOLLOWED_LIMIT <= lag <= max(0, slipped - FOLLOWED_REACH) + FOLLOWED_LIMIT, (
                summary
            )
    errors = ffmpeg_errors(served, "-vsync", "vfr")
    assert not errors, errors
