"""The media every sender publishes: a loop of VP8 video and Opus audio, encoded once.

Senders must not encode (their cost would blur the receiver's), so a loop of
:attr:`MediaSpec.loop_seconds` is encoded once with libvpx and libopus through PyAV and
cached in an ``.npz`` file (no pickle) next to the results; senders replay its packets.

The video is a detailed texture panning and swaying, a bright disc circling over it and
drifting colour waves: motion everywhere, so the encoder spends its bitrate as it would on a
camera. A keyframe is forced every second, so the loop restarts on a keyframe and a
receiver's keyframe request (which a pre-encoded sender cannot honour) is answered within a
second anyway. The audio is a 440 Hz tone with a slow tremolo plus noise, in 20 ms packets.
"""

from __future__ import annotations

import fractions
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

FORMAT_VERSION = 2
AUDIO_RATE = 48_000
AUDIO_PACKET_SAMPLES = 960  # 20 ms at 48 kHz


@dataclass(frozen=True)
class MediaSpec:
    """What to encode."""

    width: int = 1280
    height: int = 720
    fps: int = 30
    loop_seconds: int = 10
    video_bitrate: int = 2_000_000
    audio_bitrate: int = 48_000
    keyframe_seconds: int = 1  # seconds between forced keyframes

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise ValueError("width and height must be even and at least 16")
        if not 1 <= self.fps <= 120:
            raise ValueError("fps must be between 1 and 120")
        if not 1 <= self.keyframe_seconds <= self.loop_seconds:
            raise ValueError("keyframes must come at least once a loop")

    @property
    def keyframe_interval(self) -> int:
        """Frames between forced keyframes (one second unless the spec says otherwise)."""
        return self.fps * self.keyframe_seconds

    @property
    def video_frames(self) -> int:
        return self.loop_seconds * self.fps

    @property
    def audio_packets(self) -> int:
        return self.loop_seconds * AUDIO_RATE // AUDIO_PACKET_SAMPLES

    def cache_name(self) -> str:
        keyframes = "" if self.keyframe_seconds == 1 else f"-key{self.keyframe_seconds}s"
        return (
            f"media-{self.width}x{self.height}-{self.fps}fps-{self.loop_seconds}s"
            f"-{self.video_bitrate // 1000}k-{self.audio_bitrate // 1000}k{keyframes}"
            f"-v{FORMAT_VERSION}.npz"
        )

    def _meta(self) -> np.ndarray:
        return np.array(
            [
                FORMAT_VERSION,
                self.width,
                self.height,
                self.fps,
                self.loop_seconds,
                self.video_bitrate,
                self.audio_bitrate,
                self.keyframe_seconds,
            ],
            dtype=np.int64,
        )


@dataclass(frozen=True)
class EncodedLoop:
    """The encoded loop: one VP8 frame per video packet, 20 ms of Opus per audio packet."""

    spec: MediaSpec
    video: list[bytes]
    video_keyframes: list[bool]
    audio: list[bytes]

    @property
    def video_bitrate(self) -> float:
        """Measured video bitrate (bit/s)."""
        return sum(map(len, self.video)) * 8 / self.spec.loop_seconds

    @property
    def audio_bitrate(self) -> float:
        """Measured audio bitrate (bit/s)."""
        return sum(map(len, self.audio)) * 8 / self.spec.loop_seconds

    def describe(self) -> dict[str, float | int | str]:
        """A summary for the results."""
        return {
            "video": f"VP8 {self.spec.width}x{self.spec.height} @ {self.spec.fps} fps",
            "videoKbps": round(self.video_bitrate / 1000, 1),
            "videoFramesPerLoop": len(self.video),
            "keyframeEveryFrames": self.spec.keyframe_interval,
            "keyframesPerLoop": sum(self.video_keyframes),
            "audio": "Opus 48 kHz stereo, 20 ms packets",
            "audioKbps": round(self.audio_bitrate / 1000, 1),
            "audioPacketsPerLoop": len(self.audio),
            "loopSeconds": self.spec.loop_seconds,
        }


