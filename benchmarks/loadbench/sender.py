"""A sending process: several WebRTC sessions publishing the pre-encoded loop.

Each session is one ``RTCPeerConnection`` with a VP8 and an Opus track that hand aiortc
``av.Packet`` s: its ``RTCRtpSender`` only packetizes them (``encoder.pack``), so a sender
costs RTP, SRTP and pacing, never encoding. Packets are paced in real time from the
session's first packet; timestamps keep increasing across loops.

Talks to the orchestrator over its pipe: ``connected`` once every session is; then, on
``open`` (with a session ``number``), one more session is offered and ``opened`` answers
with the server's status (a refusal is reported, not an error: its peer connection is
closed); on ``pause`` all tracks stop handing out packets and the counts sent by the
sessions the server took are reported (``sent``); on ``close`` (or a signal, or the pipe
closing) the peer connections are closed.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import av
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .common import Channel, loopback_only, rtc_configuration, run_child
from .media import AUDIO_PACKET_SAMPLES, AUDIO_RATE, EncodedLoop, load

CLOSE_TIMEOUT = 10.0


@dataclass(frozen=True)
class SenderConfig:
    """One sending process' share of the sessions."""

    index: int
    offer_url: str
    sessions: tuple[int, ...]
    media_path: str
    connect_timeout: float


class Refused(RuntimeError):
    """The server answered an offer with something else than 200."""

    def __init__(self, number: int, status: int, retry_after: str | None, body: str) -> None:
        super().__init__(f"session {number}: /offer answered {status}: {body[:200]}")
        self.status = status
        self.retry_after = retry_after
        self.body = body


class Gate:
    """Lets every track of the process hand out packets while :attr:`open` (the
    orchestrator's ``pause`` clears it for good)."""

    def __init__(self) -> None:
        self.open = True


class SessionClock:
    """The real-time origin of one session's tracks: its first packet, audio or video
    (:attr:`origin` on the monotonic clock, :attr:`wallclock` the same instant in
    ``time.time()``, comparable with other processes' wall-clock timestamps)."""

    def __init__(self) -> None:
        self.origin: float | None = None
        self.wallclock: float | None = None

    def start(self) -> float:
        if self.origin is None:
            self.origin = time.monotonic()
            self.wallclock = time.time()
        return self.origin


