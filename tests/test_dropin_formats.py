"""Drop-in beyond rtc-recorder's own containers: any other format aiortc's recorder writes
(MP3, image sequences, FLV, MOV...) is written by FFmpeg, transcoded as aiortc does.

Each comparison records the same synthetic tracks with aiortc's recorder and with ours at
once, and decodes both files back: same FFmpeg format, codecs, kinds of streams, and
comparable durations and frame counts."""

from __future__ import annotations

import errno
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiortc.contrib.media import MediaRecorder as AiortcRecorder
from aiortc.mediastreams import MediaStreamError

from rtc_recorder import MediaRecorder, NotSupportedError

from .media import (
    Clock,
    SyntheticAudio,
    SyntheticVideo,
    duration,
    ffmpeg_errors,
    probe,
    wait_for,
)
from .support import EventLog
from .test_passthrough import Peers, record_remote
from .test_recordings import record_pattern

FRAME = 1 / 30
SECONDS = 1.5
WIDTH, HEIGHT = 160, 120


class FiniteVideo(SyntheticVideo):
    """SECONDS of live synthetic video, then the track ends."""

    async def recv(self) -> av.VideoFrame:
        if self._index >= SECONDS * self.fps:
            self.stop()
            raise MediaStreamError
        return await super().recv()


class FiniteAudio(SyntheticAudio):
    """SECONDS of live synthetic audio, then the track ends."""

    async def recv(self) -> av.AudioFrame:
        if self._sample >= SECONDS * 48000:
            self.stop()
            raise MediaStreamError
        return await super().recv()


@pytest.fixture
async def peers() -> AsyncIterator[Peers]:
    pair = Peers()
    yield pair
    await pair.close()


def format_of(target: str | Path | bytes) -> str:
    """The format FFmpeg reads ``target`` as."""
    source = io.BytesIO(target) if isinstance(target, bytes) else str(target)
    with av.open(source) as container:
        return str(container.format.name)


def sample_counts(target: str | Path | bytes) -> dict[str, int]:
    """Decoded video frames and audio samples, per kind."""
    source = io.BytesIO(target) if isinstance(target, bytes) else str(target)
    counts: dict[str, int] = {}
    with av.open(source) as container:
        for frame in container.decode(*container.streams):
            kind = "video" if isinstance(frame, av.VideoFrame) else "audio"
            counts[kind] = counts.get(kind, 0) + (frame.samples if kind == "audio" else 1)
    return counts


async def record_side_by_side(
    theirs_target: Any, ours_target: Any, kinds: set[str], format: str | None = None
) -> EventLog:
    """Record the same SECONDS of synthetic media, live, with aiortc's recorder (given only
    the tracks its format takes, as its users must) and with ours (given both, as a
    server's ``pc.on("track", recorder.addTrack)`` does), until the tracks end; return our
    recorder's events."""
    clock = Clock()
    theirs = AiortcRecorder(theirs_target, format=format)
    ours = MediaRecorder(ours_target, format=format)
    log = EventLog(ours)
    their_tracks = []
    for kind in ("video", "audio"):
        pair = [
            FiniteVideo(clock, WIDTH, HEIGHT) if kind == "video" else FiniteAudio(clock)
            for _ in range(2)
        ]
        if kind in kinds:
            theirs.addTrack(pair[0])
            their_tracks.append(pair[0])
        ours.addTrack(pair[1])
    clock.start = time.monotonic()  # the media begins now, for both
    await theirs.start()
    await ours.start()
    # ours stops by itself once its tracks have ended; aiortc's must be told
    await wait_for(lambda: "stop" in log.names, 10 * SECONDS, "our recording's end")
    await wait_for(lambda: all(t.readyState == "ended" for t in their_tracks), 10 * SECONDS)
    await theirs.stop()
    return log


def assert_same_kind_of_output(
    theirs: str | Path | bytes, ours: str | Path | bytes, kinds: set[str]
) -> None:
    assert format_of(ours) == format_of(theirs)
    their_info, our_info = probe(theirs), probe(ours)
    assert set(our_info) == set(their_info) == kinds
    for kind in kinds:
        assert our_info[kind].codec == their_info[kind].codec, kind
    # every frame of the tracks; the sound within two audio codec frames (encoder delays)
    assert abs(duration(our_info) - duration(their_info)) <= 0.1
    their_counts, our_counts = sample_counts(theirs), sample_counts(ours)
    assert abs(our_counts.get("video", 0) - their_counts.get("video", 0)) <= 1, (
        our_counts,
        their_counts,
    )
    assert abs(our_counts.get("audio", 0) - their_counts.get("audio", 0)) <= 2304, (
        our_counts,
        their_counts,
    )


