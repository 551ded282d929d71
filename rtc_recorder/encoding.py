"""Per-track processing on the writer thread: encoded frames pass through as they are, or
frames are decoded (when they arrive encoded in another codec) and encoded with PyAV.

Everything here runs off the event loop, on the recording's writer thread.
"""

from __future__ import annotations

import fractions
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any, cast

import av
from av.audio.frame import AudioFrame
from av.audio.resampler import AudioResampler
from av.codec.context import CodecContext
from av.video.frame import PictureType, VideoFrame

from .codecs import StreamDescriber
from .containers.base import Sample, TrackFormat
from .receive.hooks import EncodedFrame

logger = logging.getLogger("rtc_recorder")

# SVT-AV1 prints its whole configuration to stderr unless told to report errors only.
os.environ.setdefault("SVT_LOG", "1")

VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
AUDIO_RATE = 48000
MICROSECOND = 1_000_000

# PyAV encoder names, and options for real-time encoding on a small machine.
# VP8's speed is fixed (a negative cpu-used): with a positive one libvpx picks its speed
# from how long frames take to encode, so on a busy machine it sped up until it could no
# longer hold the bitrate (five times videoBitsPerSecond was measured) and the same input
# gave different files. Speed 4 is what it picks on a quiet machine: under 5 ms a 720p frame.
ENCODERS: dict[str, tuple[str, dict[str, str]]] = {
    "vp8": ("libvpx", {"deadline": "realtime", "cpu-used": "-4", "lag-in-frames": "0"}),
    "vp9": (
        "libvpx-vp9",
        {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "row-mt": "1"},
    ),
    "av1": ("libsvtav1", {"preset": "12", "svtav1-params": "rtc=1:rc=2"}),
    "h264": ("libx264", {"preset": "veryfast", "tune": "zerolatency"}),
    "opus": ("libopus", {"application": "audio"}),
    "aac": ("aac", {}),
    # Only for outputs FFmpeg muxes (see ffmpeg_output.py), as aiortc's recorder writes them.
    "mp3": ("libmp3lame", {}),
    "png": ("png", {}),
}
# PyAV decoder names for what a remote peer sends.
DECODERS = {
    "vp8": "vp8",
    "h264": "h264",
    "opus": "opus",
    "pcmu": "pcm_mulaw",
    "pcma": "pcm_alaw",
    "g722": "g722",
}


@dataclass(frozen=True)
class EncoderSettings:
    """How transcoded tracks are encoded (the recorder's bitrate and keyframe options)."""

    audio_bitrate: int = 128_000
    video_bitrate: int = 2_500_000
    audio_bitrate_mode: str = "variable"
    keyframe_interval_us: int | None = 3_000_000
    keyframe_interval_count: int | None = None


@dataclass(slots=True)
class MediaItem:
    """A frame on its way to the writer: ``time`` is its output time in µs (not yet
    zero-based); ``restart`` marks the first frame after start or resume."""

    track: int
    time: int
    payload: EncodedFrame | av.AudioFrame | av.VideoFrame
    restart: bool = False

    @property
    def size(self) -> int:
        """Bytes this item holds in memory (for the writer's backlog limit)."""
        if isinstance(self.payload, EncodedFrame):
            return len(self.payload.data)
        return sum(plane.buffer_size for plane in self.payload.planes)


@dataclass
class TrackCounters:
    """What happened to one track on the writer thread."""

    frames_in: int = 0
    frames_decoded: int = 0
    frames_encoded: int = 0
    frames_undescribed: int = 0


