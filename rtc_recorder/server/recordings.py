"""The recordings folder: names the server chooses, metadata kept beside each file, and
the only way from a name a client sends to a path on disk.

A recording ``NAME.EXT`` has a sidecar ``NAME.EXT.json`` with its session, type, creation
time, state and (once finished) duration. Files without a sidecar (copied in, or left by
a crash before the server wrote one) are listed too, their duration read from the file.
A room recording is a folder ``{room}-{UTC time}`` holding ``manifest.json`` and its
files; it is listed once, with its participants and files, and each file is served.

With object storage, :class:`BucketRecordings` lists and serves the bucket's recordings
and, for the ones not uploaded yet, the spool's (a :class:`RecordingStore`).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import av
from aiohttp import web

from ..manifest import MANIFEST
from ..mimetype import parse_type
from .storage import Bucket, StoredObject, StoreError, is_missing

logger = logging.getLogger("rtc_recorder.server")

EXTENSIONS = {
    "webm": ".webm",
    "matroska": ".mkv",
    "mp4": ".mp4",
    "ogg": ".ogg",
    "wav": ".wav",
}
STATE_FOLDER = ".uploads"  # in the spool: what the uploader sent of each recording


def upload_state_path(spool: Path, name: str) -> Path:
    """Where the uploader keeps what it sent of recording ``name``, in the spool ``spool``."""
    return spool / STATE_FOLDER / f"{name}.json"


CONTENT_TYPES = {
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".mp4": "video/mp4",
    ".ogg": "audio/ogg",
    ".wav": "audio/wav",
}
FILE_TYPES = {**CONTENT_TYPES, ".json": "application/json"}  # files of a room recording
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}")
ROOM_FOLDER = re.compile(r"[A-Za-z0-9_-]{1,64}-\d{8}T\d{6}Z(-\d+)?")  # {room}-{UTC time}


class UnknownRecording(LookupError):
    """No recording by that name."""


class RecordingBusy(RuntimeError):
    """The recording is being recorded or uploaded."""


class StoreUnavailable(RuntimeError):
    """The object store did not answer."""


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
    room: str | None = None  # a room recording's: its room, participants and files
    participants: list[dict[str, object]] | None = None
    files: list[str] | None = None

    def to_json(self) -> dict[str, object]:
        """The listing's entry."""
        return asdict(self)

    @classmethod
    def from_meta(
        cls,
        name: str,
        size: int,
        meta: Mapping[str, object],
        created: str,
        live: Mapping[str, float],
    ) -> RecordingInfo:
        """What a sidecar says of a recording of ``size`` bytes (``created`` when it does
        not say)."""
        duration = live.get(name, meta.get("duration"))
        return cls(
            name=name,
            size=size,
            duration=float(duration) if isinstance(duration, (int, float)) else None,
            mimeType=str(meta.get("mimeType", CONTENT_TYPES[Path(name).suffix])),
            created=str(meta.get("created", created)),
            session=str(meta["session"]) if meta.get("session") else None,
            state=str(meta.get("state", "unknown")),
        )


def valid_name(name: str) -> bool:
    """Whether ``name`` can be a recording's (never a path, a sidecar or anything else)."""
    return bool(_NAME.fullmatch(name)) and Path(name).suffix in CONTENT_TYPES


def served_type(name: str, meta: Mapping[str, object] | None) -> str:
    """The Content-Type to serve a recording with (audio types for audio-only ones)."""
    mime = str(meta.get("mimeType", "")) if meta else ""
    return mime.split(";")[0] if mime else CONTENT_TYPES[Path(name).suffix]


class Recordings(Protocol):
    """What the routes need of wherever recordings are kept."""

    async def list(self, live: dict[str, float] | None = None) -> list[RecordingInfo]:
        """Every recording, newest first."""

    async def respond(self, request: web.Request, name: str) -> web.StreamResponse:
        """The recording as a response, with Range support; :class:`UnknownRecording`."""

    async def delete(self, name: str) -> None:
        """Remove a recording; :class:`UnknownRecording`, :class:`RecordingBusy`."""

    async def respond_file(self, request: web.Request, name: str, file: str) -> web.StreamResponse:
        """A file of room recording ``name``, with Range support; :class:`UnknownRecording`."""


