"""The uploader: recordings travel from the local spool to the bucket while they are made.

A recording is one file of the spool (``NAME.EXT``, with its ``NAME.EXT.json`` sidecar)
or a folder of files (a room's: one growing file per participant and a ``manifest.json``
rewritten as it goes). Media files grow by appending, except that at stop the recorder
patches a few bytes of the head in place (durations, sizes, index pointers); ``.json``
files are rewritten whole.

So a media file is sent as an S3 multipart upload of ``--part-size`` parts: part ``k``
(``k >= 2``) is sent as soon as the file holds all of its bytes; part 1, the head, is sent
last, once the file is final. Before the upload is completed, every part sent earlier is
checked against the final file (size and MD5) and sent again if it differs, so a patch
anywhere would still reach the bucket. ``.json`` files are put whole at the end, before
the media is completed: once a recording's media is listed in the bucket, so is its
metadata.

The uploader runs on a thread of its own with its own event loop: signing, hashing and
sending parts never run on the loop that receives media, and a store that is down only
makes the uploader wait (retrying with backoff) while recording goes on into the spool.
Each recording's progress (upload id, parts sent) is kept in ``.uploads/NAME.json`` in the
spool, so after a crash the upload resumes where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter

from ..containers.matroska_repair import finish_cut_file
from .notices import Notice, Notices
from .recordings import (
    CONTENT_TYPES,
    RecordingStore,
    probe_duration,
    upload_state_path,
)
from .storage import Backoff, Bucket, BucketLocation, StoreError, is_missing, open_bucket

logger = logging.getLogger("rtc_recorder.server")

T = TypeVar("T")

POLL_SECONDS = 1.0  # how often a growing recording is looked at for complete parts
MAX_PARTS_IN_FLIGHT = 4  # bounds the memory parts take (each is --part-size bytes)
METADATA_SUFFIX = ".json"
MATROSKA_SUFFIXES = (".webm", ".mkv")


def log(event: str, **fields: object) -> None:
    """A structured log record, as the sessions write them."""
    logger.info(event, extra={"fields": fields})


def content_type(name: str) -> str:
    """The Content-Type a file of the spool is stored with."""
    if name.endswith(METADATA_SUFFIX):
        return "application/json"
    return CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream")


# -- what is remembered across restarts -------------------------------------------------


@dataclass
class SentPart:
    """A part the store confirmed: its ETag, and what it held."""

    etag: str
    size: int
    md5: str


@dataclass
class FileUpload:
    """One media file's multipart upload (``upload`` is None until one is created)."""

    upload: str | None = None
    parts: dict[int, SentPart] = field(default_factory=dict)


@dataclass
class UploadState:
    """A recording's upload progress, saved in the spool after every confirmed step."""

    files: dict[str, FileUpload] = field(default_factory=dict)
    complete: bool = False

    @classmethod
    def load(cls, path: Path) -> UploadState:
        """The state saved at ``path``; a fresh one if there is none (or it is unreadable)."""
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls()
        files = {
            name: FileUpload(
                entry.get("upload"),
                {int(k): SentPart(**part) for k, part in entry.get("parts", {}).items()},
            )
            for name, entry in raw.get("files", {}).items()
        }
        return cls(files, bool(raw.get("complete")))

    def save(self, path: Path) -> None:
        """Write the state to ``path`` atomically."""
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(self)))
        os.replace(temporary, path)


