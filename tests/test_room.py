"""Room recordings (``RoomRecorder``): real aiortc peer connections on loopback, the files
decoded back, the manifest checked against its schema while recording and after."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from aiortc.mediastreams import MediaStreamTrack

from rtc_recorder import InvalidStateError, MediaStream, NotSupportedError
from rtc_recorder.receive import hooks
from rtc_recorder.room import RoomRecorder

from .media import SyntheticAudio, SyntheticVideo, duration, ffmpeg_errors, probe, wait_for
from .room_support import (
    Participant,
    alignment_errors,
    entry_on_disk,
    file_flashes,
    manifest_on_disk,
    mix_beeps,
    module_process,
    nearest,
    remote_participants,
    valid_manifest,
)

logger = logging.getLogger(__name__)

# Each participant's clock starts this long after the first one's: their flashes and
# beeps fall at their own instants, a third of a second apart.
OFFSETS = [0.0, 0.3, 0.6]
SESSIONS = ["ada", "bob", "cyd"]
ALIGNMENT = 0.020  # seconds: the rooms contract's bound


async def recorded(room: RoomRecorder, seconds: float) -> None:
    """Wait until the room recording has lasted ``seconds`` and media of every participant
    recording now has reached its file."""

    def reached() -> bool:
        stats = room.getStats()
        return stats["recordedTime"] >= seconds and all(
            p["state"] == "inactive" or any(t["framesWritten"] for t in p["tracks"])
            for p in stats["participants"].values()
        )

    await wait_for(reached, seconds + 15, f"{seconds} s of room recording")


async def reports_arrived(participants: list[Participant]) -> None:
    """Wait until the senders' reports have come for every track of ``participants``."""
    taps = [hooks.tap_track(t) for p in participants for t in p.stream]
    await wait_for(lambda: all(t is not None and t.synchronised for t in taps), 15, "reports")