def utc_now() -> datetime.datetime:
    """Now, in UTC."""
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
        extension = extension_for(mime_type)

        def reserve(name: str) -> bool:
            try:
                descriptor = os.open(
                    self.folder / f"{name}{extension}.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL
                )
            except FileExistsError:
                return False
            os.close(descriptor)
            return not (self.folder / f"{name}{extension}").exists()

        return _fresh(session, reserve) + extension

    def new_folder(self, room: str) -> str:
        """A fresh room recording's folder, ``{room}-{UTC time}``, created at once."""

        def reserve(name: str) -> bool:
            try:
                (self.folder / name).mkdir()
            except FileExistsError:
                return False
            return True

        return _fresh(room, reserve)

    def room_folder(self, name: str) -> Path:
        """The folder of room recording ``name``; :class:`UnknownRecording` for anything else
        (its name never leaves the recordings folder)."""
        if not ROOM_FOLDER.fullmatch(name):
            raise UnknownRecording(name)
        folder = self.folder / name
        if folder.parent != self.folder or not (folder / MANIFEST).is_file():
            raise UnknownRecording(name)
        return folder

    def room_file(self, name: str, file: str) -> Path:
        """File ``file`` of room recording ``name``; :class:`UnknownRecording` otherwise."""
        folder = self.room_folder(name)
        path = folder / file
        if not room_file_name(file) or path.parent != folder or not path.is_file():
            raise UnknownRecording(f"{name}/{file}")
        return path

    async def respond_file(self, request: web.Request, name: str, file: str) -> web.StreamResponse:
        """A file of a room recording, with Range support."""
        path = self.room_file(name, file)
        return _file_response(request, path, FILE_TYPES[path.suffix])

    def path(self, name: str) -> Path:
        """The file of recording ``name``; :class:`UnknownRecording` for anything that is not
        a recording in this folder (other names, sidecars, anything outside)."""
        if not valid_name(name):
            raise UnknownRecording(name)
        path = self.folder / name
        if path.parent != self.folder or not path.is_file():
            raise UnknownRecording(name)
        return path

    async def respond(self, request: web.Request, name: str) -> web.StreamResponse:
        """The file, with Range support (seeking in ``<video>``)."""
        path = self.path(name)
        return _file_response(request, path, served_type(name, self.read_meta(name)))

    def read_meta(self, recording: str) -> dict[str, object] | None:
        """The sidecar of ``recording``, if it has a readable one."""
        return self._read_meta(self.folder / recording)

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
            if path.name.startswith("."):
                continue
            try:
                if path.suffix in CONTENT_TYPES and path.is_file():
                    entries.append(await self.info(path.name, live or {}))
                elif (path / MANIFEST).is_file():
                    entries.append(await asyncio.to_thread(self.room_info, path.name, live or {}))
            except (UnknownRecording, FileNotFoundError):
                continue  # removed meanwhile (uploaded, deleted)
        entries.sort(key=lambda entry: entry.created, reverse=True)
        return entries

    async def info(self, name: str, live: dict[str, float]) -> RecordingInfo:
        """What is known of one recording."""
        path = self.path(name)
        stat = path.stat()
        meta = self._read_meta(path)
        created = _modified(path)
        if meta is None:
            duration = await self._probe(path, stat.st_size, stat.st_mtime)
            return RecordingInfo(
                name, stat.st_size, duration, CONTENT_TYPES[path.suffix], created, None, "unknown"
            )
        return RecordingInfo.from_meta(name, stat.st_size, meta, created, live)

    def room_info(self, name: str, live: Mapping[str, float]) -> RecordingInfo:
        """What a room recording's manifest and folder say of it."""
        folder = self.room_folder(name)
        files = {
            path.name: path.stat().st_size
            for path in folder.iterdir()
            if room_file_name(path.name) and path.is_file()
        }
        manifest = parse_manifest((folder / MANIFEST).read_bytes())
        return room_entry(name, manifest, files, _modified(folder / MANIFEST), live)

    async def _probe(self, path: Path, size: int, mtime: float) -> float | None:
        key = (path.name, size, mtime)
        if key not in self._durations:
            loop = asyncio.get_running_loop()
            self._durations[key] = await loop.run_in_executor(None, probe_duration, path)
        return self._durations[key]

    async def delete(self, name: str) -> None:
        """Remove a recording and its sidecar, or a room recording's folder."""
        if not valid_name(name):
            await asyncio.to_thread(shutil.rmtree, self.room_folder(name))
            return
        path = self.path(name)
        path.unlink()
        (self.folder / f"{name}.json").unlink(missing_ok=True)


def room_file_name(file: str) -> bool:
    """Whether ``file`` can be a file of a room recording (never a path, nor hidden)."""
    return bool(_NAME.fullmatch(file)) and Path(file).suffix in FILE_TYPES


