"""A room's process: its participants publishing the pre-encoded loop into one room
(``POST /offer`` with ``room`` and ``name``), each watching every other one through a
WHEP subscription (``POST /whep/{session}``), as the room page does.

What a subscription receives is counted from its receiver's tap (encoded frames as they
arrive, nothing decoded), so watching costs this process RTP and SRTP only, like sending.

Talks to the orchestrator over its pipe: ``ready`` once every subscription has received
video (or ``error``); then ``mark`` -> ``marked`` (what every participant sent and every
subscription received so far, and when), ``pause`` -> ``sent`` (the tracks stop for good),
``close`` (every peer connection closed, subscriptions ended with ``DELETE``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

import rtc_recorder  # noqa: F401  (registers peer connections, so their taps are found)
from rtc_recorder.codecs import is_keyframe
from rtc_recorder.receive import hooks

from .common import Channel, loopback_only, rtc_configuration, run_child
from .media import load
from .sender import CLOSE_TIMEOUT, Gate, Session, open_session_patiently

READY_TIMEOUT = 30.0  # from the last subscription answered to video on every one


@dataclass(frozen=True)
class RoomConfig:
    """One room's share of the run."""

    room: str
    base_url: str
    participants: int
    media_path: str
    connect_timeout: float


@dataclass
class Watch:
    """One participant's subscription to another's media."""

    watcher: int
    publisher: int
    pc: RTCPeerConnection
    location: str | None = None
    frames: dict[str, int] = field(default_factory=lambda: {"video": 0, "audio": 0})
    keyframes: int = 0
    first_video_at: float | None = None
    _listeners: list[tuple[hooks.ReceiverTap, hooks.Subscription]] = field(default_factory=list)

    def follow(self, track: MediaStreamTrack) -> None:
        """Count what the subscription's ``track`` receives, from its receiver's tap."""
        tap = hooks.tap_track(track, self)
        if tap is None:
            raise RuntimeError("a subscription's track has no tap: is rtc_recorder imported?")
        kind = track.kind

        def on_frame(frame: hooks.EncodedFrame) -> None:
            self.frames[kind] += 1
            if kind == "video":
                self.keyframes += is_keyframe(frame.codec, frame.data)
                if self.first_video_at is None:
                    self.first_video_at = time.monotonic()

        listener = hooks.Subscription(on_frame, lambda: None, lambda exc: None)
        tap.subscribe(listener)
        self._listeners.append((tap, listener))

    def key(self) -> str:
        return f"{self.watcher}>{self.publisher}"

    async def close(self, http: aiohttp.ClientSession) -> None:
        for tap, listener in self._listeners:
            tap.unsubscribe(listener)
        await self.pc.close()
        if self.location:
            async with http.delete(self.location):
                pass


async def watch(
    http: aiohttp.ClientSession, base_url: str, watcher: int, publisher: int, session: str
) -> Watch:
    """Subscribe (WHEP, recvonly audio and video) to ``session``'s media."""
    pc = RTCPeerConnection(rtc_configuration())
    subscription = Watch(watcher, publisher, pc)
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    pc.on("track", subscription.follow)
    await pc.setLocalDescription(await pc.createOffer())
    async with http.post(
        f"{base_url}/whep/{session}",
        data=pc.localDescription.sdp,
        headers={"Content-Type": "application/sdp"},
    ) as response:
        if response.status != 201:
            raise RuntimeError(
                f"WHEP to {session} answered {response.status}: {await response.text()}"
            )
        location = response.headers["Location"]
        subscription.location = location if "://" in location else base_url + location
        answer = await response.text()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return subscription


class Room:
    """The room's participants (publishing) and their subscriptions."""

    def __init__(self, config: RoomConfig, http: aiohttp.ClientSession) -> None:
        self.config = config
        self.http = http
        self.media = load(config.media_path)
        self.gate = Gate()
        self.sessions: dict[int, Session] = {}
        self.watches: list[Watch] = []
        self.retries = 0  # offers the server asked to send again later

    async def join(self) -> None:
        """Every participant publishes, then every one watches every other one."""
        await asyncio.gather(*(self._publish(n) for n in range(self.config.participants)))
        pairs = [
            (watcher, publisher)
            for watcher in self.sessions
            for publisher in self.sessions
            if watcher != publisher
        ]
        self.watches = list(
            await asyncio.gather(
                *(
                    watch(
                        self.http,
                        self.config.base_url,
                        watcher,
                        publisher,
                        str(self.sessions[publisher].server_session),
                    )
                    for watcher, publisher in pairs
                )
            )
        )
        async with asyncio.timeout(READY_TIMEOUT):
            while any(w.first_video_at is None for w in self.watches):
                await asyncio.sleep(0.1)

    async def _publish(self, number: int) -> None:
        """Participant ``number`` joins the room, offering again when a server taking
        sessions one at a time asks it to wait (503 with Retry-After), as the page does."""
        self.retries += await open_session_patiently(
            number,
            self.media,
            self.gate,
            self.http,
            f"{self.config.base_url}/offer",
            self.sessions,
            time.monotonic() + self.config.connect_timeout,
            {"room": self.config.room, "name": f"p{number}"},
        )

    def counts(self) -> dict[str, Any]:
        """What was sent and received so far."""
        return {
            "at": time.monotonic(),
            "sent": {
                str(s.server_session): {"video": s.video.sent, "audio": s.audio.sent}
                for s in self.sessions.values()
            },
            "received": {
                w.key(): {
                    "publisher": str(self.sessions[w.publisher].server_session),
                    "video": w.frames["video"],
                    "audio": w.frames["audio"],
                    "keyframes": w.keyframes,
                }
                for w in self.watches
            },
        }

    async def close(self) -> None:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await asyncio.gather(
                *(w.close(self.http) for w in self.watches),
                *(s.close() for s in self.sessions.values()),
                return_exceptions=True,
            )


async def _main(channel: Channel, config: RoomConfig) -> None:
    loopback_only()
    timeout = aiohttp.ClientTimeout(total=config.connect_timeout)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        room = Room(config, http)
        try:
            await room.join()
            sessions = {str(n): str(s.server_session) for n, s in room.sessions.items()}
            channel.send(
                {
                    "type": "ready",
                    "room": config.room,
                    "sessions": sessions,
                    "retries": room.retries,
                }
            )
            while (message := await channel.receive("mark", "pause", "close"))["type"] != "close":
                if message["type"] == "pause":
                    room.gate.open = False
                    channel.send({"type": "sent", **room.counts()})
                else:
                    channel.send({"type": "marked", **room.counts()})
        finally:
            await room.close()


def run(connection: Connection, config: RoomConfig) -> None:
    """Process entry point."""
    run_child(connection, lambda channel: _main(channel, config))