def prepare(spec: MediaSpec, directory: Path) -> Path:
    """The cache file for ``spec`` in ``directory``, encoding it first if it is missing."""
    path = directory / spec.cache_name()
    if path.exists():
        try:
            load(path, spec)
            return path
        except (OSError, ValueError, KeyError):
            path.unlink()  # unreadable or stale: encode again
    directory.mkdir(parents=True, exist_ok=True)
    loop = encode(spec)
    _save(loop, path)
    return path


def load(path: Path, spec: MediaSpec | None = None) -> EncodedLoop:
    """Read a cache file written by :func:`prepare` (checked against ``spec`` if given)."""
    with np.load(path, allow_pickle=False) as data:
        meta = data["meta"]
        if int(meta[0]) != FORMAT_VERSION:
            raise ValueError(f"{path}: cache format {int(meta[0])}, expected {FORMAT_VERSION}")
        stored = MediaSpec(*(int(value) for value in meta[1:]))
        if spec is not None and stored != spec:
            raise ValueError(f"{path} holds {stored}, not {spec}")
        video = _split(data["video_data"], data["video_sizes"])
        audio = _split(data["audio_data"], data["audio_sizes"])
        keyframes = [bool(flag) for flag in data["video_key"]]
    if len(video) != stored.video_frames or len(audio) != stored.audio_packets:
        raise ValueError(f"{path}: truncated media cache")
    return EncodedLoop(stored, video, keyframes, audio)


def encode(spec: MediaSpec) -> EncodedLoop:
    """Encode the loop (a few seconds of CPU at 720p)."""
    video, keyframes = _encode_video(spec)
    return EncodedLoop(spec, video, keyframes, _encode_audio(spec))


# -- video ---------------------------------------------------------------------------------


