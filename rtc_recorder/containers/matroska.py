"""Matroska and WebM (EBML, RFC 8794 / RFC 9559).

Layout: EBML header, then a Segment of unknown size holding a Void reserved for the
SeekHead, Info (with a Void where the Duration goes), Tracks, and clusters of known size,
each written whole (at most a second of media, cut at video keyframes and at every
flush). ``close`` appends Cues; its patches fill in the SeekHead, the Duration and the
Segment size for a rewritable copy, so a finished file is seekable and knows its length,
while the stream stays valid with or without them.
"""

from __future__ import annotations

import datetime
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from .base import MAX_BUFFERED_US, ContainerWriter, Output, Patch, Sample, TrackFormat

# Element IDs (with their marker bits, as written).
EBML = 0x1A45DFA3
EBML_VERSION = 0x4286
EBML_READ_VERSION = 0x42F7
EBML_MAX_ID_LENGTH = 0x42F2
EBML_MAX_SIZE_LENGTH = 0x42F3
DOC_TYPE = 0x4282
DOC_TYPE_VERSION = 0x4287
DOC_TYPE_READ_VERSION = 0x4285
SEGMENT = 0x18538067
SEEK_HEAD = 0x114D9B74
SEEK = 0x4DBB
SEEK_ID = 0x53AB
SEEK_POSITION = 0x53AC
INFO = 0x1549A966
TIMESTAMP_SCALE = 0x2AD7B1
DURATION = 0x4489
DATE_UTC = 0x4461
MUXING_APP = 0x4D80
WRITING_APP = 0x5741
TRACKS = 0x1654AE6B
TRACK_ENTRY = 0xAE
TRACK_NUMBER = 0xD7
TRACK_UID = 0x73C5
TRACK_TYPE = 0x83
FLAG_LACING = 0x9C
CODEC_ID = 0x86
CODEC_PRIVATE = 0x63A2
DEFAULT_DURATION = 0x23E383
CODEC_DELAY = 0x56AA
SEEK_PRE_ROLL = 0x56BB
VIDEO = 0xE0
PIXEL_WIDTH = 0xB0
PIXEL_HEIGHT = 0xBA
AUDIO = 0xE1
SAMPLING_FREQUENCY = 0xB5
CHANNELS = 0x9F
BIT_DEPTH = 0x6264
CLUSTER = 0x1F43B675
CLUSTER_TIMESTAMP = 0xE7
SIMPLE_BLOCK = 0xA3
CUES = 0x1C53BB6B
CUE_POINT = 0xBB
CUE_TIME = 0xB3
CUE_TRACK_POSITIONS = 0xB7
CUE_TRACK = 0xF7
CUE_CLUSTER_POSITION = 0xF1
VOID = 0xEC

UNKNOWN_SIZE = b"\x01\xff\xff\xff\xff\xff\xff\xff"
TICK_US = 1000  # TimestampScale of 1 ms, the usual choice
SEEK_HEAD_SPACE = 96
DURATION_SPACE = 11  # ID (2) + size (1) + float64 (8)
OPUS_SEEK_PRE_ROLL_NS = 80_000_000
MATROSKA_EPOCH = datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC)

CODEC_IDS = {
    "vp8": "V_VP8",
    "vp9": "V_VP9",
    "av1": "V_AV1",
    "h264": "V_MPEG4/ISO/AVC",
    "opus": "A_OPUS",
    "aac": "A_AAC",
    "pcm": "A_PCM/INT/LIT",
}


