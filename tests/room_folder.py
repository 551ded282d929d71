"""A room recording folder made for the composite's tests, as the rooms contract describes
one: a file per participant (recorded with :class:`rtc_recorder.MediaRecorder` from local
synthetic tracks), the mix, and ``manifest.json``.

Every source runs on one clock (seconds since the room started, *source time*). Each
participant's picture is one known colour that turns white for 0.1 s once a second at its
own phase (its flash), and its sound beeps at its flashes while it talks. The mix is the
sum of what the participants present say. The room is recorded for :data:`STOP_AT` s of
source time with one pause (:data:`PAUSE`), which every file has cut out; Ada is there
throughout (her camera off for a second), Bob joins late, Cy (no camera) leaves early.

Rooms that need no real-time recording are written at once: by hand (:func:`room_folder`,
for manifests of any content) or with media encoded offline (:func:`write_room_offline`).
"""

from __future__ import annotations

import asyncio
import fractions
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from rtc_recorder import MediaRecorder

from .media import AUDIO_RATE, VIDEO_RATE, Clock

FPS = 30
FLASH_LENGTH = 0.1
PAUSE = (3.0, 4.0)  # source seconds the room recording is paused
STOP_AT = 8.0  # source seconds at which the room recording stops
WHITE = (255, 255, 255)
MIME_TYPE = "video/webm;codecs=vp8,opus"


@dataclass(frozen=True)
class Person:
    """A participant of the test room (times in source seconds)."""

    session: str
    name: str
    colour: tuple[int, int, int] | None  # None: no camera
    phase: float  # where in each second it flashes and beeps
    joins: float
    leaves: float | None
    talks: tuple[float, float]  # it beeps in this stretch only
    camera_off: tuple[float, float] | None = None
    width: int = 160
    height: int = 120

    def flashing(self, t: float) -> bool:
        """Whether its picture is white (and its sound beeps, while talking) at ``t``."""
        return (t - self.phase) % 1.0 < FLASH_LENGTH

    def beeping(self, times: np.ndarray) -> np.ndarray:
        """Whether it beeps (present and talking) at each of ``times``."""
        leaves = math.inf if self.leaves is None else self.leaves
        return (
            (times >= max(self.joins, self.talks[0]))
            & (times < min(leaves, self.talks[1]))
            & ((times - self.phase) % 1.0 < FLASH_LENGTH)
        )


ADA = Person("ada0a1b2c3d4", "Ada", (200, 40, 40), 0.2, 0.0, None, (0.0, 3.0), (5.0, 6.0))
BOB = Person(
    "bob0a1b2c3d4", "Bob", (40, 190, 40), 0.5, 1.5, None, (4.0, 8.0), width=192, height=108
)
CY = Person("cy00a1b2c3d4", "Cy", None, 0.8, 0.0, 6.5, (1.0, 2.0))
PEOPLE = (ADA, BOB, CY)


class ColourVideo(MediaStreamTrack):
    """A participant's camera: its colour, white while flashing, nothing while off."""

    kind = "video"

    def __init__(self, person: Person, clock: Clock) -> None:
        super().__init__()
        self.person = person
        self.clock = clock
        self._index = math.ceil(person.joins * FPS)

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        person, t = self.person, self._index / FPS
        while person.camera_off and person.camera_off[0] <= t < person.camera_off[1]:
            self._index += 1
            t = self._index / FPS
        self._index += 1
        delay = t - self.clock.now()
        if delay > 0:
            await asyncio.sleep(delay)
        assert person.colour is not None
        colour = WHITE if person.flashing(t) else person.colour
        picture = np.empty((person.height, person.width, 3), np.uint8)
        picture[:] = colour
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
        frame.pts = round(t * VIDEO_RATE)
        frame.time_base = fractions.Fraction(1, VIDEO_RATE)
        return frame


class BeepAudio(MediaStreamTrack):
    """48 kHz sound in 20 ms frames: quiet noise, and a 1 kHz beep whenever one of
    ``people`` (present at the time) beeps. One person: their microphone; all: the mix."""

    kind = "audio"

    def __init__(self, people: tuple[Person, ...], clock: Clock, begin: float = 0.0) -> None:
        super().__init__()
        self.people = people
        self.clock = clock
        self._sample = round(begin * AUDIO_RATE)
        self._noise = np.random.default_rng(len(people))

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        count = AUDIO_RATE // 50
        delay = self._sample / AUDIO_RATE - self.clock.now()
        if delay > 0:
            await asyncio.sleep(delay)
        times = (self._sample + np.arange(count)) / AUDIO_RATE
        beeping = np.logical_or.reduce([person.beeping(times) for person in self.people])
        signal = self._noise.normal(0, 30, count) + beeping * 12000 * np.sin(
            2 * np.pi * 1000 * times
        )
        frame = av.AudioFrame.from_ndarray(
            signal.astype(np.int16)[None, :], format="s16", layout="mono"
        )
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._sample
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._sample += count
        return frame


