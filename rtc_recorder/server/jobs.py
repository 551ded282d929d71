"""Composites made by the server, as jobs: ``POST /api/recordings/{name}/compose`` and
``GET /api/jobs/{job}``.

Each job runs ``rtc-recorder compose`` in a process of its own, at a lower priority
(``nice`` 10), so composing takes nothing from the event loop and yields the CPU to live
sessions; its progress comes back as JSON lines on the process' output. Jobs wait in a
bounded queue and run one at a time (by default). :func:`setup` wires all of it into an
application.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import sys
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from ..compose import (
    DEFAULT_FPS,
    DEFAULT_SIZE,
    LAYOUTS,
    CompositionError,
    NotFinalized,
    partial_path,
    read_manifest,
)
from .api import ApiError, read_json

logger = logging.getLogger("rtc_recorder.server")

FORMATS = ("mp4", "webm")
NICE = 10  # how much lower than the server's the composing process' priority is
STOP_GRACE = 5.0  # seconds a composing process gets to clean up when the server stops
ERROR_TAIL = 2000  # bytes of a failed process' error output kept


class JobRefused(Exception):
    """A job that is not taken: ``status`` and ``name`` say why, as the API answers."""

    def __init__(self, status: int, name: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.name = name


@dataclass
class ComposeJob:
    """One composite being made (or made, or failed)."""

    id: str
    recording: str
    layout: str
    output: str  # the file's name in the recording's folder
    folder: Path
    state: str = "queued"  # queued, running, done, failed or cancelled
    progress: float = 0.0  # 0..1
    error: str | None = None

    @property
    def finished(self) -> bool:
        """Whether the job is over (done, failed or cancelled)."""
        return self.state in ("done", "failed", "cancelled")

    def to_json(self) -> dict[str, Any]:
        """The job as ``GET /api/jobs/{job}`` answers it."""
        return {
            "job": self.id,
            "recording": self.recording,
            "layout": self.layout,
            "state": self.state,
            "progress": round(self.progress, 3),
            "output": self.output,
            "error": self.error,
        }


def room_folder_in(recordings: Path) -> Callable[[str], Path]:
    """The folder of room recording ``name`` in ``recordings``: ``LookupError`` for any
    name that is not one (no path ever comes from the name but that folder's)."""
    base = recordings.resolve()

    def folder_of(name: str) -> Path:
        if not name or name.startswith(".") or Path(name).name != name:
            raise LookupError(name)
        folder = base / name
        if not folder.is_dir():
            raise LookupError(name)
        return folder

    return folder_of


class ComposeJobs:
    """The job runner: a bounded queue of jobs, ``concurrency`` of them running at once,
    each in its own process; the last ``keep`` finished jobs are remembered. Composites
    are ``size`` pixels at ``fps``."""

    def __init__(
        self,
        folder_of: Callable[[str], Path],
        *,
        concurrency: int = 1,
        max_queued: int = 8,
        keep: int = 100,
        size: tuple[int, int] = DEFAULT_SIZE,
        fps: int = DEFAULT_FPS,
    ) -> None:
        self.folder_of = folder_of
        self.size = size
        self.fps = fps
        self.concurrency = concurrency
        self.max_queued = max_queued
        self.keep = keep
        self.jobs: OrderedDict[str, ComposeJob] = OrderedDict()
        self._queue: deque[ComposeJob] = deque()
        self._wake = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._closed = False

    async def submit(self, recording: str, layout: str = "grid", format: str = "mp4") -> ComposeJob:
        """A job composing ``recording``, queued (or the one already queued or running for
        the same output); :class:`JobRefused` when it cannot be."""
        if layout not in LAYOUTS:
            raise JobRefused(400, "TypeError", f"layout must be one of {', '.join(LAYOUTS)}")
        if format not in FORMATS:
            raise JobRefused(400, "TypeError", f"format must be one of {', '.join(FORMATS)}")
        if self._closed:
            raise JobRefused(503, "QuotaExceededError", "the server is shutting down")
        try:
            folder = self.folder_of(recording)
        except LookupError:
            raise JobRefused(404, "NotFoundError", "no such room recording") from None
        try:
            await asyncio.to_thread(read_manifest, folder)
        except NotFinalized as exc:
            raise JobRefused(409, "InvalidStateError", str(exc)) from None
        except CompositionError as exc:
            raise JobRefused(400, "DataError", str(exc)) from None
        output = f"composite-{layout}.{format}"
        for job in self.jobs.values():
            if not job.finished and job.folder == folder and job.output == output:
                return job
        if len(self._queue) >= self.max_queued:
            raise JobRefused(503, "QuotaExceededError", "too many composites are waiting")
        job = ComposeJob(secrets.token_hex(8), recording, layout, output, folder)
        self.jobs[job.id] = job
        self._forget_old()
        self._queue.append(job)
        self._start_workers()
        self._wake.set()
        return job

    def get(self, job_id: str) -> ComposeJob:
        """The job ``job_id`` (``KeyError`` if unknown or long forgotten)."""
        return self.jobs[job_id]

    async def close(self) -> None:
        """Cancel the jobs waiting, stop the ones running (their partial files removed)."""
        self._closed = True
        while self._queue:
            waiting = self._queue.popleft()
            waiting.state, waiting.error = "cancelled", "the server stopped"
        for process in list(self._processes.values()):
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()

    def _forget_old(self) -> None:
        finished = [job_id for job_id, job in self.jobs.items() if job.finished]
        for job_id in finished[: max(0, len(finished) - self.keep)]:
            del self.jobs[job_id]

    def _start_workers(self) -> None:
        while len(self._workers) < self.concurrency:
            self._workers.append(asyncio.ensure_future(self._work()))

    async def _work(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            job = self._queue.popleft()
            try:
                await self._run(job)
            except asyncio.CancelledError:
                job.state, job.error = "cancelled", "the server stopped"
                raise
            except Exception as exc:  # a job's failure never ends the runner
                logger.exception("composing %s failed", job.recording)
                job.state, job.error = "failed", str(exc) or type(exc).__name__
            finally:
                self._forget_old()

    async def _run(self, job: ComposeJob) -> None:
        job.state = "running"
        target = job.folder / job.output
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "rtc_recorder", "compose", str(job.folder), "-o", str(target)),
            *("--layout", job.layout, "--progress", "json"),
            *("--size", "{}x{}".format(*self.size), "--fps", str(self.fps)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._processes[job.id] = process
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, process.pid, os.getpriority(os.PRIO_PROCESS, 0) + NICE)
        logger.info(
            "composing",
            extra={"fields": {"job": job.id, "recording": job.recording, "layout": job.layout}},
        )
        status: int | None = None
        errors = b""
        try:
            assert process.stdout is not None and process.stderr is not None
            errors, _ = await asyncio.gather(
                _tail(process.stderr), self._follow(job, process.stdout)
            )
            status = await process.wait()
        finally:
            if process.returncode is None:
                await _stop(process)
            del self._processes[job.id]
            if status != 0:
                partial_path(target).unlink(missing_ok=True)
        if status == 0:
            job.state, job.progress = "done", 1.0
        else:
            job.state = "cancelled" if self._closed else "failed"
            job.error = _last_line(errors) or f"the composing process ended with status {status}"
        logger.info(
            "composed",
            extra={"fields": {"job": job.id, "state": job.state, "error": job.error}},
        )

    async def _follow(self, job: ComposeJob, lines: asyncio.StreamReader) -> None:
        async for line in lines:
            with contextlib.suppress(ValueError, TypeError, KeyError):
                job.progress = max(job.progress, min(1.0, float(json.loads(line)["progress"])))


async def _stop(process: asyncio.subprocess.Process) -> None:
    """Ask a composing process to stop (it removes its partial file), then make it."""
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), STOP_GRACE)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def _tail(stream: asyncio.StreamReader) -> bytes:
    """The last :data:`ERROR_TAIL` bytes a process writes to ``stream``."""
    kept = b""
    while chunk := await stream.read(65536):
        kept = (kept + chunk)[-ERROR_TAIL:]
    return kept


