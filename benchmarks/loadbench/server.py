"""``rtc-recorder serve`` as the benchmarks run it: a subprocess on 127.0.0.1 through
``benchmarks/loopback_server.py``, its HTTP API, the sidecars it writes beside its
recordings, and its log."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from .common import LOOPBACK

BENCHMARKS = Path(__file__).resolve().parent.parent
CHECKOUT = BENCHMARKS.parent
SERVER_WRAPPER = BENCHMARKS / "loopback_server.py"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0  # SIGTERM to exit (the server gives recordings 20 s by default)
HANGUP_TIMEOUT = 60.0  # for each DELETE, and for every sidecar to say "complete"

# Admission by load, off (the server still measures its load, and only stops refusing): for
# the benchmarks that measure what sessions cost rather than whether the server takes them
# (admission.py measures that). On a machine busy with other work the server would refuse
# their sessions and end the run.
NO_LOAD_LIMITS = (
    "--admission-loop-lag=0",
    "--admission-loop-busy=0",
    "--admission-cpu=0",
    "--admission-udp-drops=0",
)


class BenchmarkError(RuntimeError):
    """The run could not be completed (the server or a sender failed, or timed out)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` different TCP ports free on 127.0.0.1 right now (held open together
    while they are picked: one probe after another may be given the same port)."""
    probes = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for probe in probes:
            probe.bind((LOOPBACK, 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


class ServerProcess:
    """``rtc-recorder serve`` as a subprocess, through the loopback wrapper, recording into
    ``recordings``, logging JSON lines to ``log_path``.

    ``serve_args`` are added to ``serve``'s (``--auto-record``, say); ``wrapper_args`` are
    the wrapper's own options (``--recorder aiortc``, ``--lag-file F``); ``env`` is added to
    this process' environment for it.

    It runs in a session of its own (a Ctrl-C in the terminal does not reach it: the
    benchmark sends the one SIGTERM that finalizes the recordings) and with its stdin a
    pipe from the benchmark: if the benchmark dies, the pipe closes and the server stops
    itself.
    """

    def __init__(
        self,
        recordings: Path,
        log_path: Path,
        serve_args: Sequence[str] = (),
        wrapper_args: Sequence[str] = (),
        port: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.recordings = recordings
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.command = [
            sys.executable,
            str(SERVER_WRAPPER),
            "--stop-on-stdin-eof",
            *wrapper_args,
            "--port",
            str(self.port),
            "--recordings",
            str(recordings),
            "--log-format",
            "json",
            *serve_args,
        ]
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    @property
    def pid(self) -> int:
        """The server's process id (once started)."""
        assert self.process is not None
        return self.process.pid

    def url(self, path: str) -> str:
        """The server's URL for ``path``."""
        return f"http://{LOOPBACK}:{self.port}{path}"

    def start(self) -> None:
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=CHECKOUT,
            env=self.env,
        )

    def check(self) -> None:
        """Raise if the server has exited."""
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            raise BenchmarkError(f"the server exited (status {code}); see {self.log_path}")

    def request(
        self, method: str, path: str, timeout: float = 10.0, body: Any = None
    ) -> tuple[int, Any]:
        """One HTTP request to the server (``body``, if given, sent as JSON): its status
        and JSON body."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url(path), data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            content = error.read()
            with contextlib.suppress(ValueError):
                return error.code, json.loads(content or b"null")
            return error.code, content.decode(errors="replace")

    def request_all(
        self, method: str, paths: Sequence[str], timeout: float = 10.0
    ) -> dict[str, dict[str, Any]]:
        """``method`` on every path at once (a thread each): per path its ``status``
        (None if the request failed), ``body`` and ``seconds``."""

        def one(path: str) -> dict[str, Any]:
            started = time.monotonic()
            status: int | None
            try:
                status, body = self.request(method, path, timeout=timeout)
            except OSError as error:
                status, body = None, repr(error)
            return {"status": status, "body": body, "seconds": time.monotonic() - started}

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(paths))) as pool:
            return dict(zip(paths, pool.map(one, paths), strict=True))

    def call_all(
        self, ids: Sequence[str], method: str, timeout: float
    ) -> dict[str, dict[str, Any]]:
        """``POST /api/sessions/{id}/{method}`` for every session at once, each of which must
        answer 200 (see :func:`require_ok`); the answers, by path."""
        answers = self.request_all("POST", [f"/api/sessions/{i}/{method}" for i in ids], timeout)
        require_ok(answers, method)
        return answers

    def hang_up(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``DELETE /api/sessions/{id}`` for every session at once (each answers once its
        recording is finalized): per session id, as :meth:`request_all` gives them."""
        paths = [f"/api/sessions/{session}" for session in ids]
        answers = self.request_all("DELETE", paths, HANGUP_TIMEOUT)
        return {session: answers[path] for session, path in zip(ids, paths, strict=True)}

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Seconds until ``/healthz`` answers."""
        started = time.monotonic()
        while True:
            self.check()
            with contextlib.suppress(OSError):
                status, _ = self.request("GET", "/healthz", timeout=1.0)
                if status == 200:
                    return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise BenchmarkError(f"the server did not answer /healthz within {timeout:g} s")
            time.sleep(0.1)

    def sessions(self) -> list[dict[str, Any]]:
        """``GET /api/sessions``."""
        status, body = self.request("GET", "/api/sessions")
        if status != 200 or not isinstance(body, list):
            raise BenchmarkError(f"/api/sessions answered {status}: {body}")
        return body

    def wait_sessions(
        self,
        count: int,
        recorder_state: str | None,
        timeout: float,
        ids: Collection[str] | None = None,
    ) -> list[dict[str, Any]]:
        """``/api/sessions`` once ``count`` sessions (of ``ids``, if given) are connected
        and their recorder in ``recorder_state`` (if given)."""
        started = time.monotonic()
        while True:
            self.check()
            listed = self.sessions()
            ready = [
                s
                for s in listed
                if s["connectionState"] == "connected"
                and (recorder_state is None or s["recorderState"] == recorder_state)
                and (ids is None or s["id"] in ids)
            ]
            if len(ready) >= count:
                return listed
            if time.monotonic() - started > timeout:
                states = [(s["id"], s["connectionState"], s["recorderState"]) for s in listed]
                wanted = f"connected and {recorder_state}" if recorder_state else "connected"
                raise BenchmarkError(
                    f"{len(ready)} of {count} sessions {wanted} after {timeout:g} s: {states}"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = STOP_TIMEOUT) -> dict[str, Any]:
        """SIGTERM, then wait for the exit: its status and how long it took."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        killed = False
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(10)
            killed = True
        return {"exitCode": code, "seconds": time.monotonic() - started, "killed": killed}

    def close(self) -> None:
        """Leave no server running (SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT`)."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
            if self.process.stdin is not None:
                self.process.stdin.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def require_ok(answers: dict[str, dict[str, Any]], what: str) -> None:
    """Raise :class:`BenchmarkError` naming every request of ``answers``
    (:meth:`ServerProcess.request_all`'s) not answered 200."""
    failed = {path: answer["status"] for path, answer in answers.items() if answer["status"] != 200}
    if failed:
        raise BenchmarkError(f"{what} failed: {failed}")