def recorder_of(person: Person, folder: Path, clock: Clock) -> MediaRecorder:
    tracks: list[MediaStreamTrack] = [BeepAudio((person,), clock, person.joins)]
    if person.colour is not None:
        tracks.append(ColourVideo(person, clock))
    mime = MIME_TYPE if person.colour is not None else "audio/webm;codecs=opus"
    return MediaRecorder(folder / f"{person.session}.webm", mimeType=mime, stream=tracks)


async def record_room(folder: Path) -> dict[str, Any]:
    """Record the test room into ``folder`` (about :data:`STOP_AT` seconds) and write its
    manifest; the manifest is returned."""
    folder.mkdir(parents=True, exist_ok=True)
    clock = Clock()
    mix = MediaRecorder(folder / "mix.ogg", stream=[BeepAudio(PEOPLE, clock)])
    members = {person: recorder_of(person, folder, clock) for person in PEOPLE}
    started = time.time()
    clock.start = time.monotonic()
    live = [mix]
    # (source time, action, recorder), in order; what was done when is kept in ``done``
    steps: list[tuple[float, str, MediaRecorder | None]] = [(0.0, "start", mix)]
    for person, recorder in members.items():
        steps.append((person.joins, "start", recorder))
        if person.leaves is not None:
            steps.append((person.leaves, "stop", recorder))
    steps += [(PAUSE[0], "pause", None), (PAUSE[1], "resume", None), (STOP_AT, "stop", None)]
    done: dict[str, float] = {}
    late = 0.0  # a busy machine runs a step late: the steps after it keep their spacing
    for at, action, recorder in sorted(steps, key=lambda step: step[0]):
        delay = at + late - clock.now()
        if delay > 0:
            await asyncio.sleep(delay)
        late = max(late, clock.now() - at)
        done.setdefault(action, clock.now())
        if action == "start" and recorder is not None:
            live.append(recorder)
            await recorder.start()
        elif action == "stop" and recorder is not None:
            live.remove(recorder)
            await recorder.stop()
        elif action == "stop":
            await asyncio.gather(*(running.stop() for running in live))
        else:
            for running in live:
                getattr(running, action)()
    manifest = manifest_of(started, done["resume"] - done["pause"], mix, members)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def manifest_of(
    started: float, paused: float, mix: MediaRecorder, members: dict[Person, MediaRecorder]
) -> dict[str, Any]:
    """The manifest of the recorded room. The mix is the room's timeline: a participant's
    file starts where its pause cut lines up with the mix's; the pause removed ``paused``
    seconds (close enough for the events, which are placed by source time)."""
    mix_stats = mix.getStats()
    cut_at = mix_stats["pauseCuts"][0]
    duration = round(mix_stats["duration"], 3)

    def room_time(t: float) -> float:
        return round(t if t < cut_at else t - paused, 3)

    participants = []
    events: list[dict[str, Any]] = []
    for person, recorder in members.items():
        stats = recorder.getStats()
        start = round(cut_at - stats["pauseCuts"][0], 3)
        end = round(min(duration, start + stats["duration"]), 3)
        kinds = ["audio", "video"] if person.colour is not None else ["audio"]
        participants.append(
            {
                "session": person.session,
                "name": person.name,
                "file": f"{person.session}.webm",
                "kinds": kinds,
                "start": start,
                "end": end,
            }
        )
        events.append({"t": start, "type": "join", "session": person.session})
        if person.leaves is not None:
            events.append({"t": end, "type": "leave", "session": person.session})
        if person.camera_off is not None:
            off, on = (room_time(t) for t in person.camera_off)
            events.append({"t": off, "type": "mute", "session": person.session, "kind": "video"})
            events.append({"t": on, "type": "unmute", "session": person.session, "kind": "video"})
    events.sort(key=lambda event: event["t"])
    when = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    return {
        "room": "standup",
        "name": f"standup-{when}",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(started)),
        "state": "finalized",
        "duration": duration,
        "mimeType": MIME_TYPE,
        "cuts": [{"at": round(cut_at, 3), "removed": round(paused, 3)}],
        "mix": "mix.ogg",
        "participants": participants,
        "events": events,
    }


# -- folders written by hand, for what needs no media ----------------------------------


