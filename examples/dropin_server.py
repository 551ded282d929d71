"""An aiortc server that records what browsers send it, switched to rtc-recorder by one import.

    python examples/dropin_server.py --record-to call.webm --port 8081

This is the shape of aiortc's own server examples: an aiohttp ``/offer`` endpoint, one
peer connection per offer, every incoming track handed to a ``MediaRecorder`` that starts
once the answer is made and stops when the peer goes away. The only change for
rtc-recorder is the import line below; the recording now keeps the received VP8/Opus
frames as they are instead of decoding and re-encoding them on the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

# from aiortc.contrib.media import MediaRecorder
from rtc_recorder import MediaRecorder

peer_connections: set[RTCPeerConnection] = set()
RECORD_TO = web.AppKey("record_to", str)


async def offer(request: web.Request) -> web.Response:
    params = await request.json()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    peer_connections.add(pc)
    recorder = MediaRecorder(request.app[RECORD_TO])

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        recorder.addTrack(track)

        @track.on("ended")
        async def on_ended() -> None:
            await recorder.stop()

    @pc.on("connectionstatechange")
    async def on_connectionstatechange() -> None:
        if pc.connectionState in ("failed", "closed"):
            await recorder.stop()
            await pc.close()
            peer_connections.discard(pc)

    await pc.setRemoteDescription(RTCSessionDescription(sdp=params["sdp"], type=params["type"]))
    await recorder.start()
    await pc.setLocalDescription(await pc.createAnswer())
    return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})


async def on_shutdown(app: web.Application) -> None:
    await asyncio.gather(*(pc.close() for pc in peer_connections))
    peer_connections.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description="aiortc server recording with rtc-recorder")
    parser.add_argument("--record-to", default="recording.webm")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    app = web.Application()
    app[RECORD_TO] = args.record_to
    app.on_shutdown.append(on_shutdown)
    app.router.add_post("/offer", offer)
    web.run_app(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
