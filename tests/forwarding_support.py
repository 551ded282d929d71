"""Forwarding between real aiortc peers on loopback: a publisher sending to a server-side
peer connection (its tracks in a MediaStream, as a session's are), a Forwarder on that
stream, and subscribers whose own peer connections (the clients) take what arrives from
their receivers' taps, encoded as it was sent, and decode it with PyAV."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamTrack

from rtc_recorder import MediaStream
from rtc_recorder.codecs import is_keyframe
from rtc_recorder.receive import hooks
from rtc_recorder.receive.forward import Forwarder, Subscription

from .media import connect, wait_for


@dataclass
class Arrival:
    """A frame as a tap assembled it, with when it was seen."""

    frame: hooks.EncodedFrame
    keyframe: bool
    seen: float = field(default_factory=time.monotonic)


class FrameLog:
    """Every frame a tap assembles from now on."""

    def __init__(self, tap: hooks.ReceiverTap) -> None:
        self.tap = tap
        self.frames: list[Arrival] = []
        self.ended = False
        self._listener = hooks.Subscription(self._frame, self._end, lambda exc: None)
        tap.subscribe(self._listener)

    def _frame(self, frame: hooks.EncodedFrame) -> None:
        self.frames.append(Arrival(frame, is_keyframe(frame.codec, frame.data)))

    def _end(self) -> None:
        self.ended = True

    def close(self) -> None:
        self.tap.unsubscribe(self._listener)

    def keyframes_after(self, instant: float) -> list[Arrival]:
        return [a for a in self.frames if a.keyframe and a.seen > instant]


class Publication:
    """A publisher peer connection sending ``tracks`` to a server-side one whose received
    tracks go into ``stream``; ``logs`` records what the server's taps assemble."""

    def __init__(self) -> None:
        self.publisher = RTCPeerConnection()
        self.server = RTCPeerConnection()
        self.stream = MediaStream()
        self.server.on("track", self.stream.addTrack)
        self.logs: dict[str, FrameLog] = {}

    async def start(self, tracks: list[MediaStreamTrack], video_codec: str | None = None) -> None:
        for track in tracks:
            self.publisher.addTrack(track)
        await connect(self.publisher, self.server, video_codec)
        await wait_for(lambda: self.server.connectionState == "connected", 10, "publisher")
        for track in self.stream:
            tap = hooks.tap_track(track)
            assert tap is not None
            self.logs[track.kind] = FrameLog(tap)
        await wait_for(lambda: all(log.frames for log in self.logs.values()), 10, "media")
        await wait_for(self._steady, 10, "the publisher to catch up with its clock")

    def _steady(self) -> bool:
        """Whether the publisher sends in real time: its sources' clock ran while it was
        connecting, and it first sends what it is behind by in a burst."""
        log = self.logs.get("audio") or self.logs["video"]
        if len(log.frames) < 10:
            return False
        first, last = log.frames[-10], log.frames[-1]
        media = (last.frame.timestamp - first.frame.timestamp) / first.frame.clock_rate
        return last.seen - first.seen >= 0.8 * media

    def tap(self, kind: str) -> hooks.ReceiverTap:
        return self.logs[kind].tap

    def sender(self, kind: str) -> RTCRtpSender:
        return next(s for s in self.publisher.getSenders() if s.kind == kind)

    async def close(self) -> None:
        for log in self.logs.values():
            log.close()
        await self.publisher.close()
        await self.server.close()


class Viewer:
    """A subscriber's own peer connection: receives ``kinds`` (offering ``video_codec`` only,
    if given) and logs the frames its receivers' taps assemble."""

    def __init__(self, kinds: tuple[str, ...] = ("audio", "video"), video_codec: str | None = None):
        self.pc = RTCPeerConnection()
        self.logs: dict[str, FrameLog] = {}
        for kind in kinds:
            transceiver = self.pc.addTransceiver(kind, direction="recvonly")
            if kind == "video" and video_codec is not None:
                codecs = RTCRtpSender.getCapabilities("video").codecs
                wanted = [c for c in codecs if c.mimeType.lower() in (f"video/{video_codec}",)]
                transceiver.setCodecPreferences(wanted)
        self.pc.on("track", self._track)

    def _track(self, track: MediaStreamTrack) -> None:
        tap = hooks.tap_track(track, self)
        assert tap is not None
        self.logs[track.kind] = FrameLog(tap)

    def frames(self, kind: str) -> list[Arrival]:
        log = self.logs.get(kind)
        return log.frames if log is not None else []

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def close(self) -> None:
        for log in self.logs.values():
            log.close()
        await self.pc.close()


async def subscribe(
    forwarder: Forwarder, viewer: Viewer, answer: bool = True
) -> tuple[Subscription, RTCPeerConnection]:
    """The WHEP exchange without HTTP: the viewer's offer, a server-side peer connection
    subscribed to ``forwarder``, its answer (given to the viewer only if ``answer``)."""
    from aiortc import RTCSessionDescription

    server = RTCPeerConnection()
    await server.setRemoteDescription(RTCSessionDescription(await viewer.offer(), "offer"))
    subscription = forwarder.subscribe(server)
    await server.setLocalDescription(await server.createAnswer())
    if answer:
        await viewer.pc.setRemoteDescription(server.localDescription)
    return subscription, server


def matched(sent: list[Arrival], received: list[Arrival]) -> list[tuple[Arrival, Arrival]]:
    """Each received frame paired with the sent one carrying the same data (both in order;
    data may repeat in a looping source, so the search only moves forward)."""
    pairs = []
    position = 0
    for arrival in received:
        data = arrival.frame.data
        index = position
        while index < len(sent) and sent[index].frame.data != data:
            index += 1
        if index < len(sent):
            pairs.append((sent[index], arrival))
            position = index + 1
    return pairs


def share_received(sent: list[Arrival], received: list[Arrival]) -> float:
    """The share of the frames sent, from the first received one to the last, that were
    received whole."""
    pairs = matched(sent, received)
    if not pairs:
        return 0.0
    first = sent.index(pairs[0][0])
    last = sent.index(pairs[-1][0])
    whole = sum(1 for _, r in pairs if r.frame.complete)
    return whole / (last - first + 1)


def decode_errors(frames: list[Arrival]) -> tuple[int, int]:
    """Decode frames (PyAV) as a client would: (frames decoded, frames refused)."""
    if not frames:
        return 0, 0
    name = {"vp8": "vp8", "h264": "h264", "opus": "opus"}[frames[0].frame.codec]
    context: Any = av.CodecContext.create(name, "r")
    context.options = {"err_detect": "explode"}  # a missing reference is an error, not a smear
    decoded = refused = 0
    for arrival in frames:
        try:
            decoded += len(context.decode(av.Packet(arrival.frame.data)))
        except av.error.FFmpegError:
            refused += 1
    return decoded, refused


async def first_frame(viewer: Viewer, kind: str, timeout: float = 10.0) -> Arrival:
    await wait_for(lambda: bool(viewer.frames(kind)), timeout, f"the viewer's first {kind} frame")
    return viewer.frames(kind)[0]


async def frames_after(log: FrameLog, count: int, timeout: float = 10.0) -> None:
    target = len(log.frames) + count
    await wait_for(lambda: len(log.frames) >= target, timeout, f"{count} frames")


def counting(calls: list[str], name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` counting its calls in ``calls`` (as ``name``)."""

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return method(*args, **kwargs)

    return counted
