"""A sending process: several WebRTC sessions publishing the pre-encoded loop.

Each session is one ``RTCPeerConnection`` with a VP8 and an Opus track that hand aiortc
``av.Packet`` s: its ``RTCRtpSender`` only packetizes them (``encoder.pack``), so a sender
costs RTP, SRTP and pacing, never encoding. Packets are paced in real time from the
session's first packet; timestamps keep increasing across loops.

Talks to the orchestrator over its pipe. Once the sessions of its config are connected
(none, for a sender whose sessions come on request), it sends ``connected``; then it answers
each request until ``close`` (or a signal, or the pipe closing), when every peer connection
is closed:

- ``open`` (``sessions``: numbers) -> ``opened``: the sessions are offered at once; per
  session its ``status`` (200 once connected, with ``session``, the server's id; or the
  server's refusal, with its ``retryAfter`` and ``body``, its peer connection closed);
- ``hang_up`` (numbers; the server has hung up already) -> ``hung_up``: what each sent,
  its peer connection closed;
- ``pause`` -> ``sent``: every track stops handing out packets for good; what each session
  sent;
- ``rtp`` -> ``rtp``: each session's RTP statistics, as the receiver's first report after
  the pause gives them.

The orchestrator's side: :func:`start_senders`, :func:`open_sessions`, :func:`ask_all` and
:func:`close_all`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import av
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .children import Children, groups
from .common import Channel, Message, loopback_only, rtc_configuration, run_child
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


async def open_session(
    number: int,
    media: EncodedLoop,
    gate: Gate,
    http: aiohttp.ClientSession,
    url: str,
    sessions: dict[int, Session],
    fields: Mapping[str, Any] | None = None,
) -> None:
    """Publish the loop as session ``number`` through ``POST url`` (``fields`` added to the
    offer's JSON: a room to join, say), into ``sessions``; returns once connected."""
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
    sessions[number] = session  # closed even if this fails
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
    offer = {
        "sdp": pc.localDescription.sdp,
        "type": pc.localDescription.type,
        "session": number,
        **(fields or {}),
    }
    async with http.post(url, json=offer) as response:
        if response.status != 200:
            retry_after = response.headers.get("Retry-After")
            raise Refused(number, response.status, retry_after, await response.text())
        answer = await response.json()
    session.server_session = answer.get("session")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
    await connected.wait()


async def open_session_patiently(
    number: int,
    media: EncodedLoop,
    gate: Gate,
    http: aiohttp.ClientSession,
    url: str,
    sessions: dict[int, Session],
    deadline: float,
    fields: Mapping[str, Any] | None = None,
) -> int:
    """:func:`open_session`, offering again when the server asks to wait (503 with
    Retry-After: a server taking sessions a few at a time, as its admission does), as the
    page does, until ``deadline`` (``time.monotonic()``); the number of offers it refused.
    A refusal whose wait would pass the deadline is raised."""
    retries = 0
    while True:
        try:
            await open_session(number, media, gate, http, url, sessions, fields)
            return retries
        except Refused as refused:
            wait = float(refused.retry_after or 0)
            if refused.status != 503 or not wait or time.monotonic() + wait > deadline:
                raise
            retries += 1
            await sessions.pop(number).close()
            await asyncio.sleep(wait)


class Publisher:
    """The sessions of one sending process, opened, paused and hung up on request."""

    def __init__(self, config: SenderConfig, http: aiohttp.ClientSession) -> None:
        self.config = config
        self.media = load(Path(config.media_path))
        self.gate = Gate()
        self.http = http
        self.sessions: dict[int, Session] = {}
        self.paused_at: float | None = None  # wall clock

    async def open(
        self, numbers: Sequence[int], patient: bool = False
    ) -> dict[str, dict[str, Any]]:
        """Offer sessions ``numbers`` at once; per session (by number) the server's answer
        (see the module's ``opened``). ``patient``: offer again while the server asks to
        wait (:func:`open_session_patiently`). Anything but a refusal, or not being
        connected within the config's timeout, raises."""
        answers: dict[str, dict[str, Any]] = {}
        # Offers made again stop a second before the timeout, so a last refusal is reported.
        deadline = time.monotonic() + self.config.connect_timeout - 1 if patient else 0.0
        async with asyncio.timeout(self.config.connect_timeout), asyncio.TaskGroup() as group:
            for number in numbers:
                group.create_task(self._offer(number, answers, deadline))
        return answers

    async def _offer(
        self, number: int, answers: dict[str, dict[str, Any]], deadline: float
    ) -> None:
        try:
            await open_session_patiently(
                number,
                self.media,
                self.gate,
                self.http,
                self.config.offer_url,
                self.sessions,
                deadline,
            )
        except Refused as refused:
            await self.sessions.pop(number).close()
            answers[str(number)] = {
                "status": refused.status,
                "retryAfter": refused.retry_after,
                "body": refused.body,
            }
            return
        answers[str(number)] = {"status": 200, "session": self.sessions[number].server_session}

    async def hang_up(self, numbers: Sequence[int]) -> dict[str, dict[str, Any]]:
        """Close sessions ``numbers`` (the server has hung up already); what each sent."""
        ending = [self.sessions.pop(number) for number in numbers]
        counts = {str(s.number): s.counts() for s in ending}
        await _close_all(ending)
        return counts

    def pause(self) -> dict[str, dict[str, Any]]:
        """Every track stops handing out packets, for good; what each session sent."""
        self.gate.open = False
        self.paused_at = time.time()
        return {str(s.number): s.counts() for s in self.sessions.values()}

    async def rtp(self) -> dict[str, dict[str, Any]]:
        """Each session's RTP statistics from the receiver's first report after the pause."""
        after = self.paused_at if self.paused_at is not None else time.time()
        live = list(self.sessions.values())
        reports = await asyncio.gather(*(s.rtp(after=after) for s in live))
        return {str(s.number): report for s, report in zip(live, reports, strict=True)}

    async def answer(self, message: Message) -> Message:
        """The answer to one of the orchestrator's requests (not ``close``)."""
        kind = message["type"]
        if kind == "open":
            return {"type": "opened", "sessions": await self.open(message["sessions"])}
        if kind == "hang_up":
            return {"type": "hung_up", "sessions": await self.hang_up(message["sessions"])}
        if kind == "pause":
            return {"type": "sent", "sessions": self.pause()}
        return {"type": "rtp", "sessions": await self.rtp()}

    async def close(self) -> None:
        """Close every session still open (within :data:`CLOSE_TIMEOUT`)."""
        await _close_all(list(self.sessions.values()))


REQUESTS = ("open", "hang_up", "pause", "rtp", "close")


async def _main(channel: Channel, config: SenderConfig) -> None:
    loopback_only()
    timeout = aiohttp.ClientTimeout(total=config.connect_timeout)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        publisher = Publisher(config, http)
        try:
            opened = await publisher.open(config.sessions, patient=True)
            refused = {n: a["status"] for n, a in opened.items() if a["status"] != 200}
            if refused:
                raise RuntimeError(f"/offer refused sessions (number: status): {refused}")
            channel.send({"type": "connected", "sender": config.index})
            while (message := await channel.receive(*REQUESTS))["type"] != "close":
                channel.send(await publisher.answer(message))
        finally:
            await publisher.close()


async def _close_all(sessions: list[Session]) -> None:
    async with asyncio.timeout(CLOSE_TIMEOUT):
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)


