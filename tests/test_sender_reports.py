"""RTCP sender reports that map nothing. An aiortc sender reports zeros (NTP time 0, RTP
timestamp 0, no packets) until its track gives it a first frame, as a participant that
connects before its camera starts does; RFC 3550 (section 6.4.1) lets a sender without a
wall clock send NTP time 0. Taken as a stream's first mapping, such a report put the
stream on a clock of its own, and once the real reports came, its frames were placed
thousands of millions of seconds away (a room's mix was asked for 700 TiB)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import VideoStreamTrack
from aiortc.rtp import RtcpSenderInfo, RtcpSrPacket

from rtc_recorder.receive.hooks import ReceiverTap

SSRC = 1234
NTP_NOW = 0xEEEE_0000_8000_0000  # an instant of 2027 and half a second


@pytest.fixture
async def tap() -> AsyncIterator[ReceiverTap]:
    """A tap on a real receiver (reports are fed as aiortc's RTCP handler feeds them)."""
    pc = RTCPeerConnection()
    transceiver = pc.addTransceiver("video", direction="recvonly")
    yield ReceiverTap(transceiver.receiver, VideoStreamTrack())
    await pc.close()


def report(ntp: int, timestamp: int, packets: int) -> RtcpSrPacket:
    info = RtcpSenderInfo(
        ntp_timestamp=ntp, rtp_timestamp=timestamp, packet_count=packets, octet_count=packets
    )
    return RtcpSrPacket(ssrc=SSRC, sender_info=info)


def mapped_after(tap: ReceiverTap, packet: RtcpSrPacket) -> bool:
    """Whether the stream's clock takes ``packet`` as its mapping (applied with the next
    frame, here one at RTP timestamp 90000)."""
    tap._on_sender_report(packet)
    tap._latest = (90_000, 90_000)  # as a delivered frame leaves it
    return tap.clock(SSRC, 90_000).synchronised


@pytest.mark.parametrize(
    "empty",
    [report(0, 0, 0), report(0, 90_000, 30), report(NTP_NOW, 0, 0)],
    ids=["zeros", "no wall clock", "no media yet"],
)
async def test_a_report_without_wall_clock_or_media_maps_nothing(
    tap: ReceiverTap, empty: RtcpSrPacket
) -> None:
    assert not mapped_after(tap, empty)


async def test_a_report_of_media_sent_maps_the_stream(tap: ReceiverTap) -> None:
    assert mapped_after(tap, report(NTP_NOW, 90_000, 30))
    assert tap.clock(SSRC, 90_000).sender_time(180_000) == pytest.approx(
        (NTP_NOW >> 32) + 0.5 + 1.0
    )
