"""``rtc-recorder`` (and ``python -m rtc_recorder``): the command line."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import ssl
import sys
from collections.abc import Sequence

from .server import settings as server_settings
from .server.app import create_app
from .server.lifecycle import serve as serve_until_signal

EXIT_UNFINISHED = 1  # SIGTERM left a recording unfinished (its storage stopped answering)


class StructuredFormatter(logging.Formatter):
    """One line per record: ``time level event key=value ...``, or a JSON object."""

    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields = dict(getattr(record, "fields", {}))
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        message = record.getMessage()
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        if self.as_json:
            entry = {"time": stamp, "level": record.levelname, "logger": record.name}
            return json.dumps({**entry, "event": message, **fields}, default=str)
        pairs = " ".join(f"{key}={_text(value)}" for key, value in fields.items())
        return f"{stamp} {record.levelname} {message}" + (f" {pairs}" if pairs else "")


def _text(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' "=\n')) else text


def configure_logging(log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(StructuredFormatter(log_format == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("aioice", "aiortc", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def serve(argv: Sequence[str]) -> int:
    """Run the server until SIGINT/SIGTERM; every recording is finalized before exit, or
    given up after ``--shutdown-timeout`` seconds (then the exit status is 1)."""
    try:
        settings = server_settings.parse(argv)
    except ValueError as exc:
        print(f"rtc-recorder serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format)
    if settings.workers > 1:
        from .server.workers import run_workers

        return run_workers(argv, settings)
    context = None
    if settings.cert is not None and settings.key is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.cert, settings.key)
    scheme = "https" if context else "http"
    logging.getLogger("rtc_recorder.server").info(
        "serving",
        extra={
            "fields": {
                "url": f"{scheme}://{settings.host}:{settings.port}/",
                "recordings": str(settings.spool_folder.resolve()),
                "storage": settings.storage or "file:",
                "mimeType": settings.mime_type,
                "autoRecord": settings.auto_record,
                "token": settings.token is not None,
            }
        },
    )
    runner = asyncio.Runner()
    unfinished = runner.run(serve_until_signal(create_app(settings), settings, context))
    if unfinished:
        # A writer thread still blocked in the storage could hold the interpreter's exit
        # (thread pools are joined): leave now, the logs flushed.
        logging.shutdown()
        os._exit(EXIT_UNFINISHED)
    runner.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rtc-recorder`` command."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="rtc-recorder", description=__doc__)
    parser.add_argument(
        "command",
        choices=["serve", "compose"],
        help="serve: run the recording server; compose: one video of a room recording",
    )
    if not arguments or arguments[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if arguments else 2
    if arguments[0] == "compose":
        from .compose import command  # numpy and Pillow only for this command

        return command.main(arguments[1:])
    if arguments[0] != "serve":
        parser.error(f"unknown command {arguments[0]!r}")
    return serve(arguments[1:])


if __name__ == "__main__":
    sys.exit(main())