class PacketTrack(MediaStreamTrack):
    """A live track of pre-encoded packets from ``packets``, looped, paced in real time."""

    def __init__(
        self,
        kind: str,
        packets: list[bytes],
        interval: fractions.Fraction,
        time_base: fractions.Fraction,
        clock: SessionClock,
        gate: Gate,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.sent = 0
        self._packets = packets
        self._interval = interval  # seconds per packet
        self._ticks = interval / time_base  # timestamp units per packet
        self._time_base = time_base
        self._clock = clock
        self._gate = gate
        self._ended = asyncio.Event()

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        due = self._clock.start() + float(self.sent * self._interval)
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if not self._gate.open:
            await self._ended.wait()  # paused for good: nothing more until stopped
        if self.readyState != "live":
            raise MediaStreamError
        packet = av.Packet(self._packets[self.sent % len(self._packets)])
        packet.pts = int(self.sent * self._ticks)
        packet.time_base = self._time_base
        self.sent += 1
        return packet

    def stop(self) -> None:
        super().stop()
        self._ended.set()


@dataclass
class Session:
    """One sending peer connection and its two tracks."""

    number: int
    pc: RTCPeerConnection
    video: PacketTrack
    audio: PacketTrack
    clock: SessionClock
    server_session: str | None = None  # the ``session`` of the answer, if it has one
    connected_at: float | None = None  # wall clock, when the connection state became connected

    def counts(self) -> dict[str, Any]:
        """What was sent (video frames, audio packets) and when the session started."""
        return {
            "video": self.video.sent,
            "audio": self.audio.sent,
            "firstPacketAt": self.clock.origin,
            "firstPacketWallclock": self.clock.wallclock,
            "connectedWallclock": self.connected_at,
            "serverSession": self.server_session,
        }


def _prefer(pc: RTCPeerConnection) -> None:
    """Offer VP8 (with its RTX) and Opus only, so both recorders get the same codecs."""
    for transceiver in pc.getTransceivers():
        wanted = {"video": ("video/vp8", "video/rtx"), "audio": ("audio/opus",)}[transceiver.kind]
        codecs = RTCRtpSender.getCapabilities(transceiver.kind).codecs
        transceiver.setCodecPreferences([c for c in codecs if c.mimeType.lower() in wanted])


async def _open_session(
    number: int,
    media: EncodedLoop,
    gate: Gate,
    http: aiohttp.ClientSession,
    url: str,
    sessions: list[Session],
) -> None:
    pc = RTCPeerConnection(rtc_configuration())
    clock = SessionClock()
    fps = media.spec.fps
    video = PacketTrack(
        "video",
        media.video,
        fractions.Fraction(1, fps),
        fractions.Fraction(1, fps),
        clock,
        gate,
    )
    audio = PacketTrack(
        "audio",
        media.audio,
        fractions.Fraction(AUDIO_PACKET_SAMPLES, AUDIO_RATE),
        fractions.Fraction(1, AUDIO_RATE),
        clock,
        gate,
    )
    session = Session(number, pc, video, audio, clock)
    sessions.append(session)  # closed even if this fails
    connected = asyncio.Event()

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState == "connected":
            if session.connected_at is None:
                session.connected_at = time.time()
            connected.set()

    pc.addTrack(video)
    pc.addTrack(audio)
    _prefer(pc)
    await pc.setLocalDescription(await pc.createOffer())
    offer = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "session": number}
    async with http.post(url, json=offer) as response:
        if response.status != 200:
            retry_after = response.headers.get("Retry-After")
            raise Refused(number, response.status, retry_after, await response.text())
        answer = await response.json()
    session.server_session = answer.get("session")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
    await connected.wait()


async def _main(channel: Channel, config: SenderConfig) -> None:
    loopback_only()
    media = load(Path(config.media_path))
    gate = Gate()
    sessions: list[Session] = []
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=config.connect_timeout))
    try:
        async with asyncio.timeout(config.connect_timeout), asyncio.TaskGroup() as group:
            for number in config.sessions:
                group.create_task(
                    _open_session(number, media, gate, http, config.offer_url, sessions)
                )
        channel.send({"type": "connected", "sender": config.index})
        while (message := await channel.receive("open", "pause"))["type"] == "open":
            opened = await _open_one(message["number"], media, gate, http, config, sessions)
            channel.send({"type": "opened", **opened})
        gate.open = False
        channel.send(
            {"type": "sent", "sessions": {str(s.number): s.counts() for s in sessions}},
        )
        await channel.receive("close")
    finally:
        await http.close()
        for session in sessions:
            session.video.stop()
            session.audio.stop()
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await asyncio.gather(*(s.pc.close() for s in sessions), return_exceptions=True)


async def _open_one(
    number: int,
    media: EncodedLoop,
    gate: Gate,
    http: aiohttp.ClientSession,
    config: SenderConfig,
    sessions: list[Session],
) -> dict[str, Any]:
    """Offer one more session: the server's status, and its session id once connected (a
    refused session is closed and forgotten)."""
    try:
        async with asyncio.timeout(config.connect_timeout):
            await _open_session(number, media, gate, http, config.offer_url, sessions)
    except Refused as refused:
        session = next(s for s in sessions if s.number == number)
        sessions.remove(session)
        session.video.stop()
        session.audio.stop()
        await session.pc.close()
        return {
            "number": number,
            "status": refused.status,
            "retryAfter": refused.retry_after,
            "body": refused.body,
        }
    session = next(s for s in sessions if s.number == number)
    return {"number": number, "status": 200, "session": session.server_session}


def run(connection: Connection, config: SenderConfig) -> None:
    """Process entry point."""
    run_child(connection, lambda channel: _main(channel, config))
