"""Room recordings in tests: participants sending from a process of their own, manifests
checked against the schema, and how well a room's files line up, measured from the
participants' flashes and beeps."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import jsonschema
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from rtc_recorder import MediaStream
from rtc_recorder.manifest import MANIFEST, load_schema

from .media import (
    FLASH_PERIOD,
    beep_onsets,
    beep_onsets_in,
    decoded_pictures,
    decoded_sound,
    wait_for,
)
from .server_support import ROOT

SCHEMA = load_schema()
# Flashes and beeps this close to a cut (seconds) are left out of the measures: which side
# of the cut they belong to is not clear.
NEAR_CUT = 0.15
WHITE = 230  # mean luma of a flash
GAP = 0.05  # seconds: pictures further apart are not consecutive frames
BEEP_SPACING = 0.2  # seconds: beeps (0.1 s long) of different participants are 0.3 s apart


def valid_manifest(content: dict[str, Any]) -> dict[str, Any]:
    """``content``, once validated against the manifest's JSON Schema."""
    jsonschema.validate(content, SCHEMA)
    return content


def manifest_on_disk(folder: Path) -> dict[str, Any]:
    """The manifest as a reader finds it now, validated."""
    return valid_manifest(json.loads((folder / MANIFEST).read_text()))


def entry_on_disk(folder: Path, session: str) -> dict[str, Any] | None:
    """A participant's entry in the manifest as a reader finds it now (None: not in it)."""
    entries = manifest_on_disk(folder)["participants"]
    return next((entry for entry in entries if entry["session"] == session), None)


@dataclass
class Participant:
    """One participant as the recording side sees it: its peer connection, its stream,
    and when its sender's clock started (``time.monotonic()`` seconds)."""

    pc: RTCPeerConnection
    stream: MediaStream
    clock_start: float = 0.0


async def module_process(module: str, *args: str) -> asyncio.subprocess.Process:
    """``python -m tests.MODULE ARGS`` from the checkout, talking through pipes."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        f"tests.{module}",
        *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )


@asynccontextmanager
async def remote_participants(
    offsets: list[float], seconds: float
) -> AsyncIterator[list[Participant]]:
    """Participants sending from ``tests.room_senders`` (a process of their own), each on
    a clock ``offsets[i]`` seconds after the first one's, connected to peer connections
    here."""
    process = await module_process("room_senders", str(seconds), *map(str, offsets))
    assert process.stdin is not None and process.stdout is not None
    participants: list[Participant] = []
    try:
        offers = json.loads(await asyncio.wait_for(process.stdout.readline(), 60))["offers"]
        answers = []
        for sdp in offers:
            pc = RTCPeerConnection()
            tracks: list[MediaStreamTrack] = []
            pc.on("track", tracks.append)
            await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            answers.append(pc.localDescription.sdp)
            participants.append(Participant(pc, MediaStream(tracks)))
        process.stdin.write((json.dumps({"answers": answers}) + "\n").encode())
        await process.stdin.drain()
        starts = json.loads(await asyncio.wait_for(process.stdout.readline(), 30))["starts"]
        for participant, start in zip(participants, starts, strict=True):
            participant.clock_start = start
        await wait_for(lambda: all(p.pc.connectionState == "connected" for p in participants))
        yield participants
    finally:
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
        for participant in participants:
            await participant.pc.close()


# -- alignment ------------------------------------------------------------------------


def segment_of(instant: float, cuts: list[float]) -> int | None:
    """Which recorded stretch room time ``instant`` lies in (None: too near a cut)."""
    if any(abs(instant - cut) < NEAR_CUT for cut in cuts):
        return None
    return sum(1 for cut in cuts if cut <= instant)


def wrapped(seconds: float) -> float:
    """``seconds`` modulo the flash period, between -half and +half a period."""
    return (seconds + FLASH_PERIOD / 2) % FLASH_PERIOD - FLASH_PERIOD / 2


def room_origins(
    times: list[float], clock_start: float, cuts: list[float]
) -> dict[int, list[float]]:
    """For flashes (or beeps) of a participant at room times ``times``, per recorded
    stretch: where its room time 0 lies on the monotonic clock, modulo the flash period,
    as each flash says (a flash is taken at ``clock_start + 0.5 + k``, and within one
    stretch room time is the monotonic clock minus that origin). Files that line up give
    every participant the same origins."""
    origins: dict[int, list[float]] = {}
    for instant in times:
        segment = segment_of(instant, cuts)
        if segment is not None:
            origin = wrapped(clock_start + FLASH_PERIOD / 2 - instant)
            origins.setdefault(segment, []).append(origin)
    return origins


def alignment_errors(
    flashes: dict[str, list[float]],
    clock_starts: dict[str, float],
    cuts: list[float],
    reference: str,
) -> dict[str, list[float]]:
    """For each participant, how far each of its flashes lies (seconds) from where the
    ``reference`` participant's flashes of the same stretch put room time (its mean)."""
    origins = {s: room_origins(times, clock_starts[s], cuts) for s, times in flashes.items()}
    expected = {seg: sum(values) / len(values) for seg, values in origins[reference].items()}
    return {
        session: [
            wrapped(origin - expected[segment])
            for segment, values in per_segment.items()
            if segment in expected
            for origin in values
        ]
        for session, per_segment in origins.items()
    }


def seen_flashes(path: Path) -> list[float]:
    """The times at which a file's video turns white, where the picture before is in the
    file too (a frame interval earlier, dark): a flash whose first pictures are missing
    (video waiting for a keyframe after a resume, say) would seem to start late."""
    flashes = []
    before: tuple[float, float] | None = None
    for t, luma in decoded_pictures(path):
        level = float(luma.mean())
        if level > WHITE and before is not None and before[1] < WHITE and t - before[0] < GAP:
            flashes.append(t)
        before = (t, level)
    return flashes


def file_flashes(path: Path, start: float) -> tuple[list[float], list[float]]:
    """A participant's file's video flashes and beeps, in room time (its file at ``start``)."""
    # Beeps a second apart may come closer where a pause was cut between them.
    beeps = beep_onsets(path, spacing=BEEP_SPACING)
    return [start + t for t in seen_flashes(path)], [start + t for t in beeps]


def mix_beeps(path: Path) -> list[float]:
    """The beeps of the mix, in room time. Ogg Opus puts time 0 at the first sample after
    the pre-skip (RFC 7845); FFmpeg reports that sample at the pre-skip (the stream's
    ``start_time``, 6.5 ms), and every FFmpeg output starts there, so times are taken from
    it."""
    with av.open(str(path)) as source:
        stream = source.streams.audio[0]
        origin = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
    return [t - origin for t in beep_onsets_in(decoded_sound(path), spacing=BEEP_SPACING)]


def nearest(value: float, candidates: list[float]) -> float:
    """The signed distance from ``value`` to the nearest of ``candidates``."""
    return min((c - value for c in candidates), key=abs, default=math.inf)
