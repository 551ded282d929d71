"""``RoomRecorder``: a call of several participants recorded as one recording, a folder.

The room recording has one W3C state machine (the recorder contract's: the same states,
methods, errors and event order as :class:`~rtc_recorder.MediaRecorder`), and is made of:

- one recording per participant (a :class:`~rtc_recorder.MediaRecorder` writing
  ``{session}.{ext}``, pass-through and crash-safe as any), started when the participant
  joins (or when the room starts recording) and finalized when it leaves;
- one :class:`~rtc_recorder.timing.Timeline` that every one of them places its media on:
  the room's start, pauses and stop. Every participant's media is placed by its sender's
  RTCP reports on this process's clock, so the files line up (a file's time 0 lies at its
  manifest ``start``), and a pause cuts every file by the same span;
- the mix (:mod:`rtc_recorder.mix`), fed the sound each participant's recording writes;
- ``manifest.json`` (:mod:`rtc_recorder.manifest`), rewritten atomically whenever it
  changes and at least every timeslice while recording.

Events: ``start``, ``pause``, ``resume``, ``dataavailable`` (a chunk of one of the files:
:class:`RoomBlobEvent`, with ``file``), ``error`` (the room recording itself failed: the
mix or the manifest could not be written; it then stops) and ``stop`` (every file
finalized, the manifest's state ``finalized``). A participant's own failure (its file
could not be written, its stream's tracks changed) ends that participant's file, kept
playable, and shows in its manifest entry (``error``); the room goes on.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import functools
import logging
import os
import re
import time
from collections import deque
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiortc.mediastreams import MediaStreamTrack

from .errors import InvalidStateError, NotSupportedError, RecorderError, as_recorder_error
from .events import BlobEvent, ErrorEvent, Event, EventEmitter, Handler, call_from_thread
from .manifest import MANIFEST, Manifest, ManifestWriter, Participant, RoomEvent, write_manifest
from .mediarecorder import MediaRecorder, timeslice_micros
from .mediastream import MediaStream
from .mimetype import file_extension, parse_type
from .mix import RoomMix
from .receive import hooks
from .timing import DEFAULT_FRAME_INTERVAL, Timeline
from .writer import Chunk, WriterEvent

logger = logging.getLogger("rtc_recorder")

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # rooms and sessions (their files' names)
DEFAULT_TYPE = "video/webm;codecs=vp8,opus"
MIX_FILE = "mix.ogg"
# The manifest is rewritten every timeslice while recording, every second without one,
# and never more often than this (seconds).
MANIFEST_EVERY = 1.0
MANIFEST_AT_MOST = 0.1
KINDS = ("audio", "video")


@dataclass(frozen=True)
class RoomBlobEvent(BlobEvent):
    """``dataavailable`` of a room recording: the next chunk of one of its files,
    ``file`` (a participant's ``{session}.{ext}``, or the mix)."""

    file: str = ""


@dataclass(eq=False)
class _Member:
    """A participant, and its recording once it has one."""

    session: str
    name: str
    stream: MediaStream
    present: bool = True
    muted: set[str] = field(default_factory=set)
    recorder: MediaRecorder | None = None
    entry: Participant | None = None  # its manifest entry, once recorded

    @property
    def recording(self) -> bool:
        """Whether its recording is going on (not stopped, nor stopping)."""
        return self.recorder is not None and self.recorder.state != "inactive"

    @property
    def has_audio(self) -> bool:
        return self.entry is not None and "audio" in self.entry.kinds


class RoomRecorder(EventEmitter):
    """Records a room: every participant's media into a file of its own, their sound
    mixed, and a manifest, in ``folder`` (created at :meth:`start`).

    :param folder: the recording's folder (the rooms contract names it
        ``{room}-{UTC time}``); a folder that already holds a manifest is refused.
    :param room: the room's name (1-64 characters of ``[A-Za-z0-9_-]``).
    :param mimeType: the participants' files' type (the recorder contract's table;
        "" is ``video/webm;codecs=vp8,opus``). The mix is always Ogg Opus.
    :param timeslice: ms of media per ``dataavailable`` chunk (and per manifest rewrite);
        ``start(timeslice)`` may give another.

    A ``RoomRecorder`` makes one recording: after :meth:`stop`, make another (with another
    folder) to record again.
    """

    # Handlers called before those registered with on(), as a browser's onX attributes.
    onstart: Handler | None = None
    onpause: Handler | None = None
    onresume: Handler | None = None
    ondataavailable: Handler | None = None
    onerror: Handler | None = None
    onstop: Handler | None = None

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        room: str,
        mimeType: str = "",
        timeslice: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(room, str) or not NAME.fullmatch(room):
            raise ValueError("a room name is 1-64 characters of A-Z, a-z, 0-9, _ and -")
        if not isinstance(mimeType, str):
            raise TypeError("mimeType must be a string")
        self.folder = Path(folder)
        self.room = room
        self.mimeType = mimeType or DEFAULT_TYPE
        recording = parse_type(self.mimeType)
        if recording.container.name not in ("webm", "matroska", "mp4", "ogg", "wav"):
            raise NotSupportedError(f"a room cannot be recorded as {self.mimeType}")
        self._type = recording
        self._extension = file_extension(recording)
        self._timeslice = _milliseconds(timeslice)
        self._state = "inactive"
        self._members: dict[str, _Member] = {}
        self._timeline: Timeline | None = None
        self._mix: RoomMix | None = None
        self._writer: ManifestWriter | None = None
        self._manifest: Manifest | None = None
        self._published: dict[str, Any] | None = None
        self._forwarding = False  # whether chunks go out as dataavailable events
        self._tick: asyncio.TimerHandle | None = None
        self._mix_waiters: deque[asyncio.Future[None]] = deque()
        self._mix_closed: asyncio.Future[None] | None = None
        self._finishing: asyncio.Task[None] | None = None
        self._stopped_event: asyncio.Future[None] | None = None  # resolves once stop fired
        self._tasks: set[asyncio.Task[None]] = set()

    # -- participants -----------------------------------------------------------------

    def add_participant(
        self,
        session_id: str,
        name: str,
        stream: MediaStream | Iterable[MediaStreamTrack],
    ) -> None:
        """``session_id`` joins (as ``name``) with ``stream``: recorded from now on if the
        room is recording, else from :meth:`start`.

        ``ValueError`` for a session id that is not 1-64 characters of ``[A-Za-z0-9_-]``
        or that took part already; ``InvalidStateError`` once the recording has stopped.
        """
        if not isinstance(session_id, str) or not NAME.fullmatch(session_id):
            raise ValueError("a session id is 1-64 characters of A-Z, a-z, 0-9, _ and -")
        if session_id + self._extension == MIX_FILE:
            raise ValueError(f"a session called {session_id!r} would overwrite the mix")
        if not isinstance(name, str):
            raise TypeError("name must be a string")
        if session_id in self._members:
            raise ValueError(f"{session_id} has taken part in this room recording already")
        if self._stopped:
            raise InvalidStateError("the room recording has stopped")
        stream = stream if isinstance(stream, MediaStream) else MediaStream(stream)
        member = self._members[session_id] = _Member(session_id, name, stream)
        if self._state != "inactive":
            self._record(member)
            self._publish()

    def remove_participant(self, session_id: str) -> None:
        """``session_id`` leaves: its file is finalized now (``KeyError`` if it is not in
        the room)."""
        member = self._present(session_id)
        member.present = False
        if self._timeline is None:
            del self._members[session_id]  # never recorded
            return
        if self._state == "inactive" or member.entry is None:
            return
        now = self._now()
        self._log("leave", member, at=now)
        self._end(member, now)
        self._publish()

    def mute(self, session_id: str, kind: str, muted: bool) -> None:
        """A track of ``kind`` of ``session_id`` stopped (``muted``) or started sending
        media again: noted in the manifest's events; the mix waits for no sound of a
        muted participant."""
        member = self._present(session_id)
        if kind not in KINDS:
            raise ValueError("kind is 'audio' or 'video'")
        if (kind in member.muted) == bool(muted):
            return
        (member.muted.add if muted else member.muted.discard)(kind)
        if self._state != "inactive" and member.recording:
            self._note_mute(member, kind)
            self._publish()

    @property
    def participants(self) -> list[str]:
        """The sessions in the room, in the order they joined."""
        return [m.session for m in self._members.values() if m.present]

    # -- the specification's API ------------------------------------------------------

    @property
    def state(self) -> str:
        """ "inactive", "recording" or "paused"."""
        return self._state

    @property
    def _stopped(self) -> bool:
        return self._timeline is not None and self._state == "inactive"

    def start(self, timeslice: float | None = None) -> asyncio.Future[None]:
        """Start recording every participant, the mix and the manifest; with ``timeslice``
        (ms), ``dataavailable`` fires every ``timeslice`` ms of media of each file."""
        if self._state != "inactive":
            raise InvalidStateError(f"start() called while {self._state}")
        if self._timeline is not None:
            raise InvalidStateError(
                "a RoomRecorder makes one recording (one folder): make another to record again"
            )
        if timeslice is not None:
            self._timeslice = _milliseconds(timeslice)
        recordable = [m for m in self._members.values() if self._recordable(m)]
        if not recordable:
            raise NotSupportedError(
                f"nothing to record: no participant has a live track that {self.mimeType} takes"
            )
        loop = self._running_loop()
        self.folder.mkdir(parents=True, exist_ok=True)
        if (self.folder / MANIFEST).exists():
            raise FileExistsError(f"{self.folder} holds a room recording already")
        # Video taken from a receiver restarts on keyframes, which settle each (re)start.
        keyframed = any(tap is not None for tap in self._video_taps())
        self._timeline = Timeline(time.monotonic(), self._grid, video=keyframed)
        self._manifest = Manifest(
            self.room,
            self.folder.name,
            datetime.datetime.now(datetime.UTC),
            self.mimeType,
            MIX_FILE,
        )
        # Written here, before any file of the recording exists: the folder always has one.
        write_manifest(self.folder, self._manifest.to_json(), durable=False)
        self._writer = ManifestWriter(self.folder, self._on_thread_failure)
        self._writer.start()
        self._forwarding = self.has_listeners("dataavailable")
        micros = timeslice_micros(self._timeslice)
        self._mix = RoomMix(
            self.folder / MIX_FILE,
            lambda event: call_from_thread(loop, self._on_mix_event, event),
            timeslice_us=micros,
            keep_chunks=self._forwarding,
        )
        self._mix_closed = loop.create_future()
        self._mix.start()
        self._state = "recording"
        for member in recordable:
            self._record(member)
        self._schedule_tick()
        self._publish()
        return self._queue(Event("start"))

    def pause(self) -> asyncio.Future[None]:
        """Pause every participant's recording at once: the same span is cut out of every
        file (and the mix)."""
        timeline = self._active("pause")
        if self._state == "paused":
            return self._resolved()
        self._state = "paused"
        timeline.pause(time.monotonic())
        for recorder in self._recorders():
            recorder.pause()
        self._publish()
        return self._queue(Event("pause"))

    def resume(self) -> asyncio.Future[None]:
        """Resume every participant's recording (video restarts on keyframes)."""
        timeline = self._active("resume")
        if self._state == "recording":
            return self._resolved()
        self._state = "recording"
        timeline.resume(time.monotonic())
        for recorder in self._recorders():
            recorder.resume()
        self._publish()
        return self._queue(Event("resume"))

    def requestData(self) -> asyncio.Future[None]:
        """``dataavailable`` for every file with what it gathered since its last chunk."""
        self._active("requestData")
        assert self._mix is not None
        parts = [recorder.requestData() for recorder in self._recorders()]
        mixed = self._future()
        self._mix_waiters.append(mixed)
        self._mix.request_data()
        done = self._future()

        async def answered() -> None:
            await asyncio.gather(*parts, mixed)
            self._queue(None, [done])

        self._spawn(answered())
        return done

    def stop(self) -> asyncio.Future[None]:
        """Stop: every participant's file and the mix finalized, the manifest's state
        ``finalized``; then ``stop``."""
        if self._state != "inactive":
            self._finish(None)
        return self._stopped_event if self._stopped_event is not None else self._resolved()

    def manifest(self) -> dict[str, Any] | None:
        """The manifest as last written (None before :meth:`start`)."""
        return None if self._published is None else copy.deepcopy(self._published)

    def getStats(self) -> dict[str, Any]:
        """The room's recorded and paused time, each participant's recording's
        ``getStats()``, and the mix's progress (seconds mixed; seconds of sound that came
        too late for it)."""
        now = time.monotonic()
        timeline = self._timeline
        mixer = self._mix.mixer if self._mix is not None else None
        return {
            "state": self._state,
            "recordedTime": timeline.recorded_time(now) if timeline else 0.0,
            "pausedTime": timeline.paused_time(now) if timeline else 0.0,
            "participants": {
                m.session: m.recorder.getStats()
                for m in self._members.values()
                if m.recorder is not None
            },
            "mix": {
                "mixedTime": mixer.position / 48_000 if mixer else 0.0,
                "droppedTime": mixer.dropped / 48_000 if mixer else 0.0,
            },
        }

    # -- recording a participant --------------------------------------------------------

    def _recordable(self, member: _Member) -> bool:
        return member.present and any(
            t.readyState == "live" and self._type.records(t.kind) for t in member.stream
        )

    def _record(self, member: _Member) -> None:
        """Start ``member``'s recording (the room is recording or paused)."""
        assert self._mix is not None
        if not self._recordable(member):
            logger.info("room %s: %s has nothing to record", self.room, member.session)
            return
        file = member.session + self._extension
        recorder = MediaRecorder(
            self.folder / file,
            mimeType=self.mimeType,
            stream=member.stream,
            _timeline=self._timeline,
            _observe=functools.partial(self._mix.feed, member.session),
        )
        if self._forwarding:
            recorder.on("dataavailable", functools.partial(self._forward, file))
        recorder.on("error", functools.partial(self._on_member_error, member))
        recorder.on("stop", functools.partial(self._on_member_stop, member))
        try:
            recorder.start(self._timeslice)
        except RecorderError as exc:
            logger.warning("room %s: %s cannot be recorded: %s", self.room, member.session, exc)
            return
        if self._state == "paused":
            recorder.pause()
        member.recorder = recorder
        recorded = {track["kind"] for track in recorder.getStats()["tracks"]}
        member.entry = Participant(
            member.session, member.name, file, [k for k in KINDS if k in recorded]
        )
        assert self._manifest is not None
        self._manifest.participants.append(member.entry)
        self._log("join", member)
        if member.has_audio:
            self._mix.join(member.session, _micros(self._now()))
        for kind in sorted(member.muted):
            self._note_mute(member, kind)

    def _end(self, member: _Member, at: float) -> None:
        """Finalize ``member``'s file now, room time ``at`` (it left, or the room stopped)."""
        if member.entry is not None and member.entry.end is None:
            member.entry.end = at
        if member.recorder is not None:
            member.recorder.stop()

    def _note_mute(self, member: _Member, kind: str) -> None:
        muted = kind in member.muted
        self._log("mute" if muted else "unmute", member, kind)
        if kind == "audio" and member.has_audio:
            assert self._mix is not None
            self._mix.mute(member.session, muted)

    def _on_member_error(self, member: _Member, event: ErrorEvent) -> None:
        logger.warning("room %s: %s's recording failed: %s", self.room, member.session, event.error)
        if member.entry is not None:
            member.entry.error = event.error.name

    def _on_member_stop(self, member: _Member, event: Event) -> None:
        """``member``'s file is finalized (it left, its media ended, or the room stopped)."""
        assert self._mix is not None
        self._refresh(member)
        if member.entry is not None and member.entry.end is None:
            member.entry.end = self._now()
        if member.has_audio:
            self._mix.leave(member.session)
        if self._finishing is None:
            self._publish()

    def _forward(self, file: str, event: BlobEvent) -> None:
        self._queue(RoomBlobEvent("dataavailable", event.data, event.timecode, file))

    def _recorders(self) -> list[MediaRecorder]:
        """The participants' recordings going on."""
        return [m.recorder for m in self._members.values() if m.recorder and m.recording]

    def _present(self, session_id: str) -> _Member:
        member = self._members.get(session_id)
        if member is None or not member.present:
            raise KeyError(f"{session_id!r} is not in room {self.room}")
        return member

    # -- the room's timeline -------------------------------------------------------------

    def _now(self) -> float:
        """The room recording's present: seconds of its timeline (paused time cut out)."""
        assert self._timeline is not None
        return self._timeline.recorded_time(time.monotonic())

    def _video_taps(self) -> list[hooks.ReceiverTap | None]:
        """The receiver taps of the video tracks being recorded (None: a local track)."""
        if not self._type.records("video"):
            return []
        return [
            hooks.tap_track(track)
            for member in self._members.values()
            if member.present and (member.recorder is None or member.recording)
            for track in member.stream.getVideoTracks()
            if track.readyState == "live"
        ]

    def _grid(self) -> float | None:
        """The frame interval pauses cut whole multiples of: the participants' video grid
        if they share one, else 1/30 s; None (exact cuts) without video."""
        taps = self._video_taps()
        if not taps:
            return None
        grids = {DEFAULT_FRAME_INTERVAL if tap is None else tap.frame_grid for tap in taps}
        return grids.pop() if len(grids) == 1 else DEFAULT_FRAME_INTERVAL

    def _schedule_tick(self) -> None:
        seconds = MANIFEST_EVERY if self._timeslice is None else self._timeslice / 1000
        assert self._loop is not None
        self._tick = self._loop.call_later(max(seconds, MANIFEST_AT_MOST), self._on_tick)

    def _on_tick(self) -> None:
        """Every timeslice while recording: the mix learns where the room is; the
        manifest is rewritten (its duration has grown, files have started)."""
        if self._state == "inactive":
            return
        assert self._mix is not None
        self._mix.advance(_micros(self._now()))
        self._publish()
        self._schedule_tick()

    # -- the manifest --------------------------------------------------------------------

    def _log(
        self, kind: str, member: _Member, track: str | None = None, at: float | None = None
    ) -> None:
        assert self._manifest is not None
        at = self._now() if at is None else at
        self._manifest.events.append(RoomEvent(at, kind, member.session, track))

    def _refresh(self, member: _Member) -> None:
        """Note where ``member``'s file starts on the room's timeline once it has its
        header, and the kinds it holds (a track that sent nothing in time is left out)."""
        entry, recorder = member.entry, member.recorder
        if entry is None or entry.start is not None or recorder is None:
            return
        stats = recorder.getStats()
        if stats.get("fileStart") is not None:
            entry.start = stats["fileStart"]
            held = {t["kind"] for t in stats["tracks"] if not t["droppedFromRecording"]}
            entry.kinds = [kind for kind in KINDS if kind in held]

    def _publish(self) -> None:
        """Bring the manifest up to date and have it written."""
        assert self._manifest is not None and self._timeline is not None
        assert self._writer is not None
        manifest = self._manifest
        for member in self._members.values():
            self._refresh(member)
        if self._finishing is None:
            manifest.state = "paused" if self._state == "paused" else "recording"
            manifest.duration = self._now()
        manifest.cuts = list(zip(self._timeline.cuts(), self._timeline.cut_lengths(), strict=True))
        self._published = manifest.to_json()
        self._writer.publish(self._published)

    # -- ending ----------------------------------------------------------------------------

    def _finish(self, error: RecorderError | None) -> None:
        """Stop now: every participant's recording stopped; the rest follows in
        :meth:`_finalize`."""
        assert self._timeline is not None and self._manifest is not None
        self._state = "inactive"
        if self._tick is not None:
            self._tick.cancel()
        if error is not None:
            self._queue(ErrorEvent("error", error))
        self._timeline.stop(time.monotonic())
        self._manifest.duration = self._now()
        for member in self._members.values():
            if member.recording:
                self._end(member, self._manifest.duration)
        self._publish()
        self._stopped_event = self._future()
        self._finishing = self._spawn(self._finalize())

    async def _finalize(self) -> None:
        """Wait for every participant's file, then the mix, then write the final manifest
        and fire ``stop``."""
        assert self._mix is not None and self._writer is not None
        assert self._manifest is not None and self._mix_closed is not None
        assert self._stopped_event is not None
        try:
            stopped = [m.recorder.stop() for m in self._members.values() if m.recorder]
            await asyncio.gather(*stopped)
            self._mix.advance(_micros(self._manifest.duration))
            self._mix.close()
            await self._mix_closed
            await asyncio.to_thread(self._mix.join_thread)
            self._manifest.state = "finalized"
            self._publish()
            self._writer.close()
            await asyncio.to_thread(self._writer.join)
        finally:
            self._queue(Event("stop"), [self._stopped_event])

    def _on_mix_event(self, event: WriterEvent) -> None:
        if not isinstance(event, Chunk):
            self._on_failure(as_recorder_error(event.error))
            return
        waiters = [self._mix_waiters.popleft()] if event.requested and self._mix_waiters else []
        if event.final:
            waiters += self._mix_waiters  # requestData() the mix never answered
            self._mix_waiters.clear()
        if self._forwarding:
            self._queue(
                RoomBlobEvent("dataavailable", event.data, event.timecode, MIX_FILE), waiters
            )
        else:
            self._queue(None, waiters)
        if event.final and self._mix_closed is not None and not self._mix_closed.done():
            self._mix_closed.set_result(None)

    def _on_thread_failure(self, error: BaseException) -> None:
        """The manifest could not be written (from its thread)."""
        if self._loop is not None:
            call_from_thread(self._loop, self._on_failure, as_recorder_error(error))

    def _on_failure(self, error: RecorderError) -> None:
        """The room recording itself failed: ``error``, then it stops (or, if it is
        stopping already, ``error`` before its ``stop``)."""
        if self._state != "inactive":
            self._finish(error)
        elif self._finishing is not None and not self._finishing.done():
            self._queue(ErrorEvent("error", error))

    # -- events ------------------------------------------------------------------------

    def _queue(
        self, event: Event | None, waiters: Iterable[asyncio.Future[None]] = ()
    ) -> asyncio.Future[None]:
        """Dispatch ``event`` (None: nothing, a point in the order) soon, after those
        queued before it (the loop runs its callbacks in order); the futures resolve once
        it has been."""
        waiter = self._future()
        self._running_loop().call_soon(self._deliver, event, [*waiters, waiter])
        return waiter

    def _deliver(self, event: Event | None, waiters: list[asyncio.Future[None]]) -> None:
        if event is not None:
            self._dispatch(event)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("room %s: finishing failed", self.room, exc_info=task.exception())

    def _active(self, method: str) -> Timeline:
        if self._state == "inactive" or self._timeline is None:
            raise InvalidStateError(f"{method}() called while inactive")
        return self._timeline


def _milliseconds(timeslice: float | None) -> float | None:
    """A timeslice as given (ms), checked."""
    timeslice_micros(timeslice)
    return timeslice


def _micros(seconds: float) -> int:
    return round(seconds * 1_000_000)
