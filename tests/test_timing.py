"""The timing, on explicit instants: sender clocks, sender reports, pauses, the file's
time 0. No wall clock, no network."""

from __future__ import annotations

import itertools

import pytest

from rtc_recorder.timing import (
    DEFAULT_FRAME_INTERVAL,
    EARLY_KEYFRAME,
    JUMP_REPORTS,
    MAX_SKEW,
    REPORT_SPAN,
    REPORT_WINDOW,
    SETTLING,
    SLEW,
    FrameInterval,
    MemberTimeline,
    SenderClock,
    SenderReport,
    StreamClock,
    Timeline,
    file_origin,
)

FRAME = 1 / 30


# -- SenderClock ---------------------------------------------------------------------


def test_a_sender_clock_answers_once_settled_with_the_smallest_delay_seen() -> None:
    clock = SenderClock()
    delays = [0.030, 0.012, 0.050, 0.020]
    for k, delay in enumerate(delays):
        clock.observe(100.0 + k * 0.3, 5.0 + k * 0.3 + delay)
        assert clock.reference(100.0) is None  # still learning
    clock.observe(100.0 + SETTLING, 5.0 + SETTLING + 0.040)
    assert clock.settled
    assert clock.reference(101.0) == pytest.approx(101.0 - 95.0 + 0.012)


def test_a_settled_sender_clock_no_longer_moves_so_cadence_is_kept() -> None:
    clock = SenderClock()
    for k in range(40):
        clock.observe(k * FRAME, 10.0 + k * FRAME + 0.020)
    before = clock.offset
    clock.observe(40 * FRAME, 10.0 + 40 * FRAME + 0.001)  # a faster packet, later
    clock.observe(41 * FRAME, 10.0 + 41 * FRAME + 0.300)  # a congested one
    assert clock.offset == before


def test_a_sender_clock_that_jumps_learns_again() -> None:
    clock = SenderClock()
    for k in range(40):
        clock.observe(k * FRAME, 10.0 + k * FRAME)
    for k in range(20):  # the sender's clock restarted, and stays so
        clock.observe(500.0 + k * FRAME, 12.0 + k * FRAME)
    assert clock.reference(500.0) is None  # learning again
    for k in range(20, 60):
        clock.observe(500.0 + k * FRAME, 12.0 + k * FRAME + MAX_SKEW / 100)
    assert clock.reference(501.0) == pytest.approx(13.0)


def test_a_stream_whose_clock_disagrees_with_its_senders_does_not_unsettle_it() -> None:
    clock = SenderClock()
    for k in range(40):
        clock.observe(k * FRAME, 10.0 + k * FRAME)
    for k in range(40, 100):  # a second stream 10 s off, its frames between the first's
        clock.observe(k * FRAME + 10.0, 10.0 + k * FRAME)
        clock.observe(k * FRAME, 10.0 + k * FRAME)
    assert clock.reference(5.0) == pytest.approx(15.0)


# -- StreamClock and sender reports ----------------------------------------------------


def settled_sender(offset: float = 10.0) -> SenderClock:
    """A settled sender whose wall clock reads ``offset`` seconds more than the reference
    clock, with no transit delay."""
    sender = SenderClock()
    for k in range(40):
        sender.observe(1000.0 + k * FRAME, 1000.0 + k * FRAME - offset)
    return sender


def test_a_stream_waits_for_its_senders_first_report_then_follows_it() -> None:
    clock = StreamClock(90000, settled_sender())
    assert clock.reference(90000, 991.0) is None
    clock.sender_report(SenderReport(1001.0, 90000))  # the sender's clock read 1001 s at ts 1 s
    assert clock.sender_time(180000) == pytest.approx(1002.0)
    assert clock.reference(180000, 992.0) == pytest.approx(992.0)