def encode_id(element_id: int) -> bytes:
    """An element ID as written (IDs keep their length marker)."""
    return element_id.to_bytes((element_id.bit_length() + 7) // 8, "big")


def encode_size(size: int, length: int = 0) -> bytes:
    """A data size as an EBML variable-length integer (shortest form unless ``length``)."""
    needed = 1
    while size >= (1 << (7 * needed)) - 1:
        needed += 1
    length = max(length, needed)
    if length > 8:
        raise ValueError("EBML element too large")
    return (size | (1 << (7 * length))).to_bytes(length, "big")


def element(element_id: int, payload: bytes) -> bytes:
    """A whole element: ID, size, payload."""
    return encode_id(element_id) + encode_size(len(payload)) + payload


def uint_element(element_id: int, value: int) -> bytes:
    """An unsigned integer element, in as few bytes as it needs."""
    return element(element_id, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def float_element(element_id: int, value: float) -> bytes:
    """A float64 element."""
    return element(element_id, struct.pack(">d", value))


def string_element(element_id: int, value: str) -> bytes:
    """A string element (UTF-8)."""
    return element(element_id, value.encode())


def void(size: int) -> bytes:
    """A Void element occupying exactly ``size`` bytes (at least 2)."""
    if size < 2:
        raise ValueError("a Void element takes at least two bytes")
    if size - 2 < 127:
        return encode_id(VOID) + encode_size(size - 2) + bytes(size - 2)
    return encode_id(VOID) + encode_size(size - 9, 8) + bytes(size - 9)


def seek_head(seeks: Sequence[tuple[int, int]]) -> bytes:
    """A SeekHead: where each ``(element ID, position in the Segment)`` is."""
    return element(
        SEEK_HEAD,
        b"".join(
            element(SEEK, element(SEEK_ID, encode_id(i)) + uint_element(SEEK_POSITION, p))
            for i, p in seeks
        ),
    )


@dataclass(slots=True)
class _Cue:
    time: int
    track: int
    cluster_position: int


class MatroskaWriter(ContainerWriter):
    """Writes Matroska (``doc_type="matroska"``) or WebM (``doc_type="webm"``)."""

    def __init__(
        self,
        output: Output,
        tracks: Sequence[TrackFormat],
        *,
        doc_type: str = "webm",
        writing_app: str = "rtc-recorder",
        max_cluster_us: int = MAX_BUFFERED_US,
        created: datetime.datetime | None = None,
    ) -> None:
        super().__init__(output, tracks)
        self._max_cluster_us = max_cluster_us
        self._cluster: list[Sample] = []
        self._cues: list[_Cue] = []
        self._video_track = next(
            (index for index, track in enumerate(self.tracks) if track.kind == "video"), None
        )
        self._write_header(doc_type, writing_app, created or datetime.datetime.now(datetime.UTC))

    # -- header -----------------------------------------------------------------

    def _write_header(self, doc_type: str, writing_app: str, created: datetime.datetime) -> None:
        header = element(
            EBML,
            uint_element(EBML_VERSION, 1)
            + uint_element(EBML_READ_VERSION, 1)
            + uint_element(EBML_MAX_ID_LENGTH, 4)
            + uint_element(EBML_MAX_SIZE_LENGTH, 8)
            + string_element(DOC_TYPE, doc_type)
            + uint_element(DOC_TYPE_VERSION, 4)
            + uint_element(DOC_TYPE_READ_VERSION, 2),
        )
        self._segment_size_offset = len(header) + len(encode_id(SEGMENT))
        self._segment_start = self._segment_size_offset + len(UNKNOWN_SIZE)
        self._seek_head_offset = self._segment_start
        self._info_position = SEEK_HEAD_SPACE
        date = int((created - MATROSKA_EPOCH).total_seconds() * 1e9)
        info_payload = (
            uint_element(TIMESTAMP_SCALE, TICK_US * 1000)
            + string_element(MUXING_APP, writing_app)
            + string_element(WRITING_APP, writing_app)
            + element(DATE_UTC, date.to_bytes(8, "big", signed=True))
        )
        info_head = encode_id(INFO) + encode_size(len(info_payload) + DURATION_SPACE)
        self._duration_offset = (
            self._segment_start + SEEK_HEAD_SPACE + len(info_head) + len(info_payload)
        )
        info = info_head + info_payload + void(DURATION_SPACE)
        self._tracks_position = SEEK_HEAD_SPACE + len(info)
        tracks = element(
            TRACKS, b"".join(self._track_entry(i, t) for i, t in enumerate(self.tracks))
        )
        self._emit(
            header + encode_id(SEGMENT) + UNKNOWN_SIZE + void(SEEK_HEAD_SPACE) + info + tracks
        )

    @staticmethod
    def _track_entry(index: int, track: TrackFormat) -> bytes:
        payload = (
            uint_element(TRACK_NUMBER, index + 1)
            + uint_element(TRACK_UID, int.from_bytes(os.urandom(7), "big") | 1)
            + uint_element(TRACK_TYPE, 1 if track.kind == "video" else 2)
            + uint_element(FLAG_LACING, 0)
            + string_element(CODEC_ID, CODEC_IDS[track.codec])
        )
        if track.config:
            payload += element(CODEC_PRIVATE, track.config)
        if track.codec == "opus":
            payload += uint_element(SEEK_PRE_ROLL, OPUS_SEEK_PRE_ROLL_NS)
            pre_skip = int.from_bytes(track.config[10:12], "little") if track.config else 0
            payload += uint_element(CODEC_DELAY, pre_skip * 1_000_000_000 // 48000)
        if track.kind == "video" and track.frame_interval:
            # FFmpeg reads its frame rate from this instead of guessing it from the first
            # timestamps (a guess a stall or a rate change can throw off).
            payload += uint_element(DEFAULT_DURATION, track.frame_interval)
        if track.kind == "video":
            payload += element(
                VIDEO,
                uint_element(PIXEL_WIDTH, track.width) + uint_element(PIXEL_HEIGHT, track.height),
            )
        else:
            audio = float_element(SAMPLING_FREQUENCY, float(track.sample_rate)) + uint_element(
                CHANNELS, track.channels
            )
            if track.codec == "pcm":
                audio += uint_element(BIT_DEPTH, 16)
            payload += element(AUDIO, audio)
        return element(TRACK_ENTRY, payload)

    # -- clusters ---------------------------------------------------------------

    def write(self, sample: Sample) -> None:
        """Add a sample to the open cluster, starting a new cluster where it should."""
        if self._cluster and self._starts_cluster(sample):
            self.flush()
        self._cluster.append(sample)

    def _starts_cluster(self, sample: Sample) -> bool:
        if sample.keyframe and sample.track == self._video_track:
            return True
        times = [s.time for s in self._cluster]
        span = max(max(times), sample.time) - min(min(times), sample.time)
        return span >= self._max_cluster_us

    def flush(self) -> None:
        """Write the open cluster, if any."""
        if not self._cluster:
            return
        samples = sorted(self._cluster, key=lambda s: s.time)
        self._cluster = []
        cluster_tick = samples[0].time // TICK_US
        position = self.position - self._segment_start
        blocks = []
        cued_tracks: set[int] = set()
        for sample in samples:
            relative = sample.time // TICK_US - cluster_tick
            flags = 0x80 if sample.keyframe or self.tracks[sample.track].kind == "audio" else 0
            blocks.append(
                element(
                    SIMPLE_BLOCK,
                    encode_size(sample.track + 1)
                    + struct.pack(">hB", relative, flags)
                    + sample.data,
                )
            )
            if self._is_cue(sample) and sample.track not in cued_tracks:
                cued_tracks.add(sample.track)
                self._cues.append(_Cue(sample.time // TICK_US, sample.track + 1, position))
        self._emit(
            element(CLUSTER, uint_element(CLUSTER_TIMESTAMP, cluster_tick) + b"".join(blocks))
        )

    def _is_cue(self, sample: Sample) -> bool:
        if self._video_track is None:
            return True
        return sample.track == self._video_track and sample.keyframe

    # -- trailer ----------------------------------------------------------------

    def close(self, duration: int) -> list[Patch]:
        """Write the last cluster and the Cues; patch SeekHead, Duration and Segment size."""
        self.flush()
        cues_position = self.position - self._segment_start
        if self._cues:
            self._emit(element(CUES, b"".join(self._cue_point(cue) for cue in self._cues)))
        seeks = [(INFO, self._info_position), (TRACKS, self._tracks_position)]
        if self._cues:
            seeks.append((CUES, cues_position))
        index = seek_head(seeks)
        segment_size = self.position - self._segment_start
        return [
            Patch(self._seek_head_offset, index + void(SEEK_HEAD_SPACE - len(index))),
            Patch(self._duration_offset, float_element(DURATION, duration / TICK_US)),
            Patch(self._segment_size_offset, encode_size(segment_size, 8)),
        ]

    @staticmethod
    def _cue_point(cue: _Cue) -> bytes:
        return element(
            CUE_POINT,
            uint_element(CUE_TIME, cue.time)
            + element(
                CUE_TRACK_POSITIONS,
                uint_element(CUE_TRACK, cue.track)
                + uint_element(CUE_CLUSTER_POSITION, cue.cluster_position),
            ),
        )
