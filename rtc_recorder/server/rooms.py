"""Rooms: sessions grouped into calls, each recorded as one room recording.

A room is created by its first participant (``POST /offer`` with ``room``, or ``POST
/rooms/{room}/whip``) and ends once its last participant has left and its recording (if
any) has finalized. The server drives each room's :class:`~rtc_recorder.room.RoomRecorder`
through its public API only, as it drives a session's ``MediaRecorder``: one recorder per
recording, into a folder ``{room}-{UTC time}`` of the recordings folder. A participant
that joins while the room records is added to the recording, one that leaves (hang-up,
lost connection, idle timeout: its session closes) is finalized then; when the last one
leaves, the recording stops.

A track's media stopping (nothing received for :data:`MUTE_AFTER` seconds) and starting
again are the room's ``mute`` and ``unmute``: seen from the session's receiver taps
(encoded frames, nothing decoded), told to the recorder and to the events WebSocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..errors import InvalidStateError
from ..events import BlobEvent, ErrorEvent, Event
from ..receive import hooks
from ..room import RoomBlobEvent, RoomRecorder
from .api import ApiError, call_method, control_socket
from .channel import EventChannel
from .notices import Notices
from .recordings import RecordingStore, utc_now
from .sessions import Session, SessionManager, log
from .settings import Settings

logger = logging.getLogger("rtc_recorder.server")

ROOM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_DISPLAY_NAME = 100  # characters of a participant's name
MUTE_AFTER = 1.0  # seconds without a frame on a track: its media has stopped
WATCH_EVERY = 0.25  # seconds between two looks for tracks that stopped


@dataclass(frozen=True)
class Joining:
    """A request to join ``room`` as ``name`` (checked, not yet admitted)."""

    room: str
    name: str


def joining(room: object, name: object) -> Joining:
    """A join request from client input: :class:`ApiError` 400 for a room name that is not
    1-64 characters of ``[A-Za-z0-9_-]``, or a name that is not a short string."""
    if not isinstance(room, str) or not ROOM_NAME.fullmatch(room):
        raise ApiError(
            400, "SyntaxError", "a room name is 1-64 characters of A-Z, a-z, 0-9, _ and -"
        )
    if name is None:
        name = ""
    if not isinstance(name, str) or len(name) > MAX_DISPLAY_NAME:
        raise ApiError(400, "TypeError", f"name must be a string of at most {MAX_DISPLAY_NAME}")
    return Joining(room, name)


@dataclass(eq=False)
class Member:
    """A participant: its session, and what its tracks' media is doing."""

    session: Session
    name: str
    joined: str
    last_frame: dict[str, float] = field(default_factory=dict)  # kind -> when (monotonic)
    muted: set[str] = field(default_factory=set)
    listeners: list[tuple[hooks.ReceiverTap, hooks.Subscription]] = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        """The kinds of the tracks it sends."""
        return sorted({track.kind for track in self.session.stream})

    def to_json(self) -> dict[str, Any]:
        """Its entry in ``GET /api/rooms/{room}``."""
        return {
            "session": self.session.id,
            "name": self.name,
            "kinds": self.kinds,
            "joined": self.joined,
            "muted": sorted(self.muted),
        }


