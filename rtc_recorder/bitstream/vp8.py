"""VP8 frame headers (RFC 6386 section 9.1)."""

from __future__ import annotations

_START_CODE = b"\x9d\x01\x2a"


def is_keyframe(frame: bytes) -> bool:
    """Whether this VP8 frame is a keyframe with a valid start code."""
    return len(frame) >= 10 and not frame[0] & 0x01 and frame[3:6] == _START_CODE


def keyframe_size(frame: bytes) -> tuple[int, int]:
    """(width, height) of a keyframe; ``ValueError`` for anything else."""
    if not is_keyframe(frame):
        raise ValueError("not a VP8 keyframe")
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return width, height


def is_plausible(frame: bytes) -> bool:
    """Whether the frame tag is consistent with the data (catches frames that lost their head)."""
    if len(frame) < 3:
        return False
    first_partition = (frame[0] | frame[1] << 8 | frame[2] << 16) >> 5
    header = 10 if not frame[0] & 0x01 else 3
    if not frame[0] & 0x01 and frame[3:6] != _START_CODE:
        return False
    return header + first_partition <= len(frame)
