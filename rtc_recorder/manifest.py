"""A room recording's ``manifest.json``: what the folder holds, kept true on disk as the
recording goes.

:class:`Manifest` is the content (the rooms contract's fields; the JSON Schema is
``manifest.schema.json`` beside this module, shipped in the wheel): every time in it is
seconds of the room recording's own timeline, paused time cut out. :func:`write_manifest`
replaces the file atomically (a temporary file, flushed, then renamed over it), so that a
reader, or a crash at any moment, finds the previous manifest whole or the new one whole.
:class:`ManifestWriter` does the writing on a thread of its own, the latest content first:
rewriting a manifest that is already stale is of no use.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("rtc_recorder")

MANIFEST = "manifest.json"
SCHEMA = Path(__file__).with_name("manifest.schema.json")
DIGITS = 6  # times are written to the microsecond


@dataclass
class Participant:
    """One participant's file: ``start`` (None until it has media) and ``end`` (None while
    still recorded) are room-recording seconds. ``start`` may lie a little before 0: a file
    of a participant recorded from the room's start begins with its codec's delay (Opus's
    pre-skip, 6.5 ms) and its first picture put on its frame grid."""

    session: str
    name: str
    file: str
    kinds: list[str]
    start: float | None = None
    end: float | None = None
    error: str | None = None  # the DOMException name, if its recording failed

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "session": self.session,
            "name": self.name,
            "file": self.file,
            "kinds": list(self.kinds),
            "start": None if self.start is None else round(self.start, DIGITS),
            "end": _seconds(self.end),
        }
        if self.error is not None:
            entry["error"] = self.error
        return entry


@dataclass(frozen=True)
class RoomEvent:
    """Something that happened to a participant at room-recording second ``t``: ``join``,
    ``leave``, ``mute`` or ``unmute`` (of a track of ``kind``)."""

    t: float
    type: str
    session: str
    kind: str | None = None

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"t": _seconds(self.t), "type": self.type, "session": self.session}
        if self.kind is not None:
            entry["kind"] = self.kind
        return entry


@dataclass
class Manifest:
    """The content of a room recording's manifest."""

    room: str
    name: str
    started: datetime.datetime
    mime_type: str
    mix: str
    state: str = "recording"  # "recording", "paused" or "finalized"
    duration: float = 0.0
    cuts: list[tuple[float, float]] = field(default_factory=list)  # (at, removed)
    participants: list[Participant] = field(default_factory=list)
    events: list[RoomEvent] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The manifest as the rooms contract writes it."""
        return {
            "room": self.room,
            "name": self.name,
            "started": utc_text(self.started),
            "state": self.state,
            "duration": _seconds(self.duration),
            "mimeType": self.mime_type,
            "cuts": [
                {"at": _seconds(at), "removed": _seconds(removed)} for at, removed in self.cuts
            ],
            "mix": self.mix,
            "participants": [participant.to_json() for participant in self.participants],
            "events": [event.to_json() for event in self.events],
        }


def utc_text(instant: datetime.datetime) -> str:
    """``2026-12-01T10:15:00.000Z``: UTC, to the millisecond."""
    utc = instant.astimezone(datetime.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(max(0.0, value), DIGITS)


def load_schema() -> dict[str, Any]:
    """The manifest's JSON Schema."""
    schema: dict[str, Any] = json.loads(SCHEMA.read_text())
    return schema


def write_manifest(folder: Path, content: dict[str, Any], *, durable: bool = True) -> None:
    """Replace ``folder/manifest.json`` with ``content`` atomically; ``durable`` also
    makes it survive a power cut (fsync of the file before the rename, then the folder)."""
    temporary = folder / f".{MANIFEST}.tmp"
    data = (json.dumps(content, indent=1) + "\n").encode()
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view) :]
        if durable:
            os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, folder / MANIFEST)
    if durable:
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


class ManifestWriter:
    """Writes a folder's manifest on a thread of its own, the latest content published
    first (older content not yet written is skipped). ``on_failure`` is called from that
    thread if a write fails; writing goes on with the next content."""

    def __init__(self, folder: Path, on_failure: Callable[[BaseException], None]) -> None:
        self._folder = folder
        self._on_failure = on_failure
        self._condition = threading.Condition()
        self._latest: dict[str, Any] | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="rtc-recorder-manifest", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def publish(self, content: dict[str, Any]) -> None:
        """Have ``content`` written (soon, unless newer content comes first)."""
        with self._condition:
            self._latest = content
            self._condition.notify()

    def close(self) -> None:
        """Write what was published last, then end the thread (see :meth:`join`)."""
        with self._condition:
            self._closed = True
            self._condition.notify()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end."""
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._condition:
                while self._latest is None and not self._closed:
                    self._condition.wait()
                content, self._latest = self._latest, None
                closing = self._closed
            if content is not None:
                try:
                    write_manifest(self._folder, content)
                except Exception as exc:
                    logger.error("writing the room's manifest failed: %s", exc)
                    self._on_failure(exc)
            if closing and content is None:
                return
