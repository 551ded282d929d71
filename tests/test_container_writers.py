"""The MP4, Ogg and WAVE writers, on real encoded media, checked with FFmpeg and PyAV."""

from __future__ import annotations

import fractions
import functools
import io
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest

from rtc_recorder.bitstream.h264 import (
    avc_configuration,
    is_keyframe,
    parameter_sets,
    split_annexb,
    to_length_prefixed,
)
from rtc_recorder.bitstream.opus import OpusHead, packet_samples
from rtc_recorder.containers.base import (
    MAX_BUFFERED_US,
    ContainerWriter,
    Patch,
    Sample,
    TrackFormat,
)
from rtc_recorder.containers.mp4 import Mp4Writer
from rtc_recorder.containers.ogg import OggWriter, loss_packets, ogg_crc
from rtc_recorder.containers.wav import WavWriter

RATE = 48000
OPUS_FRAME = 960
OPUS_FRAME_US = 20_000
FPS = 30
WIDTH, HEIGHT = 160, 120
AAC_FRAME = 1024

# -- media ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Video:
    """An H.264 stream as the writers take it: avcC and (length-prefixed frame, keyframe)."""

    config: bytes
    frames: list[tuple[bytes, bool]]

    def time(self, index: int) -> int:
        """Presentation time of frame ``index`` in microseconds."""
        return round(index * 1_000_000 / FPS)


@functools.cache
def h264(count: int = 90, gop: int = FPS) -> Video:
    """``count`` frames of a moving picture, a keyframe every ``gop`` frames."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height = WIDTH, HEIGHT
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = fractions.Fraction(1, FPS)
    encoder.gop_size = gop
    encoder.options = {"tune": "zerolatency", "preset": "ultrafast", "keyint": str(gop)}
    encoder.open()
    config = b""
    frames: list[tuple[bytes, bool]] = []

    def take(packets: list[av.Packet]) -> None:
        nonlocal config
        for packet in packets:
            units = split_annexb(bytes(packet))
            if not config:
                config = avc_configuration(*parameter_sets(units))
            frames.append((to_length_prefixed(units), is_keyframe(units)))

    for index in range(count):
        picture = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        picture[:, :, 2] = index * 5 % 256
        picture[40:80, index * 3 % (WIDTH - 20) :][:, :20] = 255
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
        frame.pts = index
        take(encoder.encode(frame))
    take(encoder.encode(None))
    assert len(frames) == count
    return Video(config, frames)


def _tone(samples: int, channels: int) -> np.ndarray:
    """Two sines, in [-0.5, 0.5], ``channels`` identical columns."""
    t = np.arange(samples) / RATE
    mono = np.sin(2 * np.pi * 440 * t) * 0.3 + np.sin(2 * np.pi * 97 * t) * 0.2
    return np.repeat(mono[:, None], channels, axis=1)


@functools.cache
def opus(seconds: float = 3.0, bit_rate: int = 64000) -> tuple[bytes, list[bytes]]:
    """A stereo Opus stream: the OpusHead and 20 ms packets."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = RATE
    encoder.layout = "stereo"
    encoder.format = "s16"
    encoder.bit_rate = bit_rate
    encoder.time_base = fractions.Fraction(1, RATE)
    encoder.open()
    count = int(seconds * RATE) // OPUS_FRAME
    pcm = (_tone(count * OPUS_FRAME, 2) * 32767).astype(np.int16)
    packets: list[bytes] = []
    for index in range(count):
        chunk = pcm[index * OPUS_FRAME : (index + 1) * OPUS_FRAME].reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
        frame.sample_rate = RATE
        frame.pts = index * OPUS_FRAME
        packets += [bytes(packet) for packet in encoder.encode(frame)]
    packets += [bytes(packet) for packet in encoder.encode(None)]
    assert all(packet_samples(packet) == OPUS_FRAME for packet in packets)
    return bytes(encoder.extradata), packets