def test_a_stream_without_reports_is_placed_by_its_own_timestamps_after_the_deadline() -> None:
    clock = StreamClock(48000, settled_sender(), deadline=2.0)
    assert clock.reference(0, 50.0) is None
    assert clock.reference(48000, 51.0) is None
    for k in range(2, 80):
        reference = clock.reference(48000 * k // 20, 50.0 + k / 20 + 0.005)
    # arrivals 50 s + media time + 5 ms: the private clock takes the smallest delay
    assert reference == pytest.approx(50.0 + 79 / 20 + 0.005)


def test_a_leading_stream_keeps_its_first_mapping_so_video_keeps_its_cadence() -> None:
    clock = StreamClock(90000, settled_sender(), leading=True)
    clock.sender_report(SenderReport(1000.0, 0))
    assert clock.sender_time(90000) == pytest.approx(1001.0)
    clock.sender_report(SenderReport(1002.004, 180000))  # 4 ms different
    assert clock.sender_time(270000) == pytest.approx(1003.0)


def test_a_following_stream_moves_towards_a_new_report_slowly() -> None:
    clock = StreamClock(48000, settled_sender())
    clock.sender_report(SenderReport(1000.0, 0))
    assert clock.sender_time(48000) == pytest.approx(1001.0)
    # 10 ms later than the first said, and said again until the first leaves the window
    for k in range(REPORT_WINDOW):
        clock.sender_report(SenderReport(1001.010 + k, 48000 * (k + 1)))
    times = [clock.sender_time(48000 + 960 * k) for k in range(1, 200)]
    steps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.020 - 1e-7 <= step <= 0.020 * (1 + SLEW) + 1e-7 for step in steps)
    assert times[-1] == pytest.approx(1001.010 + 199 * 0.020, abs=1e-6)  # caught up


@pytest.mark.parametrize("leading", [True, False])
def test_a_report_far_earlier_than_the_mapping_is_taken_at_once(leading: bool) -> None:
    # The first report came from a sender 1.7 s behind (stamped late): the next is right.
    clock = StreamClock(48000, settled_sender(), leading=leading)
    clock.sender_report(SenderReport(1001.7, 0))
    assert clock.sender_time(48000) == pytest.approx(1002.7)
    clock.sender_report(SenderReport(1001.0, 48000))
    assert clock.sender_time(96000) == pytest.approx(1002.0)


@pytest.mark.parametrize("leading", [True, False])
def test_a_report_far_later_than_the_mapping_is_a_new_clock_once_reports_agree(
    leading: bool,
) -> None:
    clock = StreamClock(48000, settled_sender(), leading=leading)
    clock.sender_report(SenderReport(1000.0, 0))
    clock.sender_time(48000)
    for k in range(JUMP_REPORTS):
        assert clock.sender_time(96000 + 48000 * k) == pytest.approx(1002.0 + k)
        clock.sender_report(SenderReport(2000.0 + k, 96000 + 48000 * k))
    assert clock.sender_time(96000 + 48000 * JUMP_REPORTS) == pytest.approx(2000.0 + JUMP_REPORTS)


@pytest.mark.parametrize("leading", [True, False])
def test_a_report_stamped_by_a_stalled_sender_moves_nothing(leading: bool) -> None:
    # aiortc stamps a report when it sends it, with the timestamp of the latest frame it
    # sent: a sender whose loop stalled 1.2 s tells of a frame 1.2 s late, once.
    clock = StreamClock(48000, settled_sender(), leading=leading)
    clock.sender_report(SenderReport(1000.0, 0))
    clock.sender_report(SenderReport(1002.2, 48000))
    clock.sender_report(SenderReport(1002.005, 96000))
    clock.sender_report(SenderReport(1002.53, 120000))  # 30 ms late: not followed either
    times = [clock.sender_time(96000 + 960 * k) for k in range(200)]
    assert times[0] == pytest.approx(1002.0)
    assert times[-1] == pytest.approx(1002.0 + 199 * 0.020)


