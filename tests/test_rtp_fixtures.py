"""What the captured Chromium RTP fixtures hold (``tests/rtp_fixtures.py``): pinned, so
that they are never replaced by captures that no longer show what unit tests of the
receive side rely on."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
from aiortc.rtp import RtcpSrPacket, RtpPacket

from .rtp_fixtures import FIXTURES, RTCP, RTP, Capture, load, read_records, write_records

NAMES = ("chromium-vp8-opus", "chromium-h264", "chromium-opus-dtx")
H264_STAP_A, H264_FU_A = 24, 28
H264_SPS, H264_PPS, H264_IDR = 7, 8, 5


def media_packets(capture: Capture, kind: str) -> list[tuple[float, RtpPacket]]:
    ssrc = capture.media_ssrc(kind)
    return [(at, packet) for at, packet in capture.rtp() if packet.ssrc == ssrc]


def vp8_picture(payload: bytes) -> tuple[int | None, bool, bool]:
    """(picture ID, starts a frame, is a keyframe) from a VP8 payload descriptor
    (RFC 7741); the keyframe bit is read from the frame's first byte."""
    start = bool(payload[0] & 0x10) and payload[0] & 0x0F == 0
    position, picture_id = 1, None
    if payload[0] & 0x80:
        extensions = payload[1]
        position = 2
        if extensions & 0x80:
            long_id = bool(payload[2] & 0x80)
            picture_id = ((payload[2] & 0x7F) << 8 | payload[3]) if long_id else payload[2]
            position += 2 if long_id else 1
        position += bool(extensions & 0x40) + bool(extensions & 0x30)
    return picture_id, start, start and not payload[position] & 0x01


def h264_units(payload: bytes) -> list[int]:
    """The NAL unit types a packet carries (those inside a STAP-A, the fragmented one of
    a FU-A start) besides the packet's own type."""
    kind = payload[0] & 0x1F
    if kind == H264_STAP_A:
        inner, position = [], 1
        while position + 2 < len(payload):
            size = int.from_bytes(payload[position : position + 2], "big")
            inner.append(payload[position + 2] & 0x1F)
            position += 2 + size
        return inner
    if kind == H264_FU_A and payload[1] & 0x80:
        return [payload[1] & 0x1F]
    return []


@pytest.mark.parametrize("name", NAMES)
def test_each_fixture_is_small_and_every_packet_parses(name: str) -> None:
    assert (FIXTURES / f"{name}.rtp").stat().st_size < 300_000
    capture = load(name)
    assert capture.info["chromium"].startswith("156.")
    packets = list(capture.rtp())
    assert len(packets) > 100
    assert all(packet.payload_type in capture.codecs for _, packet in packets)
    assert all(packet.ssrc in capture.ssrcs for _, packet in packets)
    arrivals = [at for _, at, _ in capture.records]
    assert arrivals == sorted(arrivals) and arrivals[-1] <= capture.info["seconds"]


def test_the_fixtures_stay_under_one_megabyte_together() -> None:
    assert sum((FIXTURES / f"{name}.rtp").stat().st_size for name in NAMES) < 1_000_000


def test_vp8_fixture_has_picture_ids_on_every_packet_and_a_keyframe_over_many_packets() -> None:
    capture = load("chromium-vp8-opus")
    packets = media_packets(capture, "video")
    assert capture.codecs[packets[0][1].payload_type].name == "vp8"
    pictures = [vp8_picture(packet.payload) for _, packet in packets]
    ids = [picture_id for picture_id, _, _ in pictures if picture_id is not None]
    assert len(ids) == len(pictures)
    # One picture ID per frame (RTP timestamp), counting up by one (15-bit).
    per_frame = {
        packet.timestamp: picture_id for (_, packet), picture_id in zip(packets, ids, strict=True)
    }
    steps = Counter((b - a) % 0x8000 for a, b in pairwise(per_frame.values()))
    assert set(steps) == {1}, steps
    keyframes = [
        packet.timestamp for (_, packet), (_, _, key) in zip(packets, pictures, strict=True) if key
    ]
    assert keyframes
    assert sum(packet.timestamp == keyframes[0] for _, packet in packets) >= 5


