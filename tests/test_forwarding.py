"""Forwarding between real aiortc peers on loopback: publisher -> server-side receiver ->
Forwarder -> subscriber's peer connection, which decodes what it gets with PyAV (the
client's part). Nothing on the forwarding side is decoded or encoded."""

from __future__ import annotations

import asyncio
import functools
import gc
import statistics
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc import sdp as aiortc_sdp

from rtc_recorder import MediaRecorder
from rtc_recorder.receive import forward
from rtc_recorder.receive.forward import EndReason, Forwarder, ForwardingError

from .forwarding_support import (
    Publication,
    Viewer,
    counting,
    decode_errors,
    first_frame,
    frames_after,
    matched,
    share_received,
    subscribe,
)
from .media import (
    Clock,
    EncodedMedia,
    PacketTrack,
    SyntheticAudio,
    SyntheticVideo,
    encode_sync_source,
    ffmpeg_errors,
    wait_for,
)
from .support import EventLog


@functools.cache
def encoded_once(codec: str) -> tuple[EncodedMedia, EncodedMedia]:
    return encode_sync_source(5.0, video_codec=codec)


async def encoded(codec: str) -> tuple[EncodedMedia, EncodedMedia]:
    """Video (a keyframe every half second) and Opus, encoded once per test session (on a
    thread: the encoding runs loops of its own)."""
    return await asyncio.to_thread(encoded_once, codec)


@pytest.fixture
def encoder_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every frame aiortc's encoders are given to encode, anywhere in the process."""
    from aiortc.codecs.h264 import H264Encoder
    from aiortc.codecs.opus import OpusEncoder
    from aiortc.codecs.vpx import Vp8Encoder

    calls: list[str] = []
    for encoder in (H264Encoder, OpusEncoder, Vp8Encoder):
        monkeypatch.setattr(encoder, "encode", counting(calls, encoder.__name__, encoder.encode))
    return calls


async def pre_encoded(codec: str) -> Publication:
    """A publisher sending pre-encoded video and Opus (nothing encoded while it runs)."""
    video, audio = await encoded(codec)
    clock = Clock()
    publication = Publication()
    await publication.start(
        [PacketTrack("video", video, clock), PacketTrack("audio", audio, clock)], codec
    )
    return publication


async def live(codec: str = "vp8") -> Publication:
    """A publisher encoding as it goes (aiortc's encoders: keyframes only when asked)."""
    clock = Clock()
    publication = Publication()
    await publication.start([SyntheticVideo(clock), SyntheticAudio(clock)], codec)
    return publication


def answered_codecs(answer: str) -> dict[str, list[str]]:
    description = aiortc_sdp.SessionDescription.parse(answer)
    return {m.kind: [c.mimeType for c in m.rtp.codecs] for m in description.media}


def count_keyframe_requests(publication: Publication) -> list[str]:
    """The keyframe requests the publisher's video sender gets from now on."""
    asked: list[str] = []
    sender = publication.sender("video")
    sender._send_keyframe = counting(asked, "keyframe", sender._send_keyframe)  # type: ignore[method-assign]
    return asked


@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_a_subscriber_gets_every_frame_as_the_publisher_sent_it(
    codec: str, decoder_calls: list[str], encoder_calls: list[str]
) -> None:
    publication = await pre_encoded(codec)
    forwarder = Forwarder(publication.stream)
    viewer = Viewer()
    subscription, server = await subscribe(forwarder, viewer)
    name = {"vp8": "video/VP8", "h264": "video/H264"}[codec]
    assert answered_codecs(server.localDescription.sdp) == {
        "audio": ["audio/opus"],
        "video": [name, "video/rtx"],
    }
    assert (await first_frame(viewer, "video")).keyframe
    await frames_after(viewer.logs["video"], 60)
    for kind in ("video", "audio"):
        sent, received = publication.logs[kind].frames, viewer.frames(kind)
        assert share_received(sent, received) >= 0.95, kind
        decoded, refused = decode_errors(received)
        assert refused == 0 and decoded == len(received), kind
        # The publisher's timing, to the RTP clock tick.
        pairs = matched(sent, received)
        assert {r.frame.timestamp - s.frame.timestamp for s, r in pairs} == {
            pairs[0][1].frame.timestamp - pairs[0][0].frame.timestamp
        }, kind
    assert decoder_calls == [] and encoder_calls == []
    assert all(not publication.tap(kind).decoding for kind in ("audio", "video"))
    await viewer.close()
    await asyncio.wait_for(subscription.wait_closed(), 10)
    assert subscription.reason is EndReason.SUBSCRIBER_LEFT
    await publication.close()


