"""A sending process: several WebRTC sessions publishing the pre-encoded loop.

Each session is one ``RTCPeerConnection`` with a VP8 and an Opus track that hand aiortc
``av.Packet`` s: its ``RTCRtpSender`` only packetizes them (``encoder.pack``), so a sender
costs RTP, SRTP and pacing, never encoding. Packets are paced in real time from the
session's first packet; timestamps keep increasing across loops.

Talks to the orchestrator over its pipe: ``connected`` once every session is; then, on
``open`` (with a session ``number``), one more session is offered and ``opened`` answers
with the server's status (a refusal is reported, not an error: its peer connection is
closed); on ``pause`` all tracks stop handing out packets and the counts sent by the
sessions the server took are reported (``sent``); on ``rtp`` each session's RTP
statistics, as the receiver's first report after the pause gives them, are reported
(``rtp``); on ``close`` (or a signal, or the pipe closing) the peer connections are closed.

:func:`run_churn` is another process of the same kind, whose sessions come and go on
request (``open`` -> ``opened``, ``hang_up`` -> ``hung_up``, then ``close``).
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

from .children import Children, groups
from .common import Channel, loopback_only, rtc_configuration, run_child
from .media import AUDIO_PACKET_SAMPLES, AUDIO_RATE, EncodedLoop, load

CLOSE_TIMEOUT = 10.0
REPORT_TIMEOUT = 3.0  # for the receiver's first RTCP report after the pause


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

    async def rtp(self, after: float) -> dict[str, dict[str, Any]]:
        """Per kind, the RTP packets sent and those the receiver reported lost, from its
        first receiver report (RTCP) at or after wall-clock time ``after`` (or its last one,
        if none comes within :data:`REPORT_TIMEOUT`)."""
        deadline = time.monotonic() + REPORT_TIMEOUT
        while True:
            result = await self._rtp()
            reports = [kind.get("reportedAt") for kind in result.values()]
            fresh = all(at is not None and at >= after for at in reports)
            if (fresh and len(result) == 2) or time.monotonic() > deadline:
                return result
            await asyncio.sleep(0.1)

    async def _rtp(self) -> dict[str, dict[str, Any]]:
        result: dict[str, dict[str, Any]] = {}
        for rtp_sender in self.pc.getSenders():
            kind = rtp_sender.track.kind if rtp_sender.track is not None else None
            if kind is None:
                continue
            entry = result.setdefault(kind, {"packetsSent": 0, "packetsLost": None})
            for stats in (await rtp_sender.getStats()).values():
                if stats.type == "outbound-rtp":
                    entry["packetsSent"] = stats.packetsSent
                elif stats.type == "remote-inbound-rtp":
                    entry["packetsLost"] = stats.packetsLost
                    entry["reportedAt"] = stats.timestamp.timestamp()
        return result

    async def close(self) -> None:
        """Stop the tracks and close the peer connection."""
        self.video.stop()
        self.audio.stop()
        await self.pc.close()


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
        paused = time.time()
        channel.send(
            {"type": "sent", "sessions": {str(s.number): s.counts() for s in sessions}},
        )
        while (await channel.receive("rtp", "close"))["type"] == "rtp":
            reports = await asyncio.gather(*(s.rtp(after=paused) for s in sessions))
            numbers = [str(s.number) for s in sessions]
            channel.send({"type": "rtp", "sessions": dict(zip(numbers, reports, strict=True))})
    finally:
        await http.close()
        await _close_all(sessions)


async def _close_all(sessions: list[Session]) -> None:
    async with asyncio.timeout(CLOSE_TIMEOUT):
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)


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


def start_senders(
    children: Children,
    offer_url: str,
    sessions: int,
    per_process: int,
    media_path: Path,
    connect_timeout: float,
) -> list[str]:
    """Start sender processes (``sender-0``, ``sender-1`` ...) for sessions ``0 .. sessions
    - 1``, ``per_process`` each, offering to ``offer_url``; their names."""
    for index, numbers in enumerate(groups(sessions, per_process)):
        config = SenderConfig(index, offer_url, numbers, str(media_path), connect_timeout)
        children.start(f"sender-{index}", run, config)
    return children.names("sender-")


@dataclass(frozen=True)
class ChurnSenderConfig:
    """A sending process whose sessions the orchestrator opens and hangs up in batches."""

    offer_url: str
    media_path: str
    connect_timeout: float


async def _churn(channel: Channel, config: ChurnSenderConfig) -> None:
    """``open`` (session numbers) -> ``opened`` (number -> the server's session id, once
    connected); ``hang_up`` (numbers; the server has hung up already) -> ``hung_up`` (what
    each sent), their peer connections closed; until ``close``."""
    loopback_only()
    media = load(Path(config.media_path))
    live: dict[int, Session] = {}
    timeout = aiohttp.ClientTimeout(total=config.connect_timeout)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while (message := await channel.receive("open", "hang_up", "close"))["type"] != "close":
                if message["type"] == "open":
                    opened = await _open_batch(message["sessions"], media, http, config, live)
                    channel.send({"type": "opened", "sessions": opened})
                else:
                    ending = [live.pop(number) for number in message["sessions"]]
                    counts = {str(s.number): s.counts() for s in ending}
                    await _close_all(ending)
                    channel.send({"type": "hung_up", "sessions": counts})
    finally:
        await _close_all(list(live.values()))


async def _open_batch(
    numbers: list[int],
    media: EncodedLoop,
    http: aiohttp.ClientSession,
    config: ChurnSenderConfig,
    live: dict[int, Session],
) -> dict[str, str | None]:
    """Open sessions ``numbers`` at once (into ``live``, even those that fail, so they are
    closed); the server's session id of each, once all are connected."""
    opened: list[Session] = []
    try:
        async with asyncio.timeout(config.connect_timeout), asyncio.TaskGroup() as group:
            for number in numbers:
                group.create_task(
                    _open_session(number, media, Gate(), http, config.offer_url, opened)
                )
    finally:
        live.update((session.number, session) for session in opened)
    return {str(s.number): s.server_session for s in opened}


def run_churn(connection: Connection, config: ChurnSenderConfig) -> None:
    """Process entry point of a churning sender."""
    run_child(connection, lambda channel: _churn(channel, config))
