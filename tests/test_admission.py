"""Admission by measured load, as pure logic: the decision and its hysteresis on explicit
samples and instants, the sample computed from counter readings, the parsing of the
kernel's UDP tables, and the totals that outlive recordings. No wall clock."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import pytest

from rtc_recorder.server.admission import (
    Admission,
    AdmissionState,
    Declined,
    Limits,
    LoadSample,
)
from rtc_recorder.server.load import (
    Reading,
    UdpDrops,
    available_cpus,
    parse_udp_table,
    sample_between,
)
from rtc_recorder.server.looplag import percentile
from rtc_recorder.server.metrics import Totals

LIMITS = Limits(loop_lag_p99_ms=50, loop_busy=0.8, cpu=0.9, udp_drops=20, resume=0.5, calm=10)
QUIET = LoadSample(loop_lag_p99_ms=2, loop_busy=0.1, cpu=0.1, udp_drops=0)
SETTLE = 4.0


def admission() -> Admission:
    return Admission(LIMITS, settle=SETTLE)


def admits(admission: Admission, sessions: int, at: float = 0.0) -> bool:
    return admission.refusal(sessions, at) is None


def busy(**changes: float) -> LoadSample:
    """The quiet sample with some signals changed."""
    return dataclasses.replace(QUIET, **changes)


def test_a_quiet_process_stays_open() -> None:
    gate = admission()
    for second in range(30):
        assert gate.observe(QUIET, second) is None
    assert gate.state is AdmissionState.OPEN and admits(gate, 40, 30)


@pytest.mark.parametrize(
    ("signal", "value"),
    [("loop_lag_p99_ms", 51.0), ("loop_busy", 0.81), ("cpu", 0.95), ("udp_drops", 21.0)],
)
def test_any_signal_over_its_limit_closes_admission_at_once(signal: str, value: float) -> None:
    gate = admission()
    gate.observe(QUIET, 0)
    change = gate.observe(busy(**{signal: value}), 1)
    assert change is not None and change.state is AdmissionState.AT_CAPACITY
    assert change.over == (signal,)
    assert gate.refusal(3, 1) == Declined("capacity", 10)
    assert gate.since == 1


def test_a_signal_at_its_limit_is_not_over_it() -> None:
    assert admission().observe(busy(loop_busy=0.8), 0) is None


def test_a_process_without_sessions_admits_even_at_capacity() -> None:
    gate = admission()
    gate.observe(busy(cpu=1.0), 0)
    assert gate.state is AdmissionState.AT_CAPACITY
    assert admits(gate, 0) and not admits(gate, 1)


def test_it_reopens_only_after_the_load_stayed_below_the_resume_level_for_the_calm_time() -> None:
    gate = admission()
    gate.observe(busy(loop_busy=0.9), 0)
    # Below the limit but above resume x limit (0.4): not calm, stays closed.
    for second in range(1, 30):
        assert gate.observe(busy(loop_busy=0.6), second) is None
    assert gate.state is AdmissionState.AT_CAPACITY
    # Calm from 30 on: open at 40, not before.
    for second in range(30, 40):
        assert gate.observe(busy(loop_busy=0.3), second) is None
    change = gate.observe(busy(loop_busy=0.3), 40)
    assert change is not None and change.state is AdmissionState.OPEN
    assert admits(gate, 5, 40)


def test_a_single_busy_sample_restarts_the_calm_time() -> None:
    gate = admission()
    gate.observe(busy(udp_drops=100), 0)
    for second in range(1, 8):
        gate.observe(QUIET, second)
    gate.observe(busy(udp_drops=15), 8)  # under the limit, over the resume level
    for second in range(9, 19):
        assert gate.observe(QUIET, second) is None
    assert gate.state is AdmissionState.AT_CAPACITY
    change = gate.observe(QUIET, 19)
    assert change is not None and change.state is AdmissionState.OPEN


def test_retry_after_counts_down_the_calm_time() -> None:
    gate = admission()
    gate.observe(busy(cpu=1.0), 0)
    assert gate.refusal(1, 0) == Declined("capacity", 10)
    gate.observe(QUIET, 1)
    assert gate.refusal(1, 4.5) == Declined("capacity", 7)
    assert gate.refusal(1, 10.5) == Declined("capacity", 1)


def test_a_limit_of_zero_turns_its_signal_off() -> None:
    gate = Admission(
        Limits(loop_lag_p99_ms=0, loop_busy=0, cpu=0, udp_drops=0, resume=0.5, calm=1), SETTLE
    )
    assert gate.observe(LoadSample(5000, 1.0, 1.0, 1e6), 0) is None
    assert gate.state is AdmissionState.OPEN


def test_the_json_names_the_signals_as_the_api_does() -> None:
    gate = admission()
    gate.observe(busy(loop_lag_p99_ms=80), 0)
    body = gate.to_json()
    assert body["state"] == "at capacity" and body["over"] == ["loopLagP99Ms"]
    assert body["measured"] == {"loopLagP99Ms": 80, "loopBusy": 0.1, "cpu": 0.1, "udpDrops": 0}
    assert body["limits"]["udpDrops"] == 20


def test_near_capacity_new_sessions_come_one_per_settle_time() -> None:
    gate = admission()
    gate.observe(busy(loop_busy=0.5), 0)  # warm: over 0.5 x 0.8, under 0.8
    assert admits(gate, 3, 0.5)
    gate.admitted(0.5)
    assert gate.refusal(4, 1.0) == Declined("settling", 4)
    gate.observe(busy(loop_busy=0.55), 2)
    assert gate.refusal(4, 4.4) == Declined("settling", 1)
    assert admits(gate, 4, 4.5)  # the last one is measured now
    # Settling is no reason for /readyz to send sessions elsewhere.
    assert gate.refusal(4, 1.0, settling=False) is None


def test_a_burst_is_taken_as_far_as_the_measured_cost_per_session_leaves_room() -> None:
    gate = admission()
    gate.observe(busy(loop_busy=0.1, cpu=0.05), 0)  # 2 sessions measured: 0.05 each
    # Room under 0.5 x 0.8 = 0.4 for 6 sessions at 0.05: 2 measured + 6 = 0.4.
    for count in range(6):
        assert admits(gate, 2 + count, 0.1 * count), count
        gate.admitted(0.1 * count)
    assert gate.refusal(8, 0.6) == Declined("settling", 4)
    assert admits(gate, 8, 4.0)  # the first of the burst is measured by now


@pytest.mark.parametrize("sampled", [False, True])
def test_a_process_that_measured_none_of_its_sessions_takes_a_few_until_it_has(
    sampled: bool,
) -> None:
    gate = Admission(LIMITS, settle=SETTLE, first=3)
    if sampled:
        gate.observe(QUIET, 0)
    for count in range(3):
        assert admits(gate, count, 0.1 * count), count
        gate.admitted(0.1 * count)
    # Three unmeasured: the fourth waits until the first is measured (at 4.0).
    assert gate.refusal(3, 0.3) == Declined("settling", 4)
    assert gate.refusal(3, 3.9) == Declined("settling", 1)
    gate.observe(busy(loop_busy=0.15, cpu=0.15), 4.0)  # the first one's cost: 0.05 each
    # 1 measured, 2 unmeasured + 1 new at 0.15 each: 0.15 x 4 = 0.6 > 0.4 = resume x 0.8.
    assert gate.refusal(3, 4.0) == Declined("settling", 1)
    gate.observe(busy(loop_busy=0.15, cpu=0.15), 4.2)
    assert admits(gate, 3, 4.2)  # all three measured now, none settling


def test_offers_negotiated_side_by_side_each_count_the_others() -> None:
    gate = Admission(LIMITS, settle=SETTLE, first=3)
    # None of them exists yet while they are negotiated: 0 sessions all along.
    for count in range(3):
        assert admits(gate, 0, 0.01 * count), count
        gate.admitted(0.01 * count)
    assert gate.refusal(0, 0.05) == Declined("settling", 4)
    gate.withdrawn()  # one offer failed: its place is free again
    assert admits(gate, 0, 0.06)
    # Once they are measured, a process without sessions admits again.
    gate.admitted(0.06)
    assert admits(gate, 0, 4.1)


def test_with_every_limit_off_a_burst_is_taken_whole() -> None:
    gate = Admission(
        Limits(loop_lag_p99_ms=0, loop_busy=0, cpu=0, udp_drops=0, resume=0.5, calm=1), SETTLE
    )
    for count in range(10):
        assert admits(gate, count, 0.1 * count), count
        gate.admitted(0.1 * count)


def test_a_sample_is_the_rates_between_two_readings() -> None:
    first = Reading(at=100.0, process_cpu=10.0, loop_busy=4.0, udp_drops=7)
    last = Reading(at=103.0, process_cpu=13.6, loop_busy=5.5, udp_drops=67)
    lags = [0.001] * 98 + [0.030, 0.200]
    sample = sample_between(first, last, cpus=2.0, lags=lags)
    assert sample.cpu == pytest.approx(0.6)  # 3.6 CPU-s in 3 s on 2 CPUs
    assert sample.loop_busy == pytest.approx(0.5)
    assert sample.udp_drops == pytest.approx(20.0)
    assert sample.loop_lag_p99_ms == pytest.approx(30.0)


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.99) == 0.0
    assert percentile([5.0], 0.99) == 5.0
    assert percentile(list(map(float, range(1, 101))), 0.99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0


UDP_TABLE = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  120: 0100007F:A1B2 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 {a} 2 0000000000000000 0
  121: 0100007F:A1B3 00000000:0000 07 00000000:00031000 00:00000000 00000000     0        0 {b} 2 0000000000000000 {drops}
  122: 0100007F:A1B4 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 999999999 2 0000000000000000 500
"""  # noqa: E501