async def test_a_subscriber_joining_mid_stream_starts_on_the_keyframe_it_asked_for(
    decoder_calls: list[str],
) -> None:
    publication = await live()
    await frames_after(publication.logs["video"], 30)  # a second into the stream
    asked = count_keyframe_requests(publication)
    forwarder = Forwarder(publication.stream)
    viewer = Viewer()
    subscribed = time.monotonic()
    subscription, server = await subscribe(forwarder, viewer)
    first = await first_frame(viewer, "video")
    connected = await connection_time(server, subscribed)
    # The publisher's encoder makes keyframes only when asked: this one answers the request.
    fresh = publication.logs["video"].keyframes_after(subscribed)
    assert first.keyframe and asked and fresh and fresh[0].frame.data == first.frame.data
    print(
        f"\nkeyframe at the server {fresh[0].seen - subscribed:.3f} s after subscribing, "
        f"subscriber connected after {connected:.3f} s, first frame after "
        f"{first.seen - subscribed:.3f} s"
    )
    await frames_after(viewer.logs["video"], 30)
    assert share_received(publication.logs["video"].frames, viewer.frames("video")) >= 0.95
    assert decode_errors(viewer.frames("video"))[1] == 0
    assert decoder_calls == []
    await subscription.close()
    assert viewer.pc.connectionState in ("connected", "closed")
    await viewer.close()
    await publication.close()


async def connection_time(pc: RTCPeerConnection, since: float) -> float:
    await wait_for(lambda: pc.connectionState == "connected", 10, "the subscriber's connection")
    return time.monotonic() - since


async def test_subscribers_keyframe_requests_reach_the_publisher_one_for_many() -> None:
    publication = await live()
    forwarder = Forwarder(publication.stream)
    viewers = [Viewer(), Viewer()]
    subscriptions = [(await subscribe(forwarder, viewer))[0] for viewer in viewers]
    for viewer in viewers:
        await first_frame(viewer, "video")
        await frames_after(viewer.logs["video"], 30)  # past the joining requests' interval
    asked = count_keyframe_requests(publication)
    lost_at = time.monotonic()
    for viewer in viewers:  # each subscriber's decoder loses the picture, and says so 5 times
        log = viewer.logs["video"]
        receiver = next(t.receiver for t in viewer.pc.getTransceivers() if t.kind == "video")
        assert log.tap.ssrc is not None
        for _ in range(5):
            await receiver._send_rtcp_pli(log.tap.ssrc)
    for viewer in viewers:
        await wait_for(
            lambda v=viewer: bool(v.logs["video"].keyframes_after(lost_at)), 10, "a keyframe"
        )
    assert [s.stats()["video"]["keyframeRequests"] for s in subscriptions] == [5, 5]
    # Ten requests, one at once; at most one more if the keyframe took over the interval.
    assert 1 <= len(asked) <= 2
    for viewer in viewers:
        await viewer.close()
    await publication.close()


async def test_loss_before_the_server_holds_video_until_a_fresh_keyframe(
    decoder_calls: list[str],
) -> None:
    publication = await live()
    forwarder = Forwarder(publication.stream)
    viewer = Viewer()
    subscription, _ = await subscribe(forwarder, viewer)
    await first_frame(viewer, "video")
    await frames_after(viewer.logs["video"], 30)
    # One video packet never reaches the server's assembler (nor does its retransmission).
    tap = publication.tap("video")
    assemble = tap.assembler.push
    lost: list[int] = []

    def lossy(packet: Any, now: float) -> Any:
        if not lost or packet.sequence == lost[0]:
            lost[:] = [packet.sequence]
            return []
        return assemble(packet, now)

    before = subscription.stats()["video"]
    requests = forwarder.keyframe_requests
    tap.assembler.push = lossy  # type: ignore[method-assign]
    log = publication.logs["video"]
    await wait_for(lambda: any(not a.frame.complete or a.frame.gap for a in log.frames), 10, "loss")
    damaged = next(i for i, a in enumerate(log.frames) if not a.frame.complete or a.frame.gap)
    received_before = len(viewer.frames("video"))
    await frames_after(viewer.logs["video"], 15)
    # Frames are told apart by their timestamps (a live encoder repeats bytes now and then):
    # the viewer's are the server's plus a constant (the first frames show it).
    (sent, received), *_ = matched(log.frames, viewer.frames("video"))
    shift = received.frame.timestamp - sent.frame.timestamp
    got = [a.frame.timestamp - shift for a in viewer.frames("video")]
    # Nothing from the damaged frame to the next keyframe: that keyframe, asked for, and on.
    keyframe = next(a for a in log.frames[damaged:] if a.keyframe)
    assert got[received_before] == keyframe.frame.timestamp
    skipped = log.frames[damaged : log.frames.index(keyframe)]
    assert not {a.frame.timestamp for a in skipped} & set(got)
    stats = subscription.stats()["video"]
    assert stats["waits"] - before["waits"] == 1
    assert stats["skipped"] - before["skipped"] == len(skipped)
    assert forwarder.keyframe_requests > requests
    assert decode_errors(viewer.frames("video"))[1] == 0
    assert decoder_calls == []
    await viewer.close()
    await publication.close()


