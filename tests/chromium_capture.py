"""Chromium's own capture timestamps of a page's camera and microphone: the instants its
capture devices stamped on each video frame and each buffer of sound, read back with the
sync source's frame numbers, flashes and beeps (:mod:`tests.browser_media`).

These are the lip-sync reference. Chromium's WebRTC sender derives its RTP timestamps
and RTCP sender reports from exactly these stamps (measured on Chromium 156: sender
reports put each flash within 1 ms of its frame's stamp, and each beep within 1 ms of
its buffer's stamp once the Opus encoder's 6.5 ms look-ahead is counted), and Chromium's
receiver gives the same capture instant back for each remote frame (``captureTime`` of
``requestVideoFrameCallback``, within 2 ms). Chromium's ``MediaRecorder`` does not keep
them: its WebM/Opus encoder stamps each 60 ms Opus packet with the capture time of its
fifth 10 ms buffer, 40 ms late, and writes no Opus pre-skip (6.5 ms more), so its files
put sound 46.5 ms later against the picture than the capture did (its Matroska/PCM files
10 ms earlier, its MP4/Opus files 7 ms earlier).

A tap (``MediaStreamTrackProcessor`` on clones of the tracks a page shows in a media
element) collects each ``VideoFrame``'s timestamp with its luma subsampled (enough for
frame numbers and flashes) and each ``AudioData``'s timestamp with its first channel.
Chromium stamps the two on different clocks: a camera frame on the machine's monotonic
clock (``time.monotonic()`` here), a sound buffer on the page's ``performance.now()``.
:func:`performance_offset` relates the two; each kind's clock is recognised by when its
data reached the page (just after its timestamp, on the right clock).
"""

from __future__ import annotations

import base64
import math
import statistics
import time
from dataclasses import dataclass

import numpy as np
from playwright.async_api import Page

from .browser_media import Picture, SyncTrace, is_flash, read_frame_number
from .media import beep_onsets_in, contiguous_runs

SUBSAMPLE = 8  # every 8th pixel of every 8th row: 80x45 of 640x360 read the frame numbers
MAX_TAP_LATENCY = 1.0  # seconds from a stamp to the page; beyond it, not that clock
TAP_GAP = 0.002  # sound buffers further apart than this from contiguous: some were lost

# A JavaScript function: bytes (Uint8Array) to base64 text.
BYTES_TO_BASE64 = """(bytes) => {
    let text = '';
    for (let i = 0; i < bytes.length; i += 8192) {
        text += String.fromCharCode(...bytes.subarray(i, i + 8192));
    }
    return btoa(text);
}"""

_START_TAP = """async ({ selector, step }) => {
    const stream = document.querySelector(selector).srcObject;
    const tap = { video: [], audio: [], tracks: [] };
    window.captureTap = tap;
    const read = async (track, keep) => {
        tap.tracks.push(track);
        const reader = new MediaStreamTrackProcessor({ track }).readable.getReader();
        for (;;) {
            const { value, done } = await reader.read();
            if (done) return;
            try {
                await keep(value, performance.now());
            } finally {
                value.close();
            }
        }
    };
    const keepFrame = async (frame, arrival) => {
        const bytes = new Uint8Array(frame.allocationSize());
        const [plane] = await frame.copyTo(bytes);
        const width = Math.floor(frame.visibleRect.width / step);
        const height = Math.floor(frame.visibleRect.height / step);
        const luma = new Uint8Array(width * height);
        const half = step >> 1;
        for (let y = 0; y < height; y++) {
            const row = plane.offset + (y * step + half) * plane.stride + half;
            for (let x = 0; x < width; x++) luma[y * width + x] = bytes[row + x * step];
        }
        tap.video.push({ timestamp: frame.timestamp, arrival, format: frame.format, width,
                         height, luma });
    };
    const keepSound = (data, arrival) => {
        const samples = new Float32Array(data.numberOfFrames);
        data.copyTo(samples, { planeIndex: 0, format: 'f32-planar' });
        const pcm = new Int16Array(samples.length);
        for (let i = 0; i < samples.length; i++) {
            pcm[i] = Math.max(-32768, Math.min(32767, Math.round(samples[i] * 32768)));
        }
        tap.audio.push({ timestamp: data.timestamp, arrival, rate: data.sampleRate, pcm });
    };
    read(stream.getVideoTracks()[0].clone(), keepFrame);
    read(stream.getAudioTracks()[0].clone(), keepSound);
}"""

_STOP_TAP = (
    """() => {
    const base64 = """
    + BYTES_TO_BASE64
    + """;
    const tap = window.captureTap;
    for (const track of tap.tracks) track.stop();
    return {
        video: tap.video.map((f) => ({ ...f, luma: base64(f.luma) })),
        audio: tap.audio.map((s) => ({ ...s, pcm: base64(new Uint8Array(s.pcm.buffer)) })),
    };
}"""
)

