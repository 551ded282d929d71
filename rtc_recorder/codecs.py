"""What the recorder knows about each codec: keyframes, and how a stream describes itself
to a container. Shared by pass-through (frames as received) and transcoding (frames as
encoded here), so both produce the same kind of track.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .bitstream import av1, h264, opus, vp8
from .containers.base import TrackFormat

VIDEO_CODECS = ("vp8", "vp9", "av1", "h264")
AUDIO_CODECS = ("opus", "aac", "pcm")

# Codecs a remote peer may send, by the name aiortc gives them (mimeType subtype, lower case).
RECEIVED_AUDIO = {"opus", "pcmu", "pcma", "g722"}
RECEIVED_VIDEO = {"vp8", "h264"}


def is_keyframe(codec: str, data: bytes) -> bool:
    """Whether an encoded frame as received (VP8, H.264 Annex B) starts a new picture sequence."""
    if codec == "vp8":
        return vp8.is_keyframe(data)
    if codec == "h264":
        return h264.is_keyframe(h264.split_annexb(data))
    return True


@dataclass
class StreamDescriber:
    """Turns one stream's encoded frames into container samples, and learns the track's
    :class:`TrackFormat` from them (VP8 and H.264 from their keyframes, Opus from its first
    packet), keeping H.264 parameter sets that arrived before the keyframe.

    ``hints`` is what an encoder already told (its size, rate, channels, and extradata in
    ``config``); frames that describe themselves need none.
    """

    hints: TrackFormat
    format: TrackFormat | None = None
    _sps: list[bytes] = field(default_factory=list)
    _pps: list[bytes] = field(default_factory=list)

    @property
    def codec(self) -> str:
        return self.hints.codec

    def convert(self, data: bytes, keyframe: bool | None = None) -> tuple[bytes, bool, int]:
        """(container sample data, keyframe, duration in µs or 0) for one encoded frame;
        the first describable frame also sets :attr:`format`.

        ``keyframe`` is the encoder's word where there is one (VP9, AV1); VP8 and H.264
        frames say it themselves.
        """
        if self.codec == "h264":
            units = h264.split_annexb(data)
            sps, pps = h264.parameter_sets(units)
            self._sps, self._pps = sps or self._sps, pps or self._pps
            keyframe = h264.is_keyframe(units)
            if self.format is None and keyframe and self._sps and self._pps:
                params = h264.parse_sps(self._sps[0])
                self.format = TrackFormat(
                    "video",
                    "h264",
                    params.width,
                    params.height,
                    config=h264.avc_configuration(self._sps, self._pps),
                )
            return h264.to_length_prefixed(units), keyframe, 0
        if self.codec == "vp8":
            keyframe = vp8.is_keyframe(data)
            if self.format is None and keyframe:
                width, height = vp8.keyframe_size(data)
                self.format = TrackFormat("video", "vp8", width, height)
            return data, keyframe, 0
        if self.codec == "av1":
            sample = av1.strip_temporal_delimiters(data)
            if keyframe is None:
                keyframe = any(kind == av1.OBU_SEQUENCE_HEADER for kind, _ in av1.iter_obus(sample))
            if self.format is None and keyframe:
                config = av1.configuration(self.hints.config or sample)
                self.format = replace(self.hints, config=config)
            return sample, keyframe, 0
        if self.codec == "opus":
            duration = opus.packet_samples(data) * 1_000_000 // opus.SAMPLE_RATE
            if self.format is None:
                head = (
                    opus.OpusHead.parse(self.hints.config)
                    if self.hints.config
                    else opus.OpusHead(
                        2 if opus.is_stereo(data) else 1, pre_skip=opus.LIBOPUS_PRE_SKIP
                    )
                )
                self.format = TrackFormat(
                    "audio",
                    "opus",
                    sample_rate=opus.SAMPLE_RATE,
                    channels=head.channels,
                    config=head.to_bytes(),
                )
            return data, True, duration
        if self.format is None:
            self.format = self.hints
        return data, keyframe if keyframe is not None else self.hints.kind == "audio", 0