class Room:
    """One room: its participants, its events channel and its recording."""

    def __init__(
        self, name: str, store: RecordingStore, settings: Settings, notices: Notices
    ) -> None:
        self.name = name
        self.created = utc_now().isoformat()
        self.members: dict[str, Member] = {}
        self.events = EventChannel(functools.partial(notices.from_room, name))
        self.recorder: RoomRecorder | None = None
        self.recording: str | None = None
        self.on_over: Callable[[Room], None] = lambda room: None
        self._store = store
        self._settings = settings
        self._watch: asyncio.Task[None] | None = None
        self._stopped = True  # whether the last recording (if any) has fired stop

    # -- what clients see --------------------------------------------------------------

    @property
    def state(self) -> str:
        """The room recording's state ("inactive" when nothing is recorded)."""
        return self.recorder.state if self.recorder is not None else "inactive"

    @property
    def over(self) -> bool:
        """Whether the room has ended: nobody in it, no recording going on."""
        return not self.members and self.state == "inactive" and not self._finishing

    @property
    def _finishing(self) -> bool:
        """Whether a recording has been started and has not fired ``stop`` yet."""
        return not self._stopped

    def to_json(self) -> dict[str, Any]:
        """``GET /api/rooms/{room}``."""
        stats = self.recorder.getStats() if self.recorder is not None else {}
        return {
            "name": self.name,
            "created": self.created,
            "participants": [member.to_json() for member in self.members.values()],
            "recorderState": self.state,
            "recording": self.recording,
            "recordedSeconds": round(float(stats.get("recordedTime", 0.0)), 3),
            "seq": self.events.sequence,
        }

    def live_durations(self) -> dict[str, float]:
        """The recording going on, with its duration so far."""
        if self.recording is None or self.recorder is None:
            return {}
        if self.state == "inactive" and not self._finishing:
            return {}
        return {self.recording: float(self.recorder.getStats()["recordedTime"])}

    # -- participants ------------------------------------------------------------------

    def join(self, session: Session, name: str) -> None:
        """``session`` joins as ``name`` (recorded from now on if the room records)."""
        member = Member(session, name or session.id, utc_now().isoformat())
        self.members[session.id] = member
        self._listen(member)
        if self.recorder is not None and self.recorder.state != "inactive":
            self.recorder.add_participant(session.id, member.name, session.stream)
        log("join", room=self.name, session=session.id)
        self.events.publish(
            {"type": "join", "session": session.id, "name": member.name, "kinds": member.kinds}
        )
        if self._watch is None:
            self._watch = asyncio.ensure_future(self._watch_media())

    def leave(self, session_id: str, reason: str) -> None:
        """``session_id`` has left: its file (if recorded) is finalized now; the last one
        out stops the recording."""
        member = self.members.pop(session_id, None)
        if member is None:
            return
        for tap, listener in member.listeners:
            tap.unsubscribe(listener)
        if self.recorder is not None and self.recorder.state != "inactive":
            with contextlib.suppress(KeyError):
                self.recorder.remove_participant(session_id)
        log("leave", room=self.name, session=session_id, reason=reason)
        self.events.publish({"type": "leave", "session": session_id, "reason": reason})
        if not self.members:
            if self._watch is not None:
                self._watch.cancel()
                self._watch = None
            if self.recorder is not None and self.recorder.state != "inactive":
                self.recorder.stop()  # its stop event ends the room
        self._end_if_over()

    def _listen(self, member: Member) -> None:
        """Note when each of ``member``'s tracks last received a frame."""
        for track in member.session.stream:
            tap = hooks.tap_track(track)
            if tap is None:
                continue
            listener = hooks.Subscription(
                functools.partial(self._on_frame, member, track.kind), _ignore, _ignore
            )
            tap.subscribe(listener)
            member.listeners.append((tap, listener))

    def _on_frame(self, member: Member, kind: str, frame: hooks.EncodedFrame) -> None:
        member.last_frame[kind] = time.monotonic()
        if kind in member.muted:
            self._mute(member, kind, False)

    async def _watch_media(self) -> None:
        """Tracks that stopped receiving are muted (those whose media has not begun are
        not: their media has not stopped)."""
        while True:
            await asyncio.sleep(WATCH_EVERY)
            now = time.monotonic()
            for member in list(self.members.values()):
                for kind, last in member.last_frame.items():
                    if kind not in member.muted and now - last > MUTE_AFTER:
                        self._mute(member, kind, True)

    def _mute(self, member: Member, kind: str, muted: bool) -> None:
        (member.muted.add if muted else member.muted.discard)(kind)
        session = member.session.id
        recorder = self.recorder
        if (
            recorder is not None
            and recorder.state != "inactive"
            and session in recorder.participants
        ):
            recorder.mute(session, kind, muted)
        kind_of_event = "mute" if muted else "unmute"
        self.events.publish({"type": kind_of_event, "session": session, "kind": kind})

    # -- recording ---------------------------------------------------------------------

    async def start(self, mime_type: str | None, timeslice: int | None) -> None:
        """Record the room into a new folder, every participant from now on."""
        if self.recorder is not None and self.recorder.state != "inactive":
            raise InvalidStateError(f"start() called while {self.recorder.state}")
        folder = self._store.new_folder(self.name)
        recorder = RoomRecorder(
            self._store.folder / folder,
            room=self.name,
            mimeType=mime_type or self._settings.mime_type,
            timeslice=timeslice if timeslice is not None else self._settings.timeslice,
        )
        for member in self.members.values():
            recorder.add_participant(member.session.id, member.name, member.session.stream)
            for kind in sorted(member.muted):
                recorder.mute(member.session.id, kind, True)
        relay = self._relay(recorder, folder)
        for event in ("start", "pause", "resume", "dataavailable", "error", "stop"):
            recorder.on(event, relay)
        try:
            started = recorder.start()
        except BaseException:
            with contextlib.suppress(OSError):
                (self._store.folder / folder).rmdir()  # empty: nothing was recorded
            raise
        self.recorder, self.recording, self._stopped = recorder, folder, False
        log("room recording", room=self.name, name=folder, mimeType=recorder.mimeType)
        await started

    def command(self, method: str) -> asyncio.Future[None] | None:
        """``pause``, ``resume``, ``requestData`` or ``stop`` on the room's recording."""
        if self.recorder is None:
            if method == "stop":
                return None
            raise InvalidStateError(f"{method}() called while inactive")
        future: asyncio.Future[None] = getattr(self.recorder, method)()
        return future

    def _relay(self, recorder: RoomRecorder, name: str) -> Callable[[Event], None]:
        def relay(event: Event) -> None:
            message: dict[str, Any] = {"type": event.type, "state": recorder.state, "name": name}
            if isinstance(event, RoomBlobEvent):
                message.update(file=event.file, size=len(event.data), timecode=event.timecode)
            elif isinstance(event, BlobEvent):
                message.update(size=len(event.data), timecode=event.timecode)
            elif isinstance(event, ErrorEvent):
                message.update(error=event.error.name, message=str(event.error))
            elif event.type == "start":
                message.update(mimeType=recorder.mimeType)
            elif event.type == "stop":
                manifest = recorder.manifest() or {}
                message.update(duration=manifest.get("duration"))
            if event.type != "dataavailable":
                log(f"room {event.type}", room=self.name, name=name)
            self.events.publish(message)
            if event.type == "stop":
                self._stopped = True
                self._end_if_over()

        return relay

    def _end_if_over(self) -> None:
        if self.over:
            self.events.close()
            self.on_over(self)


