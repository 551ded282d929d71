"""The recorder contract, sections 3 and 4, for any track (decoded frames, encoded here):
recorded files decoded back and checked by PyAV and by Debian's ffmpeg."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from aiortc.contrib.media import MediaPlayer

from rtc_recorder import MediaRecorder, MediaStream

from .media import (
    Clock,
    SyntheticAudio,
    SyntheticVideo,
    duration,
    ffmpeg_errors,
    flash_times,
    make_media_file,
    probe,
)
from .support import EventLog, log_media

ROOT = Path(__file__).resolve().parent.parent
FRAME = 1 / 30


def av_stream(clock: Clock | None = None, **video: object) -> MediaStream:
    clock = clock or Clock()
    return MediaStream([SyntheticVideo(clock, **video), SyntheticAudio(clock)])  # type: ignore[arg-type]


async def record_pattern(
    recorder: MediaRecorder, pattern: list[float], timeslice: int | None = None
) -> float:
    """Record, pause, record... for the given seconds each; return the recorded wall time."""
    recorded = 0.0
    began = time.monotonic()
    await recorder.start(timeslice)
    for index, seconds in enumerate(pattern):
        await asyncio.sleep(seconds)
        now = time.monotonic()
        if index % 2 == 0:
            recorded += now - began
            if index + 1 < len(pattern):
                recorder.pause()
        else:
            recorder.resume()
            began = now
    await recorder.stop()
    return recorded


@pytest.mark.parametrize(
    "pattern",
    [[1.5, 1.0, 1.5], [0.8, 0.5, 0.8, 0.5, 0.8, 0.5, 0.8]],
    ids=["one-pause", "three-pauses"],
)
async def test_pauses_are_cut_out_and_audio_and_video_end_together(
    pattern: list[float], tmp_path: Path
) -> None:
    path = tmp_path / "paused.webm"
    recorder = MediaRecorder(path, stream=av_stream())
    recorded = await record_pattern(recorder, pattern)
    assert not ffmpeg_errors(path)
    info = probe(path)
    assert abs(duration(info) - recorded) <= FRAME, (duration(info), recorded)
    assert abs(info["video"].end - info["audio"].end) <= 0.05
    # no hole anywhere: consecutive frames are never further apart than a frame or two
    for stream, limit in (("video", 2.5 * FRAME), ("audio", 0.045)):
        gaps = np.diff(info[stream].frames)
        assert gaps.max() <= limit, (stream, gaps.max())


async def test_lip_sync_holds_across_pauses(tmp_path: Path) -> None:
    path = tmp_path / "sync.webm"
    recorder = MediaRecorder(path, stream=av_stream())
    await record_pattern(recorder, [1.3, 0.45, 1.3, 0.7, 1.3, 0.3, 1.3])
    flashes, beeps = flash_times(path)
    assert len(flashes) >= 4 and len(flashes) == len(beeps), (flashes, beeps)
    for flash, beep in zip(flashes, beeps, strict=True):
        assert abs(flash - beep) <= 0.02 + FRAME, (flashes, beeps)


async def test_chunks_concatenated_decode_to_the_same_packets_as_the_file(tmp_path: Path) -> None:
    path = tmp_path / "chunks.webm"
    recorder = MediaRecorder(path, stream=av_stream())
    log = EventLog(recorder)
    await record_pattern(recorder, [1.2, 0.5, 1.0], timeslice=250)
    chunks = log.events("dataavailable")
    assert len(chunks) >= 8
    timecodes = [chunk.timecode for chunk in chunks]
    assert timecodes[0] == 0.0 and timecodes == sorted(timecodes)
    streamed = probe(b"".join(chunk.data for chunk in chunks), decode=False)
    written = probe(path, decode=False)
    for kind in ("video", "audio"):
        assert streamed[kind].packets == written[kind].packets
    # every prefix of whole chunks is itself a playable file (what a crash would leave)
    prefix = b"".join(chunk.data for chunk in chunks[:4])
    assert probe(prefix)["video"].frames


async def test_mime_type_names_the_codecs_once_started() -> None:
    recorder = MediaRecorder(stream=av_stream())
    assert recorder.mimeType == ""
    recorder.start()
    assert recorder.mimeType == "video/webm;codecs=vp8,opus"
    await recorder.stop()
    audio_only = MediaRecorder(stream=[SyntheticAudio()])
    audio_only.start()
    assert audio_only.mimeType == "audio/webm;codecs=opus"
    await audio_only.stop()


CONTAINERS = [
    ("video/webm;codecs=vp8,opus", ".webm", {"video": "vp8", "audio": "opus"}),
    ("video/webm;codecs=vp9,opus", ".webm", {"video": "vp9", "audio": "opus"}),
    ("video/webm;codecs=av1,opus", ".webm", {"video": "av1", "audio": "opus"}),
    ("video/x-matroska;codecs=avc1,opus", ".mkv", {"video": "h264", "audio": "opus"}),
    ("video/mp4;codecs=avc1,opus", ".mp4", {"video": "h264", "audio": "opus"}),
    ("video/mp4;codecs=avc1,mp4a.40.2", ".mp4", {"video": "h264", "audio": "aac"}),
    ("audio/webm;codecs=opus", ".weba", {"audio": "opus"}),
    ("audio/ogg;codecs=opus", ".ogg", {"audio": "opus"}),
    ("audio/wav", ".wav", {"audio": "pcm_s16le"}),
]


@pytest.mark.parametrize(("mime", "suffix", "codecs"), CONTAINERS, ids=[c[0] for c in CONTAINERS])
async def test_every_type_in_the_table_writes_a_clean_file(
    mime: str, suffix: str, codecs: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / f"out{suffix}"
    recorder = MediaRecorder(path, mimeType=mime, stream=av_stream())
    log = EventLog(recorder)
    recorded = await record_pattern(recorder, [0.9, 0.4, 0.9], timeslice=300)
    assert not ffmpeg_errors(path)
    info = probe(path)
    assert {kind: stream.codec.replace("libopus", "opus") for kind, stream in info.items()} == {
        kind: codec for kind, codec in codecs.items()
    }
    assert abs(duration(info) - recorded) <= 2 * FRAME + 0.03, (duration(info), recorded)
    # chunks and file hold the same media
    streamed = probe(b"".join(chunk.data for chunk in log.events("dataavailable")), decode=False)
    for kind in codecs:
        if kind in streamed and streamed[kind].packets:
            assert len(streamed[kind].packets) == len(probe(path, decode=False)[kind].packets)


@pytest.mark.parametrize(
    ("suffix", "expected"),
    [
        (".webm", "video/webm"),
        (".mkv", "video/x-matroska"),
        (".mp4", "video/mp4"),
        ("", "video/webm"),
    ],
)
async def test_type_follows_the_file_suffix(suffix: str, expected: str, tmp_path: Path) -> None:
    recorder = MediaRecorder(tmp_path / f"out{suffix}", stream=av_stream())
    recorder.start()
    assert recorder.mimeType.startswith(expected + ";codecs=")
    await log_media(recorder, 0.3)
    await recorder.stop()
    assert not ffmpeg_errors(tmp_path / f"out{suffix}")


async def test_video_bitrate_is_honoured(tmp_path: Path) -> None:
    rates = {}
    for bitrate in (400_000, 1_600_000):
        path = tmp_path / f"rate-{bitrate}.webm"
        clock = Clock()
        recorder = MediaRecorder(
            path, stream=[SyntheticVideo(clock, 640, 480, noise=True)], videoBitsPerSecond=bitrate
        )
        assert recorder.videoBitsPerSecond == bitrate
        await record_pattern(recorder, [3.0])
        info = probe(path, decode=False)["video"]
        seconds = info.packets[-1][0] - info.packets[0][0]
        rates[bitrate] = sum(size for _, _, size in info.packets) * 8 / seconds
    for bitrate, measured in rates.items():
        assert 0.7 * bitrate <= measured <= 1.35 * bitrate, rates
    assert rates[1_600_000] / rates[400_000] > 2.5, rates


async def test_constant_audio_bitrate_mode_gives_constant_packets(tmp_path: Path) -> None:
    sizes = {}
    for mode in ("constant", "variable"):
        path = tmp_path / f"{mode}.weba"
        recorder = MediaRecorder(
            path, stream=[SyntheticAudio()], audioBitsPerSecond=64_000, audioBitrateMode=mode
        )
        await record_pattern(recorder, [1.5])
        sizes[mode] = {size for _, _, size in probe(path, decode=False)["audio"].packets}
    assert len(sizes["constant"]) == 1 and sizes["constant"] == {160}  # 64 kb/s x 20 ms
    assert len(sizes["variable"]) > 1


def test_bits_per_second_splits_between_audio_and_video() -> None:
    recorder = MediaRecorder(bitsPerSecond=1_000_000)
    assert recorder.audioBitsPerSecond + recorder.videoBitsPerSecond == 1_000_000
    assert recorder.audioBitsPerSecond == 100_000
    explicit = MediaRecorder(bitsPerSecond=1_000_000, audioBitsPerSecond=64_000)
    assert explicit.videoBitsPerSecond == 936_000


@pytest.mark.parametrize(
    ("options", "expected_gap"),
    [({"videoKeyFrameIntervalDuration": 500}, 0.5), ({"videoKeyFrameIntervalCount": 12}, 12 / 30)],
    ids=["duration", "count"],
)
async def test_keyframe_interval_is_honoured(
    options: dict[str, float], expected_gap: float, tmp_path: Path
) -> None:
    path = tmp_path / "keys.webm"
    recorder = MediaRecorder(path, stream=[SyntheticVideo()], **options)  # type: ignore[arg-type]
    await record_pattern(recorder, [2.5])
    keys = [t for t, key, _ in probe(path, decode=False)["video"].packets if key]
    gaps = np.diff(keys)
    assert len(keys) >= 4
    assert np.all(np.abs(gaps - expected_gap) <= FRAME + 0.005), gaps


async def test_frame_size_changes_keep_the_recording_whole(tmp_path: Path) -> None:
    path = tmp_path / "sizes.webm"
    video = SyntheticVideo(sizes=[(0.7, 240, 320), (1.4, 640, 360)])
    recorder = MediaRecorder(path, stream=[video, SyntheticAudio(video.clock)])
    recorded = await record_pattern(recorder, [2.2])
    assert not ffmpeg_errors(path)
    info = probe(path)
    assert (info["video"].width, info["video"].height) == (320, 240)
    assert abs(duration(info) - recorded) <= FRAME + 0.03
    assert len(info["video"].frames) >= 60


async def test_drop_in_for_aiortc_media_recorder(tmp_path: Path) -> None:
    # aiortc's documented MediaPlayer -> MediaRecorder usage, only the import changed.
    source = tmp_path / "source.mp4"
    make_media_file(source, seconds=2.0)
    target = tmp_path / "copy.mp4"

    player = MediaPlayer(str(source))
    recorder = MediaRecorder(str(target))
    recorder.addTrack(player.audio)
    recorder.addTrack(player.video)
    await recorder.start()
    ended = asyncio.Event()
    player.video.on("ended", ended.set)
    await asyncio.wait_for(ended.wait(), 10)
    await recorder.stop()

    assert not ffmpeg_errors(target)
    info = probe(target)
    assert set(info) == {"audio", "video"}
    assert abs(duration(info) - 2.0) <= 0.15


def run_recorder_process(path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.record_process", str(path), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def read_events(
    process: subprocess.Popen[str], until: str, timeout: float = 30
) -> list[dict[str, object]]:
    assert process.stdout is not None
    events = []
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        events.append(json.loads(line))
        if events[-1].get("event") == until or until in events[-1]:
            return events
        assert time.monotonic() < deadline, events
    raise AssertionError(f"process ended before {until!r}: {events}")


def test_a_killed_process_leaves_a_playable_file(tmp_path: Path) -> None:
    path = tmp_path / "killed.webm"
    process = run_recorder_process(path, "--timeslice", "1000")
    try:
        read_events(process, "ready")
        time.sleep(5)  # the contract's scenario: killed 5 s into the recording
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    info = probe(path)
    assert duration(info) >= 3.5, duration(info)
    assert not ffmpeg_errors(path)


def test_a_full_disk_errors_keeps_the_file_and_spares_other_recordings(tmp_path: Path) -> None:
    path = tmp_path / "full.webm"
    limit = 400_000
    process = run_recorder_process(path, "--timeslice", "500", "--file-size-limit", str(limit))
    try:
        events = read_events(process, "other", timeout=60)
    finally:
        process.kill()
        process.wait(10)
    names = [e["event"] for e in events if "event" in e]
    assert names[:2] == ["ready", "start"] or names[:2] == ["start", "ready"]
    tail = names[names.index("error") :]
    assert tail[0] == "error" and tail[-1] == "stop" and set(tail[1:-1]) == {"dataavailable"}
    assert next(e for e in events if e.get("event") == "error")["error"] == "UnknownError"
    assert path.stat().st_size <= limit
    assert not ffmpeg_errors(path)
    assert duration(probe(path)) > 0.5
    other = next(e["other"] for e in events if "other" in e)
    assert other["state"] == "inactive" and other["frames"] > 25  # type: ignore[index]
