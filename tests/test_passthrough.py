"""Recording without transcoding: real aiortc peer pairs over loopback, the receiving side
recording with rtc_recorder, files decoded back and checked."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.contrib.media import MediaBlackhole, MediaRelay

import rtc_recorder.receive.hooks as tap_module
from rtc_recorder import MediaRecorder

from .media import (
    FLASH_LENGTH,
    FLASH_PERIOD,
    Clock,
    EncodedMedia,
    PacketTrack,
    SyntheticAudio,
    SyntheticVideo,
    connect,
    encode_sync_source,
    ffmpeg_errors,
    flash_instants,
    flash_times,
    probe,
    wait_for,
)
from .support import EventLog, log_media

FRAME = 1 / 30


@pytest.fixture(scope="session")
def sync_media() -> tuple[EncodedMedia, EncodedMedia]:
    """Flashing VP8 and beeping Opus, encoded once for the whole session."""
    return encode_sync_source(12.0)


class Peers:
    """A sender and a receiver peer connection; the receiver's tracks go to ``recorder``."""

    def __init__(self) -> None:
        self.sender = RTCPeerConnection()
        self.receiver = RTCPeerConnection()
        self.remote_tracks: list[Any] = []
        self.receiver.on("track", self.remote_tracks.append)

    async def connect(self, video_codec: str | None = None) -> None:
        await connect(self.sender, self.receiver, video_codec)
        await wait_for(lambda: self.receiver.connectionState == "connected", message="connection")

    async def close(self) -> None:
        await self.sender.close()
        await self.receiver.close()


@pytest.fixture
async def peers() -> AsyncIterator[Peers]:
    pair = Peers()
    yield pair
    await pair.close()


async def send_sync_media(
    peers: Peers, sync_media: tuple[EncodedMedia, EncodedMedia], audio_from: float = 0.0
) -> Clock:
    """Connects the peers, the sender sending the flashing video and the beeping audio
    (from ``audio_from`` seconds of it) paced on one clock, which it returns."""
    video_media, audio_media = sync_media
    clock = Clock()
    peers.sender.addTrack(PacketTrack("video", video_media, clock))
    peers.sender.addTrack(PacketTrack("audio", audio_media, clock, start_at=audio_from))
    await peers.connect()
    return clock


async def recorder_once_synchronised(peers: Peers, path: Path) -> MediaRecorder:
    """A recorder of the receiver's tracks, returned once their sender has reported."""
    recorder = MediaRecorder(path)
    for track in peers.remote_tracks:
        recorder.addTrack(track)
    taps = [tap_module.tap_track(track) for track in peers.remote_tracks]
    await wait_for(lambda: all(t is not None and t.synchronised for t in taps), 8, "sender reports")
    return recorder


def assert_beeps_with_flashes(flashes: list[float], beeps: list[float]) -> None:
    """Each flash has a beep within 20 ms of it."""
    pairs = [(f, min(beeps, key=lambda b, f=f: abs(b - f))) for f in flashes]
    assert all(abs(f - b) <= 0.02 for f, b in pairs), pairs


def first_video_after(path: Path, instants: list[float]) -> list[bool]:
    """Whether the first video packet after each instant (in the file's millisecond ticks:
    video from before a cut ends in or before the cut's tick) is a keyframe."""
    packets = probe(path, decode=False)["video"].packets
    ticks = [math.floor(instant * 1000 + 1e-6) for instant in instants]
    return [
        next(key for t, key, _ in packets if round(t * 1000) > tick or (tick == 0 and t == 0))
        for tick in ticks
    ]


async def video_past(recorder: MediaRecorder, seconds: float) -> None:
    """Record until at least ``seconds`` of video have been taken since the last cut (or
    the start): a sender that lags behind still shows what comes after each pause."""
    since = (recorder.getStats()["pauseCuts"] or [0.0])[-1]
    await asyncio.sleep(seconds)
    await wait_for(
        lambda: (recorder.getStats()["tracks"][0]["lastFrameTime"] or 0.0) > since + seconds,
        15,
        "video after the cut",
    )