def run(connection: Connection, config: SenderConfig) -> None:
    """Process entry point."""
    run_child(connection, lambda channel: _main(channel, config))


# -- the orchestrator's side -----------------------------------------------------------------


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


def open_sessions(
    children: Children, name: str, numbers: Sequence[int], timeout: float
) -> dict[str, dict[str, Any]]:
    """Have sender ``name`` open sessions ``numbers``: its ``opened`` answer, by number."""
    children.send(name, {"type": "open", "sessions": list(numbers)})
    answers: dict[str, dict[str, Any]] = children.expect(name, "opened", timeout)["sessions"]
    return answers


def ask_all(
    children: Children, names: Sequence[str], request: str, reply: str, timeout: float = 30.0
) -> dict[str, Any]:
    """Send ``request`` to every sender of ``names``; their ``reply`` messages' sessions,
    merged (by session number)."""
    for name in names:
        children.send(name, {"type": request})
    merged: dict[str, Any] = {}
    for name in names:
        merged.update(children.expect(name, reply, timeout)["sessions"])
    return merged


def close_all(children: Children, names: Sequence[str], timeout: float = 30.0) -> None:
    """Have every sender of ``names`` close its sessions and exit; wait ``timeout`` seconds
    at most (:meth:`Children.end` deals with any still running)."""
    for name in names:
        with contextlib.suppress(OSError):  # it exited already: nothing to close
            children.send(name, {"type": "close"})
    children.join(timeout)
