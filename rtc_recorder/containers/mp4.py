"""Fragmented MP4 (ISO/IEC 14496-12, -14 and -15; Opus per "Encapsulation of Opus in ISOBMFF").

Layout: ``ftyp``, a ``moov`` describing the tracks with empty sample tables and an
``mvex`` (whose ``mehd`` says the length is unknown), then fragments: a ``moof`` with one
``traf`` per track and an ``mdat`` with their samples, each fragment at most a second of
media, cut at video keyframes and at every flush. ``close`` appends an ``mfra`` index of
the sync samples; its patches fill in the movie duration (``mvhd`` and ``mehd``) for a
rewritable copy. Every fragment is complete when it is written, so the stream is a valid
file at each fragment boundary with or without the patches.

A sample's duration is only known when the next sample of its track arrives, so the
writer holds back the latest sample of each track; the decode time of each track runs
on in its own timescale as the sum of the durations written, which keeps it continuous
across gaps (a gap lengthens the duration of the sample before it).
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..bitstream.h264 import parse_sps
from ..bitstream.opus import SAMPLE_RATE as OPUS_RATE
from ..bitstream.opus import OpusHead, packet_samples
from .base import MAX_BUFFERED_US, ContainerWriter, Output, Patch, Sample, TrackFormat

MOVIE_TIMESCALE = 1000
VIDEO_TIMESCALE = 90000
DEFAULT_FRAME_RATE = 30
AAC_FRAME_SAMPLES = 1024
MP4_EPOCH = datetime.datetime(1904, 1, 1, tzinfo=datetime.UTC)
UNITY_MATRIX = struct.pack(">9i", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)
LANGUAGE_UND = 0x55C4  # "und", packed as three 5-bit letters

TFHD_DEFAULT_BASE_IS_MOOF = 0x020000
TRUN_DATA_OFFSET = 0x000001
TRUN_SAMPLE_DURATION = 0x000100
TRUN_SAMPLE_SIZE = 0x000200
TRUN_SAMPLE_FLAGS = 0x000400
# Sample flags (14496-12 section 8.8.3.1): a sync sample depends on no other sample; any
# other sample depends on earlier ones and is marked as not a sync sample.
SYNC_SAMPLE_FLAGS = 0x02000000
NON_SYNC_SAMPLE_FLAGS = 0x01010000

AAC_SAMPLE_RATES = [
    96000,
    88200,
    64000,
    48000,
    44100,
    32000,
    24000,
    22050,
    16000,
    12000,
    11025,
    8000,
    7350,
]


def box(kind: bytes, payload: bytes) -> bytes:
    """A whole box: 32-bit size (64-bit ``largesize`` when needed), type, payload."""
    size = 8 + len(payload)
    if size > 0xFFFFFFFF:
        return struct.pack(">I4sQ", 1, kind, size + 8) + payload
    return struct.pack(">I4s", size, kind) + payload


def full_box(kind: bytes, version: int, flags: int, payload: bytes) -> bytes:
    """A box with the FullBox version and flags."""
    return box(kind, struct.pack(">I", version << 24 | flags) + payload)


def descriptor(tag: int, payload: bytes) -> bytes:
    """An MPEG-4 systems descriptor (14496-1 section 8.3.3): tag, expandable size, payload."""
    size = len(payload)
    length = bytearray([size & 0x7F])
    size >>= 7
    while size:
        length.insert(0, 0x80 | (size & 0x7F))
        size >>= 7
    return bytes([tag]) + bytes(length) + payload


def esds(audio_specific_config: bytes) -> bytes:
    """The ``esds`` box for AAC: an ES_Descriptor around the AudioSpecificConfig."""
    decoder_config = descriptor(
        0x04,
        struct.pack(">BB3sII", 0x40, 0x05 << 2 | 1, b"\x00\x00\x00", 0, 0)
        + descriptor(0x05, audio_specific_config),
    )
    es = descriptor(0x03, struct.pack(">HB", 0, 0) + decoder_config + descriptor(0x06, b"\x02"))
    return full_box(b"esds", 0, 0, es)


def aac_config_rate_channels(config: bytes) -> tuple[int, int]:
    """The sample rate and channel configuration an AudioSpecificConfig declares."""
    bits = int.from_bytes(config[:8].ljust(8, b"\x00"), "big")
    position = 64

    def read(count: int) -> int:
        nonlocal position
        position -= count
        return (bits >> position) & ((1 << count) - 1)

    if read(5) == 31:
        read(6)
    index = read(4)
    rate = read(24) if index == 15 else AAC_SAMPLE_RATES[min(index, len(AAC_SAMPLE_RATES) - 1)]
    return rate, read(4)


def avc_dimensions(avcc: bytes) -> tuple[int, int]:
    """Width and height from the first SPS of an avcC record."""
    if len(avcc) < 8 or not avcc[5] & 0x1F:
        raise ValueError("avcC record without an SPS")
    length = int.from_bytes(avcc[6:8], "big")
    params = parse_sps(avcc[8 : 8 + length])
    return params.width, params.height


def _mp4_time(moment: datetime.datetime) -> int:
    return int((moment - MP4_EPOCH).total_seconds())


@dataclass(slots=True)
class _Entry:
    sample: Sample
    duration: int


@dataclass(slots=True)
class _Track:
    """One track's timeline: decode times in its timescale, held-back and ready samples."""

    number: int
    format: TrackFormat
    timescale: int
    pending: Sample | None = None
    pending_start: int = 0
    last_duration: int = 0
    ready: list[_Entry] = field(default_factory=list)
    ready_start: int = 0

    def to_timescale(self, microseconds: int) -> int:
        """Microseconds in this track's timescale, rounded to the nearest tick."""
        return round(microseconds * self.timescale / 1_000_000)

    def finish_pending(self, duration: int) -> None:
        """Give the held-back sample its duration and move it to the ready samples."""
        assert self.pending is not None
        if not self.ready:
            self.ready_start = self.pending_start
        duration = max(duration, 1)
        self.ready.append(_Entry(self.pending, duration))
        self.pending_start += duration
        self.last_duration = duration
        self.pending = None

    def final_duration(self) -> int:
        """The duration of the last sample, which has no next sample to measure it by."""
        assert self.pending is not None
        if self.pending.duration > 0:
            return self.to_timescale(self.pending.duration)
        if self.last_duration:
            return self.last_duration
        if self.format.codec == "opus":
            try:
                return packet_samples(self.pending.data) * self.timescale // OPUS_RATE
            except ValueError:
                pass
        if self.format.codec == "aac":
            return AAC_FRAME_SAMPLES
        return self.timescale // DEFAULT_FRAME_RATE