class TrackProcessor(ABC):
    """Turns :class:`MediaItem` s of one track into container samples."""

    def __init__(self, index: int, kind: str, codec: str) -> None:
        self.index = index
        self.kind = kind
        self.codec = codec
        self.counters = TrackCounters()
        self.describer = StreamDescriber(TrackFormat(kind, codec))

    @property
    def format(self) -> TrackFormat | None:
        """The track as the container declares it, once known."""
        return self.describer.format

    @property
    @abstractmethod
    def path(self) -> str:
        """ "passthrough" or "transcode"."""

    @abstractmethod
    def process(self, item: MediaItem) -> list[Sample]:
        """Samples for one item (maybe none, maybe several)."""

    def finish(self) -> list[Sample]:
        """Samples still held back (an encoder's delay) at the end of the recording."""
        return []

    def _sample(self, data: bytes, time: int, keyframe: bool | None = None) -> Sample | None:
        try:
            converted, is_key, duration = self.describer.convert(data, keyframe)
        except ValueError as exc:
            logger.debug("dropping an unreadable %s frame: %s", self.codec, exc)
            self.counters.frames_undescribed += 1
            return None
        if self.format is None:
            self.counters.frames_undescribed += 1
            return None
        return Sample(self.index, time, is_key, converted, duration)


class PassthroughTrack(TrackProcessor):
    """Writes received encoded frames as they are.

    If the sender switches to another codec mid-recording (renegotiation), its frames are
    decoded and encoded back into the track's codec from then on, so the recording goes on.
    """

    def __init__(self, index: int, kind: str, codec: str, settings: EncoderSettings) -> None:
        super().__init__(index, kind, codec)
        self._settings = settings
        self._transcoder: TranscodeTrack | None = None

    @property
    def path(self) -> str:
        return "passthrough" if self._transcoder is None else "transcode"

    def process(self, item: MediaItem) -> list[Sample]:
        payload = cast(EncodedFrame, item.payload)
        if payload.codec != self.codec or self._transcoder is not None:
            return self._transcode(item)
        self.counters.frames_in += 1
        sample = self._sample(payload.data, item.time)
        return [sample] if sample is not None else []

    def finish(self) -> list[Sample]:
        return self._transcoder.finish() if self._transcoder is not None else []

    def _transcode(self, item: MediaItem) -> list[Sample]:
        if self._transcoder is None:
            logger.warning(
                "the sender switched codecs: transcoding into %s from now on", self.codec
            )
            self._transcoder = TranscodeTrack(self.index, self.kind, self.codec, self._settings)
            self._transcoder.describer = self.describer
            self._transcoder.counters = self.counters
        return self._transcoder.process(item)