def read_bytes(path: Path, start: int, length: int) -> bytes:
    """Up to ``length`` bytes of a file from ``start`` (on the uploader's loop: a part's
    read takes milliseconds, and only delays other uploads)."""
    with open(path, "rb") as file:
        file.seek(start)
        return file.read(length)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file; empty if it is missing or is not one."""
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def part_ranges(size: int, part_size: int) -> list[tuple[int, int]]:
    """``(start, end)`` of parts 1..n of a file of ``size`` bytes (one part at least)."""
    count = max(1, math.ceil(size / part_size))
    return [(i * part_size, min(size, (i + 1) * part_size)) for i in range(count)]


def complete_parts(size: int, part_size: int) -> range:
    """The part numbers a growing file of ``size`` bytes holds whole, the head excepted."""
    return range(2, size // part_size + 1)


# -- one recording ------------------------------------------------------------------------


class RecordingUpload:
    """Uploads one recording of the spool: follows it while it grows, completes it once
    :meth:`finish` is called, and removes it from the spool unless told to keep it."""

    def __init__(self, uploader: Uploader, name: str, interrupted: bool = False) -> None:
        self.name = name
        self._uploader = uploader
        self._spool = uploader.spool.folder
        self._state_path = upload_state_path(self._spool, name)
        self._state = UploadState.load(self._state_path)
        if self._state.complete:  # names are never reused: this is a new recording
            self._state = UploadState()
        self._finished = asyncio.Event()
        self._interrupted = interrupted

    def finish(self) -> None:
        """The recording is final: send what is left and complete it."""
        self._finished.set()

    async def run(self) -> None:
        """Follow the recording until :meth:`finish`, then complete its upload."""
        await self._uploader.ready.wait()
        while not self._finished.is_set():
            await self._send_complete_parts()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finished.wait(), POLL_SECONDS)
        began = time.monotonic()
        if self._interrupted:
            await asyncio.to_thread(self._uploader.repair, self.name)
        media, metadata = self._members()
        for member in metadata:
            await self._put_whole(member)
        size = 0
        for member in media:
            size += await self._complete_file(member)
        self._state.complete = True
        self._state.save(self._state_path)
        log("uploaded", name=self.name, bytes=size, seconds=round(time.monotonic() - began, 3))
        notice = self._uploader.uploaded_notice(self.name, size)
        if not self._uploader.keep_local:
            self._remove_from_spool()
        self._uploader.announce(notice)

    @property
    def _bucket(self) -> Bucket:
        return self._uploader.bucket

    def _members(self) -> tuple[list[str], list[str]]:
        """The recording's media files and metadata files, as names within the spool."""
        path = self._spool / self.name
        if path.is_dir():
            names = [
                str(child.relative_to(self._spool))
                for child in sorted(path.rglob("*"))
                if child.is_file() and not child.name.startswith(".")
            ]
        else:
            names = [self.name, f"{self.name}{METADATA_SUFFIX}"]
            names = [n for n in names if (self._spool / n).is_file()]
        media = [n for n in names if not n.endswith(METADATA_SUFFIX)]
        return media, [n for n in names if n.endswith(METADATA_SUFFIX)]

    # -- while it grows --------------------------------------------------------------------

    async def _send_complete_parts(self) -> None:
        for member in self._members()[0]:
            try:
                size = (self._spool / member).stat().st_size
            except FileNotFoundError:
                continue
            for number in complete_parts(size, self._uploader.part_size):
                if number not in self._file(member).parts:
                    await self._send_part(member, number)

    def _file(self, member: str) -> FileUpload:
        return self._state.files.setdefault(member, FileUpload())

    async def _upload_id(self, member: str) -> str:
        entry = self._file(member)
        if entry.upload is None:
            entry.upload = await self._uploader.retrying(
                lambda: self._bucket.create_multipart(member, content_type(member))
            )
            self._state.save(self._state_path)
        return entry.upload

    def _start_again(self, member: str) -> None:
        """Forget an upload the store no longer has, and the parts it had."""
        log("upload lost, starting again", name=self.name, file=member)
        self._state.files[member] = FileUpload()
        self._state.save(self._state_path)

    async def _send_part(self, member: str, number: int) -> None:
        part_size = self._uploader.part_size
        async with self._uploader.parts_in_flight:
            data = read_bytes(self._spool / member, (number - 1) * part_size, part_size)
            try:
                etag = await self._put_part(member, number, data)
            except StoreError as exc:
                if not is_missing(exc):
                    raise
                # The store dropped the upload (aborted by a lifecycle rule, say): start
                # a new one; the parts sent before are sent again as the file needs them.
                self._start_again(member)
                etag = await self._put_part(member, number, data)
        digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
        self._file(member).parts[number] = SentPart(etag, len(data), digest)
        self._state.save(self._state_path)
        self._uploader.count_bytes(len(data))

    async def _put_part(self, member: str, number: int, data: bytes) -> str:
        upload = await self._upload_id(member)
        return await self._uploader.retrying(
            lambda: self._bucket.put_part(member, upload, number, data)
        )

    # -- once it is final ------------------------------------------------------------------

    async def _complete_file(self, member: str) -> int:
        """Send what the final file still needs, head last, and complete it; its size."""
        path = self._spool / member
        size = path.stat().st_size
        part_size = self._uploader.part_size
        if size <= part_size and self._file(member).upload is None:
            return await self._put_whole(member)
        ranges = part_ranges(size, part_size)
        numbers = (*range(2, len(ranges) + 1), 1)
        for number in numbers:
            start, end = ranges[number - 1]
            if not self._sent_as_is(path, self._file(member).parts.get(number), start, end):
                await self._send_part(member, number)
        # An upload the store lost meanwhile was started again: it needs every part.
        while missing := [n for n in numbers if n not in self._file(member).parts]:
            for number in missing:
                await self._send_part(member, number)
        parts = self._file(member).parts
        etags = [parts[number].etag for number in range(1, len(ranges) + 1)]
        upload = await self._upload_id(member)
        try:
            await self._uploader.retrying(
                lambda: self._bucket.complete_multipart(member, upload, etags)
            )
        except StoreError as exc:
            if not is_missing(exc):
                raise
            if await self._bucket.size(member) != size:
                # Lost before it could be completed: send it all again.
                self._start_again(member)
                return await self._complete_file(member)
            # Else completed before a crash that came before the state was saved.
        return size

    async def _put_whole(self, member: str) -> int:
        """Put a file as one object; its size."""
        data = (self._spool / member).read_bytes()
        await self._uploader.retrying(lambda: self._bucket.put(member, data, content_type(member)))
        self._uploader.count_bytes(len(data))
        return len(data)

    @staticmethod
    def _sent_as_is(path: Path, sent: SentPart | None, start: int, end: int) -> bool:
        if sent is None or sent.size != end - start:
            return False
        data = read_bytes(path, start, end - start)
        return hashlib.md5(data, usedforsecurity=False).hexdigest() == sent.md5

    def _remove_from_spool(self) -> None:
        path = self._spool / self.name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
            (self._spool / f"{self.name}{METADATA_SUFFIX}").unlink(missing_ok=True)
        self._state_path.unlink(missing_ok=True)