@functools.cache
def aac(seconds: float = 3.0) -> tuple[bytes, list[bytes]]:
    """A mono AAC-LC stream: the AudioSpecificConfig and 1024-sample frames."""
    encoder = av.CodecContext.create("aac", "w")
    encoder.sample_rate = RATE
    encoder.layout = "mono"
    encoder.format = "fltp"
    encoder.time_base = fractions.Fraction(1, RATE)
    encoder.open()
    pcm = _tone(int(seconds * RATE), 1).astype(np.float32)
    packets: list[bytes] = []
    for index in range(len(pcm) // AAC_FRAME):
        chunk = pcm[index * AAC_FRAME : (index + 1) * AAC_FRAME].reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
        frame.sample_rate = RATE
        frame.pts = index * AAC_FRAME
        packets += [bytes(packet) for packet in encoder.encode(frame)]
    packets += [bytes(packet) for packet in encoder.encode(None)]
    return bytes(encoder.extradata), packets


def pcm_chunks(seconds: float, channels: int = 2, chunk: int = OPUS_FRAME) -> list[np.ndarray]:
    """Interleaved s16 PCM, ``chunk`` frames at a time."""
    pcm = (_tone(int(seconds * RATE), channels) * 32767).astype(np.int16)
    return [pcm[start : start + chunk] for start in range(0, len(pcm), chunk)]


# -- running writers ----------------------------------------------------------------------


class Capture:
    """An output that keeps the bytes and where each flush ended."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.cuts: list[int] = []

    def write(self, data: bytes) -> None:
        self.data += data


def finish(writer: ContainerWriter, capture: Capture, duration: int) -> tuple[bytes, bytes]:
    """Close ``writer``: the streamed bytes, and the file with the patches applied."""
    patches = writer.close(duration)
    streamed = bytes(capture.data)
    return streamed, patched(streamed, patches)


def patched(data: bytes, patches: list[Patch]) -> bytes:
    """``data`` with ``patches`` applied, as on a rewritable copy."""
    out = bytearray(data)
    for patch in patches:
        assert patch.offset + len(patch.data) <= len(out)
        out[patch.offset : patch.offset + len(patch.data)] = patch.data
    return bytes(out)


def write_all(
    writer: ContainerWriter,
    capture: Capture,
    samples: list[Sample],
    flush_every: int = 0,
) -> list[tuple[int, int]]:
    """Write ``samples``, flushing every ``flush_every``; (sample time, bytes out) after each."""
    progress = []
    for number, sample in enumerate(samples, start=1):
        writer.write(sample)
        progress.append((sample.time, len(capture.data)))
        if flush_every and number % flush_every == 0:
            writer.flush()
            capture.cuts.append(len(capture.data))
    return progress


def ffmpeg_errors(data: bytes, path: Path) -> str:
    path.write_bytes(data)
    result = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        check=False,
    )
    return (result.stdout + result.stderr).strip()


def assert_bounded_buffering(progress: list[tuple[int, int]], slack_us: int) -> None:
    """Output grows at least once per MAX_BUFFERED_US (plus ``slack_us``) of sample time."""
    last_growth_time = progress[0][0]
    last_size = progress[0][1]
    for time, size in progress:
        if size > last_size:
            last_growth_time, last_size = time, size
        assert time - last_growth_time <= MAX_BUFFERED_US + slack_us, "writer held too much"


def decode_all(data: bytes) -> dict[str, int]:
    """Decode every stream; frames (video) and samples (audio) per stream type."""
    counts = {"video": 0, "audio": 0}
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(*container.streams):
            if isinstance(frame, av.AudioFrame):
                counts["audio"] += frame.samples
            else:
                counts["video"] += 1
    return counts


def demux(data: bytes, kind: str) -> list[av.Packet]:
    """The (non-empty) packets of the first stream of type ``kind``."""
    with av.open(io.BytesIO(data)) as container:
        stream = next(s for s in container.streams if s.type == kind)
        return [packet for packet in container.demux(stream) if packet.size]


# -- MP4 ------------------------------------------------------------------------------------


def boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """(type, offset, size) of the boxes in ``data[start:end]``."""
    end = len(data) if end is None else end
    offset = start
    while offset < end:
        size, kind = struct.unpack_from(">I4s", data, offset)
        if size == 1:
            size = struct.unpack_from(">Q", data, offset + 8)[0]
        assert size >= 8 and offset + size <= end, f"bad box {kind!r} at {offset}"
        yield kind, offset, size
        offset += size


def find_box(data: bytes, path: list[bytes], start: int = 0, end: int | None = None) -> int:
    """Offset of the first box along ``path`` (container boxes only)."""
    for kind, offset, size in boxes(data, start, end):
        if kind == path[0]:
            if len(path) == 1:
                return offset
            return find_box(data, path[1:], offset + 8, offset + size)
    raise AssertionError(f"no {path[0]!r}")


def av_mp4_samples(video: Video, audio: list[bytes], skip: range = range(0)) -> list[Sample]:
    """Video frames and Opus packets interleaved by time, as a recorder would write them."""
    samples = [
        Sample(0, video.time(index), key, data) for index, (data, key) in enumerate(video.frames)
    ]
    samples += [
        Sample(1, index * OPUS_FRAME_US, True, packet, OPUS_FRAME_US)
        for index, packet in enumerate(audio)
        if index not in skip
    ]
    return sorted(samples, key=lambda sample: (sample.time, sample.track))


def opus_tracks(video: Video, head: bytes) -> list[TrackFormat]:
    """An H.264 track and an Opus track."""
    return [
        TrackFormat("video", "h264", WIDTH, HEIGHT, config=video.config),
        TrackFormat("audio", "opus", sample_rate=RATE, channels=2, config=head),
    ]


def test_mp4_h264_opus_plays_with_right_timing(tmp_path: Path) -> None:
    video = h264()
    head, packets = opus()
    capture = Capture()
    writer = Mp4Writer(capture, opus_tracks(video, head))
    progress = write_all(writer, capture, av_mp4_samples(video, packets))
    streamed = bytes(capture.data)
    patches = writer.close(3_000_000)
    streamed_final = bytes(capture.data)
    finished = patched(streamed_final, patches)
    assert streamed_final.startswith(streamed)
    assert_bounded_buffering(progress, slack_us=OPUS_FRAME_US)

    for name, data in (("streamed.mp4", streamed_final), ("finished.mp4", finished)):
        assert ffmpeg_errors(data, tmp_path / name) == ""
        frames = demux(data, "video")
        assert len(frames) == len(video.frames)
        assert [p.is_keyframe for p in frames] == [key for _, key in video.frames]
        assert [p.pts for p in frames] == [i * 3000 for i in range(len(video.frames))]
        sound = demux(data, "audio")
        assert [p.pts for p in sound] == [i * OPUS_FRAME for i in range(len(packets))]
        assert [bytes(p) for p in sound] == packets
        counts = decode_all(data)
        assert counts["video"] == len(video.frames)
        assert abs(counts["audio"] - len(packets) * OPUS_FRAME) <= 312  # the pre-skip
        with av.open(io.BytesIO(data)) as container:
            assert container.streams.video[0].duration == len(video.frames) * 3000
            assert container.streams.audio[0].duration == len(packets) * OPUS_FRAME

    # Durations: 0 (unknown) while streaming, the recording's length once patched.
    for data, expected in ((streamed_final, 0), (finished, 3000)):
        mvhd = find_box(data, [b"moov", b"mvhd"])
        assert data[mvhd + 8] == 1
        assert struct.unpack_from(">IQ", data, mvhd + 28) == (1000, expected)
        mehd = find_box(data, [b"moov", b"mvex", b"mehd"])
        assert data[mehd + 8] == 1
        assert struct.unpack_from(">Q", data, mehd + 12)[0] == expected


def test_mp4_layout_and_random_access_index() -> None:
    video = h264()
    head, packets = opus()
    capture = Capture()
    writer = Mp4Writer(capture, opus_tracks(video, head))
    write_all(writer, capture, av_mp4_samples(video, packets))
    writer.close(3_000_000)
    data = bytes(capture.data)
    top = [(kind, offset) for kind, offset, _ in boxes(data)]
    kinds = [kind for kind, _ in top]
    assert kinds[:2] == [b"ftyp", b"moov"] and kinds[-1] == b"mfra"
    assert kinds[2:-1] == [b"moof", b"mdat"] * ((len(kinds) - 3) // 2)
    ftyp = data[8:]
    assert ftyp[:4] == b"isom" and b"iso6" in ftyp[8:28] and b"avc1" in ftyp[8:28]
    moofs = [offset for kind, offset in top if kind == b"moof"]

    # Every fragment: increasing sequence numbers, a traf per track with samples, trun
    # data offsets inside the following mdat, continuous decode times.
    next_decode = {1: 0, 2: 0}
    for sequence, moof in enumerate(moofs, start=1):
        moof_size = struct.unpack_from(">I", data, moof)[0]
        mdat = moof + moof_size
        mdat_size = struct.unpack_from(">I", data, mdat)[0]
        mfhd = find_box(data, [b"mfhd"], moof + 8, mdat)
        assert struct.unpack_from(">I", data, mfhd + 12)[0] == sequence
        for kind, traf, traf_size in boxes(data, moof + 8, mdat):
            if kind != b"traf":
                continue
            tfhd = find_box(data, [b"tfhd"], traf + 8, traf + traf_size)
            flags, track = struct.unpack_from(">II", data, tfhd + 8)
            assert flags & 0xFFFFFF == 0x020000
            tfdt = find_box(data, [b"tfdt"], traf + 8, traf + traf_size)
            assert data[tfdt + 8] == 1
            assert struct.unpack_from(">Q", data, tfdt + 12)[0] == next_decode[track]
            trun = find_box(data, [b"trun"], traf + 8, traf + traf_size)
            count, data_offset = struct.unpack_from(">Ii", data, trun + 12)
            entries = [struct.unpack_from(">III", data, trun + 20 + 12 * i) for i in range(count)]
            assert mdat + 8 <= moof + data_offset
            assert moof + data_offset + sum(e[1] for e in entries) <= mdat + mdat_size
            next_decode[track] += sum(e[0] for e in entries)
    assert next_decode == {1: len(video.frames) * 3000, 2: len(packets) * OPUS_FRAME}

    mfra = top[-1][1]
    mfra_size = struct.unpack_from(">I", data, mfra)[0]
    assert mfra + mfra_size == len(data)
    assert data[-16:-8] == b"\x00\x00\x00\x10mfro"
    assert struct.unpack_from(">I", data, len(data) - 4)[0] == mfra_size
    index: dict[int, list[tuple[int, int, int, int, int]]] = {}
    for kind, tfra, _ in boxes(data, mfra + 8, len(data) - 16):
        assert kind == b"tfra" and data[tfra + 8] == 1
        track, sizes, count = struct.unpack_from(">III", data, tfra + 12)
        assert sizes == 0x3F
        index[track] = [
            struct.unpack_from(">QQIII", data, tfra + 24 + 28 * i) for i in range(count)
        ]
    keyframes = [i for i, (_, key) in enumerate(video.frames) if key]
    assert [entry[0] for entry in index[1]] == [i * 3000 for i in keyframes]
    assert {entry[0] // 960 * 960 for entry in index[2]} == {entry[0] for entry in index[2]}
    for track, entries in index.items():
        for time, moof, traf_number, trun_number, sample_number in entries:
            assert moof in moofs and trun_number == 1
            moof_end = moof + struct.unpack_from(">I", data, moof)[0]
            trafs = [(o, n) for kind, o, n in boxes(data, moof + 8, moof_end) if kind == b"traf"]
            traf, traf_size = trafs[traf_number - 1]
            tfhd = find_box(data, [b"tfhd"], traf + 8, traf + traf_size)
            assert struct.unpack_from(">I", data, tfhd + 12)[0] == track
            tfdt = find_box(data, [b"tfdt"], traf + 8, traf + traf_size)
            trun = find_box(data, [b"trun"], traf + 8, traf + traf_size)
            entry = [
                struct.unpack_from(">III", data, trun + 20 + 12 * i) for i in range(sample_number)
            ]
            assert entry[-1][2] == 0x02000000  # a sync sample
            start = struct.unpack_from(">Q", data, tfdt + 12)[0]
            assert time == start + sum(duration for duration, _, _ in entry[:-1])
    # Keyframes start fragments, so each is the first video sample of its traf.
    assert all(entry[4] == 1 for entry in index[1])


def test_mp4_every_flush_point_is_playable() -> None:
    video = h264()
    head, packets = opus()
    capture = Capture()
    writer = Mp4Writer(capture, opus_tracks(video, head))
    writer.flush()
    capture.cuts.append(len(capture.data))
    write_all(writer, capture, av_mp4_samples(video, packets), flush_every=13)
    writer.close(3_000_000)
    capture.cuts.append(len(capture.data))
    previous = {"video": -1, "audio": -1}
    for cut in sorted(set(capture.cuts)):
        counts = decode_all(bytes(capture.data[:cut]))
        assert counts["video"] >= previous["video"] and counts["audio"] >= previous["audio"]
        previous = counts
    assert previous["video"] == len(video.frames)


def test_mp4_gaps_keep_timestamps(tmp_path: Path) -> None:
    video = h264()
    head, packets = opus()
    capture = Capture()
    writer = Mp4Writer(capture, opus_tracks(video, head))
    lost = range(40, 50)
    write_all(writer, capture, av_mp4_samples(video, packets, skip=lost), flush_every=7)
    streamed, data = finish(writer, capture, 3_000_000)
    assert ffmpeg_errors(streamed, tmp_path / "streamed.mp4") == ""
    assert ffmpeg_errors(data, tmp_path / "gap.mp4") == ""
    sound = demux(data, "audio")
    expected = [i * OPUS_FRAME for i in range(len(packets)) if i not in lost]
    assert [p.pts for p in sound] == expected
    assert sound[lost.start - 1].duration == OPUS_FRAME * (len(lost) + 1)
    assert [p.pts for p in demux(data, "video")] == [i * 3000 for i in range(len(video.frames))]


def test_mp4_h264_aac(tmp_path: Path) -> None:
    video = h264()
    config, packets = aac()
    tracks = [
        TrackFormat("video", "h264", WIDTH, HEIGHT, config=video.config),
        TrackFormat("audio", "aac", sample_rate=RATE, channels=1, config=config),
    ]
    samples = [
        Sample(0, video.time(index), key, data) for index, (data, key) in enumerate(video.frames)
    ]
    samples += [
        Sample(1, round(i * AAC_FRAME * 1_000_000 / RATE), True, packet, 21333)
        for i, packet in enumerate(packets)
    ]
    samples.sort(key=lambda sample: sample.time)
    capture = Capture()
    writer = Mp4Writer(capture, tracks)
    write_all(writer, capture, samples)
    streamed, data = finish(writer, capture, 3_000_000)
    assert ffmpeg_errors(streamed, tmp_path / "streamed.mp4") == ""
    assert ffmpeg_errors(data, tmp_path / "aac.mp4") == ""
    sound = demux(data, "audio")
    assert [p.pts for p in sound] == [i * AAC_FRAME for i in range(len(packets))]
    assert all(p.is_keyframe for p in sound)
    counts = decode_all(data)
    assert counts["video"] == len(video.frames)
    assert counts["audio"] == len(packets) * AAC_FRAME
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        assert (stream.codec_context.sample_rate, stream.codec_context.channels) == (RATE, 1)


def test_mp4_long_gop_fragments_by_time() -> None:
    video = h264(count=120, gop=1000)
    assert [key for _, key in video.frames].count(True) == 1
    capture = Capture()
    writer = Mp4Writer(capture, [TrackFormat("video", "h264", config=video.config)])
    samples = [
        Sample(0, video.time(index), key, data) for index, (data, key) in enumerate(video.frames)
    ]
    progress = write_all(writer, capture, samples)
    assert_bounded_buffering(progress, slack_us=1_000_000 // FPS)
    writer.close(4_000_000)
    data = bytes(capture.data)
    assert [kind for kind, _, _ in boxes(data)].count(b"moof") >= 4
    frames = demux(data, "video")
    assert [p.is_keyframe for p in frames] == [True] + [False] * 119
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (WIDTH, HEIGHT)
        assert stream.duration == 120 * 3000  # the last frame's duration: the one before
    assert decode_all(data)["video"] == 120


# -- Ogg --------------------------------------------------------------------------------------


@dataclass
class OggPage:
    """One parsed Ogg page; ``raw`` is the whole page as stored."""

    flags: int
    granule: int
    serial: int
    sequence: int
    crc: int
    lacing: list[int]
    body: bytes
    raw: bytes


def ogg_pages(data: bytes) -> list[OggPage]:
    """Parse a whole Ogg stream into pages (RFC 3533 section 6)."""
    pages = []
    offset = 0
    while offset < len(data):
        assert data[offset : offset + 4] == b"OggS"
        version, flags, granule, serial, sequence, crc, count = struct.unpack_from(
            "<BBqIIIB", data, offset + 4
        )
        assert version == 0
        lacing = list(data[offset + 27 : offset + 27 + count])
        body_start = offset + 27 + count
        end = body_start + sum(lacing)
        pages.append(
            OggPage(
                flags,
                granule,
                serial,
                sequence,
                crc,
                lacing,
                data[body_start:end],
                data[offset:end],
            )
        )
        offset = end
    assert offset == len(data)
    return pages


def ogg_packets(pages: list[OggPage]) -> list[bytes]:
    """Reassemble the packets from the lacing values, checking the continuation flags."""
    packets = []
    current = b""
    for page in pages:
        assert bool(page.flags & 0x01) == bool(current), "continuation flag"
        position = 0
        for value in page.lacing:
            current += page.body[position : position + value]
            position += value
            if value < 255:
                packets.append(current)
                current = b""
    assert current == b""
    return packets


def ogg_samples(packets: list[bytes], skip: range = range(0)) -> list[Sample]:
    """Opus packets as samples 20 ms apart, leaving out those in ``skip``."""
    return [
        Sample(0, index * OPUS_FRAME_US, True, packet, OPUS_FRAME_US)
        for index, packet in enumerate(packets)
        if index not in skip
    ]


def opus_track(head: bytes) -> list[TrackFormat]:
    """A single stereo Opus track."""
    return [TrackFormat("audio", "opus", sample_rate=RATE, channels=2, config=head)]


def test_ogg_crc_known_values() -> None:
    assert ogg_crc(b"") == 0
    assert ogg_crc(b"\x01") == 0x04C11DB7  # one byte 0x01: the polynomial itself
    # CRC-32/CKSUM (same polynomial, init 0, no reflection) checks "123456789" to
    # 0x765E7680 after its final XOR with 0xFFFFFFFF, which Ogg does not do.
    assert ogg_crc(b"123456789") == 0x765E7680 ^ 0xFFFFFFFF


def test_ogg_crc_matches_pages_muxed_by_ffmpeg() -> None:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=RATE)
        for index, chunk in enumerate(pcm_chunks(0.5)):
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="stereo")
            frame.sample_rate = RATE
            frame.pts = index * OPUS_FRAME
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    pages = ogg_pages(buffer.getvalue())
    assert len(pages) >= 3
    for page in pages:
        assert ogg_crc(page.raw[:22] + bytes(4) + page.raw[26:]) == page.crc


def test_ogg_opus_plays_with_right_timing(tmp_path: Path) -> None:
    head, packets = opus()
    pre_skip = OpusHead.parse(head).pre_skip
    capture = Capture()
    writer = OggWriter(capture, opus_track(head), serial=0x1234ABCD)
    progress = write_all(writer, capture, ogg_samples(packets))
    assert_bounded_buffering(progress, slack_us=OPUS_FRAME_US)
    assert writer.close(3_000_000) == []
    data = bytes(capture.data)
    assert ffmpeg_errors(data, tmp_path / "a.opus") == ""

    pages = ogg_pages(data)
    assert [page.sequence for page in pages] == list(range(len(pages)))
    assert {page.serial for page in pages} == {0x1234ABCD}
    for page in pages:
        assert ogg_crc(page.raw[:22] + bytes(4) + page.raw[26:]) == page.crc
    assert pages[0].flags == 0x02 and pages[0].body == head and pages[0].granule == 0
    assert pages[1].flags == 0 and pages[1].body.startswith(b"OpusTags")
    vendor_length = struct.unpack_from("<I", pages[1].body, 8)[0]
    assert pages[1].body[12 : 12 + vendor_length] == b"rtc-recorder"
    assert pages[-1].flags & 0x04 and not any(page.flags & 0x04 for page in pages[:-1])
    granules = [page.granule for page in pages[2:] if page.granule != -1]
    assert granules == sorted(granules)
    assert granules[-1] == pre_skip + len(packets) * OPUS_FRAME
    assert ogg_packets(pages)[2:] == packets

    # PyAV's FFmpeg drops pages whose CRC is wrong: getting every packet back proves the CRCs.
    sound = demux(data, "audio")
    assert [bytes(p) for p in sound] == packets
    assert [p.pts for p in sound] == [i * OPUS_FRAME for i in range(len(packets))]
    assert decode_all(data)["audio"] == len(packets) * OPUS_FRAME - pre_skip
    broken = bytearray(data)
    broken[len(pages[0].raw) + len(pages[1].raw) + 22] ^= 0xFF
    assert len(demux(bytes(broken), "audio")) < len(packets)


def test_ogg_every_flush_point_is_playable() -> None:
    head, packets = opus()
    capture = Capture()
    writer = OggWriter(capture, opus_track(head))
    writer.flush()
    capture.cuts.append(len(capture.data))
    write_all(writer, capture, ogg_samples(packets), flush_every=17)
    writer.close(3_000_000)
    capture.cuts.append(len(capture.data))
    # Before the first audio page the stream is headers only, which FFmpeg cannot open.
    assert capture.cuts[0] == len(ogg_pages(bytes(capture.data))[0].raw) + len(
        ogg_pages(bytes(capture.data))[1].raw
    )
    samples = -1
    for cut in capture.cuts[1:]:
        decoded = decode_all(bytes(capture.data[:cut]))["audio"]
        assert decoded >= samples
        samples = decoded
    assert samples == len(packets) * OPUS_FRAME - OpusHead.parse(head).pre_skip


def test_ogg_without_audio_still_opens(tmp_path: Path) -> None:
    head, _ = opus()
    capture = Capture()
    OggWriter(capture, opus_track(head)).close(0)
    data = bytes(capture.data)
    assert ffmpeg_errors(data, tmp_path / "empty.opus") == ""
    assert [p.size for p in demux(data, "audio")] == [1]


def test_ogg_gap_is_filled_with_concealment(tmp_path: Path) -> None:
    head, packets = opus()
    pre_skip = OpusHead.parse(head).pre_skip
    capture = Capture()
    writer = OggWriter(capture, opus_track(head))
    lost = range(40, 50)
    write_all(writer, capture, ogg_samples(packets, skip=lost), flush_every=45)
    writer.close(3_000_000)
    data = bytes(capture.data)
    assert ffmpeg_errors(data, tmp_path / "gap.opus") == ""
    sound = demux(data, "audio")
    kept = [i for i in range(len(packets)) if i not in lost]
    by_pts = {p.pts: bytes(p) for p in sound}
    for index in kept:
        assert by_pts[index * OPUS_FRAME] == packets[index]
    pts = [p.pts for p in sound]
    assert pts == sorted(set(pts))
    filler = [bytes(p) for p in sound if lost.start * OPUS_FRAME <= p.pts < lost.stop * OPUS_FRAME]
    assert sum(packet_samples(p) for p in filler) == len(lost) * OPUS_FRAME
    assert all(len(p) <= 2 for p in filler)
    assert decode_all(data)["audio"] == len(packets) * OPUS_FRAME - pre_skip
    granules = [page.granule for page in ogg_pages(data)[2:] if page.granule != -1]
    assert granules == sorted(granules)


def test_ogg_gap_at_start_and_duplicates() -> None:
    head, packets = opus(seconds=1.0)
    capture = Capture()
    writer = OggWriter(capture, opus_track(head))
    samples = [Sample(0, 100_000 + i * OPUS_FRAME_US, True, p) for i, p in enumerate(packets)]
    samples.insert(10, samples[9])  # a duplicate: dropped
    write_all(writer, capture, samples)
    writer.close(1_100_000)
    sound = demux(bytes(capture.data), "audio")
    filler = sound[: -len(packets)]
    assert sound[0].pts == 0 and sum(packet_samples(bytes(p)) for p in filler) == 4800
    assert all(p.size <= 2 for p in filler)
    assert [bytes(p) for p in sound[-len(packets) :]] == packets
    assert sound[-len(packets)].pts == 4800


def test_ogg_lacing_across_pages() -> None:
    head, packets = opus(seconds=2.0, bit_rate=510000)
    capture = Capture()
    writer = OggWriter(capture, opus_track(head), max_page_us=2_000_000)
    write_all(writer, capture, ogg_samples(packets))
    writer.close(2_000_000)
    data = bytes(capture.data)
    pages = ogg_pages(data)
    assert all(len(page.lacing) <= 255 for page in pages)
    assert any(page.flags & 0x01 for page in pages), "a packet continues on the next page"
    assert ogg_packets(pages)[2:] == packets
    assert [bytes(p) for p in demux(data, "audio")] == packets


def test_ogg_page_lacing_edge_sizes() -> None:
    head, _ = opus()
    capture = Capture()
    writer = OggWriter(capture, opus_track(head))
    sizes = [1, 254, 255, 256, 510, 65025, 70000, 3]
    toc = bytes([0xFC])  # CELT fullband 20 ms, stereo, code 0
    payloads = [toc + bytes([n % 251]) * (n - 1) for n in sizes]
    for index, payload in enumerate(payloads):
        writer.write(Sample(0, index * OPUS_FRAME_US, True, payload))
    writer.close(160_000)
    pages = ogg_pages(bytes(capture.data))
    assert ogg_packets(pages)[2:] == payloads
    for page in pages[2:]:
        ends = [value for value in page.lacing if value < 255]
        assert (page.granule == -1) == (not ends)
        for value in page.lacing:
            assert 0 <= value <= 255


def test_loss_packets() -> None:
    # SILK wideband 20 ms mono: whole frames, then 2.5 ms CELT wideband frames for the rest.
    toc = 9 << 3
    packets = loss_packets(toc, 960 * 7 + 240)
    assert [packet_samples(p) for p in packets] == [5760, 960, 240]
    assert packets[0] == bytes([toc | 3, 6]) and packets[1] == bytes([toc])
    assert packets[2] == bytes([20 << 3 | 3, 2])
    assert sum(packet_samples(p) for p in loss_packets(0xFC, 48000)) == 48000


def test_ogg_end_after_flush_has_empty_eos_page(tmp_path: Path) -> None:
    head, packets = opus(seconds=1.0)
    capture = Capture()
    writer = OggWriter(capture, opus_track(head))
    write_all(writer, capture, ogg_samples(packets))
    writer.flush()
    writer.close(1_000_000)
    data = bytes(capture.data)
    pages = ogg_pages(data)
    assert pages[-1].flags == 0x04 and pages[-1].lacing == []
    assert ffmpeg_errors(data, tmp_path / "eos.opus") == ""
    assert [bytes(p) for p in demux(data, "audio")] == packets


def test_ogg_rejects_other_tracks() -> None:
    head, _ = opus()
    with pytest.raises(ValueError):
        OggWriter(Capture(), opus_track(head) * 2)
    with pytest.raises(ValueError):
        OggWriter(Capture(), [TrackFormat("audio", "pcm", sample_rate=RATE, channels=2)])


# -- WAVE -------------------------------------------------------------------------------------


def wav_track(channels: int = 2) -> list[TrackFormat]:
    """A single 48 kHz PCM track."""
    return [TrackFormat("audio", "pcm", sample_rate=RATE, channels=channels)]


def decode_pcm(data: bytes) -> np.ndarray:
    """All samples of a WAVE file, interleaved s16."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.sample_rate == RATE
        frames = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
    return np.concatenate(frames) if frames else np.zeros(0, np.int16)


def test_wav_plays_with_exact_samples(tmp_path: Path) -> None:
    chunks = pcm_chunks(2.5)
    capture = Capture()
    writer = WavWriter(capture, wav_track())
    header = bytes(capture.data)
    assert header[:4] == b"RIFF" and header[8:16] == b"WAVEfmt " and header[36:40] == b"data"
    assert header[4:8] == header[40:44] == b"\xff\xff\xff\xff"
    assert struct.unpack_from("<HHIIHH", header, 20) == (1, 2, RATE, RATE * 4, 4, 16)
    samples = [Sample(0, i * OPUS_FRAME_US, True, c.tobytes()) for i, c in enumerate(chunks)]
    progress = write_all(writer, capture, samples)
    assert_bounded_buffering(progress, slack_us=OPUS_FRAME_US)
    streamed, finished = finish(writer, capture, 2_500_000)
    expected = np.concatenate(chunks).reshape(-1)
    assert len(streamed) == 44 + expected.nbytes
    assert struct.unpack_from("<I", finished, 4)[0] == len(finished) - 8
    assert struct.unpack_from("<I", finished, 40)[0] == expected.nbytes
    for name, data in (("streamed.wav", streamed), ("finished.wav", finished)):
        assert ffmpeg_errors(data, tmp_path / name) == ""
        assert np.array_equal(decode_pcm(data), expected)
        with av.open(io.BytesIO(data)) as container:
            assert container.streams.audio[0].codec_context.channels == 2


def test_wav_every_flush_point_is_playable() -> None:
    chunks = pcm_chunks(1.0, channels=1)
    capture = Capture()
    writer = WavWriter(capture, wav_track(1))
    writer.flush()
    capture.cuts.append(len(capture.data))
    samples = [Sample(0, i * OPUS_FRAME_US, True, c.tobytes()) for i, c in enumerate(chunks)]
    write_all(writer, capture, samples, flush_every=3)
    writer.close(1_000_000)
    expected = np.concatenate(chunks).reshape(-1)
    for cut in capture.cuts:
        decoded = decode_pcm(bytes(capture.data[:cut]))
        assert len(decoded) == (cut - 44) // 2
        assert np.array_equal(decoded, expected[: len(decoded)])


def test_wav_gaps_become_silence_and_overlaps_are_trimmed(tmp_path: Path) -> None:
    chunks = pcm_chunks(1.0)
    capture = Capture()
    writer = WavWriter(capture, wav_track())
    lost = range(10, 20)
    for index, chunk in enumerate(chunks):
        if index not in lost:
            writer.write(Sample(0, index * OPUS_FRAME_US, True, chunk.tobytes()))
    # 5 ms of overlap (240 frames), then a start 0.5 ms late: jitter, no silence.
    end = len(chunks) * OPUS_FRAME_US
    writer.write(Sample(0, end - 5000, True, chunks[0].tobytes()))
    writer.write(Sample(0, end - 5000 + OPUS_FRAME_US + 500, True, chunks[1].tobytes()))
    assert writer.frames == len(chunks) * OPUS_FRAME - 240 + 2 * OPUS_FRAME
    _, data = finish(writer, capture, 1_040_000)
    assert ffmpeg_errors(data, tmp_path / "gap.wav") == ""
    decoded = decode_pcm(data).reshape(-1, 2)
    expected = [
        chunk if index not in lost else np.zeros_like(chunk) for index, chunk in enumerate(chunks)
    ]
    expected += [chunks[0][240:], chunks[1]]
    assert np.array_equal(decoded, np.concatenate(expected))


def test_wav_leading_gap_and_bad_input() -> None:
    capture = Capture()
    writer = WavWriter(capture, wav_track())
    writer.write(Sample(0, 10_000, True, bytes(range(8))))
    writer.flush()
    assert bytes(capture.data[44:]) == bytes(480 * 4) + bytes(range(8))
    with pytest.raises(ValueError):
        writer.write(Sample(0, 20_000, True, b"\x00\x01\x02"))
    with pytest.raises(ValueError):
        WavWriter(Capture(), [TrackFormat("audio", "pcm")])