@pytest.mark.parametrize("moved", [0.010, -0.010])
def test_a_browsers_sparse_exact_reports_are_followed_whichever_way_they_move(
    moved: float,
) -> None:
    # libwebrtc reports audio every 2.5-7.5 s, exactly: when its microphone's capture
    # slips (a 10 ms buffer lost), the next report says the sound is 10 ms later, and the
    # stream follows it at once, a slew away, though earlier reports said otherwise.
    clock = StreamClock(48000, settled_sender())
    for k, ntp in enumerate([1000.0, 1005.5, 1011.0]):
        clock.sender_report(SenderReport(ntp, int(ntp - 1000.0) * 48000 + 24000 * (k % 2)))
    before = [clock.sender_time(12 * 48000 + 960 * k) for k in range(201)]  # packets
    assert before[-1] == pytest.approx(1016.0, abs=1e-9)
    clock.sender_report(SenderReport(1016.0 + moved, 16 * 48000))
    times = [clock.sender_time(16 * 48000 + 960 * k) for k in range(300)]
    steps = [b - a for a, b in itertools.pairwise(times)]
    assert all(abs(step - 0.020) <= 0.020 * SLEW + 1e-7 for step in steps)
    assert times[-1] == pytest.approx(1016.0 + moved + 299 * 0.020, abs=1e-6)
    assert times[0] == pytest.approx(1016.0, abs=1e-6)  # and not before it slewed there


def test_reports_within_the_span_keep_the_best_told_however_many_came() -> None:
    # A late-stamping sender reporting every second or so: reports 12 ms later are not
    # followed while one that places the stream earlier is within REPORT_SPAN of them,
    # and are once it is older.
    clock = StreamClock(48000, settled_sender())
    clock.sender_report(SenderReport(1000.0, 0))
    late = [1.0, 2.0, REPORT_SPAN - 0.1]
    for second in late:
        clock.sender_report(SenderReport(1000.012 + second, round(second * 48000)))
    times = [clock.sender_time(960 * k) for k in range(400)]  # packets to 8 s
    assert times[-1] == pytest.approx(1000.0 + 399 * 0.020, abs=1e-9)
    clock.sender_report(SenderReport(1008.512, round(8.5 * 48000)))
    times = [clock.sender_time(960 * k) for k in range(400, 600)]
    assert times[0] == pytest.approx(1008.0, abs=1e-4)  # moving, a slew at a time
    assert times[-1] == pytest.approx(1000.012 + 599 * 0.020, abs=1e-9)


def test_a_stalled_sender_keeps_its_video_on_the_grid() -> None:
    # Frames and reports of a sender through its clocks, as the receive path feeds them:
    # the one late report leaves every frame exactly one interval after the one before.
    sender = SenderClock()
    video = StreamClock(90000, sender, leading=True)
    placed = []
    for index in range(30 * 12):
        if index % 30 == 0:
            late = 1.2 if index == 90 else 0.005
            video.sender_report(SenderReport(1000 + index / 30 + late, index * 3000))
        reference = video.reference(index * 3000, 50 + index / 30 + 0.01)
        if reference is not None:
            placed.append(reference)
    steps = [b - a for a, b in itertools.pairwise(placed)]
    assert len(placed) > 300 and all(step == pytest.approx(1 / 30) for step in steps)


def test_sender_reports_put_two_streams_of_one_sender_in_sync() -> None:
    # The audio's packets arrive 150 ms later than the video's for the same instant (a
    # slow path); the reports still put them at the same reference instant.
    sender = SenderClock()
    video = StreamClock(90000, sender, leading=True)
    audio = StreamClock(48000, sender)
    video.sender_report(SenderReport(500.0, 3000))
    audio.sender_report(SenderReport(500.0, 960))
    for k in range(60):
        video.reference(3000 + 3000 * k, 20.0 + k * FRAME + 0.010)
        audio.reference(960 + 1600 * k, 20.0 + k * FRAME + 0.160)
    at_video = video.reference(3000 + 3000 * 60, 22.0 + 0.010)
    at_audio = audio.reference(960 + 1600 * 60, 22.0 + 0.160)
    assert at_video == pytest.approx(at_audio)


# -- FrameInterval ---------------------------------------------------------------------


def test_the_frame_interval_is_the_median_and_the_grid_never_coarser_than_30_fps() -> None:
    frames = FrameInterval()
    assert frames.interval is None and frames.grid == DEFAULT_FRAME_INTERVAL
    for t in [0, 1 / 15, 2 / 15, 3 / 15, 4 / 15 + 0.01]:
        frames.add(t)
    assert frames.interval == pytest.approx(1 / 15)
    assert frames.grid == DEFAULT_FRAME_INTERVAL
    sixty = FrameInterval()
    for k in range(10):
        sixty.add(k / 60)
    assert sixty.grid == pytest.approx(1 / 60)