async def record_remote(
    peers: Peers, path: Path, codec: str | None = None, pauses: int = 0, **options: Any
) -> tuple[MediaRecorder, EventLog, int]:
    """Send synthetic 640x480 video and audio, record the received tracks with ``pauses``
    pause/resume cycles; return the recorder, its events and the video frames sent."""
    clock = Clock()
    video = SyntheticVideo(clock, 640, 480)
    peers.sender.addTrack(video)
    peers.sender.addTrack(SyntheticAudio(clock))
    recorder = MediaRecorder(path, **options)
    peers.receiver.on("track", recorder.addTrack)  # the usual server pattern
    await peers.connect(codec)
    log = EventLog(recorder)
    if pauses:
        # Steady state: the senders' clocks are known, so any hole in the video is a resume.
        await sender_reports(peers)
    await recorder.start()
    sent_at_start = video._index
    log.paused_seconds = 0.0  # type: ignore[attr-defined]
    for _ in range(pauses):
        await video_past(recorder, 0.8)
        paused_at = time.monotonic()
        recorder.pause()
        await asyncio.sleep(0.3)
        log.paused_seconds += time.monotonic() - paused_at  # type: ignore[attr-defined]
        await recorder.resume()
    if pauses:
        await video_past(recorder, 0.8)
    else:
        await asyncio.sleep(3.0)
    sent = video._index - sent_at_start
    await recorder.stop()
    return recorder, log, sent


@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_remote_tracks_are_recorded_without_decoding(
    codec: str, peers: Peers, decoder_calls: list[str], tmp_path: Path
) -> None:
    path = tmp_path / ("out.webm" if codec == "vp8" else "out.mkv")
    recorder, log, sent = await record_remote(peers, path, codec)
    expected = "vp8,opus" if codec == "vp8" else "avc1,opus"
    assert recorder.mimeType.endswith(";codecs=" + expected)
    stats = recorder.getStats()
    assert log.names == ["start", "dataavailable", "stop"]
    assert [t["path"] for t in stats["tracks"]] == ["passthrough", "passthrough"]
    assert decoder_calls == []
    assert all(t["framesDecoded"] == 0 for t in stats["tracks"])
    assert not ffmpeg_errors(path)
    info = probe(path)
    assert len(info["video"].packets) >= 0.95 * sent, (len(info["video"].packets), sent)
    assert info["video"].packets[0][1]  # starts on a keyframe
    assert len(info["audio"].packets) >= 0.95 * 50 * 3
    if codec == "h264":
        assert probe_extradata(path)[:1] == b"\x01"  # avcC: the parameter sets in the header


async def test_video_restarts_on_a_keyframe_after_every_resume(
    peers: Peers, decoder_calls: list[str], tmp_path: Path
) -> None:
    path = tmp_path / "resumed.webm"
    recorder, log, _ = await record_remote(peers, path, pauses=3)
    stats = recorder.getStats()
    assert log.names.count("pause") == log.names.count("resume") == 3
    assert decoder_calls == []
    assert not ffmpeg_errors(path)
    cuts = stats["pauseCuts"]
    assert len(cuts) == 3
    assert first_video_after(path, [0.0, *cuts]) == [True] * 4
    assert stats["tracks"][0]["keyframeRequests"] >= 3
    assert abs(stats["pausedTime"] - log.paused_seconds) < 0.01  # type: ignore[attr-defined]


async def sender_reports(peers: Peers) -> None:
    """Wait until an RTCP sender report has arrived for every received track."""
    taps = [tap_module.tap_track(track) for track in peers.remote_tracks]
    await wait_for(lambda: all(t is not None and t.synchronised for t in taps), 8, "reports")


def probe_extradata(path: Path) -> bytes:
    import av

    with av.open(str(path)) as source:
        return bytes(source.streams.video[0].codec_context.extradata or b"")


