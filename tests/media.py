"""Test media: synthetic live tracks, real peer connections on loopback, and inspection of
recorded files by decoding them back (PyAV) and by an independent decoder (ffmpeg)."""

from __future__ import annotations

import asyncio
import fractions
import math
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

VIDEO_RATE = 90000
AUDIO_RATE = 48000
FLASH_PERIOD = 1.0  # seconds between flashes / beeps of the sync sources
FLASH_LENGTH = 0.1


def flash_instants(duration: float) -> list[float]:
    """Source times at which flashes and beeps start."""
    return [FLASH_PERIOD / 2 + k * FLASH_PERIOD for k in range(int(duration / FLASH_PERIOD) + 1)]


def in_flash(t: float) -> bool:
    """Whether source time ``t`` lies in a flash/beep."""
    if t < FLASH_PERIOD / 2:
        return False
    return (t - FLASH_PERIOD / 2) % FLASH_PERIOD < FLASH_LENGTH


class Clock:
    """A shared source clock, so video and audio flash and beep at the same instants."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.start


class SyntheticVideo(MediaStreamTrack):
    """Live video paced in real time: a moving gradient (or random blocks with ``noise``),
    white while flashing.

    ``sizes`` switches the picture size over time: [(from_seconds, width, height), ...].
    """

    kind = "video"

    def __init__(
        self,
        clock: Clock | None = None,
        width: int = 320,
        height: int = 240,
        fps: int = 30,
        sizes: Sequence[tuple[float, int, int]] = (),
        noise: bool = False,
        schedule: Callable[[int], float] | None = None,
    ) -> None:
        super().__init__()
        self.clock = clock or Clock()
        self.fps = fps
        # When each frame is taken (source seconds, by index): a steady rate by default.
        self.schedule = schedule or (lambda index: index / fps)
        self.sizes = [(0.0, width, height), *sizes]
        self.noise = noise
        self._index = 0
        self._random = np.random.default_rng(2)

    def _texture(self, width: int, height: int) -> np.ndarray:
        if getattr(self, "_texture_size", None) != (width, height):
            blocks = self._random.integers(0, 200, (height // 8 + 1, width // 4 + 1, 3), np.uint8)
            texture = np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)[:height, : 2 * width]
            self._texture_data, self._texture_size = texture, (width, height)
        return self._texture_data

    def size_at(self, t: float) -> tuple[int, int]:
        width, height = self.sizes[0][1:]
        for start, w, h in self.sizes:
            if t >= start:
                width, height = w, h
        return width, height

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        t = self.schedule(self._index)
        self._index += 1
        delay = t - self.clock.now()
        if delay > 0:
            await asyncio.sleep(delay)
        width, height = self.size_at(t)
        if in_flash(t):
            picture = np.full((height, width, 3), 255, np.uint8)
        elif self.noise:
            # A detailed texture panning across, with a patch of fresh noise: encoders use
            # what bitrate they are given (neither starved nor at their quality floor).
            picture = self._texture(width, height)[:, self._index * 5 % width :][:, :width].copy()
            patch = (min(48, height), min(64, width), 3)
            picture[: patch[0], : patch[1]] = self._random.integers(0, 255, patch, np.uint8)
        else:
            x = (np.arange(width, dtype=np.uint16) + self._index * 4) % 200
            picture = np.empty((height, width, 3), np.uint8)
            picture[:] = x[None, :, None].astype(np.uint8)
            picture[: height // 4, : width // 4] = 20
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
        frame.pts = round(t * VIDEO_RATE)
        frame.time_base = fractions.Fraction(1, VIDEO_RATE)
        return frame


class SyntheticAudio(MediaStreamTrack):
    """Live 48 kHz audio in 20 ms frames: quiet noise, a 1 kHz beep while flashing."""

    kind = "audio"

    def __init__(self, clock: Clock | None = None, channels: int = 1) -> None:
        super().__init__()
        self.clock = clock or Clock()
        self.channels = channels
        self._sample = 0
        self._noise = np.random.default_rng(1)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        count = AUDIO_RATE // 50
        t = self._sample / AUDIO_RATE
        delay = t - self.clock.now()
        if delay > 0:
            await asyncio.sleep(delay)
        times = (self._sample + np.arange(count)) / AUDIO_RATE
        signal = self._noise.normal(0, 30, count)
        beeping = np.array([in_flash(x) for x in times])
        signal += beeping * 12000 * np.sin(2 * math.pi * 1000 * times)
        samples = np.repeat(signal.astype(np.int16)[None, :], self.channels, axis=0)
        frame = av.AudioFrame.from_ndarray(
            samples.T.reshape(1, -1),
            format="s16",
            layout="stereo" if self.channels == 2 else "mono",
        )
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._sample
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._sample += count
        return frame


# -- inspecting recordings ------------------------------------------------------------


def ffmpeg_errors(path: str | Path, *options: str) -> str:
    """What Debian's ffmpeg says when decoding the whole file (empty: a clean file), with
    ``options`` for the output (``-vsync vfr``, say)."""
    result = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), *options, "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.stderr.strip() + (
        "" if result.returncode == 0 else f" (exit {result.returncode})"
    )


@dataclass
class StreamInfo:
    """One stream of a recording, decoded back."""

    kind: str
    codec: str
    packets: list[tuple[float, bool, int]] = field(default_factory=list)  # (time, key, size)
    frames: list[float] = field(default_factory=list)  # decoded frame start times
    end: float = 0.0  # end of the last decoded frame
    width: int = 0
    height: int = 0
    sample_rate: int = 0

    @property
    def start(self) -> float:
        return self.frames[0] if self.frames else 0.0


def probe(path: str | Path | bytes, decode: bool = True) -> dict[str, StreamInfo]:
    """Every stream's packets (time, keyframe, size) and decoded frame times."""
    source = av.open(__import__("io").BytesIO(path) if isinstance(path, bytes) else str(path))
    info: dict[str, StreamInfo] = {}
    with source:
        streams = {s.index: s for s in source.streams if s.type in ("audio", "video")}
        for s in streams.values():
            info[s.type] = StreamInfo(s.type, s.codec_context.codec.canonical_name)
        for packet in source.demux(*streams.values()):
            stream = packet.stream
            item = info[stream.type]
            if packet.size and packet.pts is not None:
                item.packets.append(
                    (float(packet.pts * stream.time_base), packet.is_keyframe, packet.size)
                )
            if not decode:
                continue
            for frame in packet.decode():
                if frame.pts is None:
                    continue
                start = float(frame.pts * frame.time_base)
                item.frames.append(start)
                if stream.type == "audio":
                    item.end = max(item.end, start + frame.samples / frame.sample_rate)
                    item.sample_rate = frame.sample_rate
                else:
                    item.width, item.height = frame.width, frame.height
                    item.end = max(item.end, start)
    video = info.get("video")
    if video and len(video.frames) > 1:
        video.end += video.frames[-1] - video.frames[-2]
    return info