# -- Timeline ---------------------------------------------------------------------------


def settled_timeline(start: float = 10.0) -> Timeline:
    timeline = Timeline(start)
    timeline.settle(start)
    return timeline


def test_pauses_are_cut_out_of_every_tracks_time() -> None:
    timeline = settled_timeline()
    assert timeline.output_time(11.0) == pytest.approx(1.0)
    timeline.pause(13.0)
    assert timeline.output_time(13.5) is None
    timeline.resume(18.0)
    timeline.settle(18.0)
    assert timeline.output_time(18.5) == pytest.approx(3.5)
    assert timeline.cuts() == [pytest.approx(3.0)]
    assert timeline.paused_time(20.0) == pytest.approx(5.0)
    assert timeline.recorded_time(20.0) == pytest.approx(5.0)


def test_a_pause_cuts_whole_frame_intervals_the_nearest_to_the_time_paused() -> None:
    timeline = settled_timeline()
    timeline.pause(11.0)
    timeline.resume(11.0 + 10.4 * FRAME)
    timeline.settle()
    after = 11.0 + 20 * FRAME
    assert timeline.output_time(after) == pytest.approx(1.0 + 10 * FRAME)
    timeline.pause(13.0)
    timeline.resume(13.0 + 10.4 * FRAME)  # in all 20.8 frames paused: 21 cut
    timeline.settle()
    assert timeline.output_time(14.0) == pytest.approx(4.0 - 21 * FRAME)


def test_a_resume_waits_for_the_first_keyframe_and_rounds_the_cut_down_for_it() -> None:
    timeline = settled_timeline()
    timeline.pause(11.0)
    timeline.resume(11.0 + 10.6 * FRAME)  # 11 frames would be cut
    assert timeline.holds(11.0 + 10.7 * FRAME) and not timeline.holds(10.9)
    keyframe = 11.0 + 10.7 * FRAME  # would land 0.3 frame before the cut
    assert timeline.can_settle_at(keyframe, arrival=keyframe + 0.01)
    timeline.settle(keyframe, after=0.001)
    out = timeline.output_time(keyframe)
    assert out is not None and out >= 1.0 + 0.001
    assert out == pytest.approx(1.0 + 0.7 * FRAME)  # 10 frames cut instead
    # Recorded from where the output goes on after the cut: no gap in the sound there.
    assert timeline.output_time(11.0 + 10 * FRAME) == pytest.approx(1.0)


def test_a_keyframe_taken_just_before_the_resume_moves_the_resume_back() -> None:
    timeline = settled_timeline()
    timeline.pause(11.0)
    timeline.resume(12.0)
    keyframe = 12.0 - 0.1  # taken before the resume, arrived after it
    assert timeline.can_settle_at(keyframe, arrival=12.02)
    assert not timeline.can_settle_at(keyframe, arrival=11.99)  # from before the resume
    timeline.settle(keyframe, after=0.001)
    assert timeline.output_time(keyframe) is not None
    assert timeline.paused_time(13.0) == pytest.approx(1.0)  # as asked
    # 26 whole frames cut (27 would put the keyframe before the cut): what the file lasts,
    # recorded from 11.0 + 26 frames on, so the output has no gap at the cut.
    assert timeline.recorded_time(13.0) == pytest.approx(3.0 - 26 * FRAME)
    assert timeline.output_time(13.0) == pytest.approx(3.0 - 26 * FRAME)
    assert timeline.output_time(11.0 + 26 * FRAME) == pytest.approx(1.0)
    assert timeline.output_time(11.0 + 25.9 * FRAME) is None


