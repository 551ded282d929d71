"""A room recording in a process of its own, for tests that kill it mid-call.

    python -m tests.room_process FOLDER

Two participants (aiortc peer connections on loopback, in this process, sending flashing
VP8 and beeping Opus) are recorded as a room, with one pause. Prints one JSON line,
``{"ready": {...}}`` (the room's ``getStats()`` times), once every participant's file and
the mix have media and the pause has been cut; then records until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack

from rtc_recorder import MediaStream
from rtc_recorder.room import RoomRecorder

from .media import Clock, EncodedMedia, PacketTrack, connect, encode_sync_source, wait_for
from .server_support import hold_ice_to_loopback


async def participant(video: EncodedMedia, audio: EncodedMedia) -> MediaStream:
    """A sender and a receiver peer connection; the received tracks as a stream."""
    sender, receiver = RTCPeerConnection(), RTCPeerConnection()
    tracks: list[MediaStreamTrack] = []
    receiver.on("track", tracks.append)
    clock = Clock()
    sender.addTrack(PacketTrack("video", video, clock))
    sender.addTrack(PacketTrack("audio", audio, clock))
    await connect(sender, receiver)
    await wait_for(lambda: receiver.connectionState == "connected", 20)
    return MediaStream(tracks)


def has_media(stats: dict[str, Any]) -> bool:
    return stats["mix"]["mixedTime"] > 1.0 and all(
        p["fileStart"] is not None for p in stats["participants"].values()
    )


async def main(folder: str, video: EncodedMedia, audio: EncodedMedia) -> None:
    hold_ice_to_loopback()
    streams = [await participant(video, audio) for _ in range(2)]
    room = RoomRecorder(folder, room="killed", timeslice=500)
    for number, stream in enumerate(streams):
        room.add_participant(f"p{number}", f"Participant {number}", stream)
    await room.start()
    await wait_for(lambda: room.getStats()["recordedTime"] > 1.5 and has_media(room.getStats()), 20)
    await room.pause()
    await asyncio.sleep(0.3)  # the scenario: a short pause
    await room.resume()
    await wait_for(lambda: room.getStats()["recordedTime"] > 3.0, 20)
    stats = room.getStats()
    print(json.dumps({"ready": {"recordedTime": stats["recordedTime"]}}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    args = parser.parse_args()
    asyncio.run(main(args.folder, *encode_sync_source(6.0)))