async def test_pass_through_and_a_reader_of_decoded_frames_both_work(
    peers: Peers, tmp_path: Path
) -> None:
    peers.sender.addTrack(SyntheticVideo(width=320, height=240))
    await peers.connect()
    relay = MediaRelay()
    remote = peers.remote_tracks[0]
    recorder = MediaRecorder(tmp_path / "out.webm")
    recorder.addTrack(relay.subscribe(remote))
    frames: list[tuple[int, int]] = []

    async def read_decoded() -> None:
        reader = relay.subscribe(remote)
        while True:
            frame = await reader.recv()
            frames.append((frame.width, frame.height))

    reading = asyncio.ensure_future(read_decoded())
    await recorder.start()
    await log_media(recorder, 1.5)
    await recorder.stop()
    reading.cancel()
    assert recorder.getStats()["tracks"][0]["path"] == "passthrough"
    assert len(frames) >= 30 and set(frames) == {(320, 240)}
    assert not ffmpeg_errors(tmp_path / "out.webm")
    assert len(probe(tmp_path / "out.webm")["video"].frames) >= 40


async def test_audio_and_video_stay_in_sync_across_pauses(
    peers: Peers, sync_media: tuple[EncodedMedia, EncodedMedia], tmp_path: Path
) -> None:
    await send_sync_media(peers, sync_media, audio_from=0.3)
    path = tmp_path / "sync.webm"
    recorder = MediaRecorder(path)
    for track in peers.remote_tracks:
        recorder.addTrack(track)
    await recorder.start()
    for _ in range(3):
        await asyncio.sleep(1.3)
        await recorder.pause()
        await asyncio.sleep(0.45)
        await recorder.resume()
    await asyncio.sleep(1.6)
    await recorder.stop()

    assert [t["path"] for t in recorder.getStats()["tracks"]] == ["passthrough", "passthrough"]
    flashes, beeps = flash_times(path)
    assert len(flashes) >= 4, (flashes, beeps)
    assert_beeps_with_flashes(flashes, beeps)


async def test_sound_from_a_pause_is_kept_when_the_resume_moves_back_to_its_keyframe(
    peers: Peers, sync_media: tuple[EncodedMedia, EncodedMedia], tmp_path: Path
) -> None:
    # The keyframe that settles a resume may have been taken a little before it (a sender
    # working through a queue, or a busy one): video reaches the receiver 300 ms after
    # audio here, and the resume comes 60 ms after a keyframe (with a flash and a beep)
    # was taken. The resume moves back to that keyframe, and the sound from there on,
    # which arrived while the recording was still paused, must come back with it.
    clock = await send_sync_media(peers, sync_media)
    video_ssrc = next(s for s in peers.sender.getSenders() if s.track.kind == "video")._ssrc
    delay_rtp(peers.receiver, lambda packet: packet.ssrc == video_ssrc, 0.3)
    path = tmp_path / "moved_back.webm"
    recorder = await recorder_once_synchronised(peers, path)
    # (started between flashes: sound from before the start is not the recording's, so a
    # start moved back to a keyframe with a flash would have the flash without its beep)
    await asyncio.sleep((0.1 - clock.now()) % FLASH_PERIOD)
    await recorder.start()
    flash = next(f for f in flash_instants(12.0) if f > clock.now() + 1.5)
    await asyncio.sleep(flash - 0.6 - clock.now())
    await recorder.pause()
    await asyncio.sleep(flash + 0.06 - clock.now())
    await recorder.resume()
    await asyncio.sleep(1.5)
    await recorder.stop()

    # (the flash before the pause and the one the resume moved back to are 0.4 s apart)
    flashes, beeps = flash_times(path, spacing=2 * FLASH_LENGTH)
    # The flash of the keyframe the resume moved back to, and the next one a second later.
    assert len(flashes) >= 2 and flashes[-1] - flashes[-2] == pytest.approx(1.0, abs=0.01), flashes
    moved_back = flashes[-2]
    # Sound is there from that flash on: a packet after the cut starts within one packet
    # of it (the sound resumes at the cut; which packet holds the flash's instant depends
    # on a few ms between the audio and video clocks).
    audio = audio_packets(path, sync_media[1])
    assert any(abs(out - moved_back) <= 0.02 for out, _ in audio), (moved_back, audio)
    # Every packet after the cut sits where the video of its instant does (its source time
    # read from its bytes), within 20 ms.
    video_offset = moved_back - flash
    offsets = [
        out - taken - video_offset
        for out, taken in audio
        if taken is not None and taken > flash - 0.5  # (the pause began 0.6 s before it)
    ]
    assert offsets and all(abs(offset) <= 0.02 for offset in offsets), offsets
    # Decoded, the beeps away from the cut start with their flashes. (At the cut, the
    # beep's onset reads late when its first packet falls before the cut: the Opus decoder
    # builds a beep up over the next packets when it did not decode the one before.)
    assert_beeps_with_flashes([f for f in flashes if f != moved_back], beeps)
    assert not ffmpeg_errors(path)