def duration(info: dict[str, StreamInfo]) -> float:
    """From the first decoded frame of any stream to the end of the last."""
    return max(s.end for s in info.values()) - min(s.start for s in info.values())


def decoded_pictures(path: str | Path) -> Iterator[tuple[float, np.ndarray]]:
    """Every decoded video frame of a file: (time in seconds, luma as height x width)."""
    with av.open(str(path)) as source:
        for frame in source.decode(video=0):
            if frame.pts is not None:
                yield float(frame.pts * frame.time_base), frame.to_ndarray(format="gray")


SoundRun = tuple[float, int, np.ndarray]  # (start in seconds, sample rate, samples)


def contiguous_runs(
    blocks: Iterable[tuple[float, int, np.ndarray]], tolerance: float | None = None
) -> list[SoundRun]:
    """Blocks of sound, (start in seconds, sample rate, samples) in time order, joined into
    runs of contiguous samples: a new run starts wherever a block does not begin where the
    previous one ended, within ``tolerance`` seconds (half a sample by default)."""
    runs: list[tuple[float, int, list[np.ndarray]]] = []
    end = 0.0
    for start, rate, samples in blocks:
        allowed = 0.5 / rate + 1e-6 if tolerance is None else tolerance
        if not runs or rate != runs[-1][1] or abs(start - end) > allowed:
            runs.append((start, rate, []))
        runs[-1][2].append(samples)
        end = start + len(samples) / rate
    return [(start, rate, np.concatenate(parts)) for start, rate, parts in runs]


