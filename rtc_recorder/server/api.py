"""What every route shares: the JSON error a handler raises, and reading a request's JSON
body and its common fields."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiohttp import WSMsgType, web

from ..errors import RecorderError
from ..mimetype import is_type_supported
from .channel import EventChannel, Message


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
    """The JSON body of an error."""
    return web.json_response({"error": name, "message": message}, status=status)


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


async def read_sdp(request: web.Request, what: str) -> str:
    """The ``application/sdp`` body of a WHIP or WHEP request (``what`` names it)."""
    if request.content_type != "application/sdp":
        raise ApiError(415, "NotSupportedError", f"{what} offers are application/sdp")
    raw = await request.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "SyntaxError", "the offer is not UTF-8 text") from None


def optional_mime_type(body: dict[str, Any]) -> str | None:
    """The body's ``mimeType``, if it gives one the server records."""
    value = body.get("mimeType")
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(400, "TypeError", "mimeType must be a string")
    if not is_type_supported(value):
        raise ApiError(400, "NotSupportedError", f"{value!r} cannot be recorded")
    return value


def optional_timeslice(body: dict[str, Any]) -> int | None:
    """The body's ``timeslice`` (ms), if it gives one."""
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


METHODS = ("start", "pause", "resume", "requestData", "stop")
Call = Callable[[str, dict[str, Any]], Awaitable[str]]


class Controlled(Protocol):
    """What the control routes drive: a session's recording or a room's."""

    @property
    def state(self) -> str:
        """The recorder's state."""

    @property
    def events(self) -> EventChannel:
        """Its events."""

    async def start(self, mime_type: str | None, timeslice: int | None) -> None:
        """Start a new recording."""

    def command(self, method: str) -> object:
        """``pause``, ``resume``, ``requestData`` or ``stop``."""

    def to_json(self) -> dict[str, Any]:
        """What the API says of it."""


async def invoke(target: Controlled, method: str, body: dict[str, Any]) -> None:
    """Call one recorder method (from the API or the WebSocket)."""
    if method not in METHODS:
        raise ApiError(404, "NotFoundError", f"no method {method!r}")
    if method == "start":
        await target.start(optional_mime_type(body), optional_timeslice(body))
    else:
        target.command(method)


async def call_method(request: web.Request, target: Controlled) -> web.Response:
    """``POST .../{method}``: the recorder method (the JSON body ``start``'s options); the
    new state."""
    body = await read_json(request, required=False)
    await invoke(target, request.match_info["method"], body)
    return web.json_response({"state": target.state, **target.to_json()})


async def control_socket(
    request: web.Request, target: Controlled, hello: dict[str, Any]
) -> web.WebSocketResponse:
    """An events WebSocket of ``target`` that takes its commands too."""

    async def call(method: str, command: dict[str, Any]) -> str:
        await invoke(target, method, command)
        return target.state

    return await event_socket(request, target.events, hello, call)


async def event_socket(
    request: web.Request, channel: EventChannel, hello: dict[str, Any], call: Call
) -> web.WebSocketResponse:
    """A WebSocket sending ``hello``, then every message of ``channel``; the commands the
    client sends go to ``call(method, command)``, which answers the new state."""
    socket = web.WebSocketResponse(heartbeat=20, max_msg_size=4096)
    await socket.prepare(request)
    queue = channel.subscribe()
    sender = asyncio.ensure_future(_send_events(socket, queue))
    try:
        await socket.send_json(hello)
        async for message in socket:
            if message.type != WSMsgType.TEXT:
                break
            await socket.send_json(await _reply(call, message.data))
    finally:
        sender.cancel()
        channel.unsubscribe(queue)
        await socket.close()
    return socket


async def _send_events(socket: web.WebSocketResponse, queue: asyncio.Queue[Message | None]) -> None:
    while True:
        message = await queue.get()
        if message is None:
            await socket.close()
            return
        await socket.send_json(message)


async def _reply(call: Call, text: str) -> dict[str, Any]:
    """Run a command sent on the WebSocket; the reply says what came of it."""
    try:
        command = json.loads(text)
    except ValueError:
        return {"type": "reply", "error": "SyntaxError", "message": "commands are JSON"}
    if not isinstance(command, dict) or not isinstance(command.get("call"), str):
        return {"type": "reply", "error": "TypeError", "message": 'expected {"call": "..."}'}
    method = command["call"]
    try:
        state = await call(method, command)
    except ApiError as exc:
        return {"type": "reply", "call": method, "error": exc.name, "message": str(exc)}
    except RecorderError as exc:
        return {"type": "reply", "call": method, "error": exc.name, "message": str(exc)}
    return {"type": "reply", "call": method, "state": state}