def audio_packets(path: Path, media: EncodedMedia) -> list[tuple[float, float | None]]:
    """A file's audio packets as (output time, source time), the source time read from the
    packet's bytes where they are unique in ``media`` (silence repeats), else None."""
    seen: dict[bytes, list[float]] = {}
    for taken, data, _ in media.packets:
        seen.setdefault(bytes(data), []).append(taken)
    found = []
    with av.open(str(path)) as container:
        for packet in container.demux(audio=0):
            if packet.pts is None or packet.time_base is None:
                continue
            times = seen.get(bytes(packet), [])
            found.append(
                (float(packet.pts * packet.time_base), times[0] if len(times) == 1 else None)
            )
    return found


async def test_sender_reports_keep_sync_when_one_track_is_delayed_in_transit(
    peers: Peers, sync_media: tuple[EncodedMedia, EncodedMedia], tmp_path: Path
) -> None:
    # Audio packets reach the receiver 120 ms later than video ones (as on a path where
    # audio is queued): arrival times lie, the senders' RTCP reports do not.
    await send_sync_media(peers, sync_media)
    delay_rtp(
        peers.receiver, lambda packet: packet.payload_type < 100 and len(packet.payload) < 400, 0.12
    )
    recorder = await recorder_once_synchronised(peers, tmp_path / "delayed.webm")
    await recorder.start()
    await asyncio.sleep(3.5)
    await recorder.stop()
    assert all(t["senderReportSync"] for t in recorder.getStats()["tracks"])
    flashes, beeps = flash_times(tmp_path / "delayed.webm")
    audio_end = probe(tmp_path / "delayed.webm")["audio"].end
    # (the last 120 ms of audio were still in transit when the recording stopped; a file
    # that starts on a white picture started inside a flash, whose onset it does not hold)
    flashes = [f for f in flashes if 0 < f < audio_end - 0.2]
    assert len(flashes) >= 2
    assert_beeps_with_flashes(flashes, beeps)


def delay_rtp(pc: RTCPeerConnection, which: Callable[[Any], bool], seconds: float) -> None:
    """Hold back the RTP packets ``which`` selects for ``seconds`` before the receiver sees them."""
    from aiortc.rtp import RtpPacket

    transport = pc.getTransceivers()[0].receiver.transport
    handle = transport._handle_rtp_data
    loop = asyncio.get_running_loop()

    async def delayed(data: bytes, arrival_time_ms: int) -> None:
        packet = RtpPacket.parse(data, transport._rtp_header_extensions_map)
        if which(packet):
            loop.call_later(seconds, lambda: asyncio.ensure_future(handle(data, arrival_time_ms)))
        else:
            await handle(data, arrival_time_ms)

    transport._handle_rtp_data = delayed


