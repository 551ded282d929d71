"""The recordings folder: names the server chooses, metadata kept beside each file, and
the only way from a name a client sends to a path on disk.

A recording ``NAME.EXT`` has a sidecar ``NAME.EXT.json`` with its session, type, creation
time, state and (once finished) duration. Files without a sidecar (copied in, or left by
a crash before the server wrote one) are listed too, their duration read from the file.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import av

from ..mimetype import parse_type

logger = logging.getLogger("rtc_recorder.server")

EXTENSIONS = {
    "webm": ".webm",
    "matroska": ".mkv",
    "mp4": ".mp4",
    "ogg": ".ogg",
    "wav": ".wav",
}
CONTENT_TYPES = {
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".mp4": "video/mp4",
    ".ogg": "audio/ogg",
    ".wav": "audio/wav",
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}")


class UnknownRecording(LookupError):
    """No recording by that name."""


@dataclass
class RecordingInfo:
    """What the listing says about one recording."""

    name: str
    size: int
    duration: float | None
    mimeType: str
    created: str
    session: str | None
    state: str  # "recording", "complete", "failed", or "unknown" (no sidecar)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def extension_for(mime_type: str) -> str:
    """The file extension for a (supported) MIME type."""
    return EXTENSIONS[parse_type(mime_type).container.name]


class RecordingStore:
    """The folder of recordings."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._durations: dict[tuple[str, int, float], float | None] = {}

    def new_name(self, session: str, mime_type: str) -> str:
        """A fresh name from the session id and the UTC time (never from client input),
        reserved at once by creating its sidecar: two recordings started within one second
        get different names even before either file exists."""
        stamp = utc_now().strftime("%Y%m%dT%H%M%SZ")
        extension = extension_for(mime_type)
        counter = 1
        while True:
            suffix = "" if counter == 1 else f"-{counter}"
            name = f"{session}-{stamp}{suffix}{extension}"
            try:
                descriptor = os.open(
                    self.folder / f"{name}.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL
                )
            except FileExistsError:
                counter += 1
                continue
            os.close(descriptor)
            if (self.folder / name).exists():
                counter += 1
                continue
            return name

    def path(self, name: str) -> Path:
        """The file of recording ``name``; :class:`UnknownRecording` for anything that is not
        a recording in this folder (other names, sidecars, anything outside)."""
        if not _NAME.fullmatch(name) or Path(name).suffix not in CONTENT_TYPES:
            raise UnknownRecording(name)
        path = self.folder / name
        if path.parent != self.folder or not path.is_file():
            raise UnknownRecording(name)
        return path

    def content_type(self, name: str) -> str:
        """The Content-Type to serve the file with (audio types for audio-only recordings)."""
        meta = self._read_meta(self.folder / name)
        mime = str(meta.get("mimeType", "")) if meta else ""
        return mime.split(";")[0] if mime else CONTENT_TYPES[Path(name).suffix]

    def write_meta(self, recording: str, **fields: object) -> None:
        """Create or update the sidecar of ``recording`` (atomically)."""
        sidecar = self.folder / f"{recording}.json"
        meta = self._read_meta(self.folder / recording) or {}
        meta.update(fields)
        temporary = sidecar.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(meta, indent=1))
        os.replace(temporary, sidecar)

    def _read_meta(self, path: Path) -> dict[str, object] | None:
        try:
            loaded = json.loads((path.parent / f"{path.name}.json").read_text() or "{}")
        except (OSError, ValueError):
            return None
        return loaded if isinstance(loaded, dict) else None

    async def list(self, live: dict[str, float] | None = None) -> list[RecordingInfo]:
        """Every recording, newest first; ``live`` gives the current duration of the ones
        being recorded."""
        entries = []
        for path in self.folder.iterdir():
            if path.suffix not in CONTENT_TYPES or not path.is_file() or path.name.startswith("."):
                continue
            entries.append(await self.info(path.name, live or {}))
        entries.sort(key=lambda entry: entry.created, reverse=True)
        return entries

    async def info(self, name: str, live: dict[str, float]) -> RecordingInfo:
        """What is known of one recording."""
        path = self.path(name)
        stat = path.stat()
        meta = self._read_meta(path)
        created = datetime.datetime.fromtimestamp(stat.st_mtime, datetime.UTC).isoformat()
        if meta is None:
            duration = await self._probe(path, stat.st_size, stat.st_mtime)
            return RecordingInfo(
                name, stat.st_size, duration, CONTENT_TYPES[path.suffix], created, None, "unknown"
            )
        duration_value = live.get(name, meta.get("duration"))
        return RecordingInfo(
            name=name,
            size=stat.st_size,
            duration=float(duration_value) if isinstance(duration_value, (int, float)) else None,
            mimeType=str(meta.get("mimeType", CONTENT_TYPES[path.suffix])),
            created=str(meta.get("created", created)),
            session=str(meta["session"]) if meta.get("session") else None,
            state=str(meta.get("state", "unknown")),
        )

    async def _probe(self, path: Path, size: int, mtime: float) -> float | None:
        key = (path.name, size, mtime)
        if key not in self._durations:
            loop = asyncio.get_running_loop()
            self._durations[key] = await loop.run_in_executor(None, probe_duration, path)
        return self._durations[key]

    def delete(self, name: str) -> None:
        """Remove a recording and its sidecar."""
        path = self.path(name)
        path.unlink()
        (self.folder / f"{name}.json").unlink(missing_ok=True)


def probe_duration(path: Path) -> float | None:
    """A file's duration from its container, or from its last packet (files a crash cut)."""
    try:
        with av.open(str(path)) as container:
            if container.duration:
                return float(container.duration / av.time_base)
            end = 0.0
            for packet in container.demux():
                if packet.pts is not None and packet.time_base is not None:
                    end = max(end, float(packet.pts * packet.time_base))
            return end
    except (av.FFmpegError, OSError, ValueError):
        logger.info("cannot read the duration of %s", path.name)
        return None
