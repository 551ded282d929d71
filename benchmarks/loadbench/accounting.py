"""Which packets a recording made through the server holds, against what its sender sent.

Pass-through recording keeps every frame's bytes, and every packet of the loop differs, so
each recorded packet is identified in the loop (:class:`LoopIndex`); with the sender's
pacing clock and the recording's start (its sidecar's ``created``), this counts what was
sent while recording, what the file holds, and what is missing where. See
benchmarks/README.md ("How recorded completely is counted") for the rules.
"""

from __future__ import annotations

import datetime
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av

from . import files, media
from .files import ffmpeg_all
from .media import AUDIO_PACKET_SAMPLES, AUDIO_RATE, EncodedLoop
from .server import sidecars

RECORDED_TARGET_PCT = 99.0  # a session is recorded completely at or above this, per kind


class LoopIndex:
    """Finds which packet of the sent loop a recorded packet is, by its bytes: pass-through
    recording keeps them exactly as they were sent (every packet of the loop differs)."""

    def __init__(self, packets: list[bytes]) -> None:
        self.length = len(packets)
        self._where = {data: index for index, data in enumerate(packets)}

    def position(self, data: bytes) -> int | None:
        """The packet's index in the loop, None if it is not one of the loop's."""
        return self._where.get(data)

    def locate(self, position: int, near: float, sent: int) -> int:
        """The absolute index (0 = the session's first packet) of the sent packet at loop
        ``position`` nearest to index ``near`` (the loop lasts 10 s; the hint is far better
        than that)."""
        turn = round((near - position) / self.length)
        candidates = [position + (turn + step) * self.length for step in (-1, 0, 1)]
        valid = [c for c in candidates if 0 <= c < sent] or candidates
        return min(valid, key=lambda candidate: abs(candidate - near))


@dataclass
class Positions:
    """The loop position of every packet of a recording, per kind, in file order (None for
    a packet that is not one the senders send: transcoded, or damaged)."""

    index: dict[str, LoopIndex]
    found: dict[str, list[int | None]] = field(default_factory=dict)

    def see(self, kind: str, packet: av.Packet[Any]) -> None:
        self.found.setdefault(kind, []).append(self.index[kind].position(bytes(packet)))


def walk_positions(positions: list[int | None], first: int, length: int) -> dict[str, Any]:
    """Follow the recorded packets through the sent ones from absolute index ``first``:
    the gaps (``[index, packets missing]``), repeats, packets out of order, packets not
    identified, and the absolute index of the last one."""
    current, gaps, repeated, disordered, unknown = first, [], 0, 0, 0
    for position in positions[1:]:
        if position is None:
            unknown += 1
            continue
        step = (position - current) % length
        if step == 0:
            repeated += 1
        elif step > length // 2:  # behind the previous packet
            disordered += 1
        else:
            if step > 1:
                gaps.append([current + 1, step - 1])
            current += step
    return {
        "last": current,
        "gaps": gaps,
        "repeated": repeated,
        "outOfOrder": disordered,
        "unidentified": unknown,
    }


def account(
    sent: int,
    interval: float,
    offset: float,
    positions: list[int | None],
    index: LoopIndex,
    keyframes: list[bool] | None,
) -> dict[str, Any]:
    """What one track sent while recording, against what its file holds (``positions``).

    ``offset`` is the recording's start in seconds from the session's first packet (packet
    ``i`` was due at ``i * interval``). Counted as sent while recording: from the first
    packet due at or after the start (for video, the first keyframe from there on;
    ``keyframes`` are the loop's flags) to the last packet sent, or from the first
    recorded packet if that one was sent earlier."""
    first_due = max(0, math.ceil(offset / interval - 1e-9))
    start = first_due
    if keyframes is not None:
        while start < sent and not keyframes[start % len(keyframes)]:
            start += 1
    first = None
    if positions and positions[0] is not None:
        first = index.locate(positions[0], offset / interval, sent)
    counted_from = start if first is None else min(start, first)
    expected = max(0, sent - counted_from)
    recorded = len(positions)
    result: dict[str, Any] = {
        "sent": sent,
        "sentWhileRecording": expected,
        "recorded": recorded,
        "recordedPct": 100.0 * recorded / expected if expected else None,
        "countedFrom": counted_from,
        "firstDueAfterStart": first_due,
        "firstRecorded": first,
    }
    if keyframes is not None:
        result["firstKeyframeAfterStart"] = start
        result["notCountedBeforeKeyframe"] = max(0, counted_from - first_due)
    if first is not None:
        walked = walk_positions(positions, first, index.length)
        result.update(
            {
                "startToFirstRecordedSeconds": first * interval - offset,
                "lastRecorded": walked["last"],
                "missingAtStart": first - counted_from,
                "missingInside": sum(count for _, count in walked["gaps"]),
                "missingAtEnd": sent - 1 - walked["last"],
                "gaps": [[round(i * interval, 3), count] for i, count in walked["gaps"][:50]],
                **{k: walked[k] for k in ("repeated", "outOfOrder", "unidentified")},
            }
        )
    return result


