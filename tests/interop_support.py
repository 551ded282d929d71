"""Independent WHIP clients against a real server process, in a network of the test's own.

Shared by ``tests/test_interop.py`` and ``benchmarks/interop.py`` (which prints the
README's interoperability table). Each case starts ``rtc-recorder serve --auto-record``
and one client (FFmpeg's WHIP muxer through PyAV, or GStreamer's webrtcbin through
Debian's python3), lets it publish a known number of frames and hang up, then reads
back what was recorded.

Both run inside a network namespace made for the case (:func:`private_network`): libnice
gathers no loopback candidates and skips interfaces named ``veth*``, so the namespace has
a veth pair named ``eth0``/``eth1`` with private addresses, and nothing leaves it.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiortc.rtcdtlstransport import RTCCertificate
from cryptography.hazmat.primitives import serialization

from .media import ffmpeg_errors, probe
from .server_support import server_log, server_process

CLIENTS = Path(__file__).resolve().parent / "interop"
SERVER_ADDRESS, CLIENT_ADDRESS = "10.99.0.1", "10.99.0.2"
DEBIAN_PYTHON = "/usr/bin/python3"
_CLONE_NEWNET = 0x40000000


@contextmanager
def private_network() -> Iterator[None]:
    """Move the calling thread (and every process it starts) into a new network namespace
    with loopback up and a veth pair ``eth0`` (10.99.0.1/24) / ``eth1`` (10.99.0.2/24);
    back to the original namespace on exit, when the new one disappears with its last
    process. Needs root (CAP_SYS_ADMIN)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net") as original:
        if libc.unshare(_CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed (root needed)")
        try:
            for command in (
                "link set lo up",
                "link add eth0 type veth peer name eth1",
                f"addr add {SERVER_ADDRESS}/24 dev eth0",
                f"addr add {CLIENT_ADDRESS}/24 dev eth1",
                "link set eth0 up",
                "link set eth1 up",
            ):
                subprocess.run(["ip", *command.split()], check=True, capture_output=True)
            yield
        finally:
            if libc.setns(original.fileno(), _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the original network failed")


def p256_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed P-256 certificate and key (PEM) in ``folder``, made the way aiortc
    makes its own."""
    certificate = RTCCertificate.generateCertificate()
    cert, key = folder / "dtls-cert.pem", folder / "dtls-key.pem"
    cert.write_bytes(certificate._cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        certificate._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


@dataclass(frozen=True)
class Case:
    """One client publishing one codec into one type of recording."""

    client: str  # "ffmpeg" or "gstreamer"
    codec: str  # "h264" or "vp8"
    profile: str = "baseline"
    mime_type: str = "video/x-matroska;codecs=avc1,opus"
    certificate: str = "own"  # ffmpeg: "own" (FFmpeg's P-224 one) or "p256" (cert_file)
    frames: int = 90

    @property
    def label(self) -> str:
        extra = " (cert_file P-256)" if self.certificate == "p256" else ""
        return f"{self.client} {self.codec} {self.profile}{extra} → {self.mime_type}"


@dataclass
class Outcome:
    """What a case published and what the server recorded of it."""

    published: dict[str, Any]
    tracks: list[dict[str, Any]] = field(default_factory=list)  # the server's stop event
    recording: Path | None = None
    video_frames: int = 0
    audio_frames: int = 0
    profile: str = ""
    ffmpeg_errors: str = ""
    log: str = ""

    @property
    def video_ratio(self) -> float:
        sent = int(self.published.get("video_frames", 0))
        return self.video_frames / sent if sent else 0.0


def client_command(case: Case, url: str, folder: Path) -> list[str]:
    """The command line that publishes ``case`` to the WHIP endpoint ``url``."""
    if case.client == "gstreamer":
        return [
            DEBIAN_PYTHON,
            str(CLIENTS / "gst_whip.py"),
            url,
            f"--codec={case.codec}",
            f"--profile={case.profile}",
            f"--frames={case.frames}",
        ]
    command = [
        sys.executable,
        str(CLIENTS / "ffmpeg_whip.py"),
        url,
        f"--profile={case.profile}",
        f"--frames={case.frames}",
        f"--wait-recording={url.rsplit('/', 1)[0]}",
    ]
    if case.certificate == "p256":
        cert, key = p256_certificate(folder)
        command += [f"--cert={cert}", f"--key={key}"]
    return command


async def run_case(case: Case, folder: Path | None = None) -> Outcome:
    """Publish ``case`` to a fresh server in a private network; what came of it."""
    folder = folder or Path(tempfile.mkdtemp(prefix="rtc-recorder-interop-"))
    recordings = folder / "recordings"
    with private_network():
        async with server_process(
            recordings,
            "--auto-record",
            f"--ice-address={SERVER_ADDRESS}",
            f"--mime-type={case.mime_type}",
            "--log-format=json",
        ) as (process, base):
            client = await asyncio.create_subprocess_exec(
                *client_command(case, f"{base}/whip", folder),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            stdout, stderr = await asyncio.wait_for(client.communicate(), 90)
            lines = stdout.decode().strip().splitlines()
            published = json.loads(lines[-1]) if lines else {"error": stderr.decode()[-2000:]}
            log = server_log(process)
    return _read_back(published, log, recordings)


def _read_back(published: dict[str, Any], log: str, recordings: Path) -> Outcome:
    outcome = Outcome(published, log=log)
    for line in log.splitlines():
        entry = json.loads(line) if line.startswith("{") else {}
        if entry.get("event") == "stop":
            outcome.tracks = entry.get("tracks", [])
    files = [path for path in recordings.glob("*") if path.suffix != ".json"]
    if not files or files[0].stat().st_size == 0:
        return outcome
    outcome.recording = files[0]
    info = probe(files[0])
    outcome.video_frames = len(info["video"].frames) if "video" in info else 0
    outcome.audio_frames = len(info["audio"].frames) if "audio" in info else 0
    outcome.profile = video_profile(files[0])
    outcome.ffmpeg_errors = ffmpeg_errors(files[0])
    return outcome


def video_profile(path: Path) -> str:
    """The video stream's profile as Debian's ffprobe names it."""
    result = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=profile",
            "-of",
            "csv=p=0",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout.strip()