async def test_a_stalled_subscriber_loses_old_frames_and_holds_up_nobody(
    decoder_calls: list[str],
) -> None:
    publication = await live()
    forwarder = Forwarder(publication.stream)
    steady, stalled = Viewer(), Viewer()
    await subscribe(forwarder, steady)
    # The stalled one's answer is held back: its connection does not come up, so its
    # senders never read what is queued for it.
    stalled_subscription, stalled_server = await subscribe(forwarder, stalled, answer=False)
    await first_frame(steady, "video")
    await frames_after(steady.logs["video"], 30)  # both joining requests have gone
    requests = forwarder.keyframe_requests
    await frames_after(steady.logs["video"], 45)
    stats = stalled_subscription.stats()
    assert stats["video"]["dropped"] > 0 and stats["audio"]["dropped"] > 0
    assert stats["video"]["queued"] <= 16 and stats["audio"]["queued"] <= 26  # 0.5 s at most
    assert forwarder.keyframe_requests == requests  # a subscriber not reading asks nothing
    assert share_received(publication.logs["video"].frames, steady.frames("video")) >= 0.95
    assert share_received(publication.logs["audio"].frames, steady.frames("audio")) >= 0.95
    # Its answer comes at last: it starts on a keyframe asked for once its senders read.
    answered = time.monotonic()
    await stalled.pc.setRemoteDescription(stalled_server.localDescription)
    first = await first_frame(stalled, "video", timeout=15)
    assert first.keyframe
    fresh = publication.logs["video"].keyframes_after(answered)
    assert first.frame.data in [arrival.frame.data for arrival in fresh]
    await frames_after(stalled.logs["video"], 15)
    assert decode_errors(stalled.frames("video"))[1] == 0
    assert decoder_calls == []
    for viewer in (steady, stalled):
        await viewer.close()
    await publication.close()


async def test_a_subscriber_leaving_leaves_nothing_behind() -> None:
    publication = await pre_encoded("vp8")
    forwarder = Forwarder(publication.stream)
    viewer = Viewer()
    subscription, server = await subscribe(forwarder, viewer)
    await first_frame(viewer, "video")
    listeners = {kind: len(publication.tap(kind)._subscriptions) for kind in ("audio", "video")}
    assert listeners == {"audio": 2, "video": 2}  # the test's log and the forwarder
    kept = [weakref.ref(o) for o in (subscription, server, *subscription.tracks.values())]
    ended: list[forward.Subscription] = []
    subscription.on_end(ended.append)
    await viewer.close()  # the subscriber hangs up
    await asyncio.wait_for(subscription.wait_closed(), 10)
    assert ended == [subscription] and subscription.reason is EndReason.SUBSCRIBER_LEFT
    assert server.connectionState == "closed" and forwarder.subscriptions == []
    assert {kind: len(publication.tap(kind)._subscriptions) for kind in listeners} == {
        "audio": 1,
        "video": 1,
    }
    await frames_after(publication.logs["video"], 10)  # the publisher goes on
    del subscription, server, ended
    await wait_for(lambda: gc.collect() >= 0 and all(r() is None for r in kept), 10, "gc")
    await publication.close()


async def test_the_publisher_leaving_ends_its_subscriptions_and_leaves_nothing_behind() -> None:
    publication = await pre_encoded("vp8")
    forwarder = Forwarder(publication.stream)
    viewers = [Viewer(), Viewer()]
    subscribed = [await subscribe(forwarder, viewer) for viewer in viewers]
    for viewer in viewers:
        await first_frame(viewer, "video")
    kept = [weakref.ref(o) for o in (forwarder, publication.server, publication.stream)]
    for subscription, server in subscribed:
        kept += [weakref.ref(o) for o in (subscription, server, *subscription.tracks.values())]
    await publication.publisher.close()  # the publisher hangs up
    for subscription, server in subscribed:
        await asyncio.wait_for(subscription.wait_closed(), 10)
        assert subscription.reason is EndReason.PUBLISHER_LEFT
        assert server.connectionState == "closed"
    for viewer in viewers:  # the subscribers see their connections close
        await wait_for(lambda v=viewer: v.pc.connectionState == "closed", 10, "closed")
    await publication.close()
    del forwarder, subscribed, subscription, server
    publication.logs.clear()
    del publication
    await wait_for(lambda: gc.collect() >= 0 and all(r() is None for r in kept), 10, "gc")
    for viewer in viewers:
        await viewer.close()


