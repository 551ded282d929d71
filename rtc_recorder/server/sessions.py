"""Sessions: one remote peer each, its tracks, and its recordings.

The server drives each session's recording through :class:`rtc_recorder.MediaRecorder`'s
public API only (a new recorder per recording, as a page would make one per recording).
Every recorder event and connection-state change goes to the session's subscribers (the
events WebSocket), to the log, and to :class:`Notices` (webhooks, the uploader).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack

from ..errors import InvalidStateError, NotSupportedError, RecorderError
from ..events import BlobEvent, ErrorEvent, Event
from ..mediarecorder import MediaRecorder
from ..mediastream import MediaStream
from ..mimetype import parse_type
from ..receive.negotiation import prefer_codec
from ..receive.transport import PortsExhausted, apply_ice_policy
from .channel import EventChannel, Message
from .memory import give_back_freed_memory
from .notices import Notices
from .recordings import RecordingStore, utc_now
from .settings import Settings

logger = logging.getLogger("rtc_recorder.server")

MAX_MEDIA_SECTIONS = 16
PREFERRED_VIDEO = {"h264": "video/H264", "vp8": "video/VP8"}


class BadOffer(ValueError):
    """An offer the server cannot answer."""


class TooManySessions(RuntimeError):
    """The concurrent session limit is reached."""


def log(event: str, **fields: object) -> None:
    """A structured log record: an event name and its fields."""
    logger.info(event, extra={"fields": fields})


class Session:
    """One peer connection and what is recorded from it."""

    def __init__(
        self,
        session_id: str,
        pc: RTCPeerConnection,
        settings: Settings,
        store: RecordingStore,
        mime_type: str,
        timeslice: int,
        on_closed: Callable[[Session], None],
        on_recording: Callable[[MediaRecorder], None],
        notices: Notices,
    ) -> None:
        self.id = session_id
        self.pc = pc
        self.created = utc_now()
        # The peer's tracks; while in this stream they are not decoded for nobody.
        self.stream = MediaStream()
        self.recorder: MediaRecorder | None = None
        self.recording: str | None = None
        self.mime_type = mime_type
        self.timeslice = timeslice
        self.closed = False
        self.close_reason: str | None = None  # why it closed (hang-up, idle, ...)
        self._settings = settings
        self._store = store
        self._on_closed = on_closed
        self._on_recording = on_recording
        self.events = EventChannel(lambda message: notices.from_session(session_id, message))
        self._created_at = time.monotonic()
        self._watchdog: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_connection_state)

    # -- what clients see --------------------------------------------------------------

    @property
    def state(self) -> str:
        """The recorder's state ("inactive" when nothing was recorded yet)."""
        return self.recorder.state if self.recorder is not None else "inactive"

    def to_json(self) -> dict[str, Any]:
        stats = self.recorder.getStats() if self.recorder is not None else {}
        return {
            "id": self.id,
            "connectionState": self.pc.connectionState,
            "recorderState": self.state,
            "mimeType": self.recorder.mimeType if self.recorder is not None else self.mime_type,
            "recordedSeconds": round(float(stats.get("recordedTime", 0.0)), 3),
            "bytes": int(stats.get("bytes", 0)),
            "recording": self.recording,
            "tracks": [track.kind for track in self.stream],
            "created": self.created.isoformat(),
            "seq": self.events.sequence,
        }

    def _broadcast(self, message: Message) -> None:
        self.events.publish(message)

    # -- the peer ------------------------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        self.stream.addTrack(track)
        log("track", session=self.id, kind=track.kind)

    async def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log("connection", session=self.id, state=state)
        self._broadcast({"type": "connectionstatechange", "connectionState": state})
        if state == "connected" and self._settings.auto_record and self.recorder is None:
            try:
                await self.start()
            except RecorderError as exc:
                log("auto-record failed", session=self.id, error=exc.name, message=str(exc))
        elif state in ("failed", "closed"):
            self.close(f"connection {state}")

    def start_watchdog(self) -> None:
        """Enforce the idle timeout and the per-recording limits."""
        self._watchdog = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while not self.closed:
            await asyncio.sleep(1.0)
            reason = self._limit_reached()
            if reason is None:
                continue
            if reason.startswith("idle"):
                self.close(reason)
                return
            if self.recorder is not None and self.recorder.state != "inactive":
                log("limit", session=self.id, reason=reason)
                self._broadcast({"type": "limit", "reason": reason})
                await self.recorder.stop()

    def _limit_reached(self) -> str | None:
        settings = self._settings
        now = time.monotonic()
        if self.pc.connectionState != "connected":
            if now - self._created_at > settings.idle_timeout:
                return "idle: never connected"
            return None
        if (
            now - self._created_at > settings.idle_timeout
            and self._seconds_without_media() > settings.idle_timeout
        ):
            return "idle: no media"
        if self.recorder is None or self.recorder.state == "inactive":
            return None
        stats = self.recorder.getStats()
        if (
            settings.max_recording_seconds
            and stats["recordedTime"] >= settings.max_recording_seconds
        ):
            return "recording length limit"
        if settings.max_recording_bytes and stats["bytes"] >= settings.max_recording_bytes:
            return "recording size limit"
        return None

    def _seconds_without_media(self) -> float:
        newest = 0.0
        for receiver in self.pc.getReceivers():
            for source in receiver.getSynchronizationSources():
                newest = max(newest, source.timestamp.timestamp())
        return time.time() - newest if newest else float("inf")

    # -- recording -----------------------------------------------------------------------

    async def start(self, mime_type: str | None = None, timeslice: int | None = None) -> None:
        """Start a new recording into a new file."""
        if self.recorder is not None and self.recorder.state != "inactive":
            raise InvalidStateError(f"start() called while {self.recorder.state}")
        mime = mime_type or self.mime_type
        parse_type(mime)  # NotSupportedError with the reason
        name = self._store.new_name(self.id, mime)
        recorder = MediaRecorder(self._store.folder / name, mimeType=mime, stream=self.stream)
        relay = self._relay(recorder, name)
        for event in ("start", "pause", "resume", "dataavailable", "error", "stop"):
            recorder.on(event, relay)
        recorder.start(timeslice if timeslice is not None else self.timeslice)
        self.recorder, self.recording = recorder, name
        self._on_recording(recorder)
        self._store.write_meta(
            name,
            name=name,
            session=self.id,
            mimeType=recorder.mimeType,
            created=utc_now().isoformat(),
            state="recording",
        )
        log("recording", session=self.id, name=name, mimeType=recorder.mimeType)

    def command(self, method: str) -> None:
        """Call ``pause``, ``resume``, ``requestData`` or ``stop`` on the current recorder."""
        if self.recorder is None:
            if method == "stop":
                return
            raise InvalidStateError(f"{method}() called while inactive")
        getattr(self.recorder, method)()

    def _relay(self, recorder: MediaRecorder, name: str) -> Callable[[Event], None]:
        failed: list[str] = []

        def relay(event: Event) -> None:
            message: dict[str, Any] = {"type": event.type, "state": recorder.state, "name": name}
            if isinstance(event, BlobEvent):
                message.update(size=len(event.data), timecode=event.timecode)
            elif isinstance(event, ErrorEvent):
                message.update(error=event.error.name, message=str(event.error))
                failed.append(event.error.name)
            elif event.type == "start":
                message.update(mimeType=recorder.mimeType)
            elif event.type == "stop":
                stats = recorder.getStats()
                duration = stats["duration"]
                message.update(duration=duration, tracks=_track_summaries(stats))
                state = {"state": "failed", "error": failed[0]} if failed else {"state": "complete"}
                self._store.write_meta(name, duration=duration, **state)
            if event.type != "dataavailable":
                log(
                    event.type,
                    session=self.id,
                    name=name,
                    **{k: v for k, v in message.items() if k not in ("type", "name")},
                )
            self._broadcast(message)

        return relay

    def live_durations(self) -> dict[str, float]:
        """The current recording's duration so far, by name."""
        if self.recorder is None or self.recorder.state == "inactive" or self.recording is None:
            return {}
        return {self.recording: float(self.recorder.getStats()["recordedTime"])}

    # -- the end -------------------------------------------------------------------------

    def close(self, reason: str) -> asyncio.Task[None]:
        """End the session: recording finalized, peer closed (once)."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close(reason))
        return self._closing

    async def _close(self, reason: str) -> None:
        self.closed = True
        self.close_reason = reason
        log("closing", session=self.id, reason=reason)
        if self.recorder is not None:
            with contextlib.suppress(Exception):
                await self.recorder.stop()
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
        await self.pc.close()
        self._broadcast({"type": "closed", "reason": reason})
        self.events.close()
        self._on_closed(self)
        log("closed", session=self.id)


class SessionManager:
    """The sessions of one server."""

    def __init__(
        self, settings: Settings, store: RecordingStore, notices: Notices | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.notices = notices or Notices()
        self.sessions: dict[str, Session] = {}
        # Called with every recorder once its recording started (metrics count it).
        self.on_recording: list[Callable[[MediaRecorder], None]] = []
        # Called with every session once it has closed (rooms, WHEP subscriptions).
        self.on_closed: list[Callable[[Session], None]] = []

    def get(self, session_id: str) -> Session:
        """The session, or ``KeyError``."""
        return self.sessions[session_id]

    async def create(
        self, sdp: str, mime_type: str | None = None, timeslice: int | None = None
    ) -> tuple[Session, str]:
        """Answer an offer: a new session and the answer's SDP."""
        if len(self.sessions) >= self.settings.session_limit:
            raise TooManySessions(f"{self.settings.session_limit} sessions already")
        check_offer(sdp)
        mime = mime_type or self.settings.mime_type
        recording_type = parse_type(mime)
        pc = new_peer_connection(self.settings)
        session_id = secrets.token_hex(6)
        session = Session(
            session_id,
            pc,
            self.settings,
            self.store,
            mime,
            timeslice or self.settings.timeslice,
            self._closed,
            self._recording_started,
            self.notices,
        )
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            apply_ice_policy(pc, self.settings.ice_policy)  # before the answer gathers
            _prefer_codec(pc, recording_type.video or recording_type.container.default_video)
            await pc.setLocalDescription(await pc.createAnswer())
        except PortsExhausted as exc:
            await pc.close()
            raise TooManySessions(str(exc)) from exc
        except Exception as exc:
            # aiortc raises many kinds of errors on offers it cannot take, in any of these
            # steps (a media section without a direction makes createAnswer fail, say).
            await pc.close()
            raise BadOffer(f"cannot answer this offer: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            await pc.close()
            raise
        if not any(t.receiver.track for t in pc.getTransceivers()):
            await pc.close()
            raise BadOffer("the offer sends no audio or video the server can receive")
        self.sessions[session_id] = session
        session.start_watchdog()
        log("session", session=session_id, mimeType=mime)
        self.notices.from_session(session_id, {"type": "session", "mimeType": mime})
        return session, pc.localDescription.sdp

    def _closed(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        for callback in self.on_closed:
            callback(session)
        give_back_freed_memory()

    def _recording_started(self, recorder: MediaRecorder) -> None:
        for callback in self.on_recording:
            callback(recorder)

    async def close_all(self, timeout: float | None = None) -> list[Session]:
        """Close every session (their recordings are finalized first). Those still closing
        after ``timeout`` seconds are logged and returned; they go on closing meanwhile."""
        sessions = list(self.sessions.values())
        log("stopping", sessions=len(sessions))
        began = time.monotonic()
        closing = {session.close("server stopping"): session for session in sessions}
        done, pending = await asyncio.wait(closing, timeout=timeout) if closing else (set(), set())
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                logger.error("closing failed", exc_info=task.exception())
        unfinished = [closing[task] for task in pending]
        for session in unfinished:
            logger.warning(
                "not finalized",
                extra={"fields": {"session": session.id, "recording": session.recording}},
            )
        seconds = round(time.monotonic() - began, 3)
        log("stopped", sessions=len(sessions), unfinished=len(unfinished), seconds=seconds)
        return unfinished

    def live_durations(self) -> dict[str, float]:
        durations: dict[str, float] = {}
        for session in self.sessions.values():
            durations.update(session.live_durations())
        return durations


def _track_summaries(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """Per recorded track: how it was recorded (pass-through or transcoded) and its frames."""
    keys = ("kind", "codec", "path", "framesReceived", "framesWritten", "framesDecoded")
    return [{key: track.get(key) for key in keys} for track in stats["tracks"]]


def new_peer_connection(settings: Settings) -> RTCPeerConnection:
    """A server-side peer connection with the ICE servers the settings name."""
    servers = [url.strip() for url in settings.ice_servers.split(",") if url.strip()]
    return RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(url) for url in servers]))


def check_offer(sdp: str) -> None:
    """Refuse offers that are obviously unusable before aiortc spends time on them."""
    if not isinstance(sdp, str) or not sdp.strip():
        raise BadOffer("empty offer")
    if not sdp.lstrip().startswith("v=0"):
        raise BadOffer("not an SDP offer (it must start with v=0)")
    sections = [line for line in sdp.splitlines() if line.startswith("m=")]
    if not sections:
        raise BadOffer("the offer has no media")
    if len(sections) > MAX_MEDIA_SECTIONS:
        raise BadOffer(
            f"the offer has {len(sections)} media sections (at most {MAX_MEDIA_SECTIONS})"
        )
    if not any(line.startswith(("m=audio", "m=video")) for line in sections):
        raise BadOffer("the offer has no audio or video")


def _prefer_codec(pc: RTCPeerConnection, video_codec: str | None) -> None:
    """Put the codec the recording can keep as it is first, so the sender sends it."""
    preferred = PREFERRED_VIDEO.get(video_codec or "")
    if preferred is not None:
        prefer_codec(pc, preferred)


__all__ = ["BadOffer", "NotSupportedError", "Session", "SessionManager", "TooManySessions"]