@pytest.mark.parametrize(
    ("name", "kinds", "codecs"),
    [
        ("out.mp3", {"audio"}, "audio/mpeg;codecs=mp3"),
        ("out.flv", {"video", "audio"}, "application/octet-stream;codecs=avc1,mp4a.40.2"),
        ("out.mov", {"video", "audio"}, "video/quicktime;codecs=avc1,mp4a.40.2"),
    ],
)
async def test_a_file_ffmpeg_writes_is_what_aiortcs_recorder_writes(
    name: str, kinds: set[str], codecs: str, tmp_path: Path
) -> None:
    (tmp_path / "aiortc").mkdir()
    theirs, ours = tmp_path / "aiortc" / name, tmp_path / name
    recorder = (await record_side_by_side(str(theirs), ours, kinds)).recorder
    assert recorder.mimeType == codecs
    assert [t["path"] for t in recorder.getStats()["tracks"]] == ["transcode"] * len(kinds)
    assert not ffmpeg_errors(ours)
    assert_same_kind_of_output(theirs, ours, kinds)


async def test_an_image_sequence_is_what_aiortcs_recorder_writes(tmp_path: Path) -> None:
    (tmp_path / "aiortc").mkdir()
    pattern = "frames-%3d.png"
    log = await record_side_by_side(
        str(tmp_path / "aiortc" / pattern), tmp_path / pattern, {"video"}
    )
    recorded = [t["kind"] for t in log.recorder.getStats()["tracks"]]
    assert recorded == ["video"] and log.recorder.mimeType == "image/png;codecs=png"
    assert [event.data for event in log.events("dataavailable")] == [b""]
    ours = sorted(tmp_path.glob("frames-*.png"))
    theirs = sorted((tmp_path / "aiortc").glob("frames-*.png"))
    assert ours[0].name == "frames-001.png"
    assert len(ours) == len(theirs) == SECONDS * 30
    for path in (ours[0], ours[-1]):
        with av.open(str(path)) as picture:
            frame = next(picture.decode(video=0))
            assert (picture.streams.video[0].codec_context.name, frame.format.name) == (
                "png",
                "rgb24",
            )
            assert (frame.width, frame.height) == (WIDTH, HEIGHT)
    assert not ffmpeg_errors(tmp_path / pattern)
    assert format_of(tmp_path / pattern) == format_of(tmp_path / "aiortc" / pattern) == "image2"


async def test_a_file_object_with_a_format_is_what_aiortcs_recorder_writes() -> None:
    theirs, ours = io.BytesIO(), io.BytesIO()
    log = await record_side_by_side(theirs, ours, {"video", "audio"}, format="flv")
    assert log.recorder.mimeType.endswith(";codecs=avc1,mp4a.40.2")
    assert_same_kind_of_output(theirs.getvalue(), ours.getvalue(), {"video", "audio"})
    # the chunks are what FFmpeg wrote; its rewrites of the header went into the object
    assert_same_but_rewritten_header(log, ours.getvalue())


def assert_same_but_rewritten_header(log: EventLog, written: bytes) -> None:
    streamed = b"".join(event.data for event in log.events("dataavailable"))
    assert len(streamed) == len(written)
    assert 0 < sum(a != b for a, b in zip(streamed, written, strict=True)) <= 64
    assert (
        probe(streamed, decode=False)["video"].packets
        == probe(written, decode=False)["video"].packets
    )


async def test_without_a_file_the_chunks_are_the_output() -> None:
    clock = Clock()
    recorder = MediaRecorder(format="mpegts", stream=[SyntheticVideo(clock), SyntheticAudio(clock)])
    log = EventLog(recorder)
    await record_pattern(recorder, [1.0], timeslice=250)
    streamed = b"".join(event.data for event in log.events("dataavailable"))
    assert format_of(streamed) == "mpegts"
    info = probe(streamed, decode=False)
    assert (info["video"].codec, info["audio"].codec) == ("h264", "aac")
    written = {t["kind"]: t["framesWritten"] for t in recorder.getStats()["tracks"]}
    assert {kind: len(stream.packets) for kind, stream in info.items()} == written
    assert written["video"] >= 25


async def test_mime_type_follows_the_format_without_a_file_name() -> None:
    recorder = MediaRecorder(io.BytesIO(), format="mp3", stream=[SyntheticAudio()])
    recorder.start()
    assert recorder.mimeType == "audio/mpeg;codecs=mp3"
    await recorder.stop()


async def test_options_go_to_ffmpeg(tmp_path: Path) -> None:
    path = tmp_path / "tagged.mp3"
    recorder = MediaRecorder(path, options={"id3v2_version": "3"}, stream=[SyntheticAudio()])
    await record_pattern(recorder, [0.5])
    assert path.read_bytes()[:4] == b"ID3\x03"  # FFmpeg's default is version 4