def drop_rtp(pc: RTCPeerConnection, fraction: float, seed: int = 7) -> list[int]:
    """Drop a random ``fraction`` of incoming RTP packets before the receiver sees them, and
    every retransmission, so that what is lost stays lost."""
    from aiortc.rtp import RtpPacket

    transport = pc.getTransceivers()[0].receiver.transport
    retransmissions = {
        codec.payloadType
        for transceiver in pc.getTransceivers()
        for codec in transceiver._codecs
        if codec.mimeType.lower().endswith("/rtx")
    }
    handle = transport._handle_rtp_data
    chance = random.Random(seed)
    dropped: list[int] = []

    async def lossy(data: bytes, arrival_time_ms: int) -> None:
        packet = RtpPacket.parse(data, transport._rtp_header_extensions_map)
        if packet.payload_type in retransmissions or chance.random() < fraction:
            dropped.append(packet.payload_type)
            return
        await handle(data, arrival_time_ms)

    transport._handle_rtp_data = lossy
    return dropped


async def test_lost_packets_give_a_clean_file_and_keyframe_requests(
    peers: Peers, tmp_path: Path
) -> None:
    # Noise at 320x240: keyframes of a few packets, so that at 3 % loss most of those asked
    # for get through whole (at 640x480 a keyframe is a dozen packets or more and fewer
    # do: in one run of many video came back three times in 8 s, 22 frames in all).
    sender_video = SyntheticVideo(width=320, height=240, noise=True)
    peers.sender.addTrack(sender_video)
    peers.sender.addTrack(SyntheticAudio(sender_video.clock))
    await peers.connect()
    plis: list[float] = []
    for transceiver in peers.sender.getTransceivers():
        if transceiver.kind == "video":
            sender = transceiver.sender
            original = sender._send_keyframe
            sender._send_keyframe = lambda original=original: (
                plis.append(time.monotonic()),
                original(),
            )
    dropped = drop_rtp(peers.receiver, 0.03)
    path = tmp_path / "lossy.webm"
    recorder = MediaRecorder(path)
    for track in peers.remote_tracks:
        recorder.addTrack(track)
    await recorder.start()
    await asyncio.sleep(8)
    await recorder.stop()
    stats = recorder.getStats()["tracks"]
    assert len(dropped) >= 10
    assert len(plis) >= 2  # the start, and after losses
    assert stats[0]["framesDroppedIncomplete"] + stats[0]["framesDroppedWaitingForKeyframe"] > 0
    assert not ffmpeg_errors(path)
    info = probe(path)
    # every lost packet stays lost (retransmissions dropped too): video still flows, each
    # time from a keyframe asked for
    assert len(info["video"].frames) >= 30 and len(info["audio"].frames) >= 300
    assert info["video"].packets[0][1]
    keyframes = [at for at, key, _ in info["video"].packets if key]
    assert len(keyframes) >= 3, keyframes
    assert stats[0]["keyframeRequests"] >= 1


def lose_originals(pc: RTCPeerConnection, fraction: float, seed: int = 11) -> list[int]:
    """Drop a ``fraction`` of the first transmissions of incoming video packets and hold
    some others back behind their successors (reordering); retransmissions (RTX) answering
    the receiver's NACKs get through."""
    from aiortc.rtp import RtpPacket

    transport = pc.getTransceivers()[0].receiver.transport
    video = {
        codec.payloadType
        for transceiver in pc.getTransceivers()
        if transceiver.kind == "video"
        for codec in transceiver._codecs
        if not codec.mimeType.lower().endswith("/rtx")
    }
    handle = transport._handle_rtp_data
    chance = random.Random(seed)
    dropped: list[int] = []
    held: list[tuple[bytes, int]] = []

    async def lossy(data: bytes, arrival_time_ms: int) -> None:
        packet = RtpPacket.parse(data, transport._rtp_header_extensions_map)
        if packet.payload_type in video and packet.payload:
            draw = chance.random()
            if draw < fraction:
                dropped.append(packet.sequence_number)
                return
            if draw < 2 * fraction:
                held.append((data, arrival_time_ms))  # comes after the next packet
                return
        await handle(data, arrival_time_ms)
        while held:
            await handle(*held.pop())

    transport._handle_rtp_data = lossy
    return dropped