def test_h264_fixture_has_sps_and_pps_in_stap_a_and_fragmented_idr_in_fu_a() -> None:
    capture = load("chromium-h264")
    packets = media_packets(capture, "video")
    codec = capture.codecs[packets[0][1].payload_type]
    assert codec.name == "h264" and codec.parameters["packetization-mode"] == "1"
    kinds = Counter(packet.payload[0] & 0x1F for _, packet in packets)
    assert kinds[H264_STAP_A] >= 1 and kinds[H264_FU_A] >= 20, kinds
    aggregated = [h264_units(p.payload) for _, p in packets if p.payload[0] & 0x1F == H264_STAP_A]
    assert [H264_SPS, H264_PPS] in [units[:2] for units in aggregated]
    fragmented = [h264_units(p.payload) for _, p in packets if p.payload[0] & 0x1F == H264_FU_A]
    assert [H264_IDR] in fragmented
    ends = [p for _, p in packets if p.payload[0] & 0x1F == H264_FU_A and p.payload[1] & 0x40]
    assert ends and all(p.marker for p in ends[:1])


def test_opus_fixture_has_dtx_gaps_with_consecutive_sequence_numbers() -> None:
    capture = load("chromium-opus-dtx")
    packets = [packet for _, packet in media_packets(capture, "audio")]
    assert capture.codecs[packets[0].payload_type].parameters.get("usedtx") == "1"
    gaps = [
        (b.timestamp - a.timestamp) / 48
        for a, b in pairwise(packets)
        if (b.sequence_number - a.sequence_number) % 65536 == 1 and b.timestamp - a.timestamp > 960
    ]
    assert len(gaps) >= 8 and max(gaps) >= 400, gaps
    # The frames DTX sends in a silence are the tiny ones (a few bytes).
    assert sum(len(packet.payload) <= 3 for packet in packets) >= 5


@pytest.mark.parametrize(
    ("name", "count"), [("chromium-vp8-opus", 9), ("chromium-h264", 12), ("chromium-opus-dtx", 0)]
)
def test_padding_only_packets_are_bandwidth_probes_on_the_rtx_ssrc(name: str, count: int) -> None:
    capture = load(name)
    padding = [packet for _, packet in capture.rtp() if not packet.payload]
    assert len(padding) == count
    for packet in padding:
        assert packet.padding_size > 0
        assert capture.ssrcs[packet.ssrc]["role"] == "rtx"
        assert capture.codecs[packet.payload_type].name == "rtx"


def test_vp8_opus_fixture_has_sender_reports_of_both_streams() -> None:
    capture = load("chromium-vp8-opus")
    reports = [(at, p.ssrc) for at, p in capture.rtcp() if isinstance(p, RtcpSrPacket)]
    video = [at for at, ssrc in reports if ssrc == capture.media_ssrc("video")]
    audio = [at for at, ssrc in reports if ssrc == capture.media_ssrc("audio")]
    # Chromium reports video about every second, audio about every five: the first audio
    # report comes seconds after the first audio packet.
    assert len(video) >= 3 and len(audio) >= 1
    assert audio[0] > 1.0 > video[0]


def test_records_survive_a_round_trip_and_broken_files_are_refused(tmp_path: Path) -> None:
    records = [(RTP, 10.0, b"\x80\x60\x00\x01" + bytes(8)), (RTCP, 10.25, b"\x81\xc9\x00\x01")]
    path = tmp_path / "two.rtp"
    write_records(path, records)
    assert read_records(path) == [(RTP, 0.0, records[0][2]), (RTCP, 0.25, records[1][2])]
    data = path.read_bytes()
    for broken, reason in (
        (data[:-2], "broken record"),
        (data[:10], "inside a record header"),
        (b"NOTRTP!!" + data[8:], "not an RTP capture"),
    ):
        path.write_bytes(broken)
        with pytest.raises(ValueError, match=reason):
            read_records(path)
