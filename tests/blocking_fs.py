"""Storage that stops answering, for tests: a FUSE filesystem (libfuse 3 through mfusepy)
that passes everything through to a backing folder, except that writes and fsyncs of one
chosen file can be made to block, as on a disk that no longer answers.

    python -m tests.blocking_fs BACKING MOUNTPOINT     (commands on stdin, one per line)

``block NAME`` makes writes to ``NAME`` wait (answered ``ok``); each write that starts
waiting is reported as ``blocked NAME``; ``release`` lets them through. A blocked write
gives up (``EINTR``) only if the kernel interrupts it, which it does when the writing
process is killed or exits: such storage holds a thread forever but lets its process die,
as a network filesystem's killable waits do. (A local disk stuck in uninterruptible I/O
would hold even the process' exit: no program can bound that.)

:class:`BlockingDisk` runs it from a test.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

POLL = 0.05  # seconds between checks for the kernel's interrupt while a write waits
STATFS_FIELDS = (
    *("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail"),
    *("f_files", "f_ffree", "f_favail", "f_flag", "f_namemax"),
)


def _operations(backing: Path, report: Any) -> Any:
    import mfusepy as fuse  # only in the filesystem's process

    class Passthrough(fuse.Operations):  # type: ignore[misc]
        use_ns = True

        def __init__(self) -> None:
            self.blocked: str | None = None
            self.released = threading.Event()

        def _real(self, path: str) -> str:
            return str(backing / path.lstrip("/"))

        def _wait_if_blocked(self, path: str) -> None:
            if self.blocked is None or path.lstrip("/") != self.blocked:
                return
            report(f"blocked {self.blocked}")
            while not self.released.wait(POLL):
                if fuse._libfuse.fuse_interrupted():
                    raise fuse.FuseOSError(errno.EINTR)

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            status = os.lstat(self._real(path))
            attributes = {
                key: getattr(status, key)
                for key in ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid", "st_blocks")
            }
            for name in ("st_atime", "st_mtime", "st_ctime"):
                attributes[name] = getattr(status, f"{name}_ns")
            return attributes

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", *os.listdir(self._real(path))]

        def open(self, path: str, flags: int) -> int:
            return os.open(self._real(path), flags)

        def create(self, path: str, mode: int, flags: int) -> int:
            return os.open(self._real(path), flags | os.O_CREAT, mode)

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return os.pread(fh, size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            self._wait_if_blocked(path)
            return os.pwrite(fh, data, offset)

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            self._wait_if_blocked(path)
            os.fsync(fh)
            return 0

        def flush(self, path: str, fh: int) -> int:
            return 0

        def release(self, path: str, fh: int) -> int:
            os.close(fh)
            return 0

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            os.truncate(self._real(path) if fh is None else fh, length)
            return 0

        def unlink(self, path: str) -> int:
            os.unlink(self._real(path))
            return 0

        def rename(self, old: str, new: str) -> int:
            os.rename(self._real(old), self._real(new))
            return 0

        def mkdir(self, path: str, mode: int) -> int:
            os.mkdir(self._real(path), mode)
            return 0

        def rmdir(self, path: str) -> int:
            os.rmdir(self._real(path))
            return 0

        def chmod(self, path: str, mode: int) -> int:
            os.chmod(self._real(path), mode)
            return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            os.utime(self._real(path), ns=times)
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            status = os.statvfs(self._real(path))
            return {key: getattr(status, key) for key in STATFS_FIELDS}

    return fuse, Passthrough()


def main(backing: str, mountpoint: str) -> None:
    lock = threading.Lock()

    def report(line: str) -> None:
        with lock:
            print(line, flush=True)

    fuse, operations = _operations(Path(backing).resolve(), report)

    def commands() -> None:
        for line in sys.stdin:
            command, _, argument = line.strip().partition(" ")
            if command == "block":
                operations.released.clear()
                operations.blocked = argument
            elif command == "release":
                operations.released.set()
            report("ok")

    threading.Thread(target=commands, daemon=True).start()
    fuse.FUSE(operations, mountpoint, foreground=True)


class BlockingDisk:
    """The filesystem mounted on ``mountpoint`` over ``backing``, run by a test."""

    def __init__(self, backing: Path, mountpoint: Path) -> None:
        self.backing = backing
        self.mountpoint = mountpoint
        self._lines: list[str] = []  # what the filesystem said and nobody waited for yet
        self._said = threading.Condition()
        self._log = mountpoint.with_name(mountpoint.name + "-fuse.log")
        self._log_file: TextIO | None = None
        self._process: subprocess.Popen[str] | None = None

    def mount(self, timeout: float = 20) -> None:
        self._log_file = self._log.open("w")
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.blocking_fs", str(self.backing), str(self.mountpoint)],
            cwd=Path(__file__).resolve().parent.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.mountpoint):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no FUSE filesystem mounted: {self._log.read_text()}")
            time.sleep(0.05)

    def block(self, name: str) -> None:
        """Writes to ``name`` wait from now on."""
        self._command(f"block {name}")

    def release(self) -> None:
        """Blocked writes go through."""
        self._command("release")

    def wait_blocked(self, name: str, timeout: float) -> None:
        """Return once a write to ``name`` is waiting."""
        self._expect(f"blocked {name}", timeout)

    def unmount(self) -> None:
        if self._process is None:
            return
        with contextlib.suppress(BrokenPipeError, OSError):
            self.release()
        subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False)
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)
        self._process = None
        if self._log_file is not None:
            self._log_file.close()

    def _command(self, line: str) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()
        self._expect("ok", 10)

    def _expect(self, wanted: str, timeout: float) -> None:
        with self._said:
            if not self._said.wait_for(lambda: wanted in self._lines, timeout):
                raise AssertionError(f"the FUSE filesystem never said {wanted!r}")
            self._lines.remove(wanted)

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            with self._said:
                self._lines.append(line.strip())
                self._said.notify_all()


@contextlib.contextmanager
def blocking_disk(backing: Path, mountpoint: Path) -> Iterator[BlockingDisk]:
    """A :class:`BlockingDisk`, mounted for the ``with`` block."""
    disk = BlockingDisk(backing, mountpoint)
    disk.mount()
    try:
        yield disk
    finally:
        disk.unmount()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