def parse_manifest(raw: bytes) -> dict[str, object]:
    """A room recording's manifest, or ``{}`` if it cannot be read."""
    try:
        manifest = json.loads(raw)
    except ValueError:
        return {}
    return manifest if isinstance(manifest, dict) else {}


def room_entry(
    name: str,
    manifest: Mapping[str, object],
    files: Mapping[str, int],
    modified: str,
    live: Mapping[str, float],
) -> RecordingInfo:
    """The listing's entry of room recording ``name``: what its manifest says, and its
    ``files`` with their sizes (``modified``: when, if the manifest does not say)."""
    created = manifest.get("started")
    duration = live.get(name, manifest.get("duration"))
    if name in live:
        state = "recording"
    else:
        state = "complete" if manifest.get("state") == "finalized" else "unknown"
    participants = manifest.get("participants")
    return RecordingInfo(
        name=name,
        size=sum(files.values()),
        duration=float(duration) if isinstance(duration, (int, float)) else None,
        mimeType=str(manifest.get("mimeType", "")),
        created=str(created) if created else modified,
        session=None,
        state=state,
        room=str(manifest.get("room", "")),
        participants=participants if isinstance(participants, list) else [],
        files=sorted(files),
    )


def _fresh(prefix: str, reserve: Callable[[str], bool]) -> str:
    """``{prefix}-{UTC time}``, with ``-2``, ``-3``... until ``reserve`` takes the name."""
    stamp = utc_now().strftime("%Y%m%dT%H%M%SZ")
    counter = 1
    while True:
        name = f"{prefix}-{stamp}" if counter == 1 else f"{prefix}-{stamp}-{counter}"
        if reserve(name):
            return name
        counter += 1


def _modified(path: Path) -> str:
    """When ``path`` last changed, in UTC."""
    return datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.UTC).isoformat()


def _file_response(request: web.Request, path: Path, content_type: str) -> web.FileResponse:
    """A file as a response, with Range support (seeking in ``<video>``)."""
    response = web.FileResponse(path, headers={"Cache-Control": "no-cache"})
    response.content_type = content_type
    if "download" in request.query:
        response.headers["Content-Disposition"] = f'attachment; filename="{path.name}"'
    return response


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


