"""The recording writer's placement of time 0, fed frames at exact times (the real writer,
processors, container and sink; only the network is left out)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from rtc_recorder.encoding import EncoderSettings, MediaItem, PassthroughTrack
from rtc_recorder.mimetype import resolve_type
from rtc_recorder.receive.hooks import EncodedFrame
from rtc_recorder.sink import Sink
from rtc_recorder.writer import Chunk, Failure, RecordingWriter

from .media import EncodedMedia, encode_sync_source, ffmpeg_errors, probe

FRAME_US = 1_000_000 / 30


@functools.cache
def sync_media() -> tuple[EncodedMedia, EncodedMedia]:
    return encode_sync_source(2.0)


def write(path: Path, audio_lead_us: int) -> None:
    """Record 2 s of VP8 and Opus, the audio starting ``audio_lead_us`` before the video."""
    video, audio = sync_media()
    settings = EncoderSettings()
    processors = [
        PassthroughTrack(0, "video", "vp8", settings),
        PassthroughTrack(1, "audio", "opus", settings),
    ]
    events: list[Chunk | Failure] = []
    writer = RecordingWriter(
        resolve_type("video/webm;codecs=vp8,opus", path, None),
        processors,
        Sink(path, keep_chunks=False),
        events.append,
        quantum=lambda: 1 / 30,
    )
    start = 10_000_000  # output clock, µs
    items = [
        (start + round(seconds * 1e6), 0, data, video.rate, seconds)
        for seconds, data, _ in video.packets
    ] + [
        (start - audio_lead_us + round(seconds * 1e6), 1, data, audio.rate, seconds)
        for seconds, data, _ in audio.packets
    ]
    writer.start()
    for time, track, data, rate, seconds in sorted(items):
        codec = "vp8" if track == 0 else "opus"
        frame = EncodedFrame(codec, data, round(seconds * rate), rate, arrival=0.0)
        assert writer.submit(MediaItem(track, time, frame, restart=time == items[0][0]))
    writer.close()
    writer.join(30)
    assert not any(isinstance(event, Failure) for event in events), events
    assert isinstance(events[-1], Chunk) and events[-1].final, events


@pytest.mark.parametrize("audio_lead_ms", range(0, 34, 1))
def test_audio_starting_before_the_video_keeps_the_video_on_its_grid(
    audio_lead_ms: int, tmp_path: Path
) -> None:
    """Whatever the audio's lead, the file passes FFmpeg: its video frames never sit half a
    frame interval off the file's first packet (which FFmpeg's frame-rate handling rounds
    onto each other), and audio and video keep their relative timing."""
    path = tmp_path / "lead.webm"
    write(path, audio_lead_ms * 1000)
    assert not ffmpeg_errors(path)
    info = probe(path, decode=False)
    start = min(stream.packets[0][0] for stream in info.values())
    offset = (info["video"].packets[0][0] - start) * 1e6 % FRAME_US
    assert abs(offset - FRAME_US / 2) > 1000, (audio_lead_ms, offset)
    # Relative timing kept: the lead is as sent (plus the 6.5 ms of Opus pre-skip players
    # take off the audio's times), or 20 ms less if the first audio packet (the one half a
    # frame off the grid) was left out.
    lead_ms = (info["video"].packets[0][0] - info["audio"].packets[0][0]) * 1000
    expected = [audio_lead_ms + 6.5 - 20 * left_out for left_out in (0, 1)]
    assert any(abs(lead_ms - lead) <= 1.5 for lead in expected), (lead_ms, expected)
