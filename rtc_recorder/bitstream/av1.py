"""AV1 OBUs: the ``av1C`` record (AV1-ISOBMFF / Matroska codec mapping) and sample cleanup."""

from __future__ import annotations

from collections.abc import Iterator

from .bits import BitReader, read_leb128

OBU_SEQUENCE_HEADER = 1
OBU_TEMPORAL_DELIMITER = 2


def iter_obus(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, whole OBU with its header) for each OBU of a low-overhead bitstream."""
    offset = 0
    while offset < len(data):
        start = offset
        header = data[offset]
        obu_type = (header >> 3) & 0x0F
        offset += 2 if header & 0x04 else 1
        if not header & 0x02:
            # No size field: the OBU runs to the end of the data.
            yield obu_type, data[start:]
            return
        size, offset = read_leb128(data, offset)
        offset += size
        if offset > len(data):
            raise ValueError("AV1 OBU runs past the end of the data")
        yield obu_type, data[start:offset]


def strip_temporal_delimiters(sample: bytes) -> bytes:
    """A sample without temporal delimiter OBUs, which the container mappings leave out."""
    return b"".join(obu for kind, obu in iter_obus(sample) if kind != OBU_TEMPORAL_DELIMITER)


def _payload(obu: bytes) -> bytes:
    offset = 2 if obu[0] & 0x04 else 1
    if obu[0] & 0x02:
        _, offset = read_leb128(obu, offset)
    return obu[offset:]


def configuration(extradata: bytes, *, subsampling: tuple[int, int] = (1, 1)) -> bytes:
    """The ``av1C`` record for an encoder's extradata (its sequence header OBU).

    Profile, level and tier come from the sequence header; the colour fields describe
    the 8-bit 4:2:0 pictures this recorder encodes (``subsampling`` per axis).
    """
    if extradata[:1] and extradata[0] & 0x80:
        return extradata  # already an av1C record (marker bit set)
    sequence = next(
        (obu for kind, obu in iter_obus(extradata) if kind == OBU_SEQUENCE_HEADER), None
    )
    if sequence is None:
        raise ValueError("no AV1 sequence header in the extradata")
    reader = BitReader(_payload(sequence))
    profile = reader.bits(3)
    reader.flag()  # still_picture
    reduced = reader.flag()
    tier = 0
    if reduced:
        level = reader.bits(5)
    else:
        if reader.flag():  # timing_info_present_flag
            reader.bits(32)
            reader.bits(32)
            if reader.flag():  # equal_picture_interval
                zeros = 0
                while reader.bits(1) == 0:
                    zeros += 1
                reader.bits(zeros)
            decoder_model = reader.flag()
            if decoder_model:
                reader.bits(5)
                reader.bits(32)
                reader.bits(5)
                reader.bits(5)
        reader.flag()  # initial_display_delay_present_flag
        reader.bits(5)  # operating_points_cnt_minus_1: level and tier of point 0 follow
        reader.bits(12)
        level = reader.bits(5)
        tier = reader.bits(1) if level > 7 else 0
    x, y = subsampling
    record = bytes(
        [
            0x81,
            (profile << 5) | level,
            (tier << 7) | (x << 3) | (y << 2),
            0,
        ]
    )
    return record + sequence
