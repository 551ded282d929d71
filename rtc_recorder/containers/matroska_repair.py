"""Finishing a Matroska or WebM file whose writer never closed it (the process died).

Such a file plays as it is: a Segment of unknown size holding whole elements, clusters of
known size among them. What ``close()`` would have added is missing: the SeekHead (a Void
at the start of the Segment), the Duration (a Void in Info) and the Segment's size; and
the last element may be cut short if the process died in the middle of writing it.
:func:`finish_cut_file` reads the file's structure and supplies what it can: the torn tail
cut off, the SeekHead (Info and Tracks), the Duration it is given, the Segment size.
Cues are not rebuilt (players seek without them, by reading clusters).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO

from .matroska import (
    DURATION,
    DURATION_SPACE,
    EBML,
    INFO,
    SEEK_HEAD_SPACE,
    SEGMENT,
    TICK_US,
    TRACKS,
    UNKNOWN_SIZE,
    VOID,
    encode_size,
    float_element,
    seek_head,
    void,
)

HEAD_BYTES = 1 << 16  # the header elements (EBML, Info, Tracks) sit well within this


@dataclass(frozen=True)
class _Element:
    id: int
    position: int  # of its ID
    data: int  # where its payload starts
    size: int | None  # None: unknown

    @property
    def end(self) -> int | None:
        return None if self.size is None else self.data + self.size


def _element_at(data: bytes, position: int, base: int = 0) -> _Element:
    """The element whose ID starts at ``data[position]`` (``base`` is where ``data`` sits in
    the file); ``ValueError`` if the bytes are not one."""
    first = data[position]
    id_length = 9 - first.bit_length()
    if not 1 <= id_length <= 4:
        raise ValueError("not an element ID")
    element_id = int.from_bytes(data[position : position + id_length], "big")
    at = position + id_length
    marker = data[at]
    size_length = 9 - marker.bit_length()
    if not 1 <= size_length <= 8:
        raise ValueError("not an element size")
    raw = data[at : at + size_length]
    if len(raw) < size_length:
        raise ValueError("cut short")
    size = int.from_bytes(raw, "big") & ((1 << (7 * size_length)) - 1)
    unknown = size == (1 << (7 * size_length)) - 1
    start = base + at + size_length
    return _Element(element_id, base + position, start, None if unknown else size)


def _children(data: bytes, parent: _Element) -> list[_Element]:
    """The children of an element whose payload lies within ``data`` (read from offset 0)."""
    assert parent.end is not None
    found, position = [], parent.data
    while position < parent.end:
        child = _element_at(data, position)
        if child.end is None or child.end > parent.end:
            raise ValueError("a child overruns its parent")
        found.append(child)
        position = child.end
    return found


def _top_level(file: BinaryIO, size: int, start: int) -> list[_Element]:
    """The Segment's children from ``start`` that are whole (stops at a torn or
    unknown-size one)."""
    found, position = [], start
    while position < size:
        file.seek(position)
        try:
            child = _element_at(file.read(16), 0, position)
        except (IndexError, ValueError):
            break
        if child.end is None or child.end > size:
            break
        found.append(child)
        position = child.end
    return found


def _duration_void(head: bytes, info: _Element) -> int | None:
    """Where the Void kept for the Duration is in Info, if it is there."""
    if info.end is None or info.end > len(head):
        return None
    try:
        children = _children(head, info)
    except (IndexError, ValueError):
        return None
    for child in children:
        if child.id == VOID and child.end == child.position + DURATION_SPACE:
            return child.position
    return None


def finish_cut_file(path: str | os.PathLike[str], duration_us: int) -> bool:
    """Finish ``path`` as ``close()`` would have, as far as its bytes allow (see the module
    docstring); False, with nothing changed, unless it is a Matroska file left unfinished."""
    with open(path, "r+b") as file:
        size = os.fstat(file.fileno()).st_size
        head = file.read(HEAD_BYTES)
        try:
            ebml = _element_at(head, 0)
            assert ebml.end is not None
            segment = _element_at(head, ebml.end)
        except (IndexError, ValueError, AssertionError):
            return False
        size_at = segment.data - len(UNKNOWN_SIZE)
        if (
            ebml.id != EBML
            or segment.id != SEGMENT
            or head[size_at : segment.data] != (UNKNOWN_SIZE)
        ):
            return False
        children = _top_level(file, size, segment.data)
        first = {child.id: child for child in reversed(children)}
        if not children or INFO not in first or TRACKS not in first:
            return False
        end = children[-1].end
        assert end is not None
        patches = [(size_at, encode_size(end - segment.data, 8))]
        if children[0].id == VOID and children[0].end == segment.data + SEEK_HEAD_SPACE:
            seeks = [(e, first[e].position - segment.data) for e in (INFO, TRACKS)]
            index = seek_head(seeks)
            patches.append((segment.data, index + void(SEEK_HEAD_SPACE - len(index))))
        duration = _duration_void(head, first[INFO])
        if duration is not None:
            patches.append((duration, float_element(DURATION, duration_us / TICK_US)))
        file.truncate(end)
        for offset, data in patches:
            file.seek(offset)
            file.write(data)
        file.flush()
        os.fsync(file.fileno())
    return True
