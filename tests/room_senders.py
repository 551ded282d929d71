"""A room's participants, in a process of their own, for tests that measure alignment.

    python -m tests.room_senders SECONDS OFFSET [OFFSET ...]

One participant per OFFSET: its own peer connection sending flashing VP8 and beeping Opus
(encoded once, sent as they are: aiortc packs them without encoding), paced on a clock of
its own that starts OFFSET seconds after the first one's, so each participant flashes and
beeps at its own instants.

Their RTCP sender reports say when their media was taken, as a browser's do (it maps
timestamps by its capture clock): aiortc's own map a timestamp to the instant its packet
went out, which on a busy machine can be 10 ms after the frame was due, and a video
stream keeps the mapping of its first report. Here the clock aiortc's senders read, while
they send a frame, reads the instant that frame was due; so a test measures the
recording's alignment, not how late this process was scheduled.

Protocol, one JSON line each way: prints ``{"offers": [SDP, ...]}``; reads
``{"answers": [SDP, ...]}``; once every connection is up, starts the clocks and prints
``{"starts": [S, ...]}`` (each clock's start, ``time.monotonic()`` seconds, which every
process of the machine shares); sends until its standard input closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import datetime
import json
import sys
import time

import aiortc.clock
import aiortc.rtcrtpsender
import av
from aiortc import RTCPeerConnection, RTCSessionDescription

from .media import Clock, EncodedMedia, HeldTrack, encode_sync_source, wait_for
from .server_support import hold_ice_to_loopback

LEAD = 0.5  # seconds between the connections being up and the first clock starting

# The instant (time.monotonic()) the frame a sender is sending was due, in its task.
_taken: contextvars.ContextVar[float | None] = contextvars.ContextVar("taken", default=None)


class CapturedTrack(HeldTrack):
    """A :class:`HeldTrack` that tells the clock below when each frame it gives was due."""

    async def recv(self) -> av.Packet:
        packet = await super().recv()
        _taken.set(self.clock.start + self.sent[-1])  # in the sending task's context
        return packet


class CaptureClock:
    """``aiortc.clock`` as aiortc's RTP senders read it: the NTP time of the instant the
    frame being sent was due (the wall clock moved back by how late it is)."""

    current_datetime = staticmethod(aiortc.clock.current_datetime)

    @staticmethod
    def current_ntp_time() -> int:
        now = aiortc.clock.current_datetime()
        taken = _taken.get()
        if taken is not None:
            now -= datetime.timedelta(seconds=time.monotonic() - taken)
        return aiortc.clock.datetime_to_ntp(now)


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def main(offsets: list[float], video: EncodedMedia, audio: EncodedMedia) -> None:
    hold_ice_to_loopback()
    aiortc.rtcrtpsender.clock = CaptureClock  # type: ignore[attr-defined]
    clocks = [Clock() for _ in offsets]
    go = asyncio.Event()
    peers = []
    for clock in clocks:
        pc = RTCPeerConnection()
        pc.addTrack(CapturedTrack("video", video, clock, go))
        pc.addTrack(CapturedTrack("audio", audio, clock, go))
        await pc.setLocalDescription(await pc.createOffer())
        peers.append(pc)
    emit(offers=[pc.localDescription.sdp for pc in peers])
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    answers = json.loads(await reader.readline())["answers"]
    for pc, sdp in zip(peers, answers, strict=True):
        await pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
    await wait_for(lambda: all(pc.connectionState == "connected" for pc in peers), 20)
    first = time.monotonic() + LEAD
    for clock, offset in zip(clocks, offsets, strict=True):
        clock.start = first + offset
    go.set()
    emit(starts=[clock.start for clock in clocks])
    await reader.read()  # until the test closes our standard input
    for pc in peers:
        await pc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("seconds", type=float)
    parser.add_argument("offsets", type=float, nargs="+")
    args = parser.parse_args()
    asyncio.run(main(args.offsets, *encode_sync_source(args.seconds)))