async def test_chunks_are_the_bytes_ffmpeg_wrote(tmp_path: Path) -> None:
    path = tmp_path / "chunks.flv"
    clock = Clock()
    recorder = MediaRecorder(path, stream=[SyntheticVideo(clock), SyntheticAudio(clock)])
    log = EventLog(recorder)
    await record_pattern(recorder, [1.2], timeslice=250)
    # the bytes come as the media does (FFmpeg's interleaving may hold some back a while)
    assert sum(1 for event in log.events("dataavailable") if event.data) >= 3
    # the same bytes, but for the header fields FFmpeg rewrote in place at the end
    assert_same_but_rewritten_header(log, path.read_bytes())


async def test_a_pause_is_cut_out(tmp_path: Path) -> None:
    path = tmp_path / "paused.mov"
    clock = Clock()
    recorder = MediaRecorder(path, stream=[SyntheticVideo(clock), SyntheticAudio(clock)])
    clock.start = time.monotonic()
    recorded = await record_pattern(recorder, [1.0, 0.7, 1.0])
    assert not ffmpeg_errors(path)
    info = probe(path)
    video = info["video"]
    assert abs(video.end - video.start - recorded) <= FRAME, (video.end - video.start, recorded)
    assert abs(info["audio"].end - video.end) <= 0.05
    assert np.diff(video.frames).max() <= 2.5 * FRAME
    assert np.diff(info["audio"].frames).max() <= 0.05


async def test_a_remote_track_is_decoded_and_written_by_ffmpeg(
    peers: Peers, tmp_path: Path
) -> None:
    path = tmp_path / "remote.mov"
    recorder, log, sent = await record_remote(peers, path)
    assert log.names == ["start", "dataavailable", "stop"]
    tracks = recorder.getStats()["tracks"]
    assert [(t["kind"], t["path"]) for t in tracks] == [
        ("video", "transcode"),
        ("audio", "transcode"),
    ]
    assert all(t["framesDecoded"] > 0 for t in tracks)  # encoded frames came, we decoded them
    assert not ffmpeg_errors(path)
    info = probe(path)
    assert (info["video"].codec, info["audio"].codec) == ("h264", "aac")
    assert len(info["video"].frames) >= 0.9 * sent, (len(info["video"].frames), sent)
    assert (info["video"].width, info["video"].height) == (640, 480)


@pytest.mark.parametrize(
    ("name", "format", "reason"),
    [
        ("x.nosuchformat", None, "FFmpeg cannot write '.*x.nosuchformat'"),
        (None, "nosuch", "FFmpeg cannot write format 'nosuch'"),
        ("x.gif", None, "gif muxer takes neither"),
        ("", "image2", "writes files by name: give a path"),
    ],
)
def test_what_ffmpeg_cannot_write_is_refused_at_construction(
    name: str | None, format: str | None, reason: str, tmp_path: Path
) -> None:
    file = io.BytesIO() if name == "" else None if name is None else tmp_path / name
    with pytest.raises(NotSupportedError, match=reason) as raised:
        MediaRecorder(file, format=format)
    assert raised.value.name == "NotSupportedError"
    assert not list(tmp_path.iterdir())


async def test_an_unwritable_directory_gives_error_dataavailable_stop(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_bytes(b"")  # a file where the directory should be
    recorder = MediaRecorder(tmp_path / "blocker" / "out.flv", stream=[SyntheticAudio()])
    log = EventLog(recorder)
    await recorder.start()
    await wait_for(lambda: "stop" in log.names, 15, "stop")
    assert log.names == ["start", "error", "dataavailable", "stop"]
    error = log.events("error")[0].error
    assert error.name == "UnknownError" and "Not a directory" in str(error)
    assert recorder.state == "inactive"


class FillingUp(io.BytesIO):
    """A file object on a disk that is full after ``room`` bytes."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, data: Any) -> int:
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


async def test_a_full_disk_mid_recording_gives_error_dataavailable_stop() -> None:
    target = FillingUp(20_000)
    clock = Clock()
    recorder = MediaRecorder(
        target, format="flv", stream=[SyntheticVideo(clock), SyntheticAudio(clock)]
    )
    log = EventLog(recorder)
    await recorder.start(200)
    await wait_for(lambda: "stop" in log.names, 15, "stop")
    tail = log.names[log.names.index("error") :]
    assert tail[0] == "error" and tail[-1] == "stop" and set(tail[1:-1]) == {"dataavailable"}
    assert "No space left" in str(log.events("error")[0].error)
    assert "dataavailable" in log.names[: log.names.index("error")]  # it failed mid-recording
    assert recorder.state == "inactive"
    assert probe(target.getvalue(), decode=False)["video"].packets  # what was written reads