def _pictures(spec: MediaSpec) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Y, U and V planes of each frame of the loop."""
    width, height = spec.width, spec.height
    rng = np.random.default_rng(20240601)
    tex_w, tex_h = width * 2, height + height // 2

    def blocks(size: int, spread: int) -> np.ndarray:
        cells = rng.integers(0, spread, (tex_h // size + 2, tex_w // size + 2), np.int16)
        return np.repeat(np.repeat(cells, size, axis=0), size, axis=1)[:tex_h, :tex_w]

    # Coarse patches, medium detail and fine grain: texture at every scale.
    texture = (blocks(32, 120) + blocks(8, 80) + blocks(2, 40)).clip(0, 255).astype(np.uint8)
    radius = max(4, height // 9)
    disc_y, disc_x = np.ogrid[-radius:radius, -radius:radius]
    disc = disc_x**2 + disc_y**2 < radius**2
    columns = np.arange(width // 2)[None, :]
    rows = np.arange(height // 2)[:, None]
    frames = spec.video_frames
    for index in range(frames):
        phase = 2 * np.pi * index / frames  # the motion loops with the media
        x = index * 6 % (tex_w - width)
        y = int((tex_h - height) * (1 + np.sin(phase * 2)) / 2)
        luma = texture[y : y + height, x : x + width].copy()
        centre_x = int(width / 2 + (width / 2 - radius) * np.cos(phase * 3))
        centre_y = int(height / 2 + (height / 2 - radius) * np.sin(phase * 3))
        top, left = centre_y - radius, centre_x - radius
        window = luma[top : top + 2 * radius, left : left + 2 * radius]
        window[disc[: window.shape[0], : window.shape[1]]] = 230
        u = 128 + 48 * np.sin(2 * np.pi * (columns + index * 3) / 160)
        v = 128 + 40 * np.sin(2 * np.pi * (rows - index * 2) / 120)
        u = u.astype(np.uint8).repeat(height // 2, axis=0)
        v = v.astype(np.uint8).repeat(width // 2, axis=1)
        yield luma, u, v


def _encode_video(spec: MediaSpec) -> tuple[list[bytes], list[bool]]:
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = spec.width, spec.height
    codec.pix_fmt = "yuv420p"
    codec.time_base = fractions.Fraction(1, spec.fps)
    codec.framerate = fractions.Fraction(spec.fps, 1)
    codec.bit_rate = spec.video_bitrate
    codec.gop_size = spec.keyframe_interval
    # A real-time encoder as browsers configure one: constant bitrate, keyframes capped at
    # three frames' worth of bits (WebRTC's max-intra-rate), no look-ahead.
    rate = str(spec.video_bitrate)
    codec.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "minrate": rate,
        "maxrate": rate,
        "max-intra-rate": "300",
    }
    packets: list[av.Packet[Any]] = []
    for index, (y, u, v) in enumerate(_pictures(spec)):
        frame = av.VideoFrame(spec.width, spec.height, "yuv420p")
        for plane, data in zip(frame.planes, (y, u, v), strict=True):
            _fill_plane(plane, data)
        frame.pts = index
        frame.time_base = codec.time_base
        if index % spec.keyframe_interval == 0:
            frame.pict_type = av.video.frame.PictureType.I
        packets.extend(codec.encode(frame))
    packets.extend(codec.encode(None))
    if len(packets) != spec.video_frames:
        raise RuntimeError(f"libvpx gave {len(packets)} packets for {spec.video_frames} frames")
    return [bytes(p) for p in packets], [bool(p.is_keyframe) for p in packets]


def _fill_plane(plane: av.video.plane.VideoPlane, data: np.ndarray) -> None:
    """Copy ``data`` into ``plane``, whose rows may be padded."""
    height, width = data.shape
    if plane.line_size == width:
        plane.update(data.tobytes())
        return
    padded = np.zeros((height, plane.line_size), np.uint8)
    padded[:, :width] = data
    plane.update(padded.tobytes())


# -- audio ---------------------------------------------------------------------------------


def _encode_audio(spec: MediaSpec) -> list[bytes]:
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = AUDIO_RATE
    codec.layout = "stereo"
    codec.format = "s16"
    codec.bit_rate = spec.audio_bitrate
    codec.time_base = fractions.Fraction(1, AUDIO_RATE)
    rng = np.random.default_rng(48000)
    count = spec.audio_packets
    packets: list[bytes] = []
    for index in range(count):
        times = (index * AUDIO_PACKET_SAMPLES + np.arange(AUDIO_PACKET_SAMPLES)) / AUDIO_RATE
        tremolo = 0.6 + 0.4 * np.sin(2 * np.pi * times / spec.loop_seconds * 5)
        signal = 9000 * tremolo * np.sin(2 * np.pi * 440 * times) + rng.normal(0, 700, times.size)
        left = signal.clip(-32768, 32767).astype(np.int16)
        right = (signal * 0.8).clip(-32768, 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.stack([left, right], axis=1).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = AUDIO_RATE
        frame.pts = index * AUDIO_PACKET_SAMPLES
        frame.time_base = codec.time_base
        packets.extend(bytes(p) for p in codec.encode(frame))
    packets.extend(bytes(p) for p in codec.encode(None))
    # libopus delays its output by its look-ahead and flushes one packet more: the loop is
    # the first ``count`` packets, 20 ms each.
    if len(packets) < count:
        raise RuntimeError(f"libopus gave {len(packets)} packets for {count} frames")
    return packets[:count]


# -- cache file ----------------------------------------------------------------------------


def _save(loop: EncodedLoop, path: Path) -> None:
    """Write atomically, so concurrent runs never read a half-written cache."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".media-", suffix=".npz")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(
                file,
                meta=loop.spec._meta(),
                video_data=_join(loop.video),
                video_sizes=np.array([len(p) for p in loop.video], np.int64),
                video_key=np.array(loop.video_keyframes, bool),
                audio_data=_join(loop.audio),
                audio_sizes=np.array([len(p) for p in loop.audio], np.int64),
            )
        os.chmod(temporary, 0o644)  # mkstemp makes it private
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _join(packets: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(packets), np.uint8)


def _split(data: np.ndarray, sizes: np.ndarray) -> list[bytes]:
    raw = data.tobytes()
    ends = np.cumsum(sizes)
    starts = ends - sizes
    return [raw[start:end] for start, end in zip(starts.tolist(), ends.tolist(), strict=True)]
