"""The aiohttp application: thin handlers translating HTTP into calls on the sessions and
the recordings store. Every error is JSON ``{error, message}`` with a fitting status."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from prometheus_client import CollectorRegistry

from ..errors import InvalidStateError, NotSupportedError, RecorderError
from ..mimetype import is_type_supported, supported_types
from . import operations
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

METHODS = ("start", "pause", "resume", "requestData", "stop")
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Expose-Headers": "Location",
    "Access-Control-Max-Age": "86400",
}
PROTECTED = ("/api", "/offer", "/whip", "/recordings", "/metrics")
OPEN = ("/api/config",)  # what the page needs to know before it has a token
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answered as ``{error: name, message}`` with ``status``."""

    def __init__(
        self, status: int, name: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.name = name
        self.headers = dict(headers or {})


def error_response(status: int, name: str, message: str) -> web.Response:
    return web.json_response({"error": name, "message": message}, status=status)


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


async def read_json(request: web.Request, *, required: bool) -> dict[str, Any]:
    """The request's JSON object (``{}`` for an empty optional body)."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise ApiError(400, "SyntaxError", "a JSON body is required")
        return {}
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, "SyntaxError", f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "TypeError", "the body must be a JSON object")
    return body


def optional_mime_type(body: dict[str, Any]) -> str | None:
    value = body.get("mimeType")
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(400, "TypeError", "mimeType must be a string")
    if not is_type_supported(value):
        raise ApiError(400, "NotSupportedError", f"{value!r} cannot be recorded")
    return value


def optional_timeslice(body: dict[str, Any]) -> int | None:
    value = body.get("timeslice")
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 10 <= value <= 3_600_000
    ):
        raise ApiError(
            400, "TypeError", "timeslice must be a number of milliseconds (10 to 3600000)"
        )
    return int(value)


def session_of(request: web.Request) -> Session:
    try:
        return request.app[SESSIONS].get(request.match_info["session"])
    except KeyError:
        raise ApiError(404, "NotFoundError", "no such session") from None


async def create_session(
    request: web.Request, sdp: str, body: dict[str, Any]
) -> tuple[Session, str]:
    refused = operations.refusal(request.app)
    if refused is not None:
        raise ApiError(
            503,
            "QuotaExceededError",
            refused.message,
            {"Retry-After": str(refused.retry_after)},
        )
    try:
        created = await request.app[SESSIONS].create(
            sdp, optional_mime_type(body), optional_timeslice(body)
        )
    except TooManySessions as exc:
        raise ApiError(503, "QuotaExceededError", str(exc)) from None
    except BadOffer as exc:
        raise ApiError(400, "SyntaxError", str(exc)) from None
    operations.admitted(request.app)
    return created


# -- signaling ----------------------------------------------------------------------------


async def offer(request: web.Request) -> web.Response:
    """``POST /offer``: ``{sdp, type: "offer", mimeType?, timeslice?}`` -> the answer."""
    body = await read_json(request, required=True)
    if body.get("type") != "offer" or not isinstance(body.get("sdp"), str):
        raise ApiError(400, "TypeError", 'expected {"sdp": "...", "type": "offer"}')
    session, answer = await create_session(request, body["sdp"], body)
    return web.json_response({"sdp": answer, "type": "answer", "session": session.id})


async def whip(request: web.Request) -> web.Response:
    """``POST /whip`` (RFC 9725): an SDP offer in, ``201 Created`` with the answer out."""
    if request.content_type != "application/sdp":
        raise ApiError(415, "NotSupportedError", "WHIP offers are application/sdp")
    raw = await request.read()
    try:
        sdp = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "SyntaxError", "the offer is not UTF-8 text") from None
    session, answer = await create_session(request, sdp, {})
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


async def call_method(request: web.Request) -> web.Response:
    """``POST /api/sessions/{id}/{method}``: the recorder method; answers the new state."""
    session = session_of(request)
    body = await read_json(request, required=False)
    await invoke(session, request.match_info["method"], body)
    return web.json_response({"state": session.state, **session.to_json()})


async def invoke(session: Session, method: str, body: dict[str, Any]) -> None:
    """Call one recorder method on a session (from the API or the WebSocket)."""
    if method not in METHODS:
        raise ApiError(404, "NotFoundError", f"no method {method!r}")
    if method == "start":
        await session.start(optional_mime_type(body), optional_timeslice(body))
    else:
        session.command(method)


async def events(request: web.Request) -> web.WebSocketResponse:
    """``GET /api/sessions/{id}/events``: a WebSocket with one JSON message per event.

    The client may also send commands, ``{"call": "pause"}`` (``start`` takes
    ``timeslice`` and ``mimeType`` too); each gets a ``{"type": "reply", "call", "state"}``
    or ``{"type": "reply", "call", "error", "message"}`` in return.
    """
    session = session_of(request)
    socket = web.WebSocketResponse(heartbeat=20, max_msg_size=4096)
    await socket.prepare(request)
    queue = session.subscribe()
    sender = asyncio.ensure_future(_send_events(socket, queue))
    try:
        await socket.send_json({"type": "session", **session.to_json()})
        async for message in socket:
            if message.type != WSMsgType.TEXT:
                break
            await socket.send_json(await _reply(session, message.data))
    finally:
        sender.cancel()
        session.unsubscribe(queue)
        await socket.close()
    return socket


async def _send_events(
    socket: web.WebSocketResponse, queue: asyncio.Queue[dict[str, Any] | None]
) -> None:
    while True:
        message = await queue.get()
        if message is None:
            await socket.close()
            return
        await socket.send_json(message)


async def _reply(session: Session, text: str) -> dict[str, Any]:
    """Run a command sent on the WebSocket; the reply says what came of it."""
    try:
        command = json.loads(text)
    except ValueError:
        return {"type": "reply", "error": "SyntaxError", "message": "commands are JSON"}
    if not isinstance(command, dict) or not isinstance(command.get("call"), str):
        return {"type": "reply", "error": "TypeError", "message": 'expected {"call": "..."}'}
    call = command["call"]
    try:
        await invoke(session, call, command)
    except ApiError as exc:
        return {"type": "reply", "call": call, "error": exc.name, "message": str(exc)}
    except RecorderError as exc:
        return {"type": "reply", "call": call, "error": exc.name, "message": str(exc)}
    return {"type": "reply", "call": call, "state": session.state}


# -- recordings ---------------------------------------------------------------------------


async def list_recordings(request: web.Request) -> web.Response:
    try:
        entries = await request.app[RECORDINGS].list(request.app[SESSIONS].live_durations())
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


async def delete_recording(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name in request.app[SESSIONS].live_durations():
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
    if settings.redis is not None:
        from . import cluster  # redis only for a node of a cluster

        cluster.setup(app, settings, app[SESSIONS], app[NOTICES], app[READINESS], app[DRAIN])
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/offer", offer)
    app.router.add_post("/whip", whip)
    app.router.add_delete("/whip/{session}", whip_delete)
    app.router.add_patch("/whip/{session}", whip_patch)
    app.router.add_get("/api/config", config)
    app.router.add_get("/api/sessions", list_sessions)
    app.router.add_get("/api/sessions/{session}", get_session)
    app.router.add_delete("/api/sessions/{session}", delete_session)
    app.router.add_post("/api/sessions/{session}/{method}", call_method)
    app.router.add_get("/api/sessions/{session}/events", events)
    app.router.add_get("/api/recordings", list_recordings)
    app.router.add_delete("/api/recordings/{name}", delete_recording)
    app.router.add_get("/recordings/{name}", get_recording)
    app.router.add_static("/static", static_folder(), show_index=False, follow_symlinks=False)
    return app


__all__ = ["NotSupportedError", "create_app"]
