"""Publish a media file to an rtc-recorder server and drive its recording from the API.

    python examples/publish_file.py video.mp4 --server http://127.0.0.1:8080
    python examples/publish_file.py video.mp4 --whip --token SECRET --record 4 --pause 2

The file is played in real time by aiortc's MediaPlayer and sent over WebRTC, offered
through ``POST /offer`` (or WHIP, ``POST /whip``). The script then calls start, pause,
resume and stop on the session's recorder and prints every event the server sends on
the session's WebSocket, ending with the name of the recording.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer


async def offer(
    http: aiohttp.ClientSession, pc: RTCPeerConnection, whip: bool, mime_type: str | None
) -> tuple[str, str | None]:
    """Send the offer; return the session id and (WHIP) the resource to DELETE."""
    await pc.setLocalDescription(await pc.createOffer())
    if whip:
        async with http.post(
            "/whip", data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
        ) as response:
            if response.status != 201:
                raise SystemExit(f"WHIP offer refused: {response.status} {await response.text()}")
            answer, location = await response.text(), response.headers["Location"]
        session = location.rsplit("/", 1)[1]
    else:
        body: dict[str, Any] = {"sdp": pc.localDescription.sdp, "type": "offer"}
        if mime_type:
            body["mimeType"] = mime_type
        async with http.post("/offer", json=body) as response:
            reply = await response.json()
            if response.status != 200:
                raise SystemExit(f"offer refused: {reply['error']}: {reply['message']}")
        answer, session, location = reply["sdp"], reply["session"], None
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return session, location


async def call(http: aiohttp.ClientSession, session: str, method: str, **body: Any) -> None:
    """Call a recorder method through the API and print the state it answers."""
    async with http.post(f"/api/sessions/{session}/{method}", json=body) as response:
        reply = await response.json()
        if response.status == 200:
            print(f"> {method}: {reply['state']}")
        else:
            print(f"> {method}: {reply['error']}: {reply['message']}")


async def print_events(socket: aiohttp.ClientWebSocketResponse, stopped: asyncio.Event) -> None:
    async for message in socket:
        if message.type != aiohttp.WSMsgType.TEXT:
            break
        event = json.loads(message.data)
        details = {k: v for k, v in event.items() if k != "type"}
        print(f"< {event['type']}: {json.dumps(details)}")
        if event["type"] == "stop":
            stopped.set()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="a media file aiortc's MediaPlayer can play")
    parser.add_argument("--server", default="http://127.0.0.1:8080")
    parser.add_argument("--whip", action="store_true", help="offer through WHIP, not /offer")
    parser.add_argument("--token", help="the server's bearer token")
    parser.add_argument("--mime-type", help="what to record (with /offer)")
    parser.add_argument("--timeslice", type=int, default=1000)
    parser.add_argument(
        "--record", type=float, default=3.0, help="seconds before and after the pause"
    )
    parser.add_argument("--pause", type=float, default=2.0, help="seconds paused")
    args = parser.parse_args()

    player = MediaPlayer(args.file)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for track in (player.audio, player.video):
        if track is not None:
            pc.addTrack(track)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    async with aiohttp.ClientSession(args.server, headers=headers) as http:
        session, location = await offer(http, pc, args.whip, args.mime_type)
        print(f"session {session}")
        socket = await http.ws_connect(f"/api/sessions/{session}/events")
        stopped = asyncio.Event()
        printer = asyncio.ensure_future(print_events(socket, stopped))
        connected = asyncio.Event()
        pc.on(
            "connectionstatechange", lambda: pc.connectionState == "connected" and connected.set()
        )
        await asyncio.wait_for(connected.wait(), 20)

        await call(http, session, "start", timeslice=args.timeslice)
        await asyncio.sleep(args.record)
        await call(http, session, "pause")
        await asyncio.sleep(args.pause)
        await call(http, session, "resume")
        await asyncio.sleep(args.record)
        await call(http, session, "stop")
        await asyncio.wait_for(stopped.wait(), 30)

        if location is not None:
            await http.delete(location)
        else:
            await http.delete(f"/api/sessions/{session}")
        await socket.close()
        printer.cancel()
    await pc.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