# -- all of them ---------------------------------------------------------------------------


class Uploader:
    """Uploads the spool's recordings to a bucket, on a thread and event loop of its own.

    Subscribe :meth:`on_notice` to the server's notices: ``recording.started`` begins
    following a recording, ``recording.stopped`` completes it. :meth:`start` also resumes
    every recording of the spool whose upload was not confirmed (a recording the process
    died in the middle of is repaired first: its sidecar gets its duration and the state
    ``interrupted``). Announces ``recording.uploaded`` once the store confirmed it all.
    """

    def __init__(
        self,
        spool: RecordingStore,
        location: BucketLocation,
        endpoint: str | None,
        part_size: int,
        keep_local: bool,
        registry: CollectorRegistry,
        notices: Notices,
        backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        self.spool = spool
        self.location = location
        self.endpoint = endpoint
        self.part_size = part_size
        self.keep_local = keep_local
        self._notices = notices
        self._backoff = backoff
        self._bytes = Counter(
            "rtc_recorder_upload_bytes",
            "Bytes the object store confirmed receiving",
            registry=registry,
        )
        self._failures = Counter(
            "rtc_recorder_upload_failures",
            "Object store requests that failed (each is retried)",
            registry=registry,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="rtc-recorder-uploader")
        self._main: asyncio.AbstractEventLoop | None = None
        self._jobs: dict[str, RecordingUpload] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._bucket: Bucket | None = None
        self._drain_seconds = 0.0
        # Both bind to the uploader's loop when first used there.
        self.parts_in_flight = asyncio.Semaphore(MAX_PARTS_IN_FLIGHT)
        self.ready = asyncio.Event()  # the bucket is open
        self._stopping = asyncio.Event()

    # -- from the main loop -----------------------------------------------------------------

    def start(self) -> None:
        """Start the uploader thread; resume what the spool holds (before any recording of
        this process starts, so nothing found there is mistaken for one)."""
        self._main = asyncio.get_running_loop()
        for name in self.pending():
            self._loop.call_soon_threadsafe(self._resume, name)
        self._thread.start()

    async def close(self, timeout: float) -> None:
        """Let uploads run for up to ``timeout`` seconds more, then stop (what is left is
        resumed at the next start). Returns at once if the uploader is not running."""
        if not self._thread.is_alive():
            return
        self._drain_seconds = timeout
        self._loop.call_soon_threadsafe(self._stop)
        await asyncio.to_thread(self._thread.join)

    def on_notice(self, notice: Notice) -> None:
        """Follow recordings as they start and stop (called on the main loop)."""
        name = notice.recording
        if name is None:
            return
        if notice.type == "recording.started":
            self._loop.call_soon_threadsafe(self._follow, name, False)
        elif notice.type == "recording.stopped":
            self._loop.call_soon_threadsafe(self._finish, name)

    def busy(self, name: str) -> bool:
        """Whether ``name`` is being uploaded."""
        return name in self._jobs

    # -- on the uploader's loop -------------------------------------------------------------

    @property
    def bucket(self) -> Bucket:
        """The bucket (open once :attr:`ready` is set)."""
        assert self._bucket is not None
        return self._bucket

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        async with open_bucket(self.location, self.endpoint) as bucket:
            self._bucket = bucket
            self.ready.set()
            await self._stopping.wait()
            if self._tasks:
                _, unfinished = await asyncio.wait(self._tasks, timeout=self._drain_seconds)
                for task in unfinished:
                    task.cancel()
                await asyncio.gather(*unfinished, return_exceptions=True)
                if unfinished:
                    logger.warning("uploads left for the next start: %d", len(unfinished))

    def _stop(self) -> None:
        self._stopping.set()

    def pending(self) -> list[str]:
        """Recordings of the spool whose upload was not confirmed."""
        folder = self.spool.folder
        names = []
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(".") or entry.name.endswith((METADATA_SUFFIX, ".tmp")):
                continue
            if not (entry.is_dir() or entry.suffix in CONTENT_TYPES):
                continue
            if not UploadState.load(upload_state_path(folder, entry.name)).complete:
                names.append(entry.name)
        return names

    def _resume(self, name: str) -> None:
        self._follow(name, True)
        self._finish(name)

    def _follow(self, name: str, interrupted: bool) -> None:
        if name in self._jobs:
            return
        job = RecordingUpload(self, name, interrupted)
        self._jobs[name] = job
        task = asyncio.ensure_future(self._guarded(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _finish(self, name: str) -> None:
        self._follow(name, False)
        self._jobs[name].finish()

    async def _guarded(self, job: RecordingUpload) -> None:
        try:
            await job.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("uploading %s failed; it stays in the spool", job.name)
        finally:
            self._jobs.pop(job.name, None)

    async def retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` until the store answers it; a missing object or upload is not retried
        (the caller decides what that means)."""
        backoff = self._backoff()
        while True:
            try:
                result = await call()
            except StoreError as exc:
                if is_missing(exc):
                    raise
                self._failures.inc()
                delay = backoff.next_delay()
                if backoff.failures == 1:
                    logger.warning("the object store failed, retrying: %s", exc)
                await asyncio.sleep(delay)
                continue
            if backoff.failures:
                log("the object store answers again", failures=backoff.failures)
            return result

    def count_bytes(self, size: int) -> None:
        """Count ``size`` bytes the store confirmed."""
        self._bytes.inc(size)

    def repair(self, name: str) -> None:
        """Finish a recording the process died in the middle of, as far as its bytes allow:
        a WebM or Matroska file gets what closing it would have written (duration, seek
        head, segment size; a torn last element cut off); other files play as they are.
        Its sidecar gets the duration read from the file and the state ``interrupted``."""
        path = self.spool.folder / name
        meta = self.spool.read_meta(name)
        if not path.is_file() or meta is None or meta.get("state") != "recording":
            return
        duration = probe_duration(path)
        finished = False
        if duration is not None and path.suffix in MATROSKA_SUFFIXES:
            finished = finish_cut_file(path, round(duration * 1_000_000))
        self.spool.write_meta(name, state="interrupted", duration=duration)
        log("repaired", name=name, finished=finished)

    def announce(self, notice: Notice) -> None:
        """Publish ``notice`` on the main loop."""
        assert self._main is not None
        self._main.call_soon_threadsafe(self._notices.publish, notice)

    def uploaded_notice(self, name: str, size: int) -> Notice:
        """``recording.uploaded`` for ``name``, with the session or room its metadata names."""
        data: dict[str, Any] = {"name": name}
        meta = self.spool.read_meta(name) or read_json(self.spool.folder / name / "manifest.json")
        for key in ("session", "room"):
            if meta.get(key):
                data[key] = meta[key]
        data.update(location=self.location.url(name), size=size)
        return Notice("recording.uploaded", data)
