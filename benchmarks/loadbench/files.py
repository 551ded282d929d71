"""What ended up in a recording: its packets per stream and how many frames decode (PyAV),
and whether FFmpeg decodes it without a word.

Runs in the orchestrator after the recording processes have exited, so it never weighs on
a measurement."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import av

FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"


def _empty_stream(decode: bool) -> dict[str, Any]:
    return {
        "codec": None,
        "packets": 0,
        "keyframes": 0,
        "decoded": 0 if decode else None,
        "seconds": 0.0,
    }


def inspect(
    path: Path,
    decode: bool = True,
    on_packet: Callable[[str, av.Packet[Any]], None] | None = None,
) -> dict[str, Any]:
    """Packets (and, with ``decode``, frames decoded without error) of the first video and
    first audio stream of ``path``, their span in seconds, and any error met. ``decoded``
    is None without ``decode``. ``on_packet(kind, packet)``, if given, sees every counted
    packet (non-empty, with a pts) in file order."""
    result: dict[str, Any] = {
        "file": str(path),
        "bytes": path.stat().st_size if path.exists() else 0,
        "video": _empty_stream(decode),
        "audio": _empty_stream(decode),
        "decodeErrors": 0,
        "error": None,
    }
    if not path.exists():
        result["error"] = "missing"
        return result
    try:
        with av.open(str(path)) as container:
            streams = {}
            for kind in ("video", "audio"):
                found = [s for s in container.streams if s.type == kind]
                if found:
                    streams[kind] = found[0]
                    result[kind]["codec"] = found[0].codec_context.name
            if "video" in streams:
                streams["video"].codec_context.thread_type = "AUTO"
            spans: dict[str, list[float]] = {kind: [] for kind in streams}
            for packet in container.demux(*streams.values()):
                kind = packet.stream.type
                info = result[kind]
                if packet.size and packet.pts is not None:
                    info["packets"] += 1
                    info["keyframes"] += int(packet.is_keyframe)
                    if on_packet is not None:
                        on_packet(kind, packet)
                    start = float(packet.pts * packet.time_base)
                    length = float((packet.duration or 0) * packet.time_base)
                    span = spans[kind]
                    if span:
                        span[0], span[1] = min(span[0], start), max(span[1], start + length)
                    else:
                        span.extend((start, start + length))
                if decode:
                    try:
                        info["decoded"] += len(packet.decode())  # empty packets flush
                    except av.error.FFmpegError:
                        result["decodeErrors"] += 1
            for kind, span in spans.items():
                if span:
                    result[kind]["seconds"] = round(span[1] - span[0], 3)
    except (av.error.FFmpegError, OSError) as error:
        result["error"] = repr(error)
    return result


def ffmpeg_errors(path: Path) -> str:
    """What ``ffmpeg -v error -i FILE -f null -`` prints (nothing for a clean file)."""
    result = subprocess.run(
        [FFMPEG, "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        check=False,
    )
    output = (result.stdout + result.stderr).strip()
    if result.returncode and not output:
        output = f"ffmpeg exited with status {result.returncode}"
    return output


def ffmpeg_all(paths: Sequence[Path]) -> dict[Path, str]:
    """:func:`ffmpeg_errors` of every path, one ffmpeg per core at a time."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(paths, pool.map(ffmpeg_errors, paths), strict=True))
