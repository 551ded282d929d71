"""Frame assembly on explicit instants: packets in, frames out, no network, no clock."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import av
import pytest
from aiortc.codecs import depayload
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from rtc_recorder.codecs import is_keyframe
from rtc_recorder.receive.assembler import Frame, FrameAssembler, Packet
from rtc_recorder.receive.hooks import WAITS, assembly_packet

from .rtp_fixtures import Capture, load

SSRC = 1234
WAIT = 0.5


def video_frame(
    sequence: int, timestamp: int, arrival: float, parts: int = 3, ssrc: int = SSRC
) -> list[Packet]:
    """The packets of one video frame: the first begins it, the last carries the marker."""
    return [
        Packet(
            ssrc=ssrc,
            sequence=(sequence + i) % 65536,
            timestamp=timestamp % (1 << 32),
            data=bytes([timestamp % 251, i]),
            arrival=arrival + i * 0.001,
            starts_frame=i == 0,
            ends_frame=i == parts - 1,
        )
        for i in range(parts)
    ]


def feed(assembler: FrameAssembler, packets: list[Packet]) -> list[object]:
    frames = []
    for packet in packets:
        frames += assembler.push(packet, packet.arrival)
    return frames


def stream(count: int, start_sequence: int = 100, start_timestamp: int = 9000) -> list[Packet]:
    """``count`` frames of 3 packets, 30 fps."""
    packets = []
    for k in range(count):
        packets += video_frame(start_sequence + 3 * k, start_timestamp + 3000 * k, k / 30)
    return packets


def test_frames_in_order_come_out_whole_with_their_first_packets_arrival() -> None:
    assembler = FrameAssembler(wait=WAIT)
    frames = feed(assembler, stream(4))
    assert [f.timestamp for f in frames] == [9000, 12000, 15000, 18000]
    assert all(f.complete and not f.gap for f in frames)
    assert frames[1].data == bytes([12000 % 251, 0, 12000 % 251, 1, 12000 % 251, 2])
    assert frames[1].arrival == 1 / 30


def test_a_frame_comes_out_as_soon_as_its_marker_packet_arrives() -> None:
    assembler = FrameAssembler(wait=WAIT)
    first, second, last = video_frame(10, 3000, 0.0)
    assert assembler.push(first, 0.0) == []
    assert assembler.push(second, 0.001) == []
    assert len(assembler.push(last, 0.002)) == 1


def test_reordered_packets_are_put_back_in_order() -> None:
    assembler = FrameAssembler(wait=WAIT)
    packets = stream(3)
    order = [1, 0, 4, 2, 3, 5, 8, 7, 6]
    frames = feed(assembler, [packets[i] for i in order])
    assert [f.timestamp for f in frames] == [9000, 12000, 15000]
    assert all(f.complete and not f.gap for f in frames)
    assert frames[0].data == bytes([9000 % 251, 0, 9000 % 251, 1, 9000 % 251, 2])


def test_a_lost_packet_holds_what_follows_for_the_wait_then_gives_up() -> None:
    assembler = FrameAssembler(wait=WAIT)
    packets = stream(3)
    del packets[4]  # the middle packet of the second frame
    frames = feed(assembler, packets)
    assert [f.timestamp for f in frames] == [9000]  # the rest waits for the hole
    # The hole was seen when packet 5 arrived (1/30 + 0.002 s); nothing before the wait.
    assert assembler.poll(1 / 30 + 0.002 + WAIT - 0.01) == []
    late = assembler.poll(1 / 30 + 0.002 + WAIT)
    assert [(f.timestamp, f.complete, f.gap) for f in late] == [
        (12000, False, False),
        (15000, True, True),
    ]
    assert assembler.counters.missing == 1
    assert assembler.counters.incomplete == 1


def test_a_retransmission_within_the_wait_makes_the_frame_whole() -> None:
    assembler = FrameAssembler(wait=WAIT)
    packets = stream(3)
    lost = packets.pop(4)
    frames = feed(assembler, packets)
    lost.arrival = 0.2
    frames += assembler.push(lost, 0.2)
    assert [(f.timestamp, f.complete, f.gap) for f in frames] == [
        (9000, True, False),
        (12000, True, False),
        (15000, True, False),
    ]
    assert assembler.counters.missing == 0


def test_at_one_frame_a_second_the_wait_counts_from_when_the_hole_is_seen() -> None:
    # A screen share at 1 fps loses the last packet of a frame: nothing reveals the hole
    # until the next frame's first packet a second later; its retransmission (NACKed then)
    # comes 50 ms after that and must still be taken.
    assembler = FrameAssembler(wait=WAIT)
    first = video_frame(100, 0, 0.0)
    second = video_frame(103, 90000, 1.0)
    third = video_frame(106, 180000, 2.0)
    frames = feed(assembler, [first[0], first[1]])  # first[2] is lost for now
    frames += assembler.push(second[0], 1.0)
    assert frames == []
    frames += assembler.push(first[2], 1.05)
    frames += feed(assembler, second[1:] + third)
    assert [(f.timestamp, f.complete, f.gap) for f in frames] == [
        (0, True, False),
        (90000, True, False),
        (180000, True, False),
    ]


def test_a_frame_whose_beginning_is_lost_is_skipped_and_the_next_follows_a_gap() -> None:
    assembler = FrameAssembler(wait=WAIT)
    packets = stream(3)
    del packets[3]  # the first packet of the second frame
    frames = feed(assembler, packets)
    frames += assembler.poll(10.0)
    assert [(f.timestamp, f.complete, f.gap) for f in frames] == [
        (9000, True, False),
        (15000, True, True),
    ]
    assert assembler.counters.missing == 1
    assert assembler.counters.discarded == 2


def test_too_many_packets_behind_a_hole_end_the_wait() -> None:
    assembler = FrameAssembler(wait=60.0, max_held=10)
    packets = stream(6)
    del packets[1]
    frames = feed(assembler, packets)
    assert [f.timestamp for f in frames][:1] == [9000] and frames[0].complete is False
    assert [f.timestamp for f in frames[1:]] == [12000, 15000, 18000, 21000, 24000]


def test_sequence_numbers_and_timestamps_wrap_around() -> None:
    assembler = FrameAssembler(wait=WAIT)
    packets = stream(6, start_sequence=65530, start_timestamp=(1 << 32) - 7000)
    frames = feed(assembler, packets)
    assert [f.timestamp for f in frames] == [(1 << 32) - 7000 + 3000 * k for k in range(6)]
    assert all(f.complete and not f.gap for f in frames)


def test_padding_takes_sequence_numbers_without_making_frames_or_holes() -> None:
    assembler = FrameAssembler(wait=WAIT)
    first = video_frame(100, 3000, 0.0)
    padding = [Packet(SSRC, 103 + i, 3000, b"", 0.01) for i in range(4)]
    second = video_frame(107, 6000, 0.033)
    frames = feed(assembler, first + padding + second)
    assert [(f.timestamp, f.complete, f.gap) for f in frames] == [
        (3000, True, False),
        (6000, True, False),
    ]
    assert assembler.counters.padding == 4


def test_duplicates_are_dropped() -> None:
    assembler = FrameAssembler(wait=WAIT)
    packets = stream(2)
    frames = feed(assembler, packets[:3] + packets[:2] + packets[3:] + packets[4:])
    assert [f.timestamp for f in frames] == [9000, 12000]
    assert assembler.counters.duplicates == 4


def test_a_new_ssrc_starts_a_new_stream_after_a_gap() -> None:
    assembler = FrameAssembler(wait=WAIT)
    old = stream(2)
    new = video_frame(40000, 777, 0.1, ssrc=99) + video_frame(40003, 3777, 0.133, ssrc=99)
    frames = feed(assembler, old[:4] + new)  # the old stream's second frame never completes
    assert [(f.ssrc, f.timestamp, f.complete, f.gap) for f in frames] == [
        (SSRC, 9000, True, False),
        (SSRC, 12000, False, False),
        (99, 777, True, True),
        (99, 3777, True, False),
    ]
    assert assembler.counters.restarts == 1


def test_a_jump_in_sequence_numbers_restarts_the_stream() -> None:
    assembler = FrameAssembler(wait=WAIT)
    frames = feed(assembler, stream(1) + stream(1, start_sequence=30000, start_timestamp=12000))
    assert [(f.timestamp, f.gap) for f in frames] == [(9000, False), (12000, True)]


def test_a_frame_without_a_marker_ends_where_the_next_timestamp_begins() -> None:
    assembler = FrameAssembler(wait=WAIT)
    first = video_frame(100, 3000, 0.0)
    first[-1].ends_frame = False
    frames = feed(assembler, first + video_frame(103, 6000, 0.033))
    assert [(f.timestamp, f.complete) for f in frames] == [(3000, True), (6000, True)]


def test_audio_packets_are_frames_of_their_own_put_in_order() -> None:
    assembler = FrameAssembler(wait=0.1)
    packets = [Packet(SSRC, 500 + k, 960 * k, bytes([k]), k * 0.02) for k in range(6)]
    order = [0, 2, 1, 3, 5, 4]
    frames = feed(assembler, [packets[i] for i in order])
    assert [f.timestamp for f in frames] == [960 * k for k in range(6)]


def test_audio_after_a_lost_packet_waits_only_the_wait() -> None:
    assembler = FrameAssembler(wait=0.1)
    packets = [Packet(SSRC, 500 + k, 960 * k, bytes([k]), k * 0.02) for k in range(10)]
    del packets[2]
    frames = feed(assembler, packets)
    # Packet 3 revealed the hole at 0.06 s; packets up to 0.16 s waited, then all came out.
    assert [f.timestamp for f in frames] == [0, 960] + [960 * k for k in range(3, 10)]
    assert [f.gap for f in frames] == [False, False, True] + [False] * 6


def test_flush_gives_up_on_everything_held() -> None:
    assembler = FrameAssembler(wait=WAIT)
    packets = stream(3)
    del packets[4]
    frames = feed(assembler, packets[:-1])  # the last frame also lacks its marker
    frames += assembler.flush()
    assert [(f.timestamp, f.complete) for f in frames] == [
        (9000, True),
        (12000, False),
        (15000, False),
    ]
    assert assembler.held == 0


# -- real Chromium RTP (tests/fixtures), replayed ------------------------------------------


def chromium_frames(
    name: str, kind: str, order: Callable[[list[Any]], list[Any]] = list
) -> tuple[list[Frame], str, Capture]:
    """The capture's ``kind`` media packets, depayloaded as aiortc does and put through
    the assembler the way the receiver tap does, at their recorded arrival instants
    (in the order ``order`` gives them)."""
    capture = load(name)
    ssrc = capture.media_ssrc(kind)
    packets = [(at, p) for at, p in capture.rtp() if p.ssrc == ssrc]
    codec = capture.codecs[packets[0][1].payload_type]
    codec_name = codec.name
    parameters = RTCRtpCodecParameters(mimeType=codec.mime_type, clockRate=codec.clock_rate)
    assembler = FrameAssembler(wait=WAITS[kind])
    frames: list[Frame] = []
    for at, packet in order(packets):
        packet._data = depayload(parameters, packet.payload) if packet.payload else b""
        frames += assembler.push(assembly_packet(packet, codec_name, kind, at), at)
    return frames + assembler.flush(), codec_name, capture


def decodes(codec: str, frames: list[Frame]) -> int:
    """How many frames a real decoder takes without an error, from the first one."""
    decoder = av.CodecContext.create({"h264": "h264", "vp8": "vp8", "opus": "opus"}[codec], "r")
    for frame in frames:
        decoder.decode(av.Packet(frame.data))
    return len(frames)


@pytest.mark.parametrize("name", ["chromium-vp8-opus", "chromium-h264"])
def test_chromium_video_assembles_into_whole_frames_a_decoder_takes(name: str) -> None:
    frames, codec, capture = chromium_frames(name, "video")
    media = [p for _, p in capture.rtp() if p.ssrc == capture.media_ssrc("video") and p.payload]
    assert len(frames) == len({p.timestamp for p in media}) >= 50
    assert all(f.complete and not f.gap for f in frames)
    assert [f.timestamp for f in frames] == sorted(f.timestamp for f in frames)
    assert is_keyframe(codec, frames[0].data)
    assert decodes(codec, frames) == len(frames)


def test_chromium_video_packets_out_of_order_give_the_same_frames() -> None:
    def swapped(packets: list[Any]) -> list[Any]:
        out = list(packets)
        for i in range(5, len(out) - 1, 7):  # every 7th packet arrives after the next one
            (at_a, a), (at_b, b) = out[i], out[i + 1]
            out[i], out[i + 1] = (at_a, b), (at_b, a)
        return out

    in_order, _, _ = chromium_frames("chromium-vp8-opus", "video")
    shuffled, _, _ = chromium_frames("chromium-vp8-opus", "video", swapped)
    assert [(f.timestamp, f.data) for f in shuffled] == [(f.timestamp, f.data) for f in in_order]


def test_chromium_opus_with_dtx_gives_one_frame_per_packet_and_keeps_the_silences() -> None:
    frames, codec, _ = chromium_frames("chromium-opus-dtx", "audio")
    steps = [b.timestamp - a.timestamp for a, b in itertools.pairwise(frames)]
    assert codec == "opus" and all(f.complete and not f.gap for f in frames)
    assert min(steps) == 960 and max(steps) >= 960 * 10  # 20 ms packets, DTX silences
    assert decodes(codec, frames) == len(frames)


def test_a_new_assembler_continues_a_timestamp_scale_already_in_use() -> None:
    # Timestamps wrapped once while nobody assembled frames: a new assembler goes on from
    # where the extended scale had got to, not from the 32-bit value.
    wrapped = (1 << 32) + 5000
    assembler = FrameAssembler(wait=WAIT, timestamps=(5000, wrapped))
    frames = feed(assembler, video_frame(100, 8000, 0.0) + video_frame(103, 11000, 0.033))
    assert [f.timestamp for f in frames] == [wrapped + 3000, wrapped + 6000]


def test_a_stream_joined_mid_frame_starts_with_the_next_whole_frame() -> None:
    assembler = FrameAssembler(wait=WAIT)
    frames = feed(assembler, stream(3)[2:])  # the first frame's last packet, then two
    assert [(f.timestamp, f.complete, f.gap) for f in frames] == [
        (12000, True, False),
        (15000, True, False),
    ]
    assert assembler.counters.discarded == 1 and assembler.counters.incomplete == 0