def test_media_from_a_pause_waits_for_the_resume_that_may_move_back_to_it() -> None:
    timeline = settled_timeline()
    timeline.pause(11.0)
    # Sound taken during the pause waits (a keyframe taken at 11.9 may settle a resume at
    # 12.0 and bring it back), media from before the pause does not.
    assert timeline.holds(11.9) and not timeline.holds(10.99)
    assert timeline.output_time(11.9) is None
    # Held longer than a resume could reach back, it is let go.
    assert not timeline.beyond_resume(11.9, now=11.9 + EARLY_KEYFRAME)
    assert timeline.beyond_resume(11.9, now=11.91 + EARLY_KEYFRAME)
    timeline.resume(12.0)
    assert not timeline.beyond_resume(11.9, now=20.0)  # (only during a pause)
    assert timeline.holds(11.9)
    timeline.settle(11.9, after=0.001)
    assert not timeline.holds(11.9)
    # recorded, a frame after the cut (the cut is whole frames, rounded down for it)
    assert timeline.output_time(11.9) == pytest.approx(1.0 + FRAME)


def test_a_resume_moves_back_at_most_as_far_as_a_sender_queue_reaches() -> None:
    timeline = settled_timeline()
    timeline.pause(11.0)
    timeline.resume(20.0)
    assert timeline.can_settle_at(20.0 - EARLY_KEYFRAME, arrival=20.01)
    assert not timeline.can_settle_at(19.99 - EARLY_KEYFRAME, arrival=20.01)
    assert not timeline.holds(19.99 - EARLY_KEYFRAME)


def test_a_stopped_pause_holds_nothing() -> None:
    timeline = settled_timeline()
    timeline.pause(11.0)
    timeline.stop(11.5)
    assert not timeline.holds(11.2)
    assert timeline.output_time(11.2) is None


def test_a_file_that_stopped_during_its_rooms_pause_holds_nothing_for_the_resume() -> None:
    shared = settled_timeline()
    member, stopped = MemberTimeline(shared), MemberTimeline(shared)
    shared.pause(11.0)
    stopped.stop(11.5)
    assert member.holds(11.6) and not stopped.holds(11.6)


def test_a_keyframe_from_before_the_pause_cannot_settle_a_resume() -> None:
    timeline = settled_timeline()
    timeline.pause(11.0)
    timeline.resume(12.0)
    assert not timeline.can_settle_at(10.99, arrival=12.01)
    timeline.settle_if_late(12.5)
    assert timeline.open
    timeline.settle_if_late(14.0)
    assert not timeline.open


def test_the_start_moves_back_to_a_keyframe_taken_just_before_it() -> None:
    timeline = Timeline(10.0)
    assert timeline.holds(10.0 - EARLY_KEYFRAME) and not timeline.holds(9.99 - EARLY_KEYFRAME)
    timeline.settle(9.9)
    assert timeline.output_time(9.9) == pytest.approx(0.0)
    assert timeline.output_time(10.0) == pytest.approx(0.1)


def test_audio_only_recordings_are_never_held() -> None:
    timeline = Timeline(10.0, lambda: None, video=False)
    assert not timeline.holds(10.5)
    timeline.pause(11.0)
    assert not timeline.holds(11.1)  # no keyframe will move the resume back
    timeline.resume(11.25)
    assert not timeline.holds(11.3)
    assert timeline.output_time(11.3) == pytest.approx(1.05)  # cut exactly, no grid


def test_nothing_is_recorded_after_the_stop() -> None:
    timeline = settled_timeline()
    timeline.stop(12.0)
    assert timeline.after_stop(12.0) and not timeline.after_stop(11.99)
    assert timeline.output_time(12.5) is None
    assert timeline.recorded_time(20.0) == pytest.approx(2.0)


# -- file_origin ---------------------------------------------------------------------------


def test_the_file_starts_at_a_point_of_the_video_grid_at_or_before_the_first_sample() -> None:
    assert file_origin([1.0, 1.0 + FRAME], [], FRAME) == (1.0, 0)
    origin, dropped = file_origin([1.0], [0.99, 1.01], FRAME)
    assert dropped == 0 and origin == pytest.approx(1.0 - FRAME)
    assert file_origin([], [0.5, 0.52], FRAME) == (0.5, 0)


def test_a_first_audio_packet_half_a_frame_off_the_grid_is_left_out() -> None:
    first_video = 1.0
    audio = [first_video - FRAME / 2, first_video - FRAME / 2 + 0.02]
    origin, dropped = file_origin([first_video], audio, FRAME)
    assert dropped == 1
    assert origin == first_video  # the next packet comes after the first frame


