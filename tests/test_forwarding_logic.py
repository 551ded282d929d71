"""The pure logic of forwarding, on explicit instants: which frames a subscriber gets
(keyframes, loss, a bounded queue), when keyframe requests reach the publisher, the
subscriber's timestamps, the sender reports' capture-time mapping and codec matching."""

from __future__ import annotations

import itertools

import pytest
from aiortc import RTCRtpCodecParameters

from rtc_recorder.receive.forward import (
    NTP_UNIX_OFFSET,
    ForwardedFrame,
    ForwardQueue,
    ForwardTimestamps,
    KeyframeGate,
    capture_report_timestamp,
    carries,
)

_counter = itertools.count()


def frame(
    at: float,
    *,
    keyframe: bool = False,
    complete: bool = True,
    gap: bool = False,
    size: int = 100,
) -> ForwardedFrame:
    """A frame with distinct data, taken at ``at``."""
    number = next(_counter)
    data = number.to_bytes(8, "big") + bytes(size - 8)
    return ForwardedFrame(data, number, at, keyframe, complete, gap)


def drain(queue: ForwardQueue, now: float) -> list[ForwardedFrame]:
    out = []
    while (item := queue.pop(now)) is not None:
        out.append(item)
    return out


# -- the queue ----------------------------------------------------------------------------


def test_video_starts_on_a_keyframe() -> None:
    queue = ForwardQueue(video=True)
    deltas = [frame(0.0), frame(0.033)]
    assert not any(queue.push(f, f.instant) for f in deltas)
    key, after = frame(0.066, keyframe=True), frame(0.1)
    assert queue.push(key, 0.066) and queue.push(after, 0.1)
    assert drain(queue, 0.1) == [key, after]
    assert queue.stats.skipped == 2 and not queue.waiting


def test_audio_needs_no_keyframe() -> None:
    queue = ForwardQueue(video=False)
    sounds = [frame(t / 50) for t in range(3)]
    for item in sounds:
        queue.push(item, item.instant)
    assert drain(queue, 0.1) == sounds


def test_an_incomplete_frame_holds_video_until_the_next_keyframe() -> None:
    queue = ForwardQueue(video=True)
    before = [frame(0.0, keyframe=True), frame(0.033)]
    for item in before:
        queue.push(item, item.instant)
    assert not queue.push(frame(0.066, complete=False), 0.066)
    assert queue.waiting and queue.stats.waits == 1
    assert not queue.push(frame(0.1), 0.1)
    assert not queue.push(frame(0.133, keyframe=True, complete=False), 0.133)
    key = frame(0.166, keyframe=True)
    assert queue.push(key, 0.166)
    # What was queued before the loss still decodes: it goes out, then the keyframe.
    assert drain(queue, 0.2) == [*before, key]


def test_a_gap_before_a_delta_frame_holds_video_and_a_gap_before_a_keyframe_does_not() -> None:
    queue = ForwardQueue(video=True)
    queue.push(frame(0.0, keyframe=True), 0.0)
    assert not queue.push(frame(0.1, gap=True), 0.1)
    assert queue.waiting
    key = frame(0.2, keyframe=True, gap=True)
    assert queue.push(key, 0.2) and not queue.waiting


def test_audio_loss_goes_on() -> None:
    queue = ForwardQueue(video=False)
    assert queue.push(frame(0.0, gap=True), 0.0)
    assert not queue.waiting


def test_stale_audio_is_dropped_oldest_first() -> None:
    queue = ForwardQueue(video=False, max_age=1.0)
    sounds = [frame(t * 0.5) for t in range(4)]  # 0, 0.5, 1.0, 1.5
    for item in sounds:
        queue.push(item, item.instant)
    # At 2.2 the frames of 0.0, 0.5 and 1.0 are over a second old.
    assert drain(queue, 2.2) == sounds[3:]
    assert queue.stats.dropped == 3


def test_a_frames_wait_counts_from_when_it_was_queued() -> None:
    queue = ForwardQueue(video=False, max_age=0.5)
    late = frame(0.0)  # held 0.45 s for a retransmission before it came here
    queue.push(late, 0.45)
    assert drain(queue, 0.9) == [late]


def test_stale_video_is_dropped_back_to_the_latest_keyframe() -> None:
    queue = ForwardQueue(video=True, max_age=1.0)
    items = [frame(0.0, keyframe=True), frame(0.5), frame(1.0, keyframe=True), frame(1.5)]
    for item in items:
        queue.push(item, item.instant)
    assert drain(queue, 1.8) == items[2:]
    assert not queue.waiting


def test_stale_video_without_a_later_keyframe_is_all_dropped_and_waits() -> None:
    queue = ForwardQueue(video=True, max_age=1.0)
    for item in [frame(0.0, keyframe=True), frame(0.5), frame(0.9)]:
        queue.push(item, item.instant)
    assert drain(queue, 1.2) == []
    assert queue.waiting and queue.stats.dropped == 3 and queue.size == 0
    assert not queue.push(frame(1.3), 1.3)


def test_the_queue_never_holds_more_than_its_bytes() -> None:
    queue = ForwardQueue(video=True, max_bytes=1000)
    for index in range(100):  # nobody reads: a keyframe every 10 frames of 300 bytes
        queue.push(frame(index / 30, keyframe=index % 10 == 0, size=300), index / 30)
        assert queue.size <= 1000 and len(queue) <= 3
    assert queue.stats.dropped > 0 and queue.stats.waits == 10


