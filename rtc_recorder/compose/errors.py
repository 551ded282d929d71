"""What goes wrong composing a room recording."""

from __future__ import annotations


class CompositionError(Exception):
    """The folder cannot be composed (not a room recording, not finalized, a file missing
    or unreadable, an output that cannot be written); the message says which."""


class NotFinalized(CompositionError):
    """The room recording is still being made (or was left unfinished by a crash)."""


class CompositionCancelled(CompositionError):
    """The composition was cancelled; nothing was written."""