@dataclass(slots=True)
class _RandomAccess:
    time: int
    moof_offset: int
    traf_number: int
    sample_number: int


class Mp4Writer(ContainerWriter):
    """Writes fragmented MP4 with H.264 video and Opus or AAC audio."""

    def __init__(
        self,
        output: Output,
        tracks: Sequence[TrackFormat],
        *,
        max_fragment_us: int = MAX_BUFFERED_US,
        created: datetime.datetime | None = None,
    ) -> None:
        super().__init__(output, tracks)
        for track in self.tracks:
            if track.codec not in ("h264", "opus", "aac"):
                raise ValueError(f"MP4 writer does not support {track.codec}")
        self._max_fragment_us = max_fragment_us
        self._tracks = [
            _Track(index + 1, track, self._timescale(track))
            for index, track in enumerate(self.tracks)
        ]
        self._video_track = next(
            (index for index, track in enumerate(self.tracks) if track.kind == "video"), None
        )
        self._sequence = 0
        self._random_access: list[list[_RandomAccess]] = [[] for _ in self.tracks]
        self._write_header(created or datetime.datetime.now(datetime.UTC))

    @staticmethod
    def _timescale(track: TrackFormat) -> int:
        if track.kind == "video":
            return VIDEO_TIMESCALE
        if track.codec == "opus":
            return OPUS_RATE
        if track.sample_rate:
            return track.sample_rate
        return aac_config_rate_channels(track.config)[0]

    # -- header -----------------------------------------------------------------

    def _write_header(self, created: datetime.datetime) -> None:
        ftyp = box(b"ftyp", b"isom" + struct.pack(">I", 0x200) + b"isomiso6iso2avc1mp41")
        when = _mp4_time(created)
        mvhd_payload = (
            struct.pack(">QQIQ", when, when, MOVIE_TIMESCALE, 0)
            + struct.pack(">iH10x", 0x00010000, 0x0100)
            + UNITY_MATRIX
            + bytes(24)
            + struct.pack(">I", len(self.tracks) + 1)
        )
        mvhd = full_box(b"mvhd", 1, 0, mvhd_payload)
        traks = b"".join(self._trak(track, when) for track in self._tracks)
        mehd = full_box(b"mehd", 1, 0, struct.pack(">Q", 0))
        trexs = b"".join(
            full_box(b"trex", 0, 0, struct.pack(">IIIII", track.number, 1, 0, 0, 0))
            for track in self._tracks
        )
        mvex = box(b"mvex", mehd + trexs)
        moov = box(b"moov", mvhd + traks + mvex)
        moov_offset = self.position + len(ftyp)
        # Offsets of the 64-bit duration fields: after the box header, version/flags,
        # and the creation, modification times (and timescale, for mvhd).
        self._mvhd_duration_offset = moov_offset + 8 + 12 + 8 + 8 + 4
        mvex_offset = moov_offset + 8 + len(mvhd) + len(traks)
        self._mehd_duration_offset = mvex_offset + 8 + 12
        self._emit(ftyp + moov)

    def _trak(self, track: _Track, when: int) -> bytes:
        form = track.format
        video = form.kind == "video"
        width, height = form.width, form.height
        if video and not (width and height):
            width, height = avc_dimensions(form.config)
        tkhd = full_box(
            b"tkhd",
            1,
            0x000003,  # enabled, in movie
            struct.pack(">QQI4xQ8xhhh2x", when, when, track.number, 0, 0, 0, 0 if video else 0x0100)
            + UNITY_MATRIX
            + struct.pack(">II", (width if video else 0) << 16, (height if video else 0) << 16),
        )
        mdhd = full_box(
            b"mdhd", 1, 0, struct.pack(">QQIQHH", when, when, track.timescale, 0, LANGUAGE_UND, 0)
        )
        handler, name = (b"vide", b"VideoHandler") if video else (b"soun", b"SoundHandler")
        hdlr = full_box(b"hdlr", 0, 0, struct.pack(">I4s12x", 0, handler) + name + b"\x00")
        media_header = (
            full_box(b"vmhd", 0, 1, bytes(8)) if video else full_box(b"smhd", 0, 0, bytes(4))
        )
        dref = full_box(b"dref", 0, 0, struct.pack(">I", 1) + full_box(b"url ", 0, 1, b""))
        stbl = box(
            b"stbl",
            full_box(b"stsd", 0, 0, struct.pack(">I", 1) + self._sample_entry(form, width, height))
            + full_box(b"stts", 0, 0, struct.pack(">I", 0))
            + full_box(b"stsc", 0, 0, struct.pack(">I", 0))
            + full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0))
            + full_box(b"stco", 0, 0, struct.pack(">I", 0)),
        )
        minf = box(b"minf", media_header + box(b"dinf", dref) + stbl)
        mdia = box(b"mdia", mdhd + hdlr + minf)
        return box(b"trak", tkhd + mdia)

    @staticmethod
    def _sample_entry(form: TrackFormat, width: int, height: int) -> bytes:
        """The single sample description of a track (14496-12 section 12.1.3 / 12.2.3)."""
        reserved_and_reference = bytes(6) + struct.pack(">H", 1)
        if form.codec == "h264":
            visual = reserved_and_reference + struct.pack(
                ">HH12xHHIIIH32sHh",
                0,
                0,
                width,
                height,
                0x00480000,  # 72 dpi
                0x00480000,
                0,
                1,  # frame_count
                b"",
                0x0018,  # depth: colour, no alpha
                -1,
            )
            # avc3: parameter sets may also travel in the samples, as they do from WebRTC
            # senders, so a new SPS (a camera changing resolution) keeps the file valid;
            # avc1 would require every parameter set to be in this one sample entry.
            return box(b"avc3", visual + box(b"avcC", form.config))
        if form.codec == "opus":
            head = OpusHead.parse(form.config)
            audio = reserved_and_reference + struct.pack(
                ">8xHHHHI", head.channels, 16, 0, 0, OPUS_RATE << 16
            )
            return box(b"Opus", audio + box(b"dOps", head.to_dops()))
        rate, channel_config = aac_config_rate_channels(form.config)
        rate = form.sample_rate or rate
        channels = form.channels or channel_config or 2
        audio = reserved_and_reference + struct.pack(
            ">8xHHHHI", channels, 16, 0, 0, (rate if rate < 0x10000 else 0) << 16
        )
        return box(b"mp4a", audio + esds(form.config))

    # -- fragments --------------------------------------------------------------

    def write(self, sample: Sample) -> None:
        """Take a sample; the one before it on its track gets its duration and is ready."""
        track = self._tracks[sample.track]
        start = track.to_timescale(sample.time)
        if track.pending is not None:
            track.finish_pending(start - track.pending_start)
        else:
            track.pending_start = start
        if self._starts_fragment(sample):
            self._write_fragment()
        track.pending = sample

    def _starts_fragment(self, sample: Sample) -> bool:
        times = [entry.sample.time for track in self._tracks for entry in track.ready]
        if not times:
            return False
        if sample.keyframe and sample.track == self._video_track:
            return True
        return max(max(times), sample.time) - min(times) >= self._max_fragment_us

    def flush(self) -> None:
        """Write the ready samples as a fragment (the latest of each track stays held)."""
        self._write_fragment()

    def _write_fragment(self) -> None:
        tracks = [track for track in self._tracks if track.ready]
        if not tracks:
            return
        self._sequence += 1
        mfhd = full_box(b"mfhd", 0, 0, struct.pack(">I", self._sequence))
        trafs = [self._traf(track, 0) for track in tracks]
        moof_size = 8 + len(mfhd) + sum(len(traf) for traf in trafs)
        data_size = sum(len(entry.sample.data) for track in tracks for entry in track.ready)
        mdat_header = 16 if data_size + 8 > 0xFFFFFFFF else 8
        offset = moof_size + mdat_header
        trafs = []
        for track in tracks:
            trafs.append(self._traf(track, offset))
            offset += sum(len(entry.sample.data) for entry in track.ready)
        moof = box(b"moof", mfhd + b"".join(trafs))
        self._note_random_access(tracks)
        data = b"".join(entry.sample.data for track in tracks for entry in track.ready)
        for track in tracks:
            track.ready = []
        self._emit(moof + box(b"mdat", data))

    @staticmethod
    def _traf(track: _Track, data_offset: int) -> bytes:
        tfhd = full_box(b"tfhd", 0, TFHD_DEFAULT_BASE_IS_MOOF, struct.pack(">I", track.number))
        tfdt = full_box(b"tfdt", 1, 0, struct.pack(">Q", track.ready_start))
        audio = track.format.kind == "audio"
        samples = b"".join(
            struct.pack(
                ">III",
                entry.duration,
                len(entry.sample.data),
                SYNC_SAMPLE_FLAGS if audio or entry.sample.keyframe else NON_SYNC_SAMPLE_FLAGS,
            )
            for entry in track.ready
        )
        trun = full_box(
            b"trun",
            0,
            TRUN_DATA_OFFSET | TRUN_SAMPLE_DURATION | TRUN_SAMPLE_SIZE | TRUN_SAMPLE_FLAGS,
            struct.pack(">Ii", len(track.ready), data_offset) + samples,
        )
        return box(b"traf", tfhd + tfdt + trun)

    def _note_random_access(self, tracks: list[_Track]) -> None:
        """Index the fragment's keyframes (video) or its first sample (audio) for ``tfra``."""
        for traf_number, track in enumerate(tracks, start=1):
            time = track.ready_start
            for sample_number, entry in enumerate(track.ready, start=1):
                audio = track.format.kind == "audio"
                if (audio and sample_number == 1) or (not audio and entry.sample.keyframe):
                    self._random_access[track.number - 1].append(
                        _RandomAccess(time, self.position, traf_number, sample_number)
                    )
                time += entry.duration

    # -- trailer ----------------------------------------------------------------

    def close(self, duration: int) -> list[Patch]:
        """Write the held samples and the ``mfra``; patch the durations in ``mvhd``/``mehd``."""
        for track in self._tracks:
            if track.pending is not None:
                track.finish_pending(track.final_duration())
        self._write_fragment()
        tfras = b"".join(
            full_box(
                b"tfra",
                1,
                0,
                struct.pack(">III", track.number, 0x3F, len(entries))
                + b"".join(
                    struct.pack(">QQIII", e.time, e.moof_offset, e.traf_number, 1, e.sample_number)
                    for e in entries
                ),
            )
            for track, entries in zip(self._tracks, self._random_access, strict=True)
        )
        mfro_size = 16
        mfra_size = 8 + len(tfras) + mfro_size
        self._emit(box(b"mfra", tfras + full_box(b"mfro", 0, 0, struct.pack(">I", mfra_size))))
        movie_duration = struct.pack(">Q", round(duration * MOVIE_TIMESCALE / 1_000_000))
        return [
            Patch(self._mvhd_duration_offset, movie_duration),
            Patch(self._mehd_duration_offset, movie_duration),
        ]
