"""A WebM file its writer never closed (the process died) is finished as far as its
bytes allow: torn tail cut, SeekHead, Duration and Segment size filled in."""

from __future__ import annotations

import io
from pathlib import Path

import av
import pytest

from rtc_recorder.containers.base import Sample, TrackFormat
from rtc_recorder.containers.matroska import SEEK_HEAD_SPACE, MatroskaWriter
from rtc_recorder.containers.matroska_repair import finish_cut_file

from .media import encode_sync_source, ffmpeg_errors

SEGMENT_ID = bytes.fromhex("18538067")
CLUSTER_ID = bytes.fromhex("1f43b675")


SECONDS = 2.0


@pytest.fixture(scope="module")
def webm() -> tuple[bytes, bytes]:
    """What a writer killed after two seconds leaves, and the same file closed properly."""
    seconds = SECONDS
    video, _ = encode_sync_source(seconds)
    track = TrackFormat("video", "vp8", width=320, height=240)
    output = io.BytesIO()
    writer = MatroskaWriter(output, [track])
    for at, data, keyframe in video.packets:
        writer.write(Sample(0, round(at * 1_000_000), keyframe, data, 33_333))
    writer.flush()
    cut = output.getvalue()
    for patch in writer.close(round(seconds * 1_000_000)):
        output.seek(patch.offset)
        output.write(patch.data)
    return cut, output.getvalue()


def duration_of(path: Path) -> float | None:
    with av.open(str(path)) as container:
        return None if container.duration is None else container.duration / av.time_base


def test_a_cut_webm_gets_what_close_would_have_patched(
    webm: tuple[bytes, bytes], tmp_path: Path
) -> None:
    cut, closed = webm
    path = tmp_path / "cut.webm"
    path.write_bytes(cut)
    assert duration_of(path) is None
    assert finish_cut_file(path, round(SECONDS * 1_000_000))
    finished = path.read_bytes()
    assert len(finished) == len(cut)
    # After the SeekHead (which here leaves out the Cues close() appends), byte for byte
    # what close() wrote: the Duration in Info, then the media.
    after_seek_head = cut.index(SEGMENT_ID) + len(SEGMENT_ID) + 8 + SEEK_HEAD_SPACE
    assert finished[after_seek_head:] == closed[after_seek_head : len(finished)]
    assert finished[after_seek_head:] != cut[after_seek_head:]
    assert duration_of(path) == SECONDS
    assert ffmpeg_errors(path) == ""


def test_a_torn_last_element_is_cut_off(webm: tuple[bytes, bytes], tmp_path: Path) -> None:
    cut, _ = webm
    path = tmp_path / "torn.webm"
    last_cluster = cut.rindex(CLUSTER_ID)
    path.write_bytes(cut + cut[last_cluster : last_cluster + 300])  # a cluster begun, not ended
    assert finish_cut_file(path, 2_000_000)
    assert len(path.read_bytes()) == len(cut)
    assert ffmpeg_errors(path) == ""


def test_files_that_are_not_unfinished_matroska_are_left_alone(
    webm: tuple[bytes, bytes], tmp_path: Path
) -> None:
    _, closed = webm
    files = {"closed.webm": closed, "noise.webm": b"\x00" * 5000, "empty.webm": b""}
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        assert not finish_cut_file(path, 1_000_000)
        assert path.read_bytes() == data