def manifest(**changes: Any) -> dict[str, Any]:
    """A finalized manifest of one participant (``a.webm``) and the mix."""
    base: dict[str, Any] = {
        "room": "standup",
        "name": "standup-20261201T101500Z",
        "started": "2026-12-01T10:15:00.000Z",
        "state": "finalized",
        "duration": 2.0,
        "mimeType": "video/webm;codecs=vp8,opus",
        "cuts": [],
        "mix": "mix.ogg",
        "participants": [
            {
                "session": "a1b2c3d4e5f6",
                "name": "Ada",
                "file": "a.webm",
                "kinds": ["audio", "video"],
                "start": 0.0,
                "end": 2.0,
            }
        ],
        "events": [{"t": 0.0, "type": "join", "session": "a1b2c3d4e5f6"}],
    }
    return {**base, **changes}


def room_folder(
    parent: Path,
    content: object,
    files: tuple[str, ...] = (),
    name: str = "standup-20261201T101500Z",
) -> Path:
    """Folder ``name`` in ``parent`` holding ``content`` as its manifest (JSON unless a
    string) and empty ``files``."""
    folder = parent / name
    folder.mkdir()
    text = content if isinstance(content, str) else json.dumps(content)
    (folder / "manifest.json").write_text(text)
    for name in files:
        (folder / name).write_bytes(b"")
    return folder


def participant(**changes: Any) -> dict[str, Any]:
    """The participant of :func:`manifest`, changed."""
    return {**manifest()["participants"][0], **changes}


# -- a room written at once (longer rooms, for the jobs and the benchmark) ------------

OFFLINE_PEOPLE = (("Ada", (200, 40, 40)), ("Bob", (40, 190, 40)), ("Cy", (40, 40, 200)))


def write_participant(
    path: Path, seconds: float, colour: tuple[int, int, int], seed: int, size: tuple[int, int]
) -> None:
    """``seconds`` of VP8 (a moving gradient tinted ``colour``, a noisy patch) and Opus
    (speech-like noise bursts) in WebM."""
    random = np.random.default_rng(seed)
    with av.open(str(path), "w", format="webm") as output:
        video = output.add_stream("libvpx", rate=FPS)
        width, height = size
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"deadline": "realtime", "cpu-used": "8", "b": "400k"}
        audio = output.add_stream("libopus", rate=AUDIO_RATE)
        audio.layout = "mono"
        ramp = np.linspace(0.4, 1.0, width)[None, :, None] * np.array(colour)[None, None, :]
        for index in range(round(seconds * FPS)):
            picture = np.roll(np.repeat(ramp, height, axis=0), index * 3, axis=1).astype(np.uint8)
            patch = (height // 6, width // 6, 3)
            picture[: patch[0], : patch[1]] = random.integers(0, 255, patch, np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = index
            output.mux(video.encode(frame))
        write_sound(output, audio, seconds, random)
        output.mux(video.encode(None))


def write_sound(output: Any, audio: Any, seconds: float, random: np.random.Generator) -> None:
    """``seconds`` of Opus into ``audio`` of ``output``: 3 s of loud noise, 3 s of quiet."""
    block = 960
    for start in range(0, round(seconds * AUDIO_RATE), block):
        talking = (start // (AUDIO_RATE * 3)) % 2 == 0
        samples = random.normal(0, 3000 if talking else 30, block).astype(np.float32) / 32768
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        frame.sample_rate, frame.pts = AUDIO_RATE, start
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        output.mux(audio.encode(frame))
    output.mux(audio.encode(None))


def write_room_offline(folder: Path, seconds: float, size: tuple[int, int] = (320, 240)) -> None:
    """A finalized room recording of ``seconds`` written at once (not in real time): three
    participants of VP8 + Opus in WebM (Ada throughout, Bob from a third of the way in,
    Cy until two thirds), the mix in Ogg/Opus, and the manifest."""
    folder.mkdir(parents=True)
    spans = [(0.0, seconds), (seconds / 3, seconds), (0.0, 2 * seconds / 3)]
    participants = []
    for index, ((name, colour), (start, end)) in enumerate(zip(OFFLINE_PEOPLE, spans, strict=True)):
        session = f"{name.lower():0<12}"
        write_participant(folder / f"{session}.webm", end - start, colour, index, size)
        participants.append(
            {
                "session": session,
                "name": name,
                "file": f"{session}.webm",
                "kinds": ["audio", "video"],
                "start": start,
                "end": end,
            }
        )
    with av.open(str(folder / "mix.ogg"), "w", format="ogg") as output:
        audio = output.add_stream("libopus", rate=AUDIO_RATE)
        audio.layout = "mono"
        write_sound(output, audio, seconds, np.random.default_rng(9))
    manifest = {
        "room": "bench",
        "name": folder.name,
        "started": "2026-12-01T10:15:00.000Z",
        "state": "finalized",
        "duration": seconds,
        "mimeType": "video/webm;codecs=vp8,opus",
        "cuts": [],
        "mix": "mix.ogg",
        "participants": participants,
        "events": [
            {"t": p["start"], "type": "join", "session": p["session"]} for p in participants
        ],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