def verify_session(
    number: str,
    sent: dict[str, Any],
    metas: dict[str, dict[str, Any]],
    folder: Path,
    loop: EncodedLoop,
    indexes: dict[str, LoopIndex],
    decode: bool,
    ffmpeg_output: dict[Path, str],
) -> dict[str, Any]:
    """Everything about session ``number``'s recording (``sent``: its sender's report):
    the sidecar (of ``metas``, by file name), ffmpeg's verdict, the packets PyAV reads,
    and the counts against what its sender sent."""
    session_id = sent.get("serverSession")
    named = [(name, meta) for name, meta in metas.items() if meta.get("session") == session_id]
    result: dict[str, Any] = {"session": int(number), "serverSession": session_id}
    if len(named) != 1:
        result["error"] = f"{len(named)} recordings for server session {session_id}"
        result["complete"] = False
        return result
    name, meta = named[0]
    path = folder / name
    positions = Positions(indexes)
    inspected = files.inspect(path, decode=decode, on_packet=positions.see)
    started = datetime.datetime.fromisoformat(str(meta["created"])).timestamp()
    offset = started - float(sent["firstPacketWallclock"])
    video = account(
        sent["video"],
        1 / loop.spec.fps,
        offset,
        positions.found.get("video", []),
        indexes["video"],
        loop.video_keyframes,
    )
    audio = account(
        sent["audio"],
        AUDIO_PACKET_SAMPLES / AUDIO_RATE,
        offset,
        positions.found.get("audio", []),
        indexes["audio"],
        None,
    )
    errors = ffmpeg_output.get(path, "not checked")
    clean = not errors and inspected["error"] is None and not inspected["decodeErrors"]
    connected = sent.get("connectedWallclock")
    result.update(
        {
            "file": name,
            "bytes": inspected["bytes"],
            "sidecarState": meta.get("state"),
            "sidecarDuration": meta.get("duration"),
            "fileSeconds": {k: inspected[k]["seconds"] for k in ("video", "audio")},
            "sentWhileRecordingSeconds": video["sentWhileRecording"] / loop.spec.fps,
            "recordingStartAfterFirstPacket": offset,
            "recordingStartAfterConnected": None if connected is None else started - connected,
            "ffmpeg": errors,
            "pyav": {k: inspected[k] for k in ("error", "decodeErrors")},
            "decoded": {k: inspected[k]["decoded"] for k in ("video", "audio")},
            "codecs": {k: inspected[k]["codec"] for k in ("video", "audio")},
            "clean": clean,
            "video": video,
            "audio": audio,
        }
    )
    result["complete"] = bool(
        clean
        and meta.get("state") == "complete"
        and all(
            track["recordedPct"] is not None and track["recordedPct"] >= RECORDED_TARGET_PCT
            for track in (video, audio)
        )
    )
    return result


def verify(
    sent: dict[str, Any], folder: Path, media_path: Path, decode: bool
) -> list[dict[str, Any]]:
    """Check the recording of every session in ``sent`` (the senders' reports, by session
    number) found in ``folder``: ffmpeg on all cores, then PyAV one by one."""
    loop = media.load(media_path)
    indexes = {"video": LoopIndex(loop.video), "audio": LoopIndex(loop.audio)}
    metas = sidecars(folder)
    paths = [folder / name for name in metas if (folder / name).exists()]
    print(f"checking {len(paths)} recordings with ffmpeg and PyAV …", file=sys.stderr, flush=True)
    ffmpeg_output = ffmpeg_all(paths)
    return [
        verify_session(number, report, metas, folder, loop, indexes, decode, ffmpeg_output)
        for number, report in sorted(sent.items(), key=lambda item: int(item[0]))
    ]
