"""H.264 as cameras send it: a new resolution mid-stream keeps Matroska and MP4 valid
(MP4's ``avc3`` sample entry lets the new parameter sets travel in the samples)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import av
import pytest

from rtc_recorder import MediaRecorder

from .media import SyntheticVideo, ffmpeg_errors
from .test_passthrough import Peers


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
async def test_h264_resolution_change_keeps_the_file_valid(suffix: str, tmp_path: Path) -> None:
    peers = Peers()
    video = SyntheticVideo(width=320, height=240, sizes=[(1.0, 640, 360)])
    peers.sender.addTrack(video)
    try:
        await peers.connect("h264")
        video.clock.start = time.monotonic()  # the size changes 1 s into the recording
        video._index = 0
        path = tmp_path / f"sizes{suffix}"
        recorder = MediaRecorder(path)
        recorder.addTrack(peers.remote_tracks[0])
        await recorder.start()
        await asyncio.sleep(2.2)
        await recorder.stop()
    finally:
        await peers.close()
    assert recorder.getStats()["tracks"][0]["path"] == "passthrough"
    assert ffmpeg_errors(path) == ""
    with av.open(str(path)) as source:
        sizes = {(frame.width, frame.height) for frame in source.decode(video=0)}
    assert sizes == {(320, 240), (640, 360)}
    if suffix == ".mp4":
        assert b"avc3" in path.read_bytes()[:4096] and b"avc1\x00" not in path.read_bytes()[:4096]