_YUV = ("I420", "I420A", "I422", "I444", "NV12")  # formats whose first plane is luma


@dataclass(frozen=True)
class TappedFrame:
    """A video frame as tapped: its timestamp and when the page got it (seconds, each on
    its own clock), and its luma subsampled."""

    timestamp: float
    arrival: float
    luma: np.ndarray


@dataclass(frozen=True)
class TappedSound:
    """A buffer of sound as tapped: timestamp and arrival as for :class:`TappedFrame`,
    its sample rate and first channel on a 16-bit scale."""

    timestamp: float
    arrival: float
    rate: int
    samples: np.ndarray


@dataclass(frozen=True)
class CaptureTap:
    """What a tap collected."""

    frames: list[TappedFrame]
    sounds: list[TappedSound]


@dataclass(frozen=True)
class ClockOffset:
    """Seconds to add to ``performance.now() / 1000`` for ``time.monotonic()``, good to
    ``uncertainty`` (half the round trip it was measured in)."""

    seconds: float
    uncertainty: float


async def start_capture_tap(page: Page, selector: str = "#preview") -> None:
    """Starts tapping the camera and microphone shown by ``selector`` (a media element
    whose ``srcObject`` is the stream)."""
    await page.evaluate(_START_TAP, {"selector": selector, "step": SUBSAMPLE})


async def stop_capture_tap(page: Page) -> CaptureTap:
    """Stops the tap (its track clones) and returns what it collected."""
    got = await page.evaluate(_STOP_TAP)
    frames = []
    for frame in got["video"]:
        if frame["format"] not in _YUV:
            raise ValueError(f"tapped frames are {frame['format']}, not YUV: no luma plane")
        luma = np.frombuffer(base64.b64decode(frame["luma"]), np.uint8)
        frames.append(
            TappedFrame(
                frame["timestamp"] / 1e6,
                frame["arrival"] / 1e3,
                luma.reshape(frame["height"], frame["width"]),
            )
        )
    sounds = [
        TappedSound(
            sound["timestamp"] / 1e6,
            sound["arrival"] / 1e3,
            sound["rate"],
            np.frombuffer(base64.b64decode(sound["pcm"]), np.int16).astype(np.float64),
        )
        for sound in got["audio"]
    ]
    return CaptureTap(frames, sounds)


async def performance_offset(page: Page, exchanges: int = 40) -> ClockOffset:
    """The page's ``performance.now()`` against ``time.monotonic()``: the middle of the
    exchange with the shortest round trip out of ``exchanges``."""
    best = (math.inf, 0.0)
    for _ in range(exchanges):
        before = time.monotonic()
        now = float(await page.evaluate("performance.now()"))
        after = time.monotonic()
        best = min(best, (after - before, (before + after) / 2 - now / 1000))
    return ClockOffset(best[1], best[0] / 2)


def clock_shift(stamps: list[float], arrivals: list[float], offset: float) -> float:
    """What to add to timestamps (seconds) for the monotonic clock: 0 if they are on it,
    ``offset`` (see :class:`ClockOffset`) if on the page's clock. The clock is the one on
    which the data reached the page (``arrivals``: ``performance.now()`` seconds) within
    :data:`MAX_TAP_LATENCY` after its timestamps (or just before: sound may be stamped
    at its buffer's end); ``ValueError`` if neither fits."""
    latencies = {}
    for shift in (0.0, offset):
        latencies[shift] = statistics.median(
            arrival + offset - (stamp + shift)
            for stamp, arrival in zip(stamps, arrivals, strict=True)
        )
    shift = min(latencies, key=lambda s: abs(latencies[s]))
    if not -0.1 <= latencies[shift] <= MAX_TAP_LATENCY:
        raise ValueError(
            "tapped timestamps are on neither the monotonic nor the page's clock "
            f"(median latency {latencies[shift]:.3f} s on the nearer one)"
        )
    return shift


def trace_tap(tap: CaptureTap, offset: float) -> SyncTrace:
    """The tapped frames and sound as a :class:`SyncTrace` on the monotonic clock
    (``offset``: see :class:`ClockOffset`). Beeps begun in sound the tap lost are not
    counted."""
    frames, sounds = tap.frames, tap.sounds
    if not frames or not sounds:
        raise ValueError(f"the tap holds {len(frames)} frames and {len(sounds)} sound buffers")
    shift = clock_shift([f.timestamp for f in frames], [f.arrival for f in frames], offset)
    pictures = sorted(
        (Picture(f.timestamp + shift, read_frame_number(f.luma), is_flash(f.luma)) for f in frames),
        key=lambda picture: picture.time,
    )
    shift = clock_shift([s.timestamp for s in sounds], [s.arrival for s in sounds], offset)
    runs = contiguous_runs(((s.timestamp + shift, s.rate, s.samples) for s in sounds), TAP_GAP)
    return SyncTrace(pictures, beep_onsets_in(runs, whole=False))
