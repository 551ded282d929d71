"""H.264 as cameras send it: a new resolution mid-stream keeps Matroska and MP4 valid
(MP4's ``avc3`` sample entry lets the new parameter sets travel in the samples)."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from rtc_recorder import MediaRecorder

from .media import SyntheticVideo, ffmpeg_errors, wait_for
from .test_passthrough import Peers


def frames_written(recorder: MediaRecorder) -> int:
    return int(recorder.getStats()["tracks"][0]["framesWritten"])


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
async def test_h264_resolution_change_keeps_the_file_valid(suffix: str, tmp_path: Path) -> None:
    peers = Peers()
    video = SyntheticVideo(width=320, height=240)
    peers.sender.addTrack(video)
    path = tmp_path / f"sizes{suffix}"
    recorder = MediaRecorder(path)
    try:
        await peers.connect("h264")
        recorder.addTrack(peers.remote_tracks[0])
        await recorder.start()
        await wait_for(lambda: frames_written(recorder) >= 10, 10, "frames at the first size")
        # The camera switches 0.2 s from now, once the first size is in the file. (Not a
        # few frames from its latest: right after connecting, the sender may still be
        # working through a burst of frames that fell due while it connected, a second
        # ahead of what is recorded, and the recording would end before its switch.)
        switch = max(video.clock.now(), video._index / video.fps) + 0.2
        video.sizes.append((switch, 640, 360))
        await wait_for(lambda: video._index / video.fps >= switch + 0.3, 10, "the new size sent")
        written = frames_written(recorder)
        await wait_for(lambda: frames_written(recorder) >= written + 20, 10, "the new size")
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