class BucketRecordings:
    """Recordings in a bucket, plus the spool's that are not there yet (being recorded,
    or waiting for their upload to complete). A recording in both is served from the
    bucket. Sidecars are read from the bucket once and kept (an uploaded one never
    changes)."""

    def __init__(self, spool: RecordingStore, busy: Callable[[str], bool]) -> None:
        self.spool = spool
        self.bucket: Bucket | None = None  # opened with the application
        self._busy = busy
        self._sidecars: dict[str, dict[str, object]] = {}

    def _open_bucket(self) -> Bucket:
        if self.bucket is None:
            raise StoreUnavailable("the object store is not open")
        return self.bucket

    async def list(self, live: dict[str, float] | None = None) -> list[RecordingInfo]:
        bucket = self._open_bucket()
        try:
            objects = {item.key: item for item in await bucket.list()}
            entries = [
                RecordingInfo.from_meta(
                    key,
                    item.size,
                    await self._sidecar(bucket, key) if f"{key}.json" in objects else {},
                    item.modified,
                    live or {},
                )
                for key, item in objects.items()
                if valid_name(key)
            ]
            entries += await self._rooms(bucket, objects, live or {})
        except StoreError as exc:
            raise StoreUnavailable(f"the object store did not answer: {exc}") from None
        stored = {entry.name for entry in entries}
        entries += [entry for entry in await self.spool.list(live) if entry.name not in stored]
        entries.sort(key=lambda entry: entry.created, reverse=True)
        return entries

    async def _rooms(
        self, bucket: Bucket, objects: Mapping[str, StoredObject], live: Mapping[str, float]
    ) -> Sequence[RecordingInfo]:
        """The room recordings in the bucket: folders whose manifest is there (uploaded
        once the recording is final)."""
        folders: dict[str, dict[str, int]] = {}
        for key, item in objects.items():
            folder, _, file = key.partition("/")
            if ROOM_FOLDER.fullmatch(folder) and room_file_name(file):
                folders.setdefault(folder, {})[file] = item.size
        entries: list[RecordingInfo] = []
        for folder, files in folders.items():
            if MANIFEST not in files:
                continue
            key = f"{folder}/{MANIFEST}"
            if key not in self._sidecars:
                self._sidecars[key] = parse_manifest(await bucket.read(key))
            modified = objects[key].modified
            entries.append(room_entry(folder, self._sidecars[key], files, modified, live))
        return entries

    async def _sidecar(self, bucket: Bucket, name: str) -> dict[str, object]:
        """The sidecar of an uploaded recording (uploaded before the recording, so one
        that is missing then never comes)."""
        if name not in self._sidecars:
            try:
                loaded = json.loads(await bucket.read(f"{name}.json"))
            except ValueError:
                loaded = {}
            except StoreError as exc:
                if not is_missing(exc):
                    raise
                loaded = {}
            self._sidecars[name] = loaded if isinstance(loaded, dict) else {}
        return self._sidecars[name]

    async def respond(self, request: web.Request, name: str) -> web.StreamResponse:
        if not valid_name(name):
            raise UnknownRecording(name)
        bucket = self._open_bucket()
        try:
            size = await bucket.size(name)
            if size is None:
                return await self.spool.respond(request, name)
            meta = await self._sidecar(bucket, name)
        except StoreError as exc:
            raise StoreUnavailable(f"the object store did not answer: {exc}") from None
        return await serve_range(request, bucket, name, size, served_type(name, meta))

    async def respond_file(self, request: web.Request, name: str, file: str) -> web.StreamResponse:
        """A file of a room recording: from the bucket once uploaded, else the spool's."""
        if not ROOM_FOLDER.fullmatch(name) or not room_file_name(file):
            raise UnknownRecording(f"{name}/{file}")
        bucket = self._open_bucket()
        key = f"{name}/{file}"
        try:
            size = await bucket.size(key)
        except StoreError as exc:
            raise StoreUnavailable(f"the object store did not answer: {exc}") from None
        if size is None:
            return await self.spool.respond_file(request, name, file)
        return await serve_range(request, bucket, key, size, FILE_TYPES[Path(file).suffix])

    async def delete(self, name: str) -> None:
        if not valid_name(name):
            await self._delete_room(name)
            return
        if self._busy(name):
            raise RecordingBusy(f"{name} is being uploaded")
        bucket = self._open_bucket()
        try:
            found = await bucket.size(name) is not None
            if found:
                await bucket.delete(name)
                await bucket.delete(f"{name}.json")
                self._sidecars.pop(name, None)
        except StoreError as exc:
            raise StoreUnavailable(f"the object store did not answer: {exc}") from None
        await self._delete_spooled(name, stored=found)

    async def _delete_room(self, name: str) -> None:
        """Remove a room recording's folder: its objects, and the spool's copy if any."""
        if not ROOM_FOLDER.fullmatch(name):
            raise UnknownRecording(name)
        if self._busy(name):
            raise RecordingBusy(f"{name} is being uploaded")
        bucket = self._open_bucket()
        try:
            keys = [item.key for item in await bucket.list() if item.key.startswith(f"{name}/")]
            for key in sorted(keys, key=lambda key: key.endswith(f"/{MANIFEST}")):
                await bucket.delete(key)  # the manifest last: the listing shows it until then
        except StoreError as exc:
            raise StoreUnavailable(f"the object store did not answer: {exc}") from None
        self._sidecars.pop(f"{name}/{MANIFEST}", None)
        await self._delete_spooled(name, stored=bool(keys))

    async def _delete_spooled(self, name: str, stored: bool) -> None:
        """Remove the spool's copy of ``name`` and its upload state; a recording neither
        ``stored`` in the bucket nor spooled is unknown."""
        try:
            await self.spool.delete(name)
        except UnknownRecording:
            if not stored:
                raise
        upload_state_path(self.spool.folder, name).unlink(missing_ok=True)


async def serve_range(
    request: web.Request, bucket: Bucket, name: str, size: int, content_type: str
) -> web.StreamResponse:
    """An object as a response: whole, or the one byte range the request asks for."""
    try:
        wanted = request.http_range
    except ValueError:
        wanted = slice(size, size)  # malformed: unsatisfiable
    start, stop = wanted.start, wanted.stop
    ranged = start is not None or stop is not None
    if start is not None and start < 0:
        start, stop = max(0, size + start), size
    start = start or 0
    stop = size if stop is None else min(stop, size)
    if ranged and start >= stop:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    response = web.StreamResponse(
        status=206 if ranged else 200,
        headers={
            "Accept-Ranges": "bytes",
            "Cache-Control": "no-cache",
            "Content-Type": content_type,
            "Content-Length": str(stop - start),
        },
    )
    if ranged:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    if "download" in request.query:
        response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    await response.prepare(request)
    if request.method != "HEAD" and stop > start:
        async for chunk in bucket.stream(name, start, stop):
            await response.write(chunk)
    await response.write_eof()
    return response
