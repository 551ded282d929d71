"""H.264 access units: Annex B splitting, parameter sets, and the avcC record (ISO/IEC 14496-15).

Frames from WebRTC and from libx264 arrive in Annex B form (start codes); Matroska and
MP4 store length-prefixed NAL units and the parameter sets in an ``avcC`` record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .bits import BitReader

NAL_SLICE = 1
NAL_IDR = 5
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9

_START_CODE = re.compile(b"\x00\x00\x01")
_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B byte stream (start codes and trailing zeros removed)."""
    starts = [match.end() for match in _START_CODE.finditer(data)]
    units = []
    for index, start in enumerate(starts):
        end = starts[index + 1] - 3 if index + 1 < len(starts) else len(data)
        unit = data[start:end].rstrip(b"\x00") if index + 1 < len(starts) else data[start:end]
        if unit:
            units.append(unit)
    return units


def nal_type(unit: bytes) -> int:
    """The ``nal_unit_type`` of one NAL unit."""
    return unit[0] & 0x1F


def to_length_prefixed(units: list[bytes]) -> bytes:
    """NAL units as a Matroska/MP4 sample: each with a 4-byte big-endian length.

    Access unit delimiters are dropped (they mean nothing inside a container).
    """
    return b"".join(
        len(unit).to_bytes(4, "big") + unit for unit in units if nal_type(unit) != NAL_AUD
    )


def is_keyframe(units: list[bytes]) -> bool:
    """Whether the access unit holds an IDR slice."""
    return any(nal_type(unit) == NAL_IDR for unit in units)


def _unescape(unit: bytes) -> bytes:
    """The RBSP of a NAL unit: emulation prevention bytes (00 00 03) removed."""
    return unit.replace(b"\x00\x00\x03", b"\x00\x00")


@dataclass(frozen=True)
class SequenceParameters:
    """What a container needs from an SPS."""

    profile: int
    compatibility: int
    level: int
    chroma_format: int
    bit_depth_luma: int
    bit_depth_chroma: int
    width: int
    height: int


def _skip_scaling_list(reader: BitReader, size: int) -> None:
    last = next_scale = 8
    for _ in range(size):
        if next_scale:
            next_scale = (last + reader.se()) % 256
        last = next_scale or last


def parse_sps(unit: bytes) -> SequenceParameters:
    """Parse a sequence parameter set NAL unit (ITU-T H.264 section 7.3.2.1.1)."""
    if len(unit) < 4 or nal_type(unit) != NAL_SPS:
        raise ValueError("not an SPS")
    rbsp = _unescape(unit)
    profile, compatibility, level = rbsp[1], rbsp[2], rbsp[3]
    reader = BitReader(rbsp[4:])
    reader.ue()  # seq_parameter_set_id
    chroma_format, depth_luma, depth_chroma = 1, 8, 8
    separate_planes = False
    if profile in _HIGH_PROFILES:
        chroma_format = reader.ue()
        if chroma_format == 3:
            separate_planes = reader.flag()
        depth_luma = reader.ue() + 8
        depth_chroma = reader.ue() + 8
        reader.flag()  # qpprime_y_zero_transform_bypass_flag
        if reader.flag():  # seq_scaling_matrix_present_flag
            for index in range(8 if chroma_format != 3 else 12):
                if reader.flag():
                    _skip_scaling_list(reader, 16 if index < 6 else 64)
    reader.ue()  # log2_max_frame_num_minus4
    order_type = reader.ue()
    if order_type == 0:
        reader.ue()
    elif order_type == 1:
        reader.flag()
        reader.se()
        reader.se()
        for _ in range(reader.ue()):
            reader.se()
    reader.ue()  # max_num_ref_frames
    reader.flag()  # gaps_in_frame_num_value_allowed_flag
    width_mbs = reader.ue() + 1
    height_units = reader.ue() + 1
    frame_mbs_only = reader.flag()
    if not frame_mbs_only:
        reader.flag()
    reader.flag()  # direct_8x8_inference_flag
    crop = (0, 0, 0, 0)
    if reader.flag():
        crop = (reader.ue(), reader.ue(), reader.ue(), reader.ue())
    field_factor = 1 if frame_mbs_only else 2
    array_type = 0 if separate_planes else chroma_format
    crop_x = 1 if array_type in (0, 3) else 2
    crop_y = field_factor * (2 if array_type == 1 else 1)
    width = width_mbs * 16 - crop_x * (crop[0] + crop[1])
    height = height_units * 16 * field_factor - crop_y * (crop[2] + crop[3])
    if width <= 0 or height <= 0:
        raise ValueError("SPS describes an empty picture")
    return SequenceParameters(
        profile, compatibility, level, chroma_format, depth_luma, depth_chroma, width, height
    )


def avc_configuration(sps: list[bytes], pps: list[bytes]) -> bytes:
    """The ``AVCDecoderConfigurationRecord`` for these parameter sets (4-byte NAL lengths)."""
    if not sps or not pps:
        raise ValueError("an avcC record needs at least one SPS and one PPS")
    params = parse_sps(sps[0])
    record = bytearray([1, params.profile, params.compatibility, params.level, 0xFF])
    record.append(0xE0 | len(sps))
    for unit in sps:
        record += len(unit).to_bytes(2, "big") + unit
    record.append(len(pps))
    for unit in pps:
        record += len(unit).to_bytes(2, "big") + unit
    if params.profile in _HIGH_PROFILES:
        record.append(0xFC | params.chroma_format)
        record.append(0xF8 | (params.bit_depth_luma - 8))
        record.append(0xF8 | (params.bit_depth_chroma - 8))
        record.append(0)  # no SPS extensions
    return bytes(record)


def parameter_sets(units: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """The (SPS, PPS) NAL units among ``units``."""
    return (
        [unit for unit in units if nal_type(unit) == NAL_SPS],
        [unit for unit in units if nal_type(unit) == NAL_PPS],
    )


def configuration_from_extradata(extradata: bytes) -> bytes:
    """An avcC record from an encoder's extradata, which is either avcC already or Annex B."""
    if extradata[:1] == b"\x01":
        return extradata
    sps, pps = parameter_sets(split_annexb(extradata))
    return avc_configuration(sps, pps)