def test_a_pause_never_comes_before_media_already_recorded() -> None:
    # A sender's clock a little ahead of ours: a frame's instant is after the pause call.
    timeline = settled_timeline()
    assert timeline.output_time(12.010) is not None
    timeline.placed(12.010)
    timeline.pause(12.0)
    assert timeline.output_time(12.005) is not None  # recorded before the cut
    assert timeline.output_time(12.011) is None
    timeline.resume(13.0)
    timeline.settle()
    assert timeline.cuts()[0] > 2.010 - 1e-9


def test_a_pause_after_media_from_ahead_counts_as_asked_and_records_the_rest() -> None:
    timeline = settled_timeline()
    timeline.placed(12.010)
    timeline.pause(12.0)
    timeline.resume(13.0)
    timeline.settle()
    assert timeline.paused_time(14.0) == pytest.approx(1.0)  # as asked
    assert timeline.recorded_time(14.0) == pytest.approx(3.010)  # what was recorded


def test_an_offset_learned_while_congested_steps_down_by_whole_frames() -> None:
    clock = SenderClock()
    for k in range(40):
        clock.observe(k * FRAME, 10.0 + k * FRAME + 0.500)  # half a second late throughout
    assert clock.offset == pytest.approx(10.5)
    clock.observe(40 * FRAME, 10.0 + 40 * FRAME + 0.450)  # a little sooner: kept
    assert clock.offset == pytest.approx(10.5)
    clock.observe(41 * FRAME, 10.0 + 41 * FRAME + 0.010)  # the congestion is over
    stepped = clock.offset
    assert stepped is not None and 10.010 <= stepped < 10.010 + FRAME
    assert (10.5 - stepped) / FRAME == pytest.approx(round((10.5 - stepped) / FRAME))


def test_a_stream_given_up_on_is_placed_by_arrival_at_once() -> None:
    sender = SenderClock()
    clock = StreamClock(90000, sender)
    assert clock.reference(0, 100.0) is None  # no report, the sender not settled
    clock.place_by_arrival()
    assert clock.reference(3000, 100.05) == pytest.approx(100.05)
    clock.place_by_arrival()  # again: nothing changes (the frames keep their cadence)
    assert clock.reference(6000, 100.06) == pytest.approx(100.05 + 3000 / 90000)
    assert not clock.synchronised


# -- the frame-rate grid -----------------------------------------------------------------


def test_the_grid_of_30_15_and_10_fps_is_30_fps_and_of_25_and_60_their_own() -> None:
    for fps, grid_rate in ((30, 30), (15, 30), (10, 30), (25, 25), (20, 20), (60, 60)):
        frames = FrameInterval()
        for k in range(20):
            frames.add(k / fps)
        assert frames.grid == pytest.approx(1 / grid_rate), fps


def test_a_leading_stream_moves_only_by_whole_frames_when_its_sender_clock_is_relearned() -> None:
    # A sender stalled 2.5 s and then sent every frame late for 2.7 s: its clock is
    # learned afresh (an offset 2.5123 s larger), then steps back down by whole frames
    # (frames placed before the latest recorded are not recorded).
    # The video moves by whole frame intervals only (the nearest): never two frames
    # closer than an interval, the grid's phase kept.
    sender = SenderClock()
    video = StreamClock(90000, sender, leading=True)
    video.sender_report(SenderReport(1000.0, 0))
    placed = []
    for index in range(30 * 10):
        late = 2.5123 if 120 <= index < 200 else 0.0
        reference = video.reference(index * 3000, 50 + index / 30 + 0.01 + late)
        if reference is not None:
            placed.append(reference)
    phases = {round((b - a) * 30, 6) % 1 for a, b in itertools.pairwise(placed)}
    assert phases <= {0.0, 1.0}
    # What a recording keeps (frames after the latest it wrote) is a frame interval apart.
    kept = [placed[0]]
    for reference in placed[1:]:
        if reference > kept[-1]:
            kept.append(reference)
    steps = [b - a for a, b in itertools.pairwise(kept)]
    assert min(steps) >= FRAME - 1e-9
    assert max(steps) > 2.0  # the relearned offset was followed (whole frames of it)
