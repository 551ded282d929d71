"""The server's configuration, read in one place: command-line flags, each with an
``RTC_RECORDER_*`` environment variable, and defaults that work with neither."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from ..mimetype import is_type_supported
from ..receive.transport import IcePolicy
from .storage import MIB, MIN_PART_SIZE, FolderLocation, Location, parse_storage
from .webhooks import check_secret

# A setting given any number of times: its flag once per value, or its variable holding
# the values separated by commas or whitespace (a URL with a comma goes in a flag).
REPEATABLE = "tuple[str, ...]"
_LIST_SEPARATORS = re.compile(r"[,\s]+")

ADMISSION_LIMITS = (
    "admission_loop_lag",
    "admission_loop_busy",
    "admission_cpu",
    "admission_udp_drops",
)


@dataclass(frozen=True)
class Settings:
    """Everything ``rtc-recorder serve`` can be told."""

    host: str = "127.0.0.1"
    port: int = 8080
    recordings: Path = Path("recordings")
    mime_type: str = "video/webm;codecs=vp8,opus"
    timeslice: int = 1000
    auto_record: bool = False
    token: str | None = None
    cert: Path | None = None
    key: Path | None = None
    max_sessions: int = 50
    max_rooms: int = 10
    max_participants: int = 8
    max_subscriptions: int = 200
    max_body: int = 256 * 1024
    max_recording_seconds: float | None = None
    max_recording_bytes: int | None = None
    idle_timeout: float = 15.0
    ice_servers: str = ""
    ice_address: tuple[str, ...] = ()
    announce_address: str | None = None
    udp_ports: tuple[int, int] | None = None
    log_format: str = "text"
    # Admission by measured load (see admission.py); 0 turns a signal off.
    admission_loop_lag: float = 200.0
    admission_loop_busy: float = 0.6
    admission_cpu: float = 0.9
    admission_udp_drops: float = 10.0
    admission_resume: float = 0.8
    admission_calm: float = 10.0
    shutdown_timeout: float = 20.0
    storage: str = ""
    s3_endpoint: str | None = None
    spool: Path | None = None
    part_size: int = 8 * MIB
    keep_local: bool = False
    webhook: tuple[str, ...] = ()
    webhook_secret: str | None = None
    webhook_retry_seconds: float = 600.0
    # A cluster of nodes sharing a Redis registry (see cluster.py).
    redis: str | None = None
    node_url: str | None = None
    capacity: int | None = None
    heartbeat: float = 2.0
    workers: int = 1

    def __post_init__(self) -> None:
        if not is_type_supported(self.mime_type):
            raise ValueError(f"--mime-type: {self.mime_type!r} cannot be recorded")
        if (self.cert is None) != (self.key is None):
            raise ValueError("--cert and --key go together")
        for name in (
            "port",
            "timeslice",
            "max_sessions",
            "max_rooms",
            "max_participants",
            "max_subscriptions",
            "max_body",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        if self.log_format not in ("text", "json"):
            raise ValueError("--log-format is 'text' or 'json'")
        for name in (*ADMISSION_LIMITS, "admission_calm", "shutdown_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{_flag(name)} must not be negative")
        if not 0 < self.admission_resume <= 1:
            raise ValueError("--admission-resume is a ratio above 0, at most 1")
        for address in self.ice_address:
            _check_local_address(address)
        if self.announce_address is not None:
            _check_announce_address(self.announce_address)
        if self.udp_ports is not None:
            _check_port_range(self.udp_ports, self.ice_servers)
        self._check_storage()
        self._check_webhooks()
        self._check_cluster()

    def _check_storage(self) -> None:
        location = self.location
        recordings_given = self.recordings != Path("recordings")
        if (
            isinstance(location, FolderLocation)
            and recordings_given
            and location.folder.resolve() != self.recordings.resolve()
        ):
            raise ValueError("--storage file:DIR and --recordings name different folders")
        if self.part_size < MIN_PART_SIZE:
            raise ValueError(
                f"--part-size must be at least {MIN_PART_SIZE} bytes (5 MiB, S3's smallest part)"
            )

    def _check_webhooks(self) -> None:
        for url in self.webhook:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"--webhook: {url!r} is not an http(s) URL")
        if self.webhook and not self.webhook_secret:
            raise ValueError("--webhook needs --webhook-secret (events are always signed)")
        if self.webhook_secret is not None:
            check_secret(self.webhook_secret)
        if self.webhook_retry_seconds < 0:
            raise ValueError("--webhook-retry-seconds cannot be negative")

    def _check_cluster(self) -> None:
        if self.capacity is not None and self.capacity <= 0:
            raise ValueError("--capacity must be positive")
        if self.heartbeat <= 0:
            raise ValueError("--heartbeat must be positive")
        if self.workers < 1:
            raise ValueError("--workers must be at least 1")
        if self.redis is None:
            for name in ("node_url", "capacity"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{_flag(name)} needs --redis")
            if self.workers > 1:
                raise ValueError("--workers needs --redis (the workers are nodes of a cluster)")
            return
        if not self.redis.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"--redis: {self.redis!r} is not a redis://, rediss:// or unix:// URL")
        if self.workers > 1 and self.node_url is not None:
            raise ValueError("--node-url names one node; with --workers each worker has its own")
        if self.node_url is not None and not self.node_url.startswith(("http://", "https://")):
            raise ValueError(f"--node-url: {self.node_url!r} is not an http(s) URL")
        if self.node_url is None and ipaddress.ip_address(_address_of(self.host)).is_unspecified:
            raise ValueError(
                f"--redis with --host {self.host} needs --node-url (how others reach it)"
            )

    @property
    def session_limit(self) -> int:
        """The most sessions this process holds: ``--max-sessions``, or ``--capacity`` if
        that is lower."""
        if self.capacity is None:
            return self.max_sessions
        return min(self.capacity, self.max_sessions)

    @property
    def base_url(self) -> str:
        """Where other nodes and clients reach this process (``--node-url``)."""
        if self.node_url is not None:
            return self.node_url.rstrip("/")
        scheme = "https" if self.cert is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def location(self) -> Location:
        """Where finished recordings are kept (``--storage``)."""
        return parse_storage(self.storage or f"file:{self.recordings}")

    @property
    def spool_folder(self) -> Path:
        """The folder recordings are written to while they are made: the recordings folder
        itself with ``file:`` storage, else ``--spool`` (by default ``--recordings``)."""
        location = self.location
        if isinstance(location, FolderLocation):
            return location.folder
        return self.spool if self.spool is not None else self.recordings

    @property
    def ice_policy(self) -> IcePolicy:
        """Where the sessions' ICE gathers, what it announces, which ports it binds."""
        return IcePolicy(self.ice_address, self.announce_address, self.udp_ports)