async def test_a_room_recording_lines_up_its_files_and_mixes_every_participant(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "standup-20261201T101500Z"
    samples: list[dict[str, Any]] = []
    async with remote_participants(OFFSETS, 12.0) as participants:
        ada, bob, cyd = participants
        room = RoomRecorder(folder, room="standup", timeslice=500)
        room.add_participant("ada", "Ada", ada.stream)
        room.add_participant("bob", "Bob", bob.stream)
        events: list[str] = []
        files: set[str] = set()
        for name in ("start", "pause", "resume", "error", "stop"):
            room.on(name, lambda event, name=name: events.append(name))
        room.on("dataavailable", lambda event: files.add(event.file))
        await reports_arrived([ada, bob])  # the call is on: the room starts recording it
        await room.start()
        # Written before the participants' files exist, then again with them.
        samples.append(manifest_on_disk(folder))
        await wait_for(lambda: len(manifest_on_disk(folder)["participants"]) == 2)
        await recorded(room, 2.0)
        room.add_participant("cyd", "Cyd", cyd.stream)  # joins late
        await recorded(room, 4.0)
        samples.append(manifest_on_disk(folder))
        paused = [time.monotonic()]
        await room.pause()
        await asyncio.sleep(0.6)  # the scenario: paused for a while
        samples.append(manifest_on_disk(folder))
        room.resume()
        paused[0] = time.monotonic() - paused[0]
        await recorded(room, 6.0)
        room.remove_participant("bob")  # leaves early
        await recorded(room, 7.5)
        paused.append(time.monotonic())
        await room.pause()
        await asyncio.sleep(0.5)
        room.resume()
        paused[1] = time.monotonic() - paused[1]
        await recorded(room, 10.0)
        samples.append(manifest_on_disk(folder))
        await room.stop()
        clock_starts = dict(zip(SESSIONS, (p.clock_start for p in participants), strict=True))
    manifest = manifest_on_disk(folder)
    assert room.manifest() == manifest

    # The manifest while recording, and at the end.
    assert [s["state"] for s in samples] == ["recording", "recording", "paused", "recording"]
    assert [len(s["participants"]) for s in samples][1:] == [3, 3, 3]
    assert samples[-1]["participants"][1]["end"] is not None  # bob has left
    assert manifest["state"] == "finalized"
    assert manifest["room"] == "standup" and manifest["name"] == folder.name
    assert manifest["mix"] == "mix.ogg"
    assert [(e["type"], e["session"]) for e in manifest["events"]] == [
        ("join", "ada"),
        ("join", "bob"),
        ("join", "cyd"),
        ("leave", "bob"),
    ]
    times = {(e["type"], e["session"]): e["t"] for e in manifest["events"]}
    assert 2.0 <= times["join", "cyd"] < 3.0 and 6.0 <= times["leave", "bob"] < 7.0
    assert len(manifest["cuts"]) == 2
    # The pauses cut out what they lasted, in whole frames (1/30 s) of the room's video
    # (the total within half a frame), or less where video resumed on a keyframe taken in
    # a pause (the timing's choice).
    removed = [cut["removed"] for cut in manifest["cuts"]]
    assert all(r > 0.2 and r * 30 == pytest.approx(round(r * 30), abs=1e-3) for r in removed)
    assert sum(removed) <= sum(paused) + 1 / 60
    entries = {p["session"]: p for p in manifest["participants"]}
    assert entries["bob"]["end"] == times["leave", "bob"]
    assert entries["ada"]["end"] == entries["cyd"]["end"] == manifest["duration"]
    assert -0.04 < entries["ada"]["start"] < 0.5 and -0.04 < entries["bob"]["start"] < 0.5
    assert times["join", "cyd"] - 0.2 < entries["cyd"]["start"] < times["join", "cyd"] + 1.5
    assert events == ["start", "pause", "resume", "pause", "resume", "stop"]
    assert files == {"ada.webm", "bob.webm", "cyd.webm", "mix.ogg"}

    # Every file decodes cleanly, and covers its participant's time in the room.
    cuts = [c["at"] for c in manifest["cuts"]]
    flashes, beeps = {}, {}
    for session, entry in entries.items():
        path = folder / entry["file"]
        assert not ffmpeg_errors(path), session
        assert entry["start"] + duration(probe(path)) == pytest.approx(entry["end"], abs=0.4)
        flashes[session], beeps[session] = file_flashes(path, entry["start"])
    assert not ffmpeg_errors(folder / "mix.ogg")

    # Placed at their starts, the files line up: every participant's flashes say the same
    # room timeline as ada's, stretch by stretch.
    errors = alignment_errors(flashes, clock_starts, cuts, "ada")
    for session, found in errors.items():
        logger.warning(
            "%s: %d flashes, alignment error %s ms",
            session,
            len(found),
            [round(e * 1000, 1) for e in found],
        )
        assert len(found) >= 3, (session, found)
        assert max(map(abs, found)) < ALIGNMENT, (session, found)

    # The mix holds every participant's beeps where their files have them.
    mixed = mix_beeps(folder / "mix.ogg")
    for session, onsets in beeps.items():
        kept = [t for t in onsets if all(abs(t - cut) > 0.15 for cut in cuts)]
        misses = [nearest(t, mixed) for t in kept]
        logger.warning("%s: mix beep errors %s ms", session, [round(m * 1000, 1) for m in misses])
        assert len(kept) >= 3
        assert max(map(abs, misses)) < ALIGNMENT, (session, misses)
    valid_manifest(manifest)


async def test_a_killed_room_recording_leaves_a_valid_manifest_and_playable_files(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "killed-20261201T101500Z"
    process = await module_process("room_process", str(folder))
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        ready = json.loads(line)["ready"]
        before = manifest_on_disk(folder)
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    after = manifest_on_disk(folder)  # valid: never a half-written one
    assert after["state"] == "recording" and len(after["cuts"]) == 1
    assert after["duration"] >= before["duration"] >= ready["recordedTime"] - 0.5
    assert [p["session"] for p in after["participants"]] == ["p0", "p1"]
    for entry in after["participants"]:
        path = folder / entry["file"]
        assert entry["start"] is not None and entry["end"] is None
        assert not ffmpeg_errors(path), entry
        kept = entry["start"] + duration(probe(path))
        logger.warning("%s: %.2f s of %.2f s on disk", entry["file"], kept, after["duration"])
        assert kept >= after["duration"] - 1.0  # a timeslice (0.5 s), and what was on its way
    mix = folder / after["mix"]
    assert not ffmpeg_errors(mix)
    mixed = duration(probe(mix))
    logger.warning("mix: %.2f s of %.2f s on disk", mixed, after["duration"])
    assert mixed >= after["duration"] - 3.0


# -- the state machine, on local tracks ----------------------------------------------------


def audio_room(folder: Path, **options: Any) -> RoomRecorder:
    """A room recorded as Ogg Opus (each participant's sound transcoded on its thread)."""
    return RoomRecorder(folder, room="r", mimeType="audio/ogg;codecs=opus", **options)


def event_names(room: RoomRecorder) -> list[str]:
    names: list[str] = []
    for name in ("start", "pause", "resume", "dataavailable", "error", "stop"):
        room.on(name, lambda event, name=name: names.append(name))
    return names


async def media_in_every_file(room: RoomRecorder) -> None:
    def written() -> bool:
        stats = room.getStats()["participants"].values()
        return all(any(t["framesWritten"] for t in s["tracks"]) for s in stats)

    await wait_for(written, 15, "media in every participant's file")


def test_the_constructor_refuses_what_it_cannot_record(tmp_path: Path) -> None:
    for mime_type in ("video/x-flv", "video/webm;codecs=h264", "text/plain"):
        with pytest.raises(NotSupportedError):
            RoomRecorder(tmp_path, room="r", mimeType=mime_type)
    for name in ("", "no spaces", "x" * 65, "dot.dot"):
        with pytest.raises(ValueError):
            RoomRecorder(tmp_path, room=name)
    with pytest.raises(TypeError):
        RoomRecorder(tmp_path, room="r", timeslice="1000")  # type: ignore[arg-type]
    assert RoomRecorder(tmp_path, room="r").mimeType == "video/webm;codecs=vp8,opus"


async def test_start_needs_a_participant_with_a_live_track_the_type_takes(
    tmp_path: Path,
) -> None:
    room = audio_room(tmp_path / "r-1")
    with pytest.raises(NotSupportedError):
        room.start()
    room.add_participant("v", "Video only", [SyntheticVideo()])
    with pytest.raises(NotSupportedError) as raised:
        room.start()
    assert raised.value.name == "NotSupportedError" and room.state == "inactive"
    assert not (tmp_path / "r-1").exists()


async def test_the_room_follows_the_recorder_contracts_state_table(tmp_path: Path) -> None:
    folder = tmp_path / "r-1"
    room = audio_room(folder)
    room.add_participant("ada", "Ada", [SyntheticAudio()])
    names = event_names(room)
    files: list[str] = []
    room.on("dataavailable", lambda event: files.append(event.file))
    for method in (room.pause, room.resume, room.requestData):
        with pytest.raises(InvalidStateError) as raised:
            method()
        assert raised.value.name == "InvalidStateError"
    await room.stop()  # inactive: nothing
    started = room.start()
    assert room.state == "recording"
    with pytest.raises(InvalidStateError):
        room.start()
    await started
    await room.resume()  # recording: nothing
    await media_in_every_file(room)
    paused = room.pause()
    assert room.state == "paused"
    await room.pause()  # paused: nothing
    await paused
    await room.requestData()
    assert sorted(files) == ["ada.ogg", "mix.ogg"]
    resumed = room.resume()
    assert room.state == "recording"
    await resumed
    stopped = room.stop()
    assert room.state == "inactive"
    await stopped
    await room.stop()  # idempotent
    assert names[:2] == ["start", "pause"]
    assert names[2:4] == ["dataavailable", "dataavailable"]  # requestData: both files
    assert names[4] == "resume" and names[-1] == "stop"
    assert set(names[5:-1]) == {"dataavailable"}
    with pytest.raises(InvalidStateError):
        room.start()  # one recording per RoomRecorder
    manifest = manifest_on_disk(folder)
    assert manifest["state"] == "finalized"
    # The file starts with the room: its time 0 lies before its first sound by Opus's
    # pre-skip (6.5 ms), so up to that much before the room's time 0.
    start = room.getStats()["participants"]["ada"]["fileStart"]
    assert manifest["participants"][0]["start"] == round(start, 6)
    assert -0.0065 <= start < 0.02


async def test_start_fires_even_when_stop_follows_at_once(tmp_path: Path) -> None:
    folder = tmp_path / "r-1"
    room = audio_room(folder)
    room.add_participant("ada", "Ada", [SyntheticAudio()])
    names = event_names(room)
    room.start()
    await room.stop()
    assert names[0] == "start" and names[-1] == "stop"
    assert set(names[1:-1]) <= {"dataavailable"}
    manifest = manifest_on_disk(folder)
    assert manifest["state"] == "finalized"
    assert not ffmpeg_errors(folder / "mix.ogg")


async def test_participants_are_checked(tmp_path: Path) -> None:
    room = audio_room(tmp_path / "r-1")
    for bad in ("", "a/b", "../x", "x" * 65):
        with pytest.raises(ValueError):
            room.add_participant(bad, "X", [SyntheticAudio()])
    with pytest.raises(ValueError):
        room.add_participant("mix", "Mix", [SyntheticAudio()])  # mix.ogg is the mix's
    room.add_participant("gone", "Gone", [SyntheticAudio()])
    room.remove_participant("gone")  # before the recording: never part of it
    room.add_participant("ada", "Ada", [SyntheticAudio()])
    with pytest.raises(ValueError):
        room.add_participant("ada", "Ada again", [SyntheticAudio()])
    for call in (lambda: room.remove_participant("nobody"), lambda: room.mute("x", "audio", True)):
        with pytest.raises(KeyError):
            call()
    with pytest.raises(ValueError):
        room.mute("ada", "data", True)
    await room.start()
    await room.stop()
    with pytest.raises(InvalidStateError):
        room.add_participant("late", "Too late", [SyntheticAudio()])
    assert [p["session"] for p in room.manifest()["participants"]] == ["ada"]  # type: ignore[index]


async def test_mutes_are_noted_and_a_muted_participant_holds_up_no_mix(tmp_path: Path) -> None:
    folder = tmp_path / "r-1"
    room = audio_room(folder)
    room.add_participant("ada", "Ada", [SyntheticAudio()])
    room.add_participant("bob", "Bob", [SyntheticAudio()])
    room.mute("bob", "audio", True)  # muted from the start
    await room.start()
    await media_in_every_file(room)
    room.mute("ada", "audio", True)
    room.mute("ada", "audio", True)  # no change: no event
    room.mute("ada", "audio", False)
    await room.stop()
    events = [(e["type"], e["session"], e.get("kind")) for e in manifest_on_disk(folder)["events"]]
    assert events == [
        ("join", "ada", None),
        ("join", "bob", None),
        ("mute", "bob", "audio"),
        ("mute", "ada", "audio"),
        ("unmute", "ada", "audio"),
    ]


async def test_a_participants_failure_ends_its_file_and_the_room_goes_on(tmp_path: Path) -> None:
    folder = tmp_path / "r-1"
    room = audio_room(folder, timeslice=200)
    failing = MediaStream([SyntheticAudio()])
    room.add_participant("ada", "Ada", failing)
    room.add_participant("bob", "Bob", [SyntheticAudio()])
    names = event_names(room)
    await room.start()
    await media_in_every_file(room)
    failing.addTrack(SyntheticAudio())  # a recorded stream's tracks change: ada's file ends

    def ada_ended() -> bool:
        entry = entry_on_disk(folder, "ada")
        return entry is not None and entry["end"] is not None

    await wait_for(ada_ended, 10, "ada's file to end")
    assert room.state == "recording"
    await room.stop()
    assert "error" not in names  # the room itself did not fail
    ada, bob = manifest_on_disk(folder)["participants"]
    assert ada["error"] == "InvalidModificationError" and "error" not in bob
    assert ada["end"] < bob["end"]
    for entry in (ada, bob):
        assert not ffmpeg_errors(folder / entry["file"])


async def test_a_folder_holding_a_room_recording_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "r-1"
    first = audio_room(folder)
    first.add_participant("ada", "Ada", [SyntheticAudio()])
    await first.start()
    await first.stop()
    second = audio_room(folder)
    second.add_participant("bob", "Bob", [SyntheticAudio()])
    with pytest.raises(FileExistsError):
        second.start()
    assert second.state == "inactive"
    assert manifest_on_disk(folder)["participants"][0]["session"] == "ada"


class SilentVideo(MediaStreamTrack):
    """A live camera that never gives a picture."""

    kind = "video"

    async def recv(self) -> Any:
        await asyncio.Event().wait()


async def test_a_participant_is_listed_with_the_kinds_its_file_holds(tmp_path: Path) -> None:
    folder = tmp_path / "r-1"
    room = RoomRecorder(folder, room="r")  # WebM: audio and video
    room.add_participant("ada", "Ada", [SilentVideo(), SyntheticAudio()])
    await room.start()
    assert room.manifest()["participants"][0]["kinds"] == ["audio", "video"]  # type: ignore[index]

    def described() -> bool:
        entry = entry_on_disk(folder, "ada")
        return entry is not None and entry["start"] is not None

    await wait_for(described, 15, "the file's header")  # written without video, in time
    await room.stop()
    entry = manifest_on_disk(folder)["participants"][0]
    assert entry["kinds"] == ["audio"]
    assert list(probe(folder / entry["file"])) == ["audio"]
