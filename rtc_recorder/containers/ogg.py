"""Ogg Opus (RFC 3533, RFC 7845).

Layout: a page holding the ``OpusHead`` alone (beginning of stream), a page with the
``OpusTags`` comment header, then audio pages of up to a second of packets each (cut at
every flush), the last one marked end of stream. The stream has no gaps, as RFC 7845
asks: where packets are missing, the writer puts packets of zero-length frames, which
tell the decoder to conceal the loss (RFC 7845 section 4.1, RFC 6716 section 3.2.1).
Everything is written in order, so ``close`` has no patches to return.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

from ..bitstream.opus import SAMPLE_RATE, OpusHead, packet_samples
from .base import MAX_BUFFERED_US, ContainerWriter, Output, Patch, Sample, TrackFormat

CAPTURE_PATTERN = b"OggS"
FLAG_CONTINUED = 0x01
FLAG_BOS = 0x02
FLAG_EOS = 0x04
NO_GRANULE = -1
MAX_SEGMENTS = 255
MAX_PACKET_SAMPLES = SAMPLE_RATE * 120 // 1000
LOSS_UNIT = SAMPLE_RATE // 400  # 2.5 ms, the shortest Opus frame
CELT_FULLBAND_20MS = 31

# Opus TOC configurations (RFC 6716 section 3.1): the 2.5 ms CELT configuration with the
# same audio bandwidth as each configuration (CELT has no medium band: wideband instead).
_CELT_SHORTEST = [16] * 4 + [20] * 8 + [24, 24, 28, 28] + [16] * 4 + [20] * 4 + [24] * 4 + [28] * 4


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        value = byte << 24
        for _ in range(8):
            value = ((value << 1) ^ 0x04C11DB7) if value & 0x80000000 else value << 1
        table.append(value & 0xFFFFFFFF)
    return table


_CRC_TABLE = _crc_table()


def ogg_crc(data: bytes) -> int:
    """The Ogg page checksum: CRC-32, polynomial 0x04C11DB7, not reflected, initial value 0."""
    crc = 0
    table = _CRC_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ byte]
    return crc


def page(
    serial: int, sequence: int, granule: int, flags: int, lacing: Sequence[int], body: bytes
) -> bytes:
    """One whole page with its checksum (RFC 3533 section 6)."""
    header = (
        CAPTURE_PATTERN
        + struct.pack("<BBqIII", 0, flags, granule, serial, sequence, 0)
        + bytes([len(lacing), *lacing])
    )
    crc = ogg_crc(header + body)
    return header[:22] + crc.to_bytes(4, "little") + header[26:] + body


def opus_tags(vendor: str, comments: Sequence[str] = ()) -> bytes:
    """The comment header (RFC 7845 section 5.2)."""
    encoded = vendor.encode()
    payload = b"OpusTags" + struct.pack("<I", len(encoded)) + encoded
    payload += struct.pack("<I", len(comments))
    for comment in comments:
        data = comment.encode()
        payload += struct.pack("<I", len(data)) + data
    return payload


def _frames_packet(config: int, stereo: int, frames: int) -> bytes:
    """A packet of ``frames`` zero-length frames: code 0 for one frame, else code 3 CBR."""
    if frames == 1:
        return bytes([config << 3 | stereo])
    return bytes([config << 3 | stereo | 0x03, frames])


def loss_packets(toc: int, samples: int) -> list[bytes]:
    """Packets asking the decoder to conceal ``samples`` (a multiple of 2.5 ms) of loss.

    They keep the mode, bandwidth, channels and frame size of the packet whose TOC byte is
    given, as RFC 7845 section 4.1 recommends; a remainder shorter than that frame size
    uses 2.5 ms CELT frames of the same bandwidth.
    """
    config, stereo = toc >> 3, toc & 0x04
    frame = packet_samples(bytes([config << 3]))
    packets = []
    frames = samples // frame
    while frames:
        count = min(frames, MAX_PACKET_SAMPLES // frame)
        packets.append(_frames_packet(config, stereo, count))
        frames -= count
    rest = (samples % frame) // LOSS_UNIT
    if rest:
        packets.append(_frames_packet(_CELT_SHORTEST[config], stereo, rest))
    return packets


class OggWriter(ContainerWriter):
    """Writes one Opus track as an Ogg Opus stream."""

    def __init__(
        self,
        output: Output,
        tracks: Sequence[TrackFormat],
        *,
        vendor: str = "rtc-recorder",
        comments: Sequence[str] = (),
        serial: int | None = None,
        max_page_us: int = MAX_BUFFERED_US,
    ) -> None:
        super().__init__(output, tracks)
        if len(self.tracks) != 1 or self.tracks[0].codec != "opus":
            raise ValueError("Ogg Opus holds exactly one Opus track")
        if len(comments) > 1:
            raise ValueError("at most one comment")
        head = self.tracks[0].config
        opus_head = OpusHead.parse(head)
        self._pre_skip = opus_head.pre_skip
        self._channels = opus_head.channels
        self._serial = serial if serial is not None else int.from_bytes(os.urandom(4), "big")
        self._max_page_samples = max_page_us * SAMPLE_RATE // 1_000_000
        self._sequence = 0
        # Held packets with the stream position (48 kHz samples, no pre-skip) each ends at.
        self._packets: list[tuple[bytes, int]] = []
        self._held_start = 0
        self._position = 0
        self._granule = 0
        self._last_toc: int | None = None
        self._write_pages([(head, 0)], FLAG_BOS)
        self._write_pages([(opus_tags(vendor, comments), 0)], 0)

    @property
    def granule(self) -> int:
        """The granule position of the last page written that has one (pre-skip included)."""
        return self._granule

    def write(self, sample: Sample) -> None:
        """Add one Opus packet, filling any gap before it with loss-concealment packets.

        Gaps shorter than 1.25 ms are timing jitter: the packet follows on directly. A
        packet that ends before the audio already taken (a duplicate) is dropped; one that
        overlaps it is kept and placed right after it, so the stream stays gapless.
        Malformed packets (empty, or a TOC that cannot be read) are dropped.
        """
        try:
            duration = packet_samples(sample.data)
        except ValueError:
            return
        start = round(sample.time * SAMPLE_RATE / 1_000_000)
        if start + duration <= self._position:
            return
        gap = start - self._position
        if gap * 2 >= LOSS_UNIT:
            units = (gap + LOSS_UNIT // 2) // LOSS_UNIT
            toc = self._last_toc if self._last_toc is not None else sample.data[0]
            for packet in loss_packets(toc, units * LOSS_UNIT):
                self._add(packet, packet_samples(packet))
        self._add(sample.data, duration)
        self._last_toc = sample.data[0]

    def _add(self, packet: bytes, duration: int) -> None:
        if not self._packets:
            self._held_start = self._position
        self._position += duration
        self._packets.append((packet, self._position + self._pre_skip))
        if self._position - self._held_start >= self._max_page_samples:
            self.flush()

    def flush(self) -> None:
        """Write the held packets as pages."""
        if self._packets:
            packets, self._packets = self._packets, []
            self._write_pages(packets, 0)

    def _write_pages(
        self, packets: list[tuple[bytes, int]], flags: int, granule: int = NO_GRANULE
    ) -> None:
        """Lace ``packets`` into pages: BOS in ``flags`` marks the first, EOS the last.

        ``granule`` is the position of a page on which no packet ends.
        """
        pages: list[tuple[int, int, list[int], bytes]] = []
        lacing: list[int] = []
        body = bytearray()
        continued = False
        page_granule = granule
        for data, end in packets:
            values = [255] * (len(data) // 255) + [len(data) % 255]
            for index, value in enumerate(values):
                if len(lacing) == MAX_SEGMENTS:
                    pages.append((page_granule, FLAG_CONTINUED * continued, lacing, bytes(body)))
                    lacing, body, page_granule = [], bytearray(), NO_GRANULE
                    continued = index > 0
                lacing.append(value)
                body += data[index * 255 : index * 255 + value]
            page_granule = end
        pages.append((page_granule, FLAG_CONTINUED * continued, lacing, bytes(body)))
        for number, (page_granule, page_flags, page_lacing, page_body) in enumerate(pages):
            if number == 0:
                page_flags |= flags & FLAG_BOS
            if number == len(pages) - 1:
                page_flags |= flags & FLAG_EOS
            self._emit_page(page_granule, page_flags, page_lacing, page_body)

    def _emit_page(self, granule: int, flags: int, lacing: list[int], body: bytes) -> None:
        if granule != NO_GRANULE:
            self._granule = granule
        self._emit(page(self._serial, self._sequence, granule, flags, lacing, body))
        self._sequence += 1

    def close(self, duration: int) -> list[Patch]:
        """Write the held packets on pages, the last one marked end of stream.

        A stream that got no audio at all gets one 20 ms concealment packet (silence), as
        readers such as FFmpeg cannot open an Ogg Opus stream without any audio packet.
        """
        if not self._position:
            stereo = 0x04 if self._channels > 1 else 0
            self._add(_frames_packet(CELT_FULLBAND_20MS, stereo, 1), SAMPLE_RATE // 50)
        packets, self._packets = self._packets, []
        self._write_pages(packets, FLAG_EOS, NO_GRANULE if packets else self._granule)
        return []