async def test_a_slow_screen_share_with_loss_keeps_every_frame_retransmissions_recover(
    peers: Peers, tmp_path: Path
) -> None:
    clock = Clock()
    video = SyntheticVideo(clock, 1280, 720, fps=2, noise=True)  # several packets a frame
    peers.sender.addTrack(video)
    path = tmp_path / "screen.webm"
    recorder = MediaRecorder(path)
    peers.receiver.on("track", recorder.addTrack)
    await peers.connect()
    await sender_reports(peers)
    dropped = lose_originals(peers.receiver, 0.03)
    await recorder.start()
    first = video._index
    await wait_for(lambda: video._index >= first + 16, 15, "8 s of a 2 fps share")
    sent = video._index - first
    await recorder.stop()
    stats = recorder.getStats()["tracks"][0]
    assert len(dropped) >= 5  # packets were lost, and recovered
    assert stats["framesDroppedIncomplete"] == 0, stats
    assert not ffmpeg_errors(path)
    written = len(probe(path)["video"].packets)
    assert written >= sent - 2, (written, sent)  # every frame but what the edges take


async def test_a_sender_without_reports_is_recorded_by_arrival(
    peers: Peers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tap_module.ReceiverTap, "_on_sender_report", lambda self, packet: None)
    clock = Clock()
    peers.sender.addTrack(SyntheticVideo(clock))
    peers.sender.addTrack(SyntheticAudio(clock))
    path = tmp_path / "no-reports.webm"
    recorder = MediaRecorder(path)
    peers.receiver.on("track", recorder.addTrack)
    await peers.connect()
    await recorder.start()
    await wait_for(
        lambda: (recorder.getStats()["tracks"][0]["lastFrameTime"] or 0) > 2.0, 20, "video"
    )
    await recorder.stop()
    tracks = recorder.getStats()["tracks"]
    assert [t["senderReportSync"] for t in tracks] == [False, False]
    assert not ffmpeg_errors(path)
    info = probe(path)
    assert info["video"].end > 2.0 and info["audio"].end > 2.0
    assert abs(info["video"].packets[0][0] - info["audio"].packets[0][0]) < 0.5


