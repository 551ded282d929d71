"""The room recording's ``manifest.json``, read and checked: every field the composite
relies on, with an error that names the first one missing or of the wrong type."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CompositionError, NotFinalized

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Participant:
    """One participant of the room recording (times in seconds of the recording)."""

    session: str
    name: str
    file: str
    kinds: tuple[str, ...]
    start: float
    end: float


@dataclass(frozen=True)
class RoomEvent:
    """One entry of the manifest's ``events``; ``kind`` for ``mute``/``unmute``."""

    t: float
    type: str
    session: str | None = None
    kind: str | None = None


@dataclass(frozen=True)
class RoomManifest:
    """What ``manifest.json`` says of a room recording."""

    room: str
    name: str
    state: str
    duration: float
    mix: str | None
    participants: tuple[Participant, ...]
    cuts: tuple[tuple[float, float], ...] = ()
    events: tuple[RoomEvent, ...] = ()

    def video_muted(self, session: str) -> list[tuple[float, float]]:
        """The stretches in which ``session``'s video was muted (by its mute events)."""
        spans: list[tuple[float, float]] = []
        muted_at: float | None = None
        for event in sorted(self.events, key=lambda e: e.t):
            if event.session != session or event.kind not in (None, "video"):
                continue
            if event.type == "mute" and muted_at is None:
                muted_at = event.t
            elif event.type == "unmute" and muted_at is not None:
                spans.append((muted_at, event.t))
                muted_at = None
        if muted_at is not None:
            spans.append((muted_at, math.inf))
        return spans


_PLAIN_NAME = re.compile(r"[^/\\\x00]+")


def read_manifest(folder: Path) -> RoomManifest:
    """The manifest of room recording ``folder``, checked: a :class:`CompositionError` says
    what is wrong with anything that is not a finalized room recording whose files are
    all there."""
    if not folder.is_dir():
        raise CompositionError(f"{folder} is not a folder (a room recording is a folder)")
    path = folder / MANIFEST
    if not path.is_file():
        raise CompositionError(f"{folder} is not a room recording: it has no {MANIFEST}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CompositionError(f"{path} cannot be read as JSON: {exc}") from None
    manifest = parse_manifest(data, str(path))
    if manifest.state != "finalized":
        raise NotFinalized(
            f"{folder.name} is not finalized (its state is {manifest.state!r}): "
            "a room recording is composed once it has stopped"
        )
    needed = [(p.file, f"the file of participant {p.name!r}") for p in manifest.participants]
    if manifest.mix is not None:
        needed.append((manifest.mix, "the mix"))
    for name, what in needed:
        if not (folder / name).is_file():
            raise CompositionError(f"{what}, {name}, is missing from {folder}")
    return manifest


def parse_manifest(data: object, where: str = MANIFEST) -> RoomManifest:
    """A manifest from its JSON; :class:`CompositionError` naming the first field that is
    missing or of the wrong type."""
    fields = _Fields(data, where)
    duration = fields.number("duration", minimum=0.0)
    participants = []
    for index, item in enumerate(fields.items("participants")):
        entry = _Fields(item, f"{where}: participants[{index}]")
        # A file that begins with the room starts a few ms before its time 0 (room.py).
        start = entry.number("start")
        participant = Participant(
            session=entry.text("session"),
            name=entry.text("name"),
            file=entry.file_name("file"),
            kinds=tuple(entry.choices("kinds", ("audio", "video"))),
            start=start,
            end=entry.number("end", minimum=start),
        )
        participants.append(participant)
    cuts = []
    for index, item in enumerate(fields.items("cuts", required=False)):
        cut = _Fields(item, f"{where}: cuts[{index}]")
        cuts.append((cut.number("at", minimum=0.0), cut.number("removed", minimum=0.0)))
    events = []
    for index, item in enumerate(fields.items("events", required=False)):
        event = _Fields(item, f"{where}: events[{index}]")
        events.append(
            RoomEvent(
                t=event.number("t"),
                type=event.text("type"),
                session=event.optional_text("session"),
                kind=event.optional_text("kind"),
            )
        )
    mix = fields.optional_text("mix")
    return RoomManifest(
        room=fields.text("room"),
        name=fields.text("name"),
        state=fields.text("state"),
        duration=duration,
        mix=None if mix is None else fields.file_name("mix"),
        participants=tuple(participants),
        cuts=tuple(cuts),
        events=tuple(events),
    )


class _Fields:
    """Typed reads of one JSON object's fields, each failing with a clear message."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise CompositionError(f"{where} must be a JSON object")
        self.data: dict[str, Any] = data
        self.where = where

    def _fail(self, key: str, expected: str) -> CompositionError:
        return CompositionError(f"{self.where}: {key!r} must be {expected}")

    def text(self, key: str) -> str:
        """A non-empty string."""
        value = self.data.get(key)
        if not isinstance(value, str) or not value:
            raise self._fail(key, "a non-empty string")
        return value

    def optional_text(self, key: str) -> str | None:
        """A non-empty string, or None when absent or null."""
        return None if self.data.get(key) is None else self.text(key)

    def file_name(self, key: str) -> str:
        """The plain name of a file in the folder (no path)."""
        value = self.text(key)
        if not _PLAIN_NAME.fullmatch(value) or value in (".", ".."):
            raise self._fail(key, "the name of a file in the recording's folder")
        return value

    def number(self, key: str, minimum: float = -math.inf) -> float:
        """A finite number of at least ``minimum``."""
        value = self.data.get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < minimum
        ):
            bound = "" if minimum == -math.inf else f" of at least {minimum:g}"
            raise self._fail(key, f"a number{bound}")
        return float(value)

    def items(self, key: str, required: bool = True) -> list[object]:
        """A list (empty when absent, unless ``required``)."""
        value = self.data.get(key)
        if value is None and not required:
            return []
        if not isinstance(value, list):
            raise self._fail(key, "a list")
        return value

    def choices(self, key: str, allowed: Sequence[str]) -> list[str]:
        """A list of strings among ``allowed``."""
        values = self.items(key)
        if not all(isinstance(value, str) and value in allowed for value in values):
            raise self._fail(key, f"a list of {', '.join(map(repr, allowed))}")
        return [str(value) for value in values]