def test_a_single_frame_over_the_size_limit_is_not_queued() -> None:
    queue = ForwardQueue(video=True, max_bytes=1000)
    assert not queue.push(frame(0.0, keyframe=True, size=2000), 0.0)
    assert queue.size == 0 and queue.waiting


# -- keyframe requests ----------------------------------------------------------------------


def test_the_first_keyframe_request_goes_at_once() -> None:
    gate = KeyframeGate(0.5)
    assert gate.ask(10.0) == 0.0


def test_requests_within_the_interval_are_deferred_once() -> None:
    gate = KeyframeGate(0.5)
    assert gate.ask(10.0) == 0.0
    assert gate.ask(10.1) == pytest.approx(0.4)
    assert [gate.ask(10.1 + k / 100) for k in range(1, 20)] == [None] * 19
    assert gate.due(10.5)
    assert gate.ask(10.6) == pytest.approx(0.4)  # the interval counts from the deferred one


def test_a_keyframe_answers_a_deferred_request() -> None:
    gate = KeyframeGate(0.5)
    gate.ask(10.0)
    assert gate.ask(10.1) is not None
    gate.keyframe()
    assert not gate.due(10.5)
    assert gate.ask(10.6) == 0.0


def test_requests_spaced_by_the_interval_all_go_at_once() -> None:
    gate = KeyframeGate(0.5)
    assert [gate.ask(10.0 + 0.5 * k) for k in range(4)] == [0.0] * 4


# -- timestamps -----------------------------------------------------------------------------


def test_timestamps_count_from_the_first_frame_with_the_publishers_cadence() -> None:
    stamps = ForwardTimestamps(90000)
    assert stamps.of(1, 5_000_000, 100.0) == 0
    assert stamps.of(1, 5_003_000, 100.05) == 3000  # arrival jitter changes nothing
    assert stamps.of(1, 5_006_000, 100.06) == 6000


def test_a_new_ssrc_continues_the_count_by_arrival() -> None:
    stamps = ForwardTimestamps(90000)
    stamps.of(1, 1000, 10.0)
    stamps.of(1, 4000, 10.033)
    assert stamps.of(2, 777_777, 10.533) == 3000 + 45000
    assert stamps.of(2, 780_777, 10.566) == 3000 + 48000


def test_a_timestamp_jump_away_from_arrival_continues_by_arrival() -> None:
    stamps = ForwardTimestamps(48000, max_skew=5.0)
    stamps.of(1, 0, 0.0)
    assert stamps.of(1, 960, 0.02) == 960
    assert stamps.of(1, 960 - 48000 * 60, 0.04) == 1920  # backwards: a restart
    assert stamps.of(1, 960 + 48000 * 3600, 0.06) == 2880  # an hour ahead in 20 ms


def test_a_long_silence_keeps_the_publishers_timestamps() -> None:
    stamps = ForwardTimestamps(48000)
    stamps.of(1, 0, 0.0)
    assert stamps.of(1, 48000 * 30, 30.2) == 48000 * 30  # 30 s without packets (DTX)


# -- sender reports -------------------------------------------------------------------------


def ntp(seconds_since_1970: float) -> int:
    seconds = seconds_since_1970 + NTP_UNIX_OFFSET
    return (int(seconds) << 32) | round((seconds % 1) * (1 << 32))


def test_a_report_maps_rtp_time_to_when_the_frame_was_taken() -> None:
    wall_minus_monotonic = 1_700_000_000.0
    # The frame with RTP timestamp 90000 was taken at monotonic 50.0 and sent 0.2 s later.
    sent = ntp(wall_minus_monotonic + 50.2)
    corrected = capture_report_timestamp(sent, 90000, 50.0, 90000, wall_minus_monotonic)
    # At the report's NTP time (0.2 s after the frame was taken) the clock read 0.2 s more.
    assert corrected == 90000 + 18000


def test_a_reports_timestamp_wraps_around() -> None:
    offset = 1_700_000_000.0
    corrected = capture_report_timestamp(ntp(offset + 10.5), (1 << 32) - 100, 10.0, 48000, offset)
    assert corrected == 24000 - 100


# -- codecs ---------------------------------------------------------------------------------


def codec(mime: str, rate: int = 90000, **parameters: object) -> RTCRtpCodecParameters:
    channels = 2 if mime == "audio/opus" else None
    return RTCRtpCodecParameters(
        mimeType=mime, clockRate=rate, channels=channels, payloadType=96, parameters=parameters
    )


def test_the_same_codec_carries_the_publishers_frames() -> None:
    assert carries(codec("video/VP8"), codec("video/vp8"))
    assert carries(codec("audio/opus", 48000), codec("audio/opus", 48000))
    assert not carries(codec("video/VP8"), codec("video/H264"))
    assert not carries(codec("audio/opus", 48000), codec("audio/PCMU", 8000))


def test_h264_needs_the_same_profile_and_fragmentation() -> None:
    publisher = codec("video/H264", **{"profile-level-id": "42e01f", "packetization-mode": "1"})
    same = codec("video/H264", **{"profile-level-id": "42e01f", "packetization-mode": "1"})
    other_level = codec("video/H264", **{"profile-level-id": "42e034", "packetization-mode": "1"})
    single_nal = codec("video/H264", **{"profile-level-id": "42e01f", "packetization-mode": "0"})
    high = codec("video/H264", **{"profile-level-id": "640c1f", "packetization-mode": "1"})
    assert carries(publisher, same) and carries(publisher, other_level)
    # aiortc packetizes into FU-A and STAP-A units, which mode 0 does not allow.
    assert not carries(publisher, single_nal)
    assert not carries(publisher, high)
