"""A room's participants, in a process of their own, for tests that measure alignment.

    python -m tests.room_senders SECONDS OFFSET [OFFSET ...]

One participant per OFFSET: its own peer connection sending flashing VP8 and beeping Opus
(encoded once, sent as they are: aiortc packs them without encoding), paced on a clock of
its own that starts OFFSET seconds after the first one's, so each participant flashes and
beeps at its own instants. aiortc's RTCP sender reports map each packet's timestamp to
when it was sent: apart from the recording, a sender is not made late by the recorder's
busy event loop, so its reports say when its media was taken.

Protocol, one JSON line each way: prints ``{"offers": [SDP, ...]}``; reads
``{"answers": [SDP, ...]}``; once every connection is up, starts the clocks and prints
``{"starts": [S, ...]}`` (each clock's start, ``time.monotonic()`` seconds, which every
process of the machine shares); sends until its standard input closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from aiortc import RTCPeerConnection, RTCSessionDescription

from .media import Clock, EncodedMedia, HeldTrack, encode_sync_source, wait_for
from .server_support import hold_ice_to_loopback

LEAD = 0.5  # seconds between the connections being up and the first clock starting


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def main(offsets: list[float], video: EncodedMedia, audio: EncodedMedia) -> None:
    hold_ice_to_loopback()
    clocks = [Clock() for _ in offsets]
    go = asyncio.Event()
    peers = []
    for clock in clocks:
        pc = RTCPeerConnection()
        pc.addTrack(HeldTrack("video", video, clock, go))
        pc.addTrack(HeldTrack("audio", audio, clock, go))
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
