"""Reading a capture tap back (:mod:`tests.chromium_capture`), on taps made here with known
answers: frames stamped on the monotonic clock with jitter, sound stamped on the page's
clock with a known delay, a lost buffer at a beep's start."""

from __future__ import annotations

import numpy as np
import pytest

from .browser_media import AUDIO_RATE, FPS, source_picture, sync_samples
from .chromium_capture import SUBSAMPLE, CaptureTap, TappedFrame, TappedSound, trace_tap

START = 5000.0  # monotonic seconds at which the tap's first frame was stamped
PAGE_ORIGIN = 4990.0  # monotonic seconds at the page's performance.now() zero
BUFFER = AUDIO_RATE // 100  # Chromium's 10 ms of sound per AudioData
JITTER = [0.010, -0.010, 0.0, 0.005, -0.005]  # seconds, frame after frame


def tapped_frames(count: int) -> list[TappedFrame]:
    """Source frames 0.. stamped at 30 fps from START, each late or early by JITTER, got
    by the page 3 ms after their stamps; luma subsampled as the tap does."""
    frames = []
    for number in range(count):
        luma = source_picture(number).mean(axis=2)[
            SUBSAMPLE // 2 :: SUBSAMPLE, SUBSAMPLE // 2 :: SUBSAMPLE
        ]
        stamp = START + number / FPS + JITTER[number % len(JITTER)]
        frames.append(TappedFrame(stamp, stamp - PAGE_ORIGIN + 0.003, luma))
    return frames


def tapped_sound(seconds: float, delay: float, lost: set[int]) -> list[TappedSound]:
    """The source's sound in 10 ms buffers, its first sample captured ``delay`` after
    START, stamped on the page's clock and got 1 ms after; buffers ``lost`` left out."""
    samples = sync_samples(seconds).astype(np.float64)
    sounds = []
    for index in range(len(samples) // BUFFER):
        if index in lost:
            continue
        stamp = START + delay + index * BUFFER / AUDIO_RATE - PAGE_ORIGIN
        block = samples[index * BUFFER : (index + 1) * BUFFER]
        sounds.append(TappedSound(stamp, stamp + 0.001, AUDIO_RATE, block))
    return sounds


def test_a_tap_is_read_on_one_clock_with_the_sound_delay_it_was_stamped_with() -> None:
    delay = 0.0375
    beep_at_3 = 3 * AUDIO_RATE // BUFFER  # the buffer a beep starts
    tap = CaptureTap(tapped_frames(6 * FPS), tapped_sound(6, delay, lost={beep_at_3}))
    trace = trace_tap(tap, PAGE_ORIGIN)
    flashes = trace.offsets()
    # The beep whose first buffer was lost is not found late: its flash has no beep.
    assert [f.number for f in flashes] == [30, 60, 120, 150]
    assert [f.time for f in flashes] == pytest.approx([START + k for k in (1, 2, 4, 5)], abs=1e-9)
    # A tone starting at phase 0 reaches 30 % of its peak 2.3 samples in.
    assert [f.offset for f in flashes] == pytest.approx([delay] * 4, abs=3.5 / AUDIO_RATE)


def test_timestamps_on_neither_clock_are_refused() -> None:
    frames = [TappedFrame(f.timestamp + 100.0, f.arrival, f.luma) for f in tapped_frames(FPS)]
    tap = CaptureTap(frames, tapped_sound(1, 0.0, lost=set()))
    with pytest.raises(ValueError, match="neither the monotonic nor the page's clock"):
        trace_tap(tap, PAGE_ORIGIN)


def test_an_empty_tap_is_refused() -> None:
    with pytest.raises(ValueError, match="0 frames"):
        trace_tap(CaptureTap([], tapped_sound(1, 0.0, lost=set())), PAGE_ORIGIN)
