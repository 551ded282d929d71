"""Exceptions shaped like the DOMExceptions of the MediaStream Recording specification.

Each carries ``.name``, the DOMException name a browser would report, so code that
switches on ``error.name`` works the same on both sides.
"""

from __future__ import annotations

from aiortc.exceptions import InvalidStateError as _AiortcInvalidStateError


class RecorderError(Exception):
    """Base of every error the recorder raises or reports; ``name`` is the DOMException name."""

    name = "UnknownError"

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class InvalidStateError(RecorderError, _AiortcInvalidStateError):
    """A method was called in a state that does not allow it (``start`` while recording...)."""

    name = "InvalidStateError"


class NotSupportedError(RecorderError):
    """The requested type, codec or track set cannot be recorded."""

    name = "NotSupportedError"


class InvalidModificationError(RecorderError):
    """The recorded stream's track set changed while recording."""

    name = "InvalidModificationError"


class UnknownError(RecorderError):
    """Recording failed for a reason of its own (disk full, muxer error...)."""

    name = "UnknownError"


class SecurityError(RecorderError):
    """The recording was not allowed to go where it was asked to (permission denied)."""

    name = "SecurityError"


def as_recorder_error(exc: BaseException) -> RecorderError:
    """Wrap any exception raised while recording into the error an ``error`` event reports.

    Permission problems become ``SecurityError``; everything else ``UnknownError``.
    """
    if isinstance(exc, RecorderError):
        return exc
    message = f"{type(exc).__name__}: {exc}"
    error: RecorderError = (
        SecurityError(message) if isinstance(exc, PermissionError) else UnknownError(message)
    )
    error.__cause__ = exc
    return error
