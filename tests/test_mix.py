"""The room's mix: the arithmetic on explicit sample arrays, how far it may go, and the
mix's thread and file on explicit input (no peers, no wall clock in the measures)."""

from __future__ import annotations

import threading
from pathlib import Path

import av
import numpy as np
import pytest

from rtc_recorder.encoding import MediaItem
from rtc_recorder.mix import BLOCK, MAX_AHEAD, MAX_LAG, SNAP, Mixer, RoomMix, mix_horizon, mono
from rtc_recorder.writer import Chunk, Failure, WriterEvent

from .media import beep_onsets, ffmpeg_errors, probe
from .room_support import mix_beeps

RATE = 48_000


def ramp(count: int, level: float = 0.1) -> np.ndarray:
    return np.full(count, level, np.float32)


# -- Mixer -------------------------------------------------------------------------------


def test_sources_are_summed_at_their_places_with_silence_between() -> None:
    mixer = Mixer()
    mixer.add("a", 10, ramp(5, 0.25))
    mixer.add("b", 12, ramp(5, 0.5))
    mixed = mixer.take(20)
    expected = np.zeros(20, np.float32)
    expected[10:15] += 0.25
    expected[12:17] += 0.5
    assert np.array_equal(mixed, expected)
    assert mixer.position == 20
    assert np.array_equal(mixer.take(24), np.zeros(4, np.float32))


def test_the_sum_is_clipped_to_full_scale() -> None:
    mixer = Mixer()
    mixer.add("a", 0, ramp(4, 0.75))
    mixer.add("b", 0, ramp(4, 0.75))
    mixer.add("c", 2, ramp(2, -3.0))
    assert mixer.take(4).tolist() == [1.0, 1.0, -1.0, -1.0]


def test_sound_for_a_time_already_mixed_is_dropped_and_counted() -> None:
    mixer = Mixer()
    mixer.take(100)
    mixer.add("a", 90, ramp(20, 0.5))  # 10 samples too late, 10 in time
    mixer.add("b", 40, ramp(20, 0.5))  # all too late
    assert mixer.dropped == 10 + 20
    mixed = mixer.take(120)
    assert mixed[:10].tolist() == [0.5] * 10 and not mixed[10:].any()


def test_a_source_within_a_millisecond_of_where_it_ended_follows_on() -> None:
    mixer = Mixer()
    mixer.add("a", 0, ramp(BLOCK, 0.5))
    mixer.add("a", BLOCK + SNAP, ramp(BLOCK, 0.5))  # jitter: no gap
    mixer.add("a", 3 * BLOCK, ramp(BLOCK, 0.5))  # a real gap of one block
    mixed = mixer.take(4 * BLOCK)
    assert mixed[: 2 * BLOCK].min() == 0.5
    assert not mixed[2 * BLOCK : 3 * BLOCK].any()
    assert mixed[3 * BLOCK :].min() == 0.5
    assert mixer.end_of("a") == 4 * BLOCK


def test_sound_placed_absurdly_far_ahead_is_refused() -> None:
    mixer = Mixer()
    mixer.add("a", MAX_AHEAD + 1, ramp(BLOCK))
    assert mixer.dropped == BLOCK
    assert mixer.furthest == 0


def test_a_source_that_left_is_forgotten() -> None:
    mixer = Mixer()
    mixer.add("a", 0, ramp(10))
    mixer.forget("a")
    assert mixer.end_of("a") is None
    assert mixer.take(10).tolist() == pytest.approx([0.1] * 10)


# -- how far to mix ------------------------------------------------------------------------


def test_the_mix_waits_for_the_source_that_delivered_least() -> None:
    assert mix_horizon([5 * RATE, 4 * RATE, 6 * RATE], present=6 * RATE) == 4 * RATE


def test_the_mix_waits_for_nobody_longer_than_the_lag() -> None:
    present = 10 * RATE
    assert mix_horizon([1 * RATE, 9 * RATE], present) == present - MAX_LAG
    assert mix_horizon([], present) == present - MAX_LAG


# -- decoded frames to mono ----------------------------------------------------------------


def test_frames_of_any_layout_become_mono_at_full_scale_one() -> None:
    packed = av.AudioFrame.from_ndarray(
        np.array([[16384, -16384, 8192, 8192]], np.int16), format="s16", layout="stereo"
    )
    assert mono(packed).tolist() == [0.0, 0.25]
    planar = av.AudioFrame.from_ndarray(
        np.array([[0.5, 1.0], [0.5, 0.0]], np.float32), format="fltp", layout="stereo"
    )
    assert mono(planar).tolist() == [0.5, 0.5]