class RoomRegistry:
    """The rooms of one server, and its limits: ``--max-rooms`` rooms, each of at most
    ``--max-participants`` participants."""

    def __init__(self, settings: Settings, store: RecordingStore, sessions: SessionManager):
        self.settings = settings
        self.store = store
        self.rooms: dict[str, Room] = {}
        self.notices = sessions.notices
        self._of_session: dict[str, Room] = {}
        sessions.on_closed.append(self._session_closed)

    def get(self, name: str) -> Room:
        """The room, or :class:`ApiError` 400 (a bad name) or 404."""
        joining(name, None)
        room = self.rooms.get(name)
        if room is None:
            raise ApiError(404, "NotFoundError", f"no room {name!r}")
        return room

    def admit(self, name: str) -> None:
        """Whether a participant may join room ``name`` now: :class:`ApiError` 409 when the
        room is full, 503 when it would be one room too many."""
        room = self.rooms.get(name)
        if room is None:
            if len(self.rooms) >= self.settings.max_rooms:
                raise ApiError(
                    503, "QuotaExceededError", f"{self.settings.max_rooms} rooms already"
                )
        elif len(room.members) >= self.settings.max_participants:
            raise ApiError(
                409,
                "QuotaExceededError",
                f"room {name!r} is full ({self.settings.max_participants} participants)",
            )

    async def join(self, request: Joining, session: Session) -> Room:
        """``session`` joins ``request.room`` (created if need be); when the room has
        filled up meanwhile, the session is closed and the refusal raised."""
        try:
            self.admit(request.room)
        except ApiError:
            await session.close("room refused")
            raise
        room = self.rooms.get(request.room)
        if room is None:
            room = Room(request.room, self.store, self.settings, self.notices)
            self.rooms[request.room] = room
            room.on_over = self._over
        room.join(session, request.name)
        self._of_session[session.id] = room
        return room

    def live_durations(self) -> dict[str, float]:
        """The room recordings being made, with their duration so far."""
        durations: dict[str, float] = {}
        for room in self.rooms.values():
            durations.update(room.live_durations())
        return durations

    async def close(self, timeout: float) -> None:
        """Stop every room recording and wait (``timeout`` seconds at most) until they have
        finalized (the drain, once the sessions are closed)."""
        recorders = [room.recorder for room in self.rooms.values() if room.recorder is not None]
        stopping = [asyncio.ensure_future(recorder.stop()) for recorder in recorders]
        if stopping:
            _, pending = await asyncio.wait(stopping, timeout=timeout)
            for task in pending:
                logger.warning("a room recording did not finalize in time")
                task.cancel()

    def _session_closed(self, session: Session) -> None:
        room = self._of_session.pop(session.id, None)
        if room is not None:
            room.leave(session.id, "closed")

    def _over(self, room: Room) -> None:
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]


