"""Opus packets and headers (RFC 6716 section 3.1, RFC 7845 section 5.1)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

SAMPLE_RATE = 48000
# The encoder delay of libopus at 48 kHz (its look-ahead): decoding a packet gives sound
# taken this many samples before the packet's timestamp. The encoders of WebRTC senders
# (Chromium, Firefox, Safari, FFmpeg, GStreamer, aiortc) are libopus, and RTP does not
# carry it, so a received stream is written with this pre-skip: players then put the sound
# where it was taken instead of 6.5 ms late.
LIBOPUS_PRE_SKIP = 312

# Frame duration in 1/400 s units per TOC configuration (0-31): SILK, hybrid, CELT.
_FRAME_UNITS = [4, 8, 16, 24] * 3 + [4, 8] * 2 + [1, 2, 4, 8] * 4


def packet_samples(packet: bytes) -> int:
    """Samples per channel (at 48 kHz) that this packet decodes to; ``ValueError`` if malformed."""
    if not packet:
        raise ValueError("empty Opus packet")
    toc = packet[0]
    code = toc & 0x03
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    else:
        if len(packet) < 2:
            raise ValueError("Opus code 3 packet without a frame count")
        frames = packet[1] & 0x3F
    samples = frames * _FRAME_UNITS[toc >> 3] * SAMPLE_RATE // 400
    if samples > SAMPLE_RATE * 120 // 1000:
        raise ValueError("Opus packet longer than 120 ms")
    return samples


def is_stereo(packet: bytes) -> bool:
    """Whether the packet's TOC byte says stereo."""
    return bool(packet and packet[0] & 0x04)


@dataclass(frozen=True)
class OpusHead:
    """The identification header, as Ogg, Matroska (CodecPrivate) and MP4 (dOps) carry it."""

    channels: int
    pre_skip: int = 0
    input_rate: int = SAMPLE_RATE
    gain: int = 0

    def to_bytes(self) -> bytes:
        """The Ogg/Matroska form (``OpusHead`` magic, little endian, mapping family 0)."""
        return b"OpusHead" + struct.pack(
            "<BBHIhB", 1, self.channels, self.pre_skip, self.input_rate, self.gain, 0
        )

    def to_dops(self) -> bytes:
        """The payload of an MP4 ``dOps`` box (big endian, no magic)."""
        return struct.pack(
            ">BBHIhB", 0, self.channels, self.pre_skip, self.input_rate, self.gain, 0
        )

    @classmethod
    def parse(cls, data: bytes) -> OpusHead:
        """Read the Ogg/Matroska form (mapping family 0 or 1 with up to two channels)."""
        if len(data) < 19 or not data.startswith(b"OpusHead"):
            raise ValueError("not an OpusHead")
        _, channels, pre_skip, rate, gain, _family = struct.unpack_from("<BBHIhB", data, 8)
        return cls(channels, pre_skip, rate, gain)