class TranscodeTrack(TrackProcessor):
    """Decodes what needs decoding and encodes into the recording's codec."""

    def __init__(self, index: int, kind: str, codec: str, settings: EncoderSettings) -> None:
        super().__init__(index, kind, codec)
        self._settings = settings
        # PyAV codec contexts (video or audio); PyAV's own annotations are too loose to help.
        self._decoder: Any = None
        self._decoder_codec = ""
        self._encoder: Any = None
        self._fit: _Fit | None = None
        self._resampler: AudioResampler | None = None
        self._next_sample: int | None = None  # audio: pts (in samples) of the next frame
        self._last_pts = -1
        self._last_key_time: int | None = None
        self._frames_since_key = 0

    @property
    def path(self) -> str:
        return "transcode"

    def process(self, item: MediaItem) -> list[Sample]:
        self.counters.frames_in += 1
        samples: list[Sample] = []
        for frame in self._frames(item):
            samples += self._encode(frame, item.time, item.restart)
        return samples

    def finish(self) -> list[Sample]:
        samples = []
        if self._resampler is not None:
            for frame in self._resampler.resample(None):
                samples += self._encode_resampled(frame)
        if self._encoder is not None:
            samples += self._packets(self._encoder.encode(None))
        return samples

    # -- decoding -------------------------------------------------------------

    def _frames(self, item: MediaItem) -> list[av.AudioFrame | av.VideoFrame]:
        payload = item.payload
        if not isinstance(payload, EncodedFrame):
            return [payload]
        if self._decoder is None or self._decoder_codec != payload.codec:
            self._decoder = open_decoder(payload.codec)
            self._decoder_codec = payload.codec
        try:
            frames = self._decoder.decode(av.Packet(payload.data))
        except av.FFmpegError as exc:
            logger.debug("decoding a %s frame failed: %s", payload.codec, exc)
            return []
        self.counters.frames_decoded += len(frames)
        return cast(list[av.AudioFrame | av.VideoFrame], frames)

    # -- encoding -------------------------------------------------------------

    def _encode(
        self, frame: av.AudioFrame | av.VideoFrame, time: int, restart: bool
    ) -> list[Sample]:
        if isinstance(frame, VideoFrame):
            return self._encode_video(frame, time, restart)
        return self._encode_audio(frame, time)

    def _encode_video(self, frame: VideoFrame, time: int, restart: bool) -> list[Sample]:
        if self._encoder is None:
            self._encoder = self._open_video(frame.width & ~1 or 2, frame.height & ~1 or 2)
            self._fit = _Fit(self._encoder.width, self._encoder.height, self._encoder.pix_fmt)
        assert self._fit is not None
        picture = self._fit(frame)
        pts = max(time * 9 // 100, self._last_pts + 1)
        self._last_pts = pts
        picture.pts = pts
        picture.time_base = VIDEO_TIME_BASE
        picture.pict_type = (
            PictureType.I if self._wants_keyframe(time, restart) else PictureType.NONE
        )
        return self._packets(self._encoder.encode(picture))

    def _wants_keyframe(self, time: int, restart: bool) -> bool:
        settings = self._settings
        due = (
            restart
            or self._last_key_time is None
            or (
                settings.keyframe_interval_us is not None
                and time - self._last_key_time >= settings.keyframe_interval_us
            )
            or (
                settings.keyframe_interval_count is not None
                and self._frames_since_key >= settings.keyframe_interval_count
            )
        )
        if due:
            self._last_key_time = time
            self._frames_since_key = 0
        self._frames_since_key += 1
        return due

    def _new_encoder(self, name: str) -> Any:
        """An encoder of FFmpeg's codec ``name``, not yet configured nor opened."""
        return CodecContext.create(name, "w")

    def _open_video(self, width: int, height: int) -> Any:
        name, options = ENCODERS[self.codec]
        encoder: Any = self._new_encoder(name)
        encoder.width = width
        encoder.height = height
        encoder.pix_fmt = _pixel_format(encoder.codec)
        encoder.time_base = VIDEO_TIME_BASE
        encoder.framerate = fractions.Fraction(30, 1)
        encoder.bit_rate = self._settings.video_bitrate
        encoder.gop_size = 100_000  # keyframes come when this track asks for them
        encoder.max_b_frames = 0
        encoder.options = dict(options)
        encoder.open()
        self.describer.hints = replace(self.describer.hints, width=width, height=height)
        return encoder

    def _encode_audio(self, frame: AudioFrame, time: int) -> list[Sample]:
        if self._resampler is None:
            self._open_audio(frame)
        assert self._resampler is not None
        expected = time * AUDIO_RATE // MICROSECOND
        if self._next_sample is None or abs(expected - self._next_sample) > AUDIO_RATE // 10:
            # Start, or a gap in the input (lost packets): follow the input's timing.
            self._next_sample = expected
        samples: list[Sample] = []
        for converted in self._resampler.resample(frame):
            samples += self._encode_resampled(converted)
        return samples

    def _encode_resampled(self, frame: AudioFrame) -> list[Sample]:
        assert self._next_sample is not None
        frame.pts = self._next_sample
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._next_sample += frame.samples
        if self._encoder is not None:
            return self._packets(self._encoder.encode(frame))
        # PCM: the samples are the data.
        self.counters.frames_encoded += 1
        data = bytes(frame.planes[0])[: frame.samples * 2 * self.describer.hints.channels]
        sample = self._sample(data, frame.pts * MICROSECOND // AUDIO_RATE, True)
        if sample is None:
            return []
        sample.duration = frame.samples * MICROSECOND // AUDIO_RATE
        return [sample]

    def _open_audio(self, frame: AudioFrame) -> None:
        channels = min(2, len(frame.layout.channels))
        layout = "stereo" if channels == 2 else "mono"
        hints = replace(self.describer.hints, sample_rate=AUDIO_RATE, channels=channels)
        self.describer.hints = hints
        if self.codec == "pcm":
            self._resampler = AudioResampler(format="s16", layout=layout, rate=AUDIO_RATE)
            return
        name, options = ENCODERS[self.codec]
        encoder: Any = self._new_encoder(name)
        encoder.sample_rate = AUDIO_RATE
        encoder.layout = layout
        encoder.format = "s16" if self.codec == "opus" else "fltp"
        encoder.time_base = fractions.Fraction(1, AUDIO_RATE)
        encoder.bit_rate = self._settings.audio_bitrate
        encoder.options = dict(options)
        if self.codec == "opus":
            mode = "off" if self._settings.audio_bitrate_mode == "constant" else "on"
            encoder.options = {**encoder.options, "vbr": mode}
        encoder.open()
        self._encoder = encoder
        self._resampler = AudioResampler(
            format=encoder.format.name,
            layout=layout,
            rate=AUDIO_RATE,
            frame_size=encoder.frame_size,
        )
        self.describer.hints = replace(hints, config=bytes(encoder.extradata or b""))

    def _packets(self, packets: list[Any]) -> list[Sample]:
        samples = []
        for packet in packets:
            self.counters.frames_encoded += 1
            if packet.pts is None or packet.time_base is None:
                continue
            sample = self._packet_sample(packet, int(packet.pts * packet.time_base * MICROSECOND))
            if sample is not None:
                samples.append(sample)
        return samples

    def _packet_sample(self, packet: Any, time: int) -> Sample | None:
        """The container sample of one encoded packet, at output time ``time`` (µs; an
        encoder's priming can make it negative)."""
        return self._sample(bytes(packet), max(0, time), packet.is_keyframe)


def _pixel_format(codec: Any) -> str:
    """yuv420p, unless the encoder cannot take it (PNG): then the first format it takes."""
    formats = [f.name for f in codec.video_formats or ()]
    return "yuv420p" if not formats or "yuv420p" in formats else str(formats[0])


def open_decoder(codec: str) -> Any:
    """A PyAV decoder for what a remote peer sends in ``codec`` (``ValueError`` if none)."""
    name = DECODERS.get(codec)
    if name is None:
        raise ValueError(f"no decoder for {codec!r}")
    decoder: Any = CodecContext.create(name, "r")
    if codec == "opus":
        decoder.sample_rate = AUDIO_RATE
        decoder.layout = "stereo"
    elif codec in ("pcmu", "pcma"):
        decoder.sample_rate = 8000
        decoder.layout = "mono"
    elif codec == "g722":
        decoder.sample_rate = 16000
        decoder.layout = "mono"
    return decoder


class _Fit:
    """Brings every picture to the encoder's size and pixel format; a picture of another
    size is scaled to fit, keeping its aspect ratio, on black (so a camera that turns or
    changes resolution mid-recording neither breaks the encoder nor gets distorted)."""

    def __init__(self, width: int, height: int, pixel_format: str) -> None:
        self.width = width
        self.height = height
        self.pixel_format = pixel_format
        self._graph: av.filter.Graph | None = None
        self._input: tuple[int, int, str] | None = None

    def __call__(self, frame: VideoFrame) -> VideoFrame:
        if frame.width == self.width and frame.height == self.height:
            if frame.format.name == self.pixel_format:
                return frame
            return frame.reformat(format=self.pixel_format)
        shape = (frame.width, frame.height, frame.format.name)
        if self._graph is None or shape != self._input:
            self._graph = self._build(*shape)
            self._input = shape
        self._graph.push(frame)
        return cast(VideoFrame, self._graph.pull())

    def _build(self, width: int, height: int, pixel_format: str) -> av.filter.Graph:
        graph = av.filter.Graph()
        source = graph.add_buffer(
            width=width,
            height=height,
            format=av.VideoFormat(pixel_format),
            time_base=VIDEO_TIME_BASE,
        )
        scale = graph.add(
            "scale",
            f"w={self.width}:h={self.height}:force_original_aspect_ratio=decrease:"
            "force_divisible_by=2",
        )
        pad = graph.add("pad", f"w={self.width}:h={self.height}:x=(ow-iw)/2:y=(oh-ih)/2")
        pixels = graph.add("format", self.pixel_format)
        sink = graph.add("buffersink")
        source.link_to(scale)
        scale.link_to(pad)
        pad.link_to(pixels)
        pixels.link_to(sink)
        graph.configure()
        return graph