def _ignore(*args: object) -> None:
    """A tap's end or failure: the session's own closing takes the member out."""


# -- the routes -----------------------------------------------------------------------

ROOMS: web.AppKey[RoomRegistry] = web.AppKey("rooms", RoomRegistry)


def setup(
    app: web.Application, settings: Settings, store: RecordingStore, sessions: SessionManager
) -> None:
    """Add the room registry and the ``/api/rooms`` routes to ``app``; SIGTERM's drain
    finalizes the room recordings once the sessions are closed."""
    from .lifecycle import DRAIN

    app[ROOMS] = registry = RoomRegistry(settings, store, sessions)
    app[DRAIN].afterwards.insert(0, registry.close)
    app.router.add_get("/api/rooms", list_rooms)
    app.router.add_get("/api/rooms/{room}", get_room)
    app.router.add_get("/api/rooms/{room}/events", room_events)
    app.router.add_post("/api/rooms/{room}/{method}", call_room_method)


async def list_rooms(request: web.Request) -> web.Response:
    """``GET /api/rooms``."""
    return web.json_response([room.to_json() for room in request.app[ROOMS].rooms.values()])


async def get_room(request: web.Request) -> web.Response:
    """``GET /api/rooms/{room}``."""
    return web.json_response(request.app[ROOMS].get(request.match_info["room"]).to_json())


async def call_room_method(request: web.Request) -> web.Response:
    """``POST /api/rooms/{room}/{method}``: the room recorder's method; the new state."""
    return await call_method(request, request.app[ROOMS].get(request.match_info["room"]))


async def room_events(request: web.Request) -> web.WebSocketResponse:
    """``GET /api/rooms/{room}/events``: a WebSocket with ``join``, ``leave``, ``mute``,
    ``unmute`` and the room recording's events, each with ``seq``; commands as on a
    session's (``{"call": "pause"}``)."""
    room = request.app[ROOMS].get(request.match_info["room"])
    return await control_socket(request, room, {"type": "room", **room.to_json()})
