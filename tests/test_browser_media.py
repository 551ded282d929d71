"""The browser sync source and its analysis, on files made here with known answers: frame
numbers read back after VP8 at a low bitrate and half size, beeps found to the sample,
offsets measured exactly, and a pause cut found where frame numbers jump."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from .browser_media import (
    AUDIO_RATE,
    FPS,
    Picture,
    SyncTrace,
    code_cells,
    is_flash_frame,
    read_frame_number,
    source_picture,
    sync_samples,
    trace_recording,
    write_sync_audio,
)
from .media import beep_onsets, ffmpeg_errors

SAMPLES_PER_FRAME = AUDIO_RATE // FPS


def write_clip(path: Path, numbers: list[int], beep_delay: float) -> None:
    """A Matroska file of VP8 (320x180, 150 kbit/s) showing source frames ``numbers``
    one after another at 30 fps, with the matching source sound (PCM) delayed by
    ``beep_delay`` seconds."""
    sound = sync_samples(60)
    delay = round(beep_delay * AUDIO_RATE)
    with av.open(str(path), "w", format="matroska") as output:
        video = output.add_stream("libvpx", rate=FPS)
        video.width, video.height, video.pix_fmt = 320, 180, "yuv420p"
        video.bit_rate = 150_000
        audio = output.add_stream("pcm_s16le", rate=AUDIO_RATE)
        audio.layout = "mono"
        for index, number in enumerate(numbers):
            picture = av.VideoFrame.from_ndarray(source_picture(number, 320, 180), "rgb24")
            picture.pts = index
            output.mux(video.encode(picture))
            start = number * SAMPLES_PER_FRAME - delay
            block = sound[max(start, 0) : start + SAMPLES_PER_FRAME]
            block = np.pad(block, (SAMPLES_PER_FRAME - len(block), 0))
            frame = av.AudioFrame.from_ndarray(block[None, :], format="s16", layout="mono")
            frame.sample_rate, frame.pts = AUDIO_RATE, index * SAMPLES_PER_FRAME
            output.mux(audio.encode(frame))
        output.mux(video.encode(None))


@pytest.mark.parametrize("number", [0, 1, 30, 1234, 4095])
def test_frame_numbers_read_back_from_the_source_picture(number: int) -> None:
    luma = source_picture(number).mean(axis=2)
    assert read_frame_number(luma) == number


def test_a_flipped_bit_or_a_grey_band_reads_as_no_number() -> None:
    luma = source_picture(77).mean(axis=2)
    edges = np.linspace(0, luma.shape[1], len(code_cells(77)) + 1).round().astype(int)
    flipped = luma.copy()
    flipped[:, edges[2] : edges[3]] = 255 - flipped[:, edges[2] : edges[3]]  # first data bit
    assert read_frame_number(flipped) is None  # the parity no longer holds
    assert read_frame_number(np.full_like(luma, 128)) is None


def test_beeps_are_found_to_the_sample(tmp_path: Path) -> None:
    path = tmp_path / "sync.wav"
    write_sync_audio(path, seconds=4)
    # A tone starting at phase 0 reaches 30 % of its peak 2.3 samples in.
    assert beep_onsets(path) == pytest.approx([0.0, 1.0, 2.0, 3.0], abs=3.5 / AUDIO_RATE)


def test_vp8_frame_numbers_flashes_and_offsets_are_measured_exactly(tmp_path: Path) -> None:
    path = tmp_path / "clip.mkv"
    write_clip(path, list(range(20, 140)), beep_delay=0.0125)
    assert not ffmpeg_errors(path)
    trace = trace_recording(path)
    assert [p.number for p in trace.pictures] == list(range(20, 140))
    assert [p.flash for p in trace.pictures] == [n % 30 < 3 for n in range(20, 140)]
    assert not trace.discontinuities()
    flashes = trace.offsets()
    assert [f.number for f in flashes] == [30, 60, 90, 120]
    assert [f.time for f in flashes] == pytest.approx([10 / 30, 40 / 30, 70 / 30, 100 / 30])
    # Within Matroska's millisecond timestamps.
    assert [f.offset for f in flashes] == pytest.approx([0.0125] * 4, abs=5e-4)


def test_a_pause_cut_is_found_where_frame_numbers_jump_and_splits_the_segments(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cut.mkv"
    write_clip(path, [*range(20, 80), *range(140, 230)], beep_delay=-0.02)
    trace = trace_recording(path)
    [cut] = trace.cuts()
    assert (cut.before.number, cut.after.number) == (79, 140)
    assert cut.advance == pytest.approx(1 / 30, abs=1e-3)
    assert cut.skipped == pytest.approx(2.0, abs=1e-3)
    segments = trace.segments()
    assert [[f.number for f in s] for s in segments] == [[30, 60], [150, 180, 210]]
    assert all(f.offset == pytest.approx(-0.02, abs=5e-4) for s in segments for f in s)


def test_an_expected_offset_pairs_each_flash_with_the_same_source_beep() -> None:
    # Beeps 560 ms after their flashes: the beep nearest each flash is the one before.
    pictures = [Picture(n / FPS, n, is_flash_frame(n)) for n in range(200)]
    trace = SyncTrace(pictures, [k + 0.56 for k in range(7)])
    assert [(f.number, round(f.offset, 3)) for f in trace.offsets()] == [
        (30, -0.44),
        (60, -0.44),
        (90, -0.44),
        (120, -0.44),
        (150, -0.44),
        (180, -0.44),
    ]
    expected = {30: 0.5, 60: 0.5, 90: 0.4}
    measured = [(f.number, round(f.offset, 3)) for f in trace.offsets(expected)]
    assert measured[:4] == [(30, 0.56), (60, 0.56), (90, 0.56), (120, -0.44)]


def test_a_frame_no_picture_shows_is_placed_from_the_nearest_one_at_30_fps() -> None:
    pictures = [Picture(1 + n / FPS, n, False) for n in range(10) if n != 5]
    pictures.insert(2, Picture(1.05, None, False))  # unreadable pictures are not used
    trace = SyncTrace(pictures, [])
    assert trace.time_of(3) == 1 + 3 / FPS
    assert trace.time_of(5) == pytest.approx(1 + 5 / FPS, abs=1e-12)
    assert trace.time_of(12) == pytest.approx(1 + 12 / FPS, abs=1e-12)
    with pytest.raises(ValueError, match="no readable picture"):
        SyncTrace([Picture(0.0, None, False)], []).time_of(3)