def sidecars(folder: Path) -> dict[str, dict[str, Any]]:
    """Every recording's sidecar in ``folder``, by its file name."""
    found = {}
    for sidecar in sorted(folder.glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads(sidecar.read_text())
            if isinstance(meta, dict):
                found[sidecar.name.removesuffix(".json")] = meta
    return found


def wait_complete(folder: Path, sessions: set[str], timeout: float) -> float:
    """Seconds until the sidecar of every session's recording says "complete" (or
    "failed"); the timeout leaves the states as they are for the verification."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        final = {
            meta.get("session")
            for meta in sidecars(folder).values()
            if meta.get("state") in ("complete", "failed")
        }
        if sessions <= final:
            break
        time.sleep(0.2)
    return time.monotonic() - started


def log_summary(path: Path) -> dict[str, Any]:
    """Warnings and errors in the server's log (JSON lines; other lines are kept too)."""
    problems: list[str] = []
    other: list[str] = []
    events: dict[str, int] = {}
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                if line.strip():
                    other.append(line)
                continue
            if not isinstance(entry, dict):
                continue
            events[str(entry.get("event"))] = events.get(str(entry.get("event")), 0) + 1
            if entry.get("level") in ("WARNING", "ERROR", "CRITICAL"):
                problems.append(line)
    return {
        "warningsOrErrors": len(problems),
        "unstructuredLines": len(other),
        "examples": (problems + other)[:20],
        "events": events,
    }
