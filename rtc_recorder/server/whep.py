"""WHEP: watching any live session's media, forwarded as it arrives.

``POST /whep/{session}`` takes a ``recvonly`` SDP offer and answers ``201`` with
``Location: /whep/{session}/{subscription}``; ``DELETE`` of that location ends the
subscription. Each session's media goes out through one
:class:`~rtc_recorder.receive.forward.Forwarder` (made at its first subscription, closed
with the session): the publisher's encoded frames are sent on without decoding, and the
subscribers' keyframe requests are passed to the publisher.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription

from ..receive.forward import Forwarder, ForwardingError, Subscription
from ..receive.transport import PortsExhausted, apply_ice_policy
from .api import ApiError, read_sdp
from .sessions import BadOffer, Session, SessionManager, check_offer, log, new_peer_connection
from .settings import Settings

logger = logging.getLogger("rtc_recorder.server")


class Subscriptions:
    """Every session's forwarder and the WHEP subscriptions to it (``--max-subscriptions``
    at most, in all)."""

    def __init__(self, settings: Settings, sessions: SessionManager) -> None:
        self.settings = settings
        self.sessions = sessions
        self.forwarders: dict[str, Forwarder] = {}  # by session
        self.subscriptions: dict[tuple[str, str], Subscription] = {}  # (session, id)
        self.closing = False
        self._closing: set[asyncio.Task[None]] = set()
        sessions.on_closed.append(self._session_closed)

    async def subscribe(self, session: Session, offer: str) -> tuple[Subscription, str]:
        """A subscription of the peer that sent ``offer`` to ``session``'s media, and the
        answer; :class:`ApiError` when it cannot be made."""
        if self.closing:
            raise ApiError(503, "QuotaExceededError", "the server is shutting down")
        if len(self.subscriptions) >= self.settings.max_subscriptions:
            raise ApiError(
                503,
                "QuotaExceededError",
                f"{self.settings.max_subscriptions} subscriptions already",
            )
        try:
            check_offer(offer)
        except BadOffer as exc:
            raise ApiError(400, "SyntaxError", str(exc)) from None
        pc = new_peer_connection(self.settings)
        try:
            subscription = await self._answer(pc, session, offer)
        except BaseException:
            await pc.close()
            raise
        if session.closed:  # it closed while the answer gathered
            await subscription.close()
            raise ApiError(404, "NotFoundError", "the session has ended")
        key = (session.id, subscription.id)
        self.subscriptions[key] = subscription
        subscription.on_end(lambda ended: self._forget(key))
        # A subscriber that never connects (it never took the answer) is let go, as a
        # session that never connects is.
        expiry = asyncio.get_running_loop().call_later(
            self.settings.idle_timeout, self._expire, subscription
        )
        subscription.on_end(lambda ended: expiry.cancel())
        log("subscription", session=session.id, subscription=subscription.id)
        return subscription, pc.localDescription.sdp

    async def _answer(self, pc: RTCPeerConnection, session: Session, offer: str) -> Subscription:
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        except Exception as exc:  # aiortc refuses offers with many kinds of errors
            raise ApiError(
                400, "SyntaxError", f"cannot take this offer: {type(exc).__name__}: {exc}"
            ) from None
        apply_ice_policy(pc, self.settings.ice_policy)
        try:
            subscription = self._forwarder(session).subscribe(pc)
        except ForwardingError as exc:
            raise ApiError(400, "NotSupportedError", str(exc)) from None
        try:
            await pc.setLocalDescription(await pc.createAnswer())
        except PortsExhausted as exc:
            await subscription.close()
            raise ApiError(503, "QuotaExceededError", str(exc)) from None
        except Exception as exc:  # an offer aiortc took, then cannot answer
            await subscription.close()
            raise ApiError(
                400, "SyntaxError", f"cannot answer this offer: {type(exc).__name__}: {exc}"
            ) from None
        return subscription

    def _forwarder(self, session: Session) -> Forwarder:
        forwarder = self.forwarders.get(session.id)
        if forwarder is None:
            forwarder = self.forwarders[session.id] = Forwarder(session.stream)
        return forwarder

    def _forget(self, key: tuple[str, str]) -> None:
        self.subscriptions.pop(key, None)

    def _expire(self, subscription: Subscription) -> None:
        if subscription.pc.connectionState != "connected":
            log("subscription idle", subscription=subscription.id)
            self._spawn(subscription.close())

    def _spawn(self, closing: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(closing)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def unsubscribe(self, session: str, subscription: str) -> None:
        """End a subscription; :class:`ApiError` 404 for one that is not (or no longer)."""
        found = self.subscriptions.get((session, subscription))
        if found is None:
            raise ApiError(404, "NotFoundError", "no such subscription (it may have ended)")
        await found.close()
        log("unsubscribed", session=session, subscription=subscription)

    async def close(self) -> None:
        """End every subscription (the server is stopping)."""
        self.closing = True
        for forwarder in list(self.forwarders.values()):
            await forwarder.close()
        self.forwarders.clear()

    def _session_closed(self, session: Session) -> None:
        """The publisher has gone: its subscriptions end."""
        forwarder = self.forwarders.pop(session.id, None)
        if forwarder is not None:
            self._spawn(forwarder.close())


# -- the routes -------------------------------------------------------------------------

SUBSCRIPTIONS: web.AppKey[Subscriptions] = web.AppKey("subscriptions", Subscriptions)


def setup(app: web.Application, settings: Settings, sessions: SessionManager) -> None:
    """Add the WHEP routes and their subscriptions to ``app`` (ended at shutdown)."""
    app[SUBSCRIPTIONS] = Subscriptions(settings, sessions)
    app.router.add_post("/whep/{session}", whep)
    app.router.add_delete("/whep/{session}/{subscription}", whep_delete)
    app.router.add_patch("/whep/{session}/{subscription}", whep_patch)
    app.on_shutdown.append(_close)


def _session(request: web.Request) -> Session:
    try:
        return request.app[SUBSCRIPTIONS].sessions.get(request.match_info["session"])
    except KeyError:
        raise ApiError(404, "NotFoundError", "no such session") from None


async def whep(request: web.Request) -> web.Response:
    """``POST /whep/{session}``: a ``recvonly`` offer in, ``201`` with the answer out."""
    session = _session(request)
    offer = await read_sdp(request, "WHEP")
    subscription, answer = await request.app[SUBSCRIPTIONS].subscribe(session, offer)
    return web.Response(
        status=201,
        text=answer,
        content_type="application/sdp",
        headers={
            "Location": f"/whep/{session.id}/{subscription.id}",
            "ETag": f'"{subscription.id}"',
        },
    )


async def whep_delete(request: web.Request) -> web.Response:
    """``DELETE /whep/{session}/{subscription}``: end the subscription."""
    await request.app[SUBSCRIPTIONS].unsubscribe(
        request.match_info["session"], request.match_info["subscription"]
    )
    return web.Response(status=200)


async def whep_patch(request: web.Request) -> web.Response:
    """Trickle ICE is not supported (answers carry every candidate)."""
    raise web.HTTPMethodNotAllowed("PATCH", ["DELETE", "OPTIONS"])


async def _close(app: web.Application) -> None:
    await app[SUBSCRIPTIONS].close()
