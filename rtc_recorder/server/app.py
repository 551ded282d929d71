"""The aiohttp application: thin handlers translating HTTP into calls on the sessions and
the recordings store. Every error is JSON ``{error, message}`` with a fitting status."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from ..errors import InvalidStateError, NotSupportedError, RecorderError
from ..mimetype import supported_types
from . import jobs, operations, rooms, whep
from .api import (
    ApiError,
    call_method,
    control_socket,
    error_response,
    optional_mime_type,
    optional_timeslice,
    read_json,
    read_sdp,
)
from .lifecycle import DRAIN
from .notices import Notices
from .operations import READINESS, REGISTRY
from .recordings import (
    BucketRecordings,
    RecordingBusy,
    Recordings,
    RecordingStore,
    StoreUnavailable,
    UnknownRecording,
)
from .sessions import BadOffer, Session, SessionManager, TooManySessions
from .settings import Settings
from .storage import BucketLocation, open_bucket
from .uploader import Uploader
from .webhooks import WebhookSender

logger = logging.getLogger("rtc_recorder.server")

SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
SESSIONS: web.AppKey[SessionManager] = web.AppKey("sessions", SessionManager)
STORE: web.AppKey[RecordingStore] = web.AppKey("store", RecordingStore)
RECORDINGS: web.AppKey[Recordings] = web.AppKey("recordings")
NOTICES: web.AppKey[Notices] = web.AppKey("notices", Notices)

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Expose-Headers": "Location",
    "Access-Control-Max-Age": "86400",
}
PROTECTED = ("/api", "/offer", "/whip", "/whep", "/rooms", "/recordings", "/metrics")
OPEN = ("/api/config",)  # what the page needs to know before it has a token
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def static_folder() -> Path:
    """The page's files: inside the installed package, or ``static/`` of a checkout."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "static", here.parent / "static"):
        if (candidate / "index.html").is_file():
            return candidate
    raise FileNotFoundError("the page's static files are missing")


# -- middlewares ------------------------------------------------------------------------