def _address_of(host: str) -> str:
    """``host`` as an IP address (a name is looked up)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return socket.gethostbyname(host)


def _check_local_address(address: str) -> None:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"--ice-address: {address!r} is not an IP address") from None
    if parsed.is_unspecified:
        raise ValueError(f"--ice-address: {address} is no single address")
    family = socket.AF_INET6 if parsed.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError as exc:
            raise ValueError(
                f"--ice-address: {address} is not an address of this machine ({exc.strerror})"
            ) from None


def _check_announce_address(address: str) -> None:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"--announce-address: {address!r} is not an IP address") from None
    if parsed.is_unspecified or parsed.is_multicast:
        raise ValueError(f"--announce-address: {address} cannot be reached by a peer")


def _check_port_range(ports: tuple[int, int], ice_servers: str) -> None:
    low, high = ports
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"--udp-ports: {low}-{high} is not a range within 1-65535")
    if ice_servers.strip():
        raise ValueError(
            "--udp-ports cannot be combined with --ice-servers (STUN and TURN clients bind "
            "sockets outside the range); use --announce-address behind a 1:1 NAT"
        )


_HELP = {
    "host": "address to listen on",
    "port": "port to listen on",
    "recordings": "folder the recordings are written to (created if missing)",
    "mime_type": "type recorded when a client does not ask for one",
    "timeslice": "milliseconds of media per dataavailable chunk (and per file flush)",
    "auto_record": "record every session from its first media until hang-up",
    "token": "require 'Authorization: Bearer TOKEN' on /api, /offer, /whip, /whep, /rooms and "
    "/recordings",
    "cert": "TLS certificate (PEM) to serve HTTPS",
    "key": "TLS private key (PEM) for --cert",
    "max_sessions": "concurrent sessions; more are refused with 503",
    "max_rooms": "rooms at once; a join that would open another is refused with 503",
    "max_participants": "participants of one room; a join beyond is refused with 409",
    "max_subscriptions": "WHEP subscriptions at once; more are refused with 503",
    "max_body": "largest request body accepted, in bytes (413 beyond)",
    "max_recording_seconds": "stop a recording after this many seconds of media",
    "max_recording_bytes": "stop a recording once its file reaches this many bytes",
    "idle_timeout": "close a session that has not connected, or has sent no media, for this long",
    "ice_servers": "comma-separated STUN/TURN URLs for ICE (none by default: host candidates)",
    "ice_address": "a local address ICE gathers candidates on (default: every interface)",
    "announce_address": "the public address host candidates carry (a server behind 1:1 NAT)",
    "udp_ports": "MIN-MAX: the UDP port range every ICE socket is bound in",
    "log_format": "'text' (key=value) or 'json' (one object per line)",
    "admission_loop_lag": "refuse new sessions while the event loop's lag p99 is above this many "
    "ms (0: off)",
    "admission_loop_busy": "... while the event-loop thread is running or waiting for a CPU more "
    "than this share of the time (0: off)",
    "admission_cpu": "... while the process uses more than this share of its CPUs (0: off)",
    "admission_udp_drops": "... while the kernel drops more than this many UDP packets a second "
    "because the process' sockets were full (0: off)",
    "admission_resume": "admit again once every signal stayed below this share of its limit... "
    "(above it, new sessions are taken one at a time)",
    "admission_calm": "... for this many seconds",
    "shutdown_timeout": "seconds SIGTERM's drain takes at most: recordings finalize, then uploads "
    "and webhooks get the rest; a recording not finalized by then is logged and left, and the "
    "process exits anyway (status 1); an upload not confirmed is resumed at the next start",
    "storage": "where recordings are kept: file:DIR (the default, --recordings) or "
    "s3://BUCKET[/PREFIX]",
    "s3_endpoint": "URL of an S3-compatible store (default: AWS)",
    "spool": "folder recordings are written to before upload (default: --recordings)",
    "part_size": "bytes per multipart upload part (at least 5 MiB)",
    "keep_local": "keep a spooled recording once its upload is confirmed",
    "webhook": "POST every session and recording event to this URL",
    "webhook_secret": "Standard Webhooks signing secret (whsec_BASE64)",
    "webhook_retry_seconds": "how long a webhook delivery is retried",
    "redis": "redis://HOST[:PORT][/DB]: make this process a node of the cluster that shares "
    "this Redis",
    "node_url": "base URL other nodes and clients reach this node at (default: http://HOST:PORT)",
    "capacity": "the most sessions this node takes (placement fills the least-loaded node; "
    "at most --max-sessions)",
    "heartbeat": "seconds between a node's heartbeats; a node silent for three is dead and its "
    "sessions are reported lost",
    "workers": "run this many node processes on ports PORT..PORT+N-1 (needs --redis)",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env(name: str) -> str:
    return "RTC_RECORDER_" + name.upper()


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _parse_range(text: str) -> tuple[int, int]:
    low, separator, high = text.partition("-")
    if not separator:
        raise ValueError(f"{text!r} is not MIN-MAX")
    try:
        return int(low), int(high)
    except ValueError:
        raise ValueError(f"{text!r} is not MIN-MAX") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting; each defaults to its ``RTC_RECORDER_*`` variable."""
    for field in fields(Settings):
        help_text = f"{_HELP[field.name]} (env {_env(field.name)})"
        if field.type == "bool":
            parser.add_argument(
                _flag(field.name), action="store_true", default=None, help=help_text
            )
        elif field.type == REPEATABLE:
            parser.add_argument(
                _flag(field.name),
                action="append",
                default=None,
                metavar=field.name.upper(),
                help=f"{_HELP[field.name]}; repeatable (env {_env(field.name)}: the values "
                "separated by commas or spaces)",
            )
        else:
            parser.add_argument(
                _flag(field.name), default=None, metavar=field.name.upper(), help=help_text
            )