def _last_line(errors: bytes) -> str:
    text = errors.decode("utf-8", "replace").strip()
    line = text.splitlines()[-1] if text else ""
    return line.removeprefix("rtc-recorder compose: ")


# -- the routes -----------------------------------------------------------------------

JOBS: web.AppKey[ComposeJobs] = web.AppKey("compose_jobs", ComposeJobs)


def setup(app: web.Application, recordings: Path, **options: Any) -> None:
    """Add the composite routes and their job runner (for the room recordings in
    ``recordings``; ``options`` of :class:`ComposeJobs`) to ``app``; running jobs are
    stopped when the app shuts down."""
    app[JOBS] = ComposeJobs(room_folder_in(recordings), **options)
    app.router.add_post("/api/recordings/{name}/compose", post_compose)
    app.router.add_get("/api/jobs/{job}", get_job)
    app.on_shutdown.append(_close_jobs)


async def post_compose(request: web.Request) -> web.Response:
    """``POST /api/recordings/{name}/compose`` with ``{layout?, format?}`` (``grid`` or
    ``speaker``; ``mp4`` or ``webm``): ``202`` with the job, ``Location: /api/jobs/{job}``."""
    body = await read_json(request, required=False)
    layout, format = body.get("layout", "grid"), body.get("format", "mp4")
    if not isinstance(layout, str) or not isinstance(format, str):
        raise ApiError(400, "TypeError", "layout and format must be strings")
    try:
        job = await request.app[JOBS].submit(request.match_info["name"], layout, format)
    except JobRefused as exc:
        raise ApiError(exc.status, exc.name, str(exc)) from None
    return web.json_response(job.to_json(), status=202, headers={"Location": f"/api/jobs/{job.id}"})


async def get_job(request: web.Request) -> web.Response:
    """``GET /api/jobs/{job}``: ``{job, recording, layout, state, progress, output, error}``."""
    try:
        job = request.app[JOBS].get(request.match_info["job"])
    except KeyError:
        raise ApiError(404, "NotFoundError", "no such job") from None
    return web.json_response(job.to_json())


async def _close_jobs(app: web.Application) -> None:
    await app[JOBS].close()