def decoded_sound(path: str | Path) -> list[SoundRun]:
    """A file's audio decoded, first channel only, on a 16-bit scale, as runs of
    contiguous samples (see :func:`contiguous_runs`)."""
    return contiguous_runs(_decoded_blocks(path))


def _decoded_blocks(path: str | Path) -> Iterator[tuple[float, int, np.ndarray]]:
    with av.open(str(path)) as source:
        for frame in source.decode(audio=0):
            if frame.pts is None:
                continue
            samples = frame.to_ndarray()
            scale = 32768.0 if np.issubdtype(samples.dtype, np.floating) else 1.0
            channel = (samples[0] if samples.ndim > 1 else samples).astype(np.float64) * scale
            if not frame.format.is_planar and len(frame.layout.channels) > 1:
                channel = channel[:: len(frame.layout.channels)]
            yield float(frame.pts * frame.time_base), frame.sample_rate, channel


def beep_onsets(path: str | Path, loud: float = 3000.0, spacing: float = 0.5) -> list[float]:
    """Times at which beeps start in a file's sound (see :func:`beep_onsets_in`)."""
    return beep_onsets_in(decoded_sound(path), loud, spacing)


def beep_onsets_in(
    runs: list[SoundRun], loud: float = 3000.0, spacing: float = 0.5, whole: bool = True
) -> list[float]:
    """Times at which beeps start, to the sample: a beep is found where the RMS of 5 ms
    of sound exceeds ``loud`` (on a 16-bit scale) at least ``spacing`` seconds after the
    previous one; it starts at the first sample (looking from 5 ms before) whose magnitude
    reaches 30 % of the beep's peak over the next 20 ms (a tone starting at any phase
    crosses that within a twentieth of its period: 0.05 ms, 2-3 samples, at 1 kHz).

    ``whole``: the runs hold whole beeps, so one may start at a run's first sample (a
    file's sound starts where its source did). Otherwise a run that starts loud started
    inside a beep (sound was lost before it), and that beep is not counted."""
    onsets: list[float] = []
    previous = -math.inf  # the last onset, or the start of a run that began in a beep
    for start, rate, samples in runs:
        block = rate // 200
        count = len(samples) // block
        if not count:
            continue
        energy = np.sqrt(np.mean(samples[: count * block].reshape(count, block) ** 2, axis=1))
        for index in np.flatnonzero(energy > loud):
            if start + (index + 1) * block / rate - previous < spacing:
                continue
            if index == 0 and not whole:
                previous = start
                continue
            first = max(0, (index - 1) * block)
            window = np.abs(samples[first : index * block + 4 * block])
            onset = first + int(np.argmax(window >= 0.3 * window.max()))
            previous = start + onset / rate
            onsets.append(previous)
    return onsets


def flash_times(path: str | Path, spacing: float = 0.5) -> tuple[list[float], list[float]]:
    """Output times at which the video turns white and the audio starts beeping (each at
    least ``spacing`` seconds after the one before: less than a second apart where a pause
    was cut out between them, more than a flash's length)."""
    flashes: list[float] = []
    for t, luma in decoded_pictures(path):
        if float(luma.mean()) > 230 and (not flashes or t - flashes[-1] > spacing):
            flashes.append(t)
    return flashes, beep_onsets(path, spacing=spacing)