def test_the_udp_table_gives_drops_by_inode() -> None:
    assert parse_udp_table(UDP_TABLE.format(a=11, b=12, drops=42)) == {
        11: 0,
        12: 42,
        999999999: 500,
    }
    assert parse_udp_table("header only\n") == {}


def test_udp_drops_count_only_the_process_sockets_and_add_up(tmp_path: Path) -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
    ):
        inode_a, inode_b = (os.fstat(s.fileno()).st_ino for s in (a, b))
        table = tmp_path / "udp"
        drops = UdpDrops([table, tmp_path / "missing"])
        table.write_text(UDP_TABLE.format(a=inode_a, b=inode_b, drops=10))
        assert drops.read() == 10  # a socket first seen brings what it dropped so far
        table.write_text(UDP_TABLE.format(a=inode_a, b=inode_b, drops=25))
        assert drops.read() == 25
        table.write_text(UDP_TABLE.format(a=inode_a, b=inode_b, drops=25))
        assert drops.read() == 25  # the other process' socket (500 drops) never counts


def test_totals_add_frames_by_kind_and_drops_by_reason() -> None:
    totals = Totals()
    totals.add(
        {
            "bytes": 1000,
            "tracks": [
                {
                    "kind": "video",
                    "framesWritten": 30,
                    "keyframeRequests": 2,
                    "framesDroppedWaitingForKeyframe": 4,
                    "framesDroppedPaused": 1,
                    "droppedFromRecording": False,
                },
                {"kind": "audio", "framesWritten": 50, "framesDroppedOverlapping": 1},
            ],
        }
    )
    totals.add({"bytes": 24, "tracks": [{"kind": "video", "framesWritten": 1}]})
    assert totals.bytes == 1024
    assert totals.frames_written == {"video": 31, "audio": 50}
    assert totals.keyframe_requests["video"] == 2
    assert totals.frames_dropped == {
        ("video", "waiting_for_keyframe"): 4,
        ("video", "paused"): 1,
        ("audio", "overlapping"): 1,
    }


def test_a_cgroup_cpu_quota_caps_the_cpus_the_process_may_use(tmp_path: Path) -> None:
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    relative = next((line[3:] for line in lines if line.startswith("0::")), None)
    assert relative is not None, "no cgroup v2 entry for this process"
    folder = tmp_path / relative.lstrip("/")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cpu.max").write_text("50000 100000\n")
    assert available_cpus(tmp_path) == 0.5
    (folder / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0))