_HTTP_NAMES = {
    400: "SyntaxError",
    401: "NotAllowedError",
    403: "NotAllowedError",
    404: "NotFoundError",
    405: "NotSupportedError",
    409: "InvalidStateError",
    413: "QuotaExceededError",
    415: "NotSupportedError",
    503: "QuotaExceededError",
}


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON error; nothing reaches the client as a traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        response = error_response(exc.status, exc.name, str(exc))
        response.headers.update(exc.headers)
        return response
    except InvalidStateError as exc:
        return error_response(409, exc.name, str(exc))
    except RecorderError as exc:
        return error_response(400, exc.name, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        name = _HTTP_NAMES.get(exc.status, "UnknownError")
        response = error_response(exc.status, name, exc.reason)
        for header in ("Allow", "WWW-Authenticate"):
            if header in exc.headers:
                response.headers[header] = exc.headers[header]
        return response
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception:
        logger.exception("unexpected error answering %s %s", request.method, request.path)
        return error_response(500, "UnknownError", "the server failed to answer this request")


@web.middleware
async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS for the signaling and API routes (WHIP clients run in other origins)."""
    if request.method == "OPTIONS" and request.path.startswith(PROTECTED):
        return web.Response(status=204, headers=CORS_HEADERS)
    response = await handler(request)
    if request.path.startswith(PROTECTED) and not response.prepared:
        response.headers.update(CORS_HEADERS)
    return response


def auth(token: str | None) -> Any:
    """Bearer-token check for the protected routes (the page and static files stay open).

    Browsers cannot set headers on a WebSocket or a ``<video src>``, so those may carry
    the token as ``?token=`` instead.
    """

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is None or not request.path.startswith(PROTECTED) or request.path in OPEN:
            return await handler(request)
        given = request.headers.get("Authorization", "")
        candidate = given[7:] if given.startswith("Bearer ") else request.query.get("token", "")
        if not secrets.compare_digest(candidate.encode(), token.encode()):
            response = error_response(401, "NotAllowedError", "a valid bearer token is required")
            response.headers["WWW-Authenticate"] = 'Bearer realm="rtc-recorder"'
            response.headers.update(CORS_HEADERS)
            return response
        return await handler(request)

    return check


# -- helpers ------------------------------------------------------------------------------


def session_of(request: web.Request) -> Session:
    try:
        return request.app[SESSIONS].get(request.match_info["session"])
    except KeyError:
        raise ApiError(404, "NotFoundError", "no such session") from None


async def create_session(
    request: web.Request, sdp: str, body: dict[str, Any], room: rooms.Joining | None = None
) -> tuple[Session, str]:
    """A new session answering ``sdp`` (joining ``room``, if given)."""
    if room is not None:
        request.app[rooms.ROOMS].admit(room.room)
    refused = operations.refusal(request.app)
    if refused is not None:
        raise ApiError(
            503,
            "QuotaExceededError",
            refused.message,
            {"Retry-After": str(refused.retry_after)},
        )
    operations.admitted(request.app)
    try:
        created = await request.app[SESSIONS].create(
            sdp, optional_mime_type(body), optional_timeslice(body)
        )
    except BaseException as exc:
        operations.withdrawn(request.app)
        if isinstance(exc, TooManySessions):
            raise ApiError(503, "QuotaExceededError", str(exc)) from None
        if isinstance(exc, BadOffer):
            raise ApiError(400, "SyntaxError", str(exc)) from None
        raise
    if room is not None:
        await request.app[rooms.ROOMS].join(room, created[0])
    return created


# -- signaling ----------------------------------------------------------------------------


async def offer(request: web.Request) -> web.Response:
    """``POST /offer``: ``{sdp, type: "offer", mimeType?, timeslice?}`` -> the answer."""
    body = await read_json(request, required=True)
    if body.get("type") != "offer" or not isinstance(body.get("sdp"), str):
        raise ApiError(400, "TypeError", 'expected {"sdp": "...", "type": "offer"}')
    room = rooms.joining(body.get("room"), body.get("name")) if "room" in body else None
    session, answer = await create_session(request, body["sdp"], body, room)
    reply = {"sdp": answer, "type": "answer", "session": session.id}
    if room is not None:
        reply["room"] = room.room
    return web.json_response(reply)


async def whip(request: web.Request) -> web.Response:
    """``POST /whip`` (RFC 9725): an SDP offer in, ``201 Created`` with the answer out."""
    return await answer_whip(request, None)


async def room_whip(request: web.Request) -> web.Response:
    """``POST /rooms/{room}/whip``: WHIP into a room (``?name=`` names the participant)."""
    room = rooms.joining(request.match_info["room"], request.query.get("name"))
    return await answer_whip(request, room)


async def answer_whip(request: web.Request, room: rooms.Joining | None) -> web.Response:
    """A WHIP offer answered by a new session (joining ``room``, if given)."""
    sdp = await read_sdp(request, "WHIP")
    session, answer = await create_session(request, sdp, {}, room)
    location = f"/whip/{session.id}"
    return web.Response(
        status=201,
        text=answer,
        content_type="application/sdp",
        headers={"Location": location, "ETag": f'"{session.id}"'},
    )


async def whip_delete(request: web.Request) -> web.Response:
    """``DELETE /whip/{session}``: hang up; the recording is finalized first."""
    session = session_of(request)
    await session.close("WHIP hang-up")
    return web.Response(status=200)


async def whip_patch(request: web.Request) -> web.Response:
    """Trickle ICE is not supported (answers carry every candidate)."""
    session_of(request)
    raise web.HTTPMethodNotAllowed("PATCH", ["DELETE", "OPTIONS"])


# -- control ------------------------------------------------------------------------------


async def list_sessions(request: web.Request) -> web.Response:
    sessions = request.app[SESSIONS].sessions.values()
    return web.json_response([session.to_json() for session in sessions])


async def get_session(request: web.Request) -> web.Response:
    return web.json_response(session_of(request).to_json())


async def delete_session(request: web.Request) -> web.Response:
    """Hang up a session from the API (recording finalized, peer closed)."""
    await session_of(request).close("hang-up")
    return web.json_response({"closed": True})


async def call_session_method(request: web.Request) -> web.Response:
    """``POST /api/sessions/{id}/{method}``: the recorder method; answers the new state."""
    return await call_method(request, session_of(request))


async def events(request: web.Request) -> web.WebSocketResponse:
    """``GET /api/sessions/{id}/events``: a WebSocket with one JSON message per event.

    The client may also send commands, ``{"call": "pause"}`` (``start`` takes
    ``timeslice`` and ``mimeType`` too); each gets a ``{"type": "reply", "call", "state"}``
    or ``{"type": "reply", "call", "error", "message"}`` in return.
    """
    session = session_of(request)
    return await control_socket(request, session, {"type": "session", **session.to_json()})


# -- recordings ---------------------------------------------------------------------------


async def list_recordings(request: web.Request) -> web.Response:
    try:
        entries = await request.app[RECORDINGS].list(live_durations(request.app))
    except StoreUnavailable as exc:
        raise ApiError(503, "NetworkError", str(exc)) from None
    return web.json_response([entry.to_json() for entry in entries])


async def get_recording(request: web.Request) -> web.StreamResponse:
    """The file, with Range support (seeking in ``<video>``), wherever it is kept."""
    try:
        return await request.app[RECORDINGS].respond(request, request.match_info["name"])
    except UnknownRecording:
        raise ApiError(404, "NotFoundError", "no such recording") from None
    except StoreUnavailable as exc:
        raise ApiError(503, "NetworkError", str(exc)) from None


async def get_recording_file(request: web.Request) -> web.StreamResponse:
    """A file of a room recording (a participant's, the mix, the manifest), with Range."""
    name, file = request.match_info["name"], request.match_info["file"]
    try:
        return await request.app[RECORDINGS].respond_file(request, name, file)
    except UnknownRecording:
        raise ApiError(404, "NotFoundError", "no such recording or file") from None


def live_durations(app: web.Application) -> dict[str, float]:
    """The recordings being made (sessions' files, rooms' folders): their duration so far."""
    return {**app[SESSIONS].live_durations(), **app[rooms.ROOMS].live_durations()}


async def delete_recording(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name in live_durations(request.app):
        raise ApiError(409, "InvalidStateError", "this recording is still being made")
    try:
        await request.app[RECORDINGS].delete(name)
    except UnknownRecording:
        raise ApiError(404, "NotFoundError", "no such recording") from None
    except RecordingBusy as exc:
        raise ApiError(409, "InvalidStateError", str(exc)) from None
    except StoreUnavailable as exc:
        raise ApiError(503, "NetworkError", str(exc)) from None
    return web.json_response({"deleted": name})


# -- misc -----------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "sessions": len(request.app[SESSIONS].sessions)})


async def config(request: web.Request) -> web.Response:
    """What the page offers: the types the server records, and its defaults."""
    settings = request.app[SETTINGS]
    types = supported_types()
    if settings.mime_type not in types:
        types.insert(0, settings.mime_type)
    return web.json_response(
        {
            "mimeTypes": types,
            "mimeType": settings.mime_type,
            "timeslice": settings.timeslice,
            "autoRecord": settings.auto_record,
            "tokenRequired": settings.token is not None,
        }
    )


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(static_folder() / "index.html")


def _object_storage(
    settings: Settings, uploader: Uploader, recordings: BucketRecordings
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The uploader's thread and the bucket the routes read, for the application's life
    (the drain on shutdown gives the uploads what is left of its time)."""
    location = settings.location
    assert isinstance(location, BucketLocation)

    async def context(app: web.Application) -> AsyncIterator[None]:
        uploader.start()
        try:
            async with open_bucket(location, settings.s3_endpoint) as bucket:
                recordings.bucket = bucket
                yield
                recordings.bucket = None
        finally:
            await uploader.close(0)  # at once, if the drain has not closed it already

    return context


def _events_out(app: web.Application, settings: Settings, spool: RecordingStore) -> Recordings:
    """Webhooks and object storage, fed by the server's notices, and closed by the drain
    (uploads first: their ``recording.uploaded`` go out as webhooks); where recordings are
    listed and served from."""
    notices, registry, drain = app[NOTICES], app[REGISTRY], app[DRAIN]
    recordings: Recordings = spool
    location = settings.location
    if isinstance(location, BucketLocation):
        uploader = Uploader(
            spool,
            location,
            settings.s3_endpoint,
            settings.part_size,
            settings.keep_local,
            registry,
            notices,
        )
        notices.subscribe(uploader.on_notice)
        drain.afterwards.append(uploader.close)
        recordings = BucketRecordings(spool, uploader.busy)
        app.cleanup_ctx.append(_object_storage(settings, uploader, recordings))
    if settings.webhook and settings.webhook_secret:
        sender = WebhookSender(
            settings.webhook, settings.webhook_secret, settings.webhook_retry_seconds, registry
        )
        notices.subscribe(sender.send)
        drain.afterwards.append(sender.close)
    return recordings


def create_app(settings: Settings) -> web.Application:
    """The server's application."""
    app = web.Application(
        middlewares=[cors, auth(settings.token), errors], client_max_size=settings.max_body
    )
    app[REGISTRY] = CollectorRegistry()  # metrics of this application only
    store = RecordingStore(settings.spool_folder)
    app[SETTINGS] = settings
    app[STORE] = store
    app[NOTICES] = Notices()
    app[SESSIONS] = SessionManager(settings, store, app[NOTICES])
    operations.setup(app, settings, app[SESSIONS])
    app[RECORDINGS] = _events_out(app, settings, store)
    rooms.setup(app, settings, store, app[SESSIONS])
    whep.setup(app, settings, app[SESSIONS])
    jobs.setup(app, store.folder)
    if settings.redis is not None:
        from . import cluster  # redis only for a node of a cluster

        cluster.setup(app, settings, app[SESSIONS], app[NOTICES], app[READINESS], app[DRAIN])
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/offer", offer)
    app.router.add_post("/whip", whip)
    app.router.add_delete("/whip/{session}", whip_delete)
    app.router.add_patch("/whip/{session}", whip_patch)
    app.router.add_post("/rooms/{room}/whip", room_whip)
    app.router.add_get("/api/config", config)
    app.router.add_get("/api/sessions", list_sessions)
    app.router.add_get("/api/sessions/{session}", get_session)
    app.router.add_delete("/api/sessions/{session}", delete_session)
    app.router.add_post("/api/sessions/{session}/{method}", call_session_method)
    app.router.add_get("/api/sessions/{session}/events", events)
    app.router.add_get("/api/recordings", list_recordings)
    app.router.add_delete("/api/recordings/{name}", delete_recording)
    app.router.add_get("/recordings/{name}", get_recording)
    app.router.add_get("/recordings/{name}/{file}", get_recording_file)
    app.router.add_static("/static", static_folder(), show_index=False, follow_symlinks=False)
    return app


__all__ = ["ApiError", "NotSupportedError", "create_app", "error_response", "read_json"]