def from_arguments(
    arguments: argparse.Namespace, environ: Mapping[str, str] = os.environ
) -> Settings:
    """Settings from parsed flags, falling back to the environment, then to the defaults."""
    values: dict[str, object] = {}
    for field in fields(Settings):
        raw = getattr(arguments, field.name, None)
        if raw is None:
            raw = environ.get(_env(field.name))
        if raw is None or raw == "":
            continue
        values[field.name] = _convert(field.name, str(field.type), raw)
    return Settings(**values)  # type: ignore[arg-type]


def _convert(name: str, kind: str, raw: object) -> object:
    if isinstance(raw, bool):
        return raw
    if kind == REPEATABLE:
        items = raw if isinstance(raw, list) else _LIST_SEPARATORS.split(str(raw))
        return tuple(item.strip() for item in items if item.strip())
    text = str(raw)
    try:
        if kind == "tuple[int, int] | None":
            return _parse_range(text)
        if kind == "bool":
            return _parse_bool(text)
        if kind == "int":
            return int(text)
        if kind in ("float", "float | None"):
            return float(text)
        if kind == "int | None":
            return int(text)
        if "Path" in kind:
            return Path(text)
    except ValueError as exc:
        raise ValueError(f"{_flag(name)}: {exc}") from None
    return text


def parse(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> Settings:
    """Settings for ``rtc-recorder serve ARGV``."""
    parser = argparse.ArgumentParser(prog="rtc-recorder serve")
    add_arguments(parser)
    return from_arguments(parser.parse_args(list(argv)), environ)
