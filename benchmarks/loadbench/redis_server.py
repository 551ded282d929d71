"""A real Redis for the tests and the benchmarks: Debian's ``redis-server`` (installed by
``./dev``) on a free loopback port, with a temporary folder, nothing saved to disk, killed
at the end. ``tests/`` imports it as ``benchmarks.loadbench``."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .server import free_port

START_TIMEOUT = 20.0


@dataclass
class RedisServer:
    """One ``redis-server`` process."""

    folder: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL ``--redis`` takes."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is missing: ./dev installs Debian's redis-server")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        options = {
            "bind": "127.0.0.1",
            "port": str(self.port),
            "dir": str(self.folder),
            "logfile": str(self.folder / "redis.log"),
            "save": "",  # nothing kept: each run starts empty
            "appendonly": "no",
        }
        command = [
            binary,
            *(part for name, value in options.items() for part in (f"--{name}", value)),
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self._until_ready()

    def _until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited:\n{self.log()}")
            if self._pong():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not come up:\n{self.log()}")

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop it (SIGTERM: with nothing to save, it exits at once; nothing is kept)."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def log(self) -> str:
        """What it logged."""
        path = self.folder / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""
