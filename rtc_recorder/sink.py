"""Where a recording's bytes go: a file written progressively, and the next chunk's bytes.

Each container element reaches the file with one write as soon as the container emits
it, so a killed process leaves every element that was emitted. When a write fails (a
full disk, a file-size limit), the file is cut back to the end of the last whole
element, so what is on disk stays a playable file. The same bytes are gathered for the
next ``dataavailable`` chunk only once the file has them, so chunks and file agree.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from typing import BinaryIO, cast

from .containers.base import Patch

logger = logging.getLogger("rtc_recorder")

Target = str | os.PathLike[str] | BinaryIO | None


class Sink:
    """Writes to ``target`` (a path, a binary file object, or None for chunks only)."""

    def __init__(self, target: Target, *, keep_chunks: bool = True) -> None:
        self._target = target
        self._keep_chunks = keep_chunks
        self._fd: int | None = None
        self._file: BinaryIO | None = None
        self._origin = 0
        self._chunk: list[bytes] = []
        self.written = 0  # bytes that reached the target (or the chunk, without one)

    @property
    def path(self) -> str | None:
        """The file's path, when the target is one."""
        if isinstance(self._target, (str, os.PathLike)):
            return os.fspath(self._target)
        return None

    def open(self) -> None:
        """Create (truncate) the file; run off the event loop."""
        path = self.path
        if path is not None:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        elif self._target is not None:
            self._file = cast(BinaryIO, self._target)
            if not hasattr(self._file, "write"):
                raise TypeError("file must be a path or a binary file object with write()")
            self._origin = self._tell()

    def _tell(self) -> int:
        assert self._file is not None
        try:
            return self._file.tell() if self._seekable() else 0
        except (OSError, ValueError):
            return 0

    def _seekable(self) -> bool:
        assert self._file is not None
        seekable = getattr(self._file, "seekable", None)
        try:
            return bool(seekable()) if seekable is not None else False
        except (OSError, ValueError):
            return False

    def write(self, data: bytes) -> None:
        """Append ``data`` to the file, then to the chunk being gathered."""
        if self._fd is not None:
            self._write_fd(data)
        elif self._file is not None:
            self._file.write(data)
            self._file.flush()
        self.written += len(data)
        if self._keep_chunks:
            self._chunk.append(data)

    def _write_fd(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        done = 0
        try:
            while done < len(view):
                done += os.write(self._fd, view[done:])
        except OSError:
            if done:
                os.ftruncate(self._fd, self.written)
                os.lseek(self._fd, self.written, os.SEEK_SET)
            raise

    def take_chunk(self) -> bytes:
        """The bytes gathered since the previous call."""
        data = b"".join(self._chunk)
        self._chunk = []
        return data

    def finalize(self, patches: Sequence[Patch]) -> None:
        """Apply the container's in-place patches where the target can be rewritten, make the
        file durable and close it. Patches never change the file's length."""
        if self._fd is not None:
            for patch in patches:
                os.pwrite(self._fd, patch.data, patch.offset)
            os.fsync(self._fd)
        elif self._file is not None and self._seekable():
            end = self._file.tell()
            for patch in patches:
                self._file.seek(self._origin + patch.offset)
                self._file.write(patch.data)
            self._file.seek(end)
            self._file.flush()
        self.close()

    def close(self) -> None:
        """Close the file if this sink opened it (a caller's file object stays open)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError as exc:
                logger.warning("closing the recording failed: %s", exc)
        self._file = None


def is_file_object(target: object) -> bool:
    """Whether ``target`` is usable as a binary file object."""
    return isinstance(target, io.IOBase) or hasattr(target, "write")