async def test_rtp_timestamp_wraparound_is_seamless(
    peers: Peers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aiortc.rtcrtpsender as sender_module

    clock = Clock()
    peers.sender.addTrack(SyntheticVideo(clock))
    peers.sender.addTrack(SyntheticAudio(clock))
    # Once the senders exist (their SSRCs drawn), every RTP clock starts just before 2**32:
    # 1.5 s of video, 2.8 s of audio before it wraps.
    monkeypatch.setattr(sender_module, "random32", lambda: 2**32 - 135_000)
    await peers.connect()
    path = tmp_path / "wrap.webm"
    recorder = MediaRecorder(path)
    for track in peers.remote_tracks:
        recorder.addTrack(track)
    await recorder.start()
    await asyncio.sleep(3.0)
    await recorder.stop()
    assert not ffmpeg_errors(path)
    info = probe(path)
    for kind, limit in (("video", 2.5 * FRAME), ("audio", 0.045)):
        gaps = np.diff(info[kind].frames)
        assert gaps.min() > 0 and gaps.max() <= limit, (kind, gaps.min(), gaps.max())
    assert info["video"].end > 2.7


async def test_resolution_change_mid_stream_keeps_passing_through(
    peers: Peers, tmp_path: Path
) -> None:
    video = SyntheticVideo(width=320, height=240, sizes=[(1.2, 640, 360)])
    peers.sender.addTrack(video)
    await peers.connect()
    video.clock.start = time.monotonic()  # the size changes 1.2 s into the recording
    video._index = 0
    path = tmp_path / "sizes.webm"
    recorder = MediaRecorder(path)
    recorder.addTrack(peers.remote_tracks[0])
    await recorder.start()
    await asyncio.sleep(2.5)
    await recorder.stop()
    assert recorder.getStats()["tracks"][0]["path"] == "passthrough"
    assert not ffmpeg_errors(path)
    sizes = set()
    import av

    with av.open(str(path)) as source:
        for frame in source.decode(video=0):
            sizes.add((frame.width, frame.height))
    assert sizes == {(320, 240), (640, 360)}


PATTERN_AT = 4.0  # source seconds: the recording has started by then


def stalling(index: int) -> float:
    """Frame times of a 30 fps sender that stalls for 2 s at 4 s (its clock goes on)."""
    t = index / 30
    return t if t < PATTERN_AT else t + 2.0


def thirty_fifteen_thirty(index: int) -> float:
    """Frame times at 30 fps, then 15 fps for 1.5 s from 4 s, then 30 fps again."""
    steady = round(PATTERN_AT * 30)
    if index < steady:
        return index / 30
    if index < steady + 22:
        return PATTERN_AT + (index - steady) / 15
    return PATTERN_AT + 22 / 15 + (index - steady - 22) / 30


@pytest.mark.parametrize("schedule", [stalling, thirty_fifteen_thirty], ids=["stall", "rates"])
async def test_stalls_and_rate_changes_give_files_every_decoder_takes(
    peers: Peers, tmp_path: Path, schedule: Callable[[int], float]
) -> None:
    clock = Clock()
    video = SyntheticVideo(clock, 320, 240, schedule=schedule)
    peers.sender.addTrack(video)
    peers.sender.addTrack(SyntheticAudio(clock))
    recorder = MediaRecorder(tmp_path / "irregular.webm")
    peers.receiver.on("track", recorder.addTrack)
    await peers.connect()
    await sender_reports(peers)
    await recorder.start()
    assert clock.now() < PATTERN_AT - 0.5, "the recording must start before the pattern"
    await wait_for(lambda: schedule(video._index) > PATTERN_AT + 4.0, 20, "the pattern to run")
    await recorder.stop()
    path = tmp_path / "irregular.webm"
    assert not ffmpeg_errors(path)
    gaps = np.diff(probe(path)["video"].frames)
    if schedule is stalling:
        assert 1.9 < gaps.max() < 2.1  # the stall is in the file, as long as it was
    else:
        assert sorted(np.round(gaps * 30))[-10:] == [2.0] * 10  # 15 fps, then 30 again
        assert np.round(gaps[-10:] * 30).tolist() == [1.0] * 10
    video_stats = recorder.getStats()["tracks"][0]
    assert video_stats["framesDroppedLate"] == 0 and video_stats["framesWritten"] > 100


async def test_statistics_report_the_path_and_what_happened(peers: Peers) -> None:
    clock = Clock()
    peers.sender.addTrack(SyntheticVideo(clock))
    peers.sender.addTrack(SyntheticAudio(clock))
    await peers.connect()
    recorder = MediaRecorder(mimeType="video/webm;codecs=vp9,opus")
    for track in peers.remote_tracks:
        recorder.addTrack(track)
    await recorder.start()
    await log_media(recorder, 0.6)
    await recorder.pause()
    await asyncio.sleep(0.3)
    await recorder.resume()
    await log_media(recorder, 1.2)
    await recorder.stop()
    stats = recorder.getStats()
    video, audio = stats["tracks"]
    assert (video["kind"], video["path"], video["codec"]) == ("video", "transcode", "vp9")
    assert (audio["kind"], audio["path"], audio["codec"]) == ("audio", "passthrough", "opus")
    assert video["framesDecoded"] > 20 and audio["framesDecoded"] == 0
    assert video["framesWritten"] > 20 and video["bytesWritten"] > 1000
    assert audio["framesWritten"] > 50
    assert video["keyframeRequests"] >= 1
    assert stats["pausedTime"] >= 0.3 and stats["recordedTime"] >= 1.2
    for key in ("framesDroppedWaitingForKeyframe", "framesDroppedPaused", "framesReceived"):
        assert key in video


async def test_unexpected_aiortc_falls_back_to_decoding_with_a_warning(
    peers: Peers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import aiortc

    peers.sender.addTrack(SyntheticAudio())
    await peers.connect()
    monkeypatch.setattr(aiortc, "__version__", "9.0.0")
    monkeypatch.setattr(tap_module, "_warned", set())
    path = tmp_path / "fallback.ogg"
    recorder = MediaRecorder(path)
    recorder.addTrack(peers.remote_tracks[0])
    with caplog.at_level(logging.WARNING, logger="rtc_recorder"):
        await recorder.start()
    assert any("recording decoded frames" in r.getMessage() for r in caplog.records)
    await log_media(recorder, 1.0)
    await recorder.stop()
    assert recorder.getStats()["tracks"][0]["path"] == "transcode"
    assert not ffmpeg_errors(path)


async def test_blackhole_consumer_does_not_disturb_recording(peers: Peers, tmp_path: Path) -> None:
    peers.sender.addTrack(SyntheticAudio())
    await peers.connect()
    blackhole = MediaBlackhole()
    blackhole.addTrack(peers.remote_tracks[0])
    recorder = MediaRecorder(tmp_path / "a.weba")
    recorder.addTrack(peers.remote_tracks[0])
    await blackhole.start()
    await recorder.start()
    await log_media(recorder, 1.0)
    await recorder.stop()
    await blackhole.stop()
    assert recorder.getStats()["tracks"][0]["path"] == "passthrough"
    assert not ffmpeg_errors(tmp_path / "a.weba")


def test_a_sender_switching_codecs_mid_recording_keeps_the_track_going(tmp_path: Path) -> None:
    # aiortc cannot renegotiate a receiver's codec, so drive the writer directly with what a
    # receiver would hand over: VP8 frames, then (the sender switched) H.264 frames.
    import fractions
    import threading

    import av

    from rtc_recorder.encoding import EncoderSettings, MediaItem, PassthroughTrack
    from rtc_recorder.mimetype import parse_type
    from rtc_recorder.receive.hooks import EncodedFrame
    from rtc_recorder.sink import Sink
    from rtc_recorder.writer import Chunk, RecordingWriter

    def encoded(codec: str, count: int, start: int) -> list[EncodedFrame]:
        encoder = av.CodecContext.create("libvpx" if codec == "vp8" else "libx264", "w")
        encoder.width, encoder.height, encoder.pix_fmt = 320, 240, "yuv420p"
        encoder.time_base = fractions.Fraction(1, 90000)
        encoder.framerate = fractions.Fraction(30)
        encoder.options = {"tune": "zerolatency"} if codec == "h264" else {"deadline": "realtime"}
        frames = []
        for index in range(count):
            picture = av.VideoFrame(320, 240, "yuv420p")
            for plane in picture.planes:
                plane.update(bytes([(index * 7) % 256]) * plane.buffer_size)
            picture.pts = index * 3000
            for packet in encoder.encode(picture):
                timestamp = (start + index) * 3000
                frames.append(EncodedFrame(codec, bytes(packet), timestamp, 90000, 0.0))
        return frames

    done = threading.Event()
    events: list[object] = []

    def notify(event: object) -> None:
        events.append(event)
        if isinstance(event, Chunk) and event.final:
            done.set()

    processor = PassthroughTrack(0, "video", "vp8", EncoderSettings())
    path = tmp_path / "switch.webm"
    writer = RecordingWriter(parse_type("video/webm;codecs=vp8"), [processor], Sink(path), notify)
    writer.start()
    frames = encoded("vp8", 45, 0) + encoded("h264", 45, 45)
    for index, frame in enumerate(frames):
        assert writer.submit(MediaItem(0, round(frame.timestamp / 0.09), frame, index == 0))
    writer.close()
    assert done.wait(30)
    assert processor.path == "transcode" and processor.counters.frames_decoded > 30
    assert not ffmpeg_errors(path)
    info = probe(path)
    assert info["video"].codec == "vp8" and len(info["video"].frames) >= 85