async def test_audio_and_video_reach_the_subscriber_in_the_publishers_sync(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Video waits 150 ms here (as it would for a retransmission), audio does not: the
    # subscriber must still see both as the publisher took them.
    delayed = forward._Feed._on_frame

    def late_video(feed: Any, frame: Any) -> None:
        if feed.kind == "video":
            asyncio.get_running_loop().call_later(0.15, delayed, feed, frame)
        else:
            delayed(feed, frame)

    monkeypatch.setattr(forward._Feed, "_on_frame", late_video)
    publication = await pre_encoded("vp8")
    forwarder = Forwarder(publication.stream)
    viewer, sent_time_viewer = Viewer(), Viewer()
    await subscribe(forwarder, viewer)
    # The other one gets aiortc's own reports: RTP time paired with when it was sent.
    sent_time, _ = await subscribe(forwarder, sent_time_viewer)
    for track in sent_time.tracks.values():
        track.report_timestamp = lambda ntp, rtp: rtp  # type: ignore[method-assign]

    def placed(viewer: Viewer, kind: str) -> list[tuple[Any, Any]]:
        """Frames placed in time on both sides (by their senders' reports)."""
        pairs = matched(publication.logs[kind].frames, viewer.frames(kind))
        return [(s, r) for s, r in pairs if s.frame.reference and r.frame.reference]

    def offset(viewer: Viewer) -> float:
        """How much later than audio the viewer places video, against the publisher."""
        video, audio = (
            statistics.median(r.frame.reference - s.frame.reference for s, r in placed(viewer, k))
            for k in ("video", "audio")
        )
        return video - audio

    await wait_for(
        lambda: all(
            len(placed(v, "video")) > 30 and len(placed(v, "audio")) > 50
            for v in (viewer, sent_time_viewer)
        ),
        20,
        "both viewers' clocks",
    )
    print(f"\nvideo late by {offset(viewer):.4f} s ({offset(sent_time_viewer):.4f} s by sent time)")
    assert abs(offset(viewer)) < 0.015
    assert offset(sent_time_viewer) > 0.1
    for each in (viewer, sent_time_viewer):
        await each.close()
    await publication.close()


async def test_a_subscriber_that_cannot_take_the_publishers_media_is_told_why() -> None:
    publication = Publication()
    video, _ = await encoded("h264")
    await publication.start([PacketTrack("video", video, Clock())], "h264")
    forwarder = Forwarder(publication.stream)
    cases = {
        "VP8 only": (Viewer(video_codec="vp8"), "sends video as H264 .* offers VP8\\)"),
        "audio only": (Viewer(kinds=("audio",)), "nothing to forward"),
    }
    for viewer, message in cases.values():
        server = RTCPeerConnection()
        await server.setRemoteDescription(RTCSessionDescription(await viewer.offer(), "offer"))
        directions = [t.direction for t in server.getTransceivers()]
        with pytest.raises(ForwardingError, match=message) as refused:
            forwarder.subscribe(server)
        print(f"\n{refused.value}")
        # Nothing changed: the peer connection can still be answered (or closed).
        assert [t.direction for t in server.getTransceivers()] == directions
        assert forwarder.subscriptions == [] and server.signalingState == "have-remote-offer"
        await server.close()
        await viewer.close()
    await publication.close()


async def test_a_failure_in_forwarding_ends_the_subscription_and_not_the_call_or_recording(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    publication = await pre_encoded("vp8")
    recorder = MediaRecorder(tmp_path / "call.webm", stream=publication.stream)
    events = EventLog(recorder)
    await recorder.start()
    forwarder = Forwarder(publication.stream)
    viewer = Viewer()
    subscription, _ = await subscribe(forwarder, viewer)
    await first_frame(viewer, "video")

    def broken(self: Any, frame: Any, now: float) -> bool:
        raise RuntimeError("a bug in forwarding")

    monkeypatch.setattr(forward.ForwardQueue, "push", broken)
    await asyncio.wait_for(subscription.wait_closed(), 10)
    assert subscription.reason is EndReason.FAILED
    await frames_after(publication.logs["video"], 15)  # the call goes on
    assert publication.server.connectionState == "connected"
    await recorder.stop()
    assert events.names == ["start", "dataavailable", "stop"]  # no error
    assert not ffmpeg_errors(tmp_path / "call.webm")
    await viewer.close()
    await publication.close()