# -- the mix's thread and file ---------------------------------------------------------------


def tone_frames(seconds: float, beeps: list[float]) -> list[MediaItem]:
    """Decoded 20 ms frames of 48 kHz sound, silent but for 100 ms 1 kHz beeps starting at
    ``beeps`` (seconds), each as a participant's writer hands it over."""
    items = []
    for block in range(round(seconds * 50)):
        index = np.arange(block * BLOCK, (block + 1) * BLOCK)
        loud = np.zeros(BLOCK, bool)
        for beep in beeps:
            loud |= (index >= beep * RATE) & (index < (beep + 0.1) * RATE)
        samples = np.where(loud, 12_000 * np.sin(2 * np.pi * 1000 * index / RATE), 0)
        frame = av.AudioFrame.from_ndarray(
            samples.astype(np.int16)[None, :], format="s16", layout="mono"
        )
        frame.sample_rate = RATE
        items.append(MediaItem(0, block * 20_000, frame))
    return items


class Collected:
    """A mix's events, and the end of its thread."""

    def __init__(self) -> None:
        self.events: list[WriterEvent] = []
        self.done = threading.Event()

    def __call__(self, event: WriterEvent) -> None:
        self.events.append(event)
        if isinstance(event, Chunk) and event.final:
            self.done.set()


def test_the_mix_puts_each_sources_sound_at_its_room_time(tmp_path: Path) -> None:
    path = tmp_path / "mix.ogg"
    collected = Collected()
    mix = RoomMix(path, collected, timeslice_us=500_000)
    mix.start()
    mix.join("a", 0)
    mix.join("b", 1_000_000)  # joins a second in
    for item in tone_frames(3.0, [0.5, 1.5, 2.5]):
        mix.feed("a", "audio", item)
    for item in tone_frames(2.0, [0.3, 1.3]):  # b's own times, from when it joined
        mix.feed("b", "audio", MediaItem(0, item.time + 1_000_000, item.payload))
    mix.feed("b", "video", tone_frames(0.02, [])[0])  # video is not mixed
    mix.leave("a")
    mix.leave("b")
    mix.close()
    assert collected.done.wait(30)
    mix.join_thread()
    assert not any(isinstance(e, Failure) for e in collected.events)
    assert not ffmpeg_errors(path)
    onsets = mix_beeps(path)
    assert onsets == pytest.approx([0.5, 1.3, 1.5, 2.3, 2.5], abs=0.001)
    assert probe(path)["audio"].end == pytest.approx(3.0 + 0.0065, abs=0.03)
    chunks = [e for e in collected.events if isinstance(e, Chunk)]
    assert len(chunks) >= 6  # every half second of mix, and the last
    assert b"".join(c.data for c in chunks) == path.read_bytes()
    assert chunks[0].timecode == 0.0
    assert [c.timecode for c in chunks] == sorted(c.timecode for c in chunks)
    assert mix.mixer.dropped == 0


def test_the_mix_reaches_the_rooms_present_in_silence(tmp_path: Path) -> None:
    path = tmp_path / "mix.ogg"
    collected = Collected()
    mix = RoomMix(path, collected, keep_chunks=False)
    mix.start()
    mix.join("muted", 0)
    mix.mute("muted", True)
    mix.advance(2_000_000)
    mix.close()
    assert collected.done.wait(30)
    assert not ffmpeg_errors(path)
    assert probe(path)["audio"].end == pytest.approx(2.0 + 0.0065, abs=0.03)
    assert beep_onsets(path) == []
    assert all(c.data == b"" for c in collected.events if isinstance(c, Chunk))


def test_a_mix_that_cannot_write_fails_once_and_still_ends(tmp_path: Path) -> None:
    collected = Collected()
    mix = RoomMix(tmp_path / "missing" / "mix.ogg", collected)
    mix.start()
    for item in tone_frames(0.2, []):
        mix.feed("a", "audio", item)
    mix.request_data()
    mix.close()
    assert collected.done.wait(30)
    failures = [e for e in collected.events if isinstance(e, Failure)]
    assert len(failures) == 1 and isinstance(failures[0].error, FileNotFoundError)
    assert [e.requested for e in collected.events if isinstance(e, Chunk)] == [True, False]
