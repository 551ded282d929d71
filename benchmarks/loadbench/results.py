"""What every benchmark script does around its measurement: its output options, the
results folder, the JSON (and markdown) it writes there, and its exit on Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import media
from .children import ChildError
from .environment import environment
from .server import BenchmarkError

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "results"
FAILED = 1
INTERRUPTED = 130


def add_output_options(parser: argparse.ArgumentParser, keep_help: str, table: str) -> None:
    """``--out``, ``--markdown`` (print ``table``) and ``--keep-recordings``."""
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    parser.add_argument("--markdown", action="store_true", help=f"print the {table}")
    parser.add_argument("--keep-recordings", action="store_true", help=keep_help)


@dataclass(frozen=True)
class Results:
    """One run's results: ``OUT/<name>-<date>-<time>.*``."""

    name: str
    command: str
    started: datetime.datetime
    out: Path

    @classmethod
    def begin(cls, name: str, args: argparse.Namespace, argv: list[str] | None) -> Results:
        """The run starts now; ``args.out`` is made absolute and created."""
        args.out = args.out.resolve()
        args.out.mkdir(parents=True, exist_ok=True)
        command = shlex.join(sys.orig_argv if argv is None else [sys.argv[0], *argv])
        return cls(name, command, datetime.datetime.now().astimezone(), args.out)

    @property
    def stem(self) -> str:
        return f"{self.name}-{self.started:%Y%m%d-%H%M%S}"

    def path(self, suffix: str) -> Path:
        """``OUT/<stem><suffix>``."""
        return self.out / f"{self.stem}{suffix}"

    def media(self, spec: media.MediaSpec | None = None) -> Path:
        """The media loop's cache in the results folder, encoded first if missing."""
        print(f"preparing the media loop in {self.out} …", file=sys.stderr, flush=True)
        return media.prepare(spec or media.MediaSpec(), self.out)

    @contextlib.contextmanager
    def workdir(self) -> Iterator[Path]:
        """A temporary folder for the run (recordings, logs), removed afterwards."""
        folder = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @contextlib.contextmanager
    def server_workdir(self, keep_recordings: bool) -> Iterator[Path]:
        """:meth:`workdir` for a run of one server, its log in ``server.log`` and its
        recordings in ``recordings/``: whatever happens, the log is kept as
        ``OUT/<stem>.log`` (and, with ``keep_recordings``, the recordings as
        ``OUT/<stem>-recordings``) before the folder goes."""
        with self.workdir() as folder:
            try:
                yield folder
            finally:
                self.keep(folder / "server.log", ".log")
                if keep_recordings:
                    self.keep(folder / "recordings", "-recordings")

    def keep(self, source: Path, suffix: str) -> None:
        """Move ``source`` (a server's log, recordings) to ``OUT/<stem><suffix>``, if it
        exists."""
        with contextlib.suppress(OSError):
            shutil.move(source, self.path(suffix))
            print(f"kept: {self.path(suffix)}", file=sys.stderr, flush=True)

    def document(self, args: argparse.Namespace, **sections: Any) -> dict[str, Any]:
        """The JSON's header (command, start, environment, options), then ``sections``."""
        return {
            "command": self.command,
            "started": self.started.isoformat(timespec="seconds"),
            "environment": environment(),
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            **sections,
        }

    def save(self, document: dict[str, Any], table: str | None = None) -> Path:
        """Write ``<stem>.json`` (and ``<stem>.md``, the table, if given); the JSON's path."""
        output = self.path(".json")
        output.write_text(json.dumps(document, indent=1, default=str))
        if table is not None:
            self.path(".md").write_text(table + "\n")
        print(f"results: {output}", file=sys.stderr, flush=True)
        return output


def exit_with(main: Callable[[], int]) -> None:
    """Exit with ``main()``'s status. When the run could not be completed (a child process
    or the server failed or timed out, or a file could not be read or written), with 1,
    after saying why; on Ctrl-C with 130. Every process the run started has been ended by
    then, in its ``finally`` blocks."""
    try:
        sys.exit(main())
    except (ChildError, BenchmarkError, OSError) as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        sys.exit(FAILED)
    except KeyboardInterrupt:
        print("interrupted: every process ended", file=sys.stderr)
        sys.exit(INTERRUPTED)