# -- peers ------------------------------------------------------------------------------


async def connect(
    sender: RTCPeerConnection, receiver: RTCPeerConnection, video_codec: str | None = None
) -> None:
    """Offer/answer between two peer connections on loopback (sender offers)."""
    if video_codec is not None:
        codecs = RTCRtpSender.getCapabilities("video").codecs
        preferred = [c for c in codecs if c.mimeType.lower() == f"video/{video_codec}"]
        for transceiver in sender.getTransceivers():
            if transceiver.kind == "video":
                transceiver.setCodecPreferences(preferred)
    await sender.setLocalDescription(await sender.createOffer())
    await receiver.setRemoteDescription(sender.localDescription)
    await receiver.setLocalDescription(await receiver.createAnswer())
    await sender.setRemoteDescription(receiver.localDescription)


async def wait_for(predicate: object, timeout: float = 10.0, message: str = "") -> None:
    """Poll ``predicate()`` on the loop until it is true (fails after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message or predicate}")
        await asyncio.sleep(0.01)


# -- pre-encoded sources ----------------------------------------------------------------


@dataclass
class EncodedMedia:
    """Media encoded once, to be sent as it is: (pts seconds, packet bytes, keyframe)."""

    codec: str
    packets: list[tuple[float, bytes, bool]]
    rate: int


def encode_sync_source(
    seconds: float,
    width: int = 320,
    height: int = 240,
    keyframe_every: int = 15,
    video_codec: str = "vp8",
) -> tuple[EncodedMedia, EncodedMedia]:
    """VP8 (or H.264, constrained baseline in Annex B) video that flashes white and Opus
    audio that beeps at the same source instants (see :func:`in_flash`), encoded offline."""
    source = SyntheticVideo(width=width, height=height)
    pictures = (asyncio.run(_frame_at(source, index)) for index in range(int(seconds * 30)))
    video = _encode_video(pictures, width, height, 600_000, keyframe_every, video_codec)
    audio = av.CodecContext.create("libopus", "w")
    audio.sample_rate, audio.layout, audio.format = AUDIO_RATE, "mono", "s16"
    audio.time_base = fractions.Fraction(1, AUDIO_RATE)
    audio.bit_rate = 48_000
    audio.open()
    sound = SyntheticAudio()
    opus = []
    for _ in range(int(seconds * 50)):
        frame = asyncio.run(_audio_frame(sound))
        for packet in audio.encode(frame):
            # the encoder's lookahead shifts its timestamps back; keep the source's timing
            opus.append((len(opus) * 0.02, bytes(packet), True))
    return video, EncodedMedia("opus", opus, AUDIO_RATE)


def _encode_video(
    pictures: Iterator[av.VideoFrame],
    width: int,
    height: int,
    bitrate: int,
    keyframe_every: int,
    codec: str = "vp8",
) -> EncodedMedia:
    """30 fps VP8 (or H.264) of ``pictures``, a keyframe every ``keyframe_every`` frames."""
    if codec == "h264":
        video = av.CodecContext.create("libx264", "w")
        video.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline"}
    else:
        video = av.CodecContext.create("libvpx", "w")
        video.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    video.time_base = fractions.Fraction(1, VIDEO_RATE)
    video.framerate = fractions.Fraction(30, 1)
    video.bit_rate = bitrate
    packets = []
    for index, frame in enumerate(pictures):
        frame.pict_type = (
            av.video.frame.PictureType.I
            if index % keyframe_every == 0
            else av.video.frame.PictureType.NONE
        )
        for packet in video.encode(frame):
            packets.append((float(packet.pts) / VIDEO_RATE, bytes(packet), packet.is_keyframe))
    return EncodedMedia(codec, packets, VIDEO_RATE)


def encode_dense_video(
    seconds: float, bitrate: int, width: int = 960, height: int = 540, keyframe_every: int = 15
) -> EncodedMedia:
    """VP8 of random 4x4 blocks at about ``bitrate``: recordings that grow by megabytes a
    second, encoded offline (such detail spends every bit the encoder is given, in frames
    of even size)."""
    rng = np.random.default_rng(7)

    def pictures() -> Iterator[av.VideoFrame]:
        for index in range(int(seconds * 30)):
            cells = rng.integers(0, 256, (height // 4, width // 4), np.uint8)
            luma = np.repeat(np.repeat(cells, 4, axis=0), 4, axis=1)
            frame = av.VideoFrame.from_ndarray(np.stack([luma] * 3, axis=2), format="rgb24")
            frame.pts = index * VIDEO_RATE // 30
            yield frame

    return _encode_video(pictures(), width, height, bitrate, keyframe_every)


async def _frame_at(source: SyntheticVideo, index: int) -> av.VideoFrame:
    source._index = index
    source.clock.start = time.monotonic() - 3600  # far behind: never wait
    return await source.recv()


async def _audio_frame(source: SyntheticAudio) -> av.AudioFrame:
    source.clock.start = time.monotonic() - 3600
    return await source.recv()


class PacketTrack(MediaStreamTrack):
    """Sends pre-encoded packets paced in real time on ``clock`` (aiortc packs them without
    encoding). ``start_at`` delays the track's first packet; ``loop`` repeats the media.
    Counts what it sent in :attr:`sent` (with the source time of each)."""

    def __init__(
        self, kind: str, media: EncodedMedia, clock: Clock, start_at: float = 0.0, loop: bool = True
    ) -> None:
        super().__init__()
        self.kind = kind
        self.media = media
        self.clock = clock
        self.start_at = start_at
        self.loop = loop
        self.sent: list[float] = []
        self._index = 0
        self._skip = next(i for i, p in enumerate(media.packets) if p[0] >= start_at)

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        count = len(self.media.packets)
        position = self._skip + self._index
        if not self.loop and position >= count:
            self.stop()
            raise MediaStreamError
        length = self.media.packets[-1][0] + (self.media.packets[1][0] - self.media.packets[0][0])
        at, data, _ = self.media.packets[position % count]
        at += (position // count) * length
        delay = at - self.clock.now()
        if delay > 0:
            await asyncio.sleep(delay)
        self._index += 1
        packet = av.Packet(data)
        packet.pts = round(at * self.media.rate)
        packet.time_base = fractions.Fraction(1, self.media.rate)
        self.sent.append(at)
        return packet


class HeldTrack(PacketTrack):
    """A :class:`PacketTrack` that sends nothing until ``go`` is set (its clock set then:
    a clock started before the connection is up would make it send a burst to catch up,
    and aiortc's reports would then map timestamps to that burst)."""

    def __init__(self, kind: str, media: EncodedMedia, clock: Clock, go: asyncio.Event) -> None:
        super().__init__(kind, media, clock)
        self.go = go

    async def recv(self) -> av.Packet:
        await self.go.wait()
        return await super().recv()


def make_media_file(path: Path, seconds: float) -> None:
    """An H.264 + AAC file to play from (the kind of file aiortc's examples use)."""
    with av.open(str(path), "w") as output:
        video = output.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        audio = output.add_stream("aac", rate=48000)
        audio.layout = "mono"
        for index in range(int(seconds * 30)):
            picture = np.full((240, 320, 3), index * 4 % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = index
            output.mux(video.encode(frame))
        tone = np.sin(np.arange(int(seconds * 48000)) * 2 * np.pi * 440 / 48000) * 8000
        for start in range(0, len(tone), 1024):
            block = tone[start : start + 1024].astype(np.float32)[None, :] / 32768
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
            frame.sample_rate = 48000
            frame.pts = start
            output.mux(audio.encode(frame))
        output.mux(video.encode(None))
        output.mux(audio.encode(None))
