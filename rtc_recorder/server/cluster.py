"""A cluster of nodes sharing one Redis (``--redis URL``): any node answers any route.

- **Registry.** Every node writes its entry (URL, sessions held, capacity, ready,
  draining) with a time to live of three heartbeats, and a snapshot of its sessions. A
  node whose entry expired is dead: its sessions are listed as ``lost`` by the others.
- **Ownership.** Sessions, rooms and recordings are claimed by the node that holds them
  (``owner:KIND:KEY`` keys). A request whose route names one (a route parameter
  ``session``, ``room`` or ``name``, see :data:`ROUTE_KEYS`) and that another live node
  holds is proxied to that node. New routes need nothing more than those parameter names
  and a claim (:meth:`Cluster.claim`, or a notice carrying the key).
- **Placement.** A new session (:data:`PLACEMENT`) goes to the least-loaded node with
  room for it, or to the node holding its room: WHIP is answered ``307`` with
  ``Location`` on that node (RFC 9725 clients follow it), ``/offer`` is proxied there.
- **Lists** (:data:`CLUSTER_LISTS`) are this node's entries, every live node's, and the
  dead nodes' sessions marked ``lost``.
- **Draining.** On SIGTERM the node tells the others at once (no new session is placed
  on it); once its recordings are finalized and uploaded, it leaves the registry.

Requests one node sends another carry :data:`FORWARDED` and are answered locally.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from .lifecycle import Drain, Readiness
from .notices import Notice, Notices
from .sessions import SessionManager
from .settings import Settings

logger = logging.getLogger("rtc_recorder.server")

PREFIX = "rtc-recorder:"
FORWARDED = "RTC-Recorder-Forwarded"  # on requests between nodes: answer them locally
PLACED = "placed"  # query parameter of a placement's redirect: take it if there is room
REDIS_TIMEOUT = 2.0  # seconds a Redis that stopped answering may hold a request
STOP_SECONDS = 2.0  # the heartbeat's last write gets this long to end
BEATS_TO_DEATH = 3  # heartbeats a node may miss before it counts as dead
OWNER_SECONDS = 7 * 24 * 3600  # an owner key outlives its node this long at most
RESERVED_SECONDS = 60  # a room placed on a node that has not made it yet stays there this long
LOST_SECONDS = 3600  # a dead node's sessions are listed as lost this long at most
PROXY_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=3, sock_read=30)
LIST_TIMEOUT = aiohttp.ClientTimeout(total=5)

# Route parameters that name something a node holds, and what they name.
ROUTE_KEYS = {"session": "session", "room": "room", "name": "recording"}
# Routes that make a new session: how the request reaches the node chosen for it.
PLACEMENT = {"/offer": "proxy", "/whip": "redirect", "/rooms/{room}/whip": "redirect"}
# Lists that cover the cluster, and the field an entry is known by across nodes (a
# recording in shared storage is listed by every node; None: every entry is one node's).
CLUSTER_LISTS: dict[str, str | None] = {
    "/api/sessions": None,
    "/api/rooms": None,
    "/api/recordings": "name",
}
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "host",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-authenticate",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class NodeInfo:
    """A node as the registry knows it."""

    url: str
    sessions: int
    capacity: int
    ready: bool
    draining: bool

    @property
    def load(self) -> float:
        """The share of its capacity in use."""
        return self.sessions / self.capacity

    @property
    def open(self) -> bool:
        """Whether a new session may be placed on it."""
        return self.ready and not self.draining and self.sessions < self.capacity

    def to_json(self) -> str:
        """The entry as the registry keeps it."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> NodeInfo:
        """An entry the registry kept."""
        fields = json.loads(text)
        return cls(
            str(fields["url"]),
            int(fields["sessions"]),
            max(1, int(fields["capacity"])),
            bool(fields["ready"]),
            bool(fields["draining"]),
        )


def choose(nodes: Iterable[NodeInfo], me: str) -> str | None:
    """The node a new session goes to: the least-loaded open one (this one on a tie, so a
    request is not sent elsewhere for nothing), or None when no node is open."""
    candidates = [node for node in nodes if node.open]
    if not candidates:
        return None
    best = min(candidates, key=lambda node: (node.load, node.url != me, node.url))
    return best.url


class Registry:
    """The cluster's state in Redis, as one node reads and writes it."""

    def __init__(self, client: aioredis.Redis, me: str, heartbeat: float) -> None:
        self.client = client
        self.me = me
        self.ttl_ms = int(heartbeat * BEATS_TO_DEATH * 1000)
        self._release = client.register_script(
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
            "end return 0"
        )
        # The holder of KEYS[1] if it is a live node (its entry ARGV[3] .. holder exists),
        # else ARGV[1], written for ARGV[2] seconds: one step, so two nodes placing the
        # same room at once agree.
        self._reserve = client.register_script(
            "local holder = redis.call('get', KEYS[1]) "
            "if holder and (holder == ARGV[1] or redis.call('exists', ARGV[3] .. holder) == 1) "
            "then return holder end "
            "redis.call('set', KEYS[1], ARGV[1], 'ex', ARGV[2]) return ARGV[1]"
        )

    @staticmethod
    def _node(url: str) -> str:
        return f"{PREFIX}node:{url}"

    @staticmethod
    def _sessions(url: str) -> str:
        return f"{PREFIX}sessions:{url}"

    @staticmethod
    def _owner(kind: str, key: str) -> str:
        return f"{PREFIX}owner:{kind}:{key}"

    async def join(self) -> None:
        """Start afresh: the sessions a previous run of this node left are gone."""
        await self.client.delete(self._sessions(self.me))

    async def beat(self, info: NodeInfo, sessions: dict[str, str]) -> None:
        """Write this node's entry (alive for three heartbeats) and its sessions."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self._node(self.me), info.to_json(), px=self.ttl_ms)
            pipe.sadd(f"{PREFIX}nodes", self.me)
            pipe.delete(self._sessions(self.me))
            for session, entry in sessions.items():
                pipe.hset(self._sessions(self.me), session, entry)
            if sessions:
                pipe.expire(self._sessions(self.me), LOST_SECONDS)
            await pipe.execute()

    async def leave(self) -> None:
        """This node is gone, on purpose: nothing of it is listed any more."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self._node(self.me), self._sessions(self.me))
            pipe.srem(f"{PREFIX}nodes", self.me)
            await pipe.execute()

    async def nodes(self) -> tuple[dict[str, NodeInfo], list[str]]:
        """The live nodes by URL, and the dead ones still listed (whose sessions are lost);
        a dead node nothing is left of is forgotten."""
        urls = sorted(str(url) for url in await self.client.smembers(f"{PREFIX}nodes"))
        if not urls:
            return {}, []
        entries = await self.client.mget([self._node(url) for url in urls])
        alive = {
            url: NodeInfo.from_json(str(entry))
            for url, entry in zip(urls, entries, strict=True)
            if entry
        }
        dead = [url for url in urls if url not in alive]
        remaining = []
        for url in dead:
            if await self.client.exists(self._sessions(url)):
                remaining.append(url)
            else:
                await self.client.srem(f"{PREFIX}nodes", url)
        return alive, remaining

    async def alive(self, url: str) -> bool:
        """Whether the node's entry has not expired."""
        return bool(await self.client.exists(self._node(url)))

    async def claim(self, kind: str, key: str) -> None:
        """This node holds ``key``."""
        await self.client.set(self._owner(kind, key), self.me, ex=OWNER_SECONDS)

    async def release(self, kind: str, key: str) -> None:
        """This node holds ``key`` no more (if another claimed it since, it keeps it)."""
        await self._release(keys=[self._owner(kind, key)], args=[self.me])

    async def reserve(self, kind: str, key: str, url: str) -> str:
        """The node that holds ``key``: the live one that already does, else ``url``, which
        holds it from now on (for :data:`RESERVED_SECONDS`, until it claims it)."""
        holder = await self._reserve(
            keys=[self._owner(kind, key)], args=[url, RESERVED_SECONDS, self._node("")]
        )
        return str(holder)

    async def owner(self, kind: str, key: str) -> str | None:
        """The live node holding ``key`` (this one included), or None."""
        url = await self.client.get(self._owner(kind, key))
        if url is None or (url != self.me and not await self.alive(str(url))):
            return None
        return str(url)

    async def lost_sessions(self, url: str) -> list[dict[str, Any]]:
        """What a dead node last said of its sessions, each marked ``lost``."""
        entries = await self.client.hvals(self._sessions(url))
        return [{**json.loads(entry), "connectionState": "lost", "node": url} for entry in entries]


class Cluster:
    """This node's part in the cluster (see the module's docstring).

    ``snapshot`` gives this node's entry fields (sessions held, ready, draining) and its
    sessions' JSON; ``local_refusal`` whether it would refuse a new session now.
    """

    def __init__(
        self,
        redis_url: str,
        me: str,
        capacity: int,
        heartbeat: float,
        snapshot: Callable[[], tuple[NodeInfo, dict[str, str]]],
        local_refusal: Callable[[], bool],
    ) -> None:
        self.me = me
        self.capacity = capacity
        self.heartbeat = heartbeat
        client = aioredis.from_url(
            redis_url,
            decode_responses=True,
            socket_connect_timeout=REDIS_TIMEOUT,
            socket_timeout=REDIS_TIMEOUT,
        )
        self.registry = Registry(client, me, heartbeat)
        self._snapshot = snapshot
        self._refuses = local_refusal
        self._changed = asyncio.Event()
        self._writes: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None
        self._left = False
        self._stopping = False

    # -- the node's life -------------------------------------------------------------

    async def start(self) -> None:
        """Join the registry and keep the heartbeat going."""
        self._http = aiohttp.ClientSession(auto_decompress=False)
        try:
            await self.registry.join()
        except RedisError as exc:
            logger.warning("redis unreachable at start", extra={"fields": {"error": str(exc)}})
        self._tasks = [
            asyncio.ensure_future(self._beating()),
            asyncio.ensure_future(self._writing()),
        ]
        logger.info("cluster node", extra={"fields": {"url": self.me, "capacity": self.capacity}})

    def changed(self) -> None:
        """Something the others should know now (a session came or went, the drain began)."""
        self._changed.set()

    async def leave(self, _timeout: float = 0.0) -> None:
        """The drain is over: stop the heartbeat and leave the registry."""
        if self._left:
            return
        self._left = True
        await self._stop_tasks()
        try:
            await self.registry.leave()
        except RedisError as exc:
            logger.warning("could not leave the registry", extra={"fields": {"error": str(exc)}})
        logger.info("left the cluster", extra={"fields": {"url": self.me}})

    async def close(self) -> None:
        """Release the connections (the entry expires by itself if :meth:`leave` was not
        reached)."""
        await self._stop_tasks()
        if self._http is not None:
            await self._http.close()
        await self.registry.client.aclose()

    async def _stop_tasks(self) -> None:
        # redis-py may swallow a cancellation that lands inside a command, so the
        # heartbeat also ends at its next turn, which the event brings at once.
        self._stopping = True
        self._changed.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=STOP_SECONDS)
        self._tasks = []

    async def _beating(self) -> None:
        while not self._stopping:
            self._changed.clear()
            try:
                info, sessions = self._snapshot()
                await self.registry.beat(info, sessions)
            except RedisError as exc:
                logger.warning("heartbeat failed", extra={"fields": {"error": str(exc)}})
            except Exception:  # the heartbeat must outlive any one failure
                logger.exception("heartbeat failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.heartbeat):
                    await self._changed.wait()

    async def _writing(self) -> None:
        """Claims and releases, in the order they were made."""
        while not self._stopping:
            write = await self._writes.get()
            try:
                await write()
            except RedisError as exc:
                logger.warning("registry write failed", extra={"fields": {"error": str(exc)}})

    # -- ownership ---------------------------------------------------------------------

    def claim(self, kind: str, key: str) -> None:
        """This node holds ``key`` (a session, room or recording): requests about it that
        reach other nodes come here."""
        self._writes.put_nowait(lambda: self.registry.claim(kind, key))
        self.changed()

    def release(self, kind: str, key: str) -> None:
        """This node holds ``key`` no more."""
        self._writes.put_nowait(lambda: self.registry.release(kind, key))
        self.changed()

    def on_notice(self, notice: Notice) -> None:
        """Claims from the server's notices: sessions while they last, recordings and rooms
        from their first notice."""
        data = notice.data
        session = data.get("session")
        if notice.type == "session.started" and session:
            self.claim("session", str(session))
        elif notice.type == "session.ended" and session:
            self.release("session", str(session))
        elif notice.type == "recording.started" and data.get("name"):
            self.claim("recording", str(data["name"]))
        if data.get("room") and notice.type.endswith("started"):
            self.claim("room", str(data["room"]))

    # -- requests ----------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Place new sessions, send requests to the node holding what they name, gather
        the lists; requests from other nodes are answered here. Without Redis, the node
        answers alone."""
        if FORWARDED in request.headers or self._left:
            return await handler(request)
        route = _canonical(request)
        if request.method == "GET" and route in CLUSTER_LISTS:
            return await self._gather(request, handler, CLUSTER_LISTS[route])
        placing = request.method == "POST" and route in PLACEMENT
        room = await _room_joined(request) if placing else None
        try:
            node = await (self._placement(request, room) if placing else self._holder(request))
        except RedisError as exc:
            logger.warning("registry unreachable", extra={"fields": {"error": str(exc)}})
            node = self.me
        if node != self.me:
            if placing and PLACEMENT[str(route)] == "redirect":
                return self._redirect(request, node)
            return await self._proxy(request, node)
        response = await handler(request)
        if room is not None and response.status < 300:
            # before the answer: the room's next participant, at any node, comes here
            with contextlib.suppress(RedisError):
                await self.registry.claim("room", room)
        return response

    async def _holder(self, request: web.Request) -> str:
        """The node holding what the route names (this one, if no other live one)."""
        for parameter, value in request.match_info.items():
            kind = ROUTE_KEYS.get(parameter)
            if kind is None:
                continue
            owner = await self.registry.owner(kind, value)
            if owner is not None:
                return owner
        return self.me

    async def _placement(self, request: web.Request, room: str | None) -> str:
        """The node a new session goes to: its room's, else this one if the request was
        placed here and there is room, else the least-loaded open one (this one, to answer
        503, if none is). A room's first session reserves the node chosen for the room, so
        first sessions arriving at two nodes at once meet on one."""
        if room is not None:
            owner = await self.registry.owner("room", room)
            if owner is not None:
                return owner
        if PLACED in request.query and not self._refuses():
            chosen: str | None = self.me
        else:
            alive, _ = await self.registry.nodes()
            alive[self.me] = self._snapshot()[0]
            chosen = choose(alive.values(), self.me)
        if chosen is None:
            return self.me
        if room is not None:
            return await self.registry.reserve("room", room, chosen)
        return chosen

    def _redirect(self, request: web.Request, node: str) -> web.Response:
        location = f"{node}{request.rel_url.with_query({**request.query, PLACED: '1'})}"
        logger.info("placed elsewhere", extra={"fields": {"path": request.path, "node": node}})
        return web.Response(status=307, headers={"Location": location})

    async def _gather(
        self, request: web.Request, handler: Handler, unique: str | None
    ) -> web.StreamResponse:
        response = await handler(request)
        if response.status != 200 or not isinstance(response, web.Response):
            return response
        entries: list[dict[str, Any]] = [
            {**entry, "node": self.me} for entry in json.loads(response.text or "[]")
        ]
        try:
            alive, dead = await self.registry.nodes()
        except RedisError as exc:
            logger.warning("registry unreachable", extra={"fields": {"error": str(exc)}})
            alive, dead = {}, []
        others = [url for url in alive if url != self.me]
        lists = await asyncio.gather(*(self._list_of(request, url) for url in others))
        for more in lists:
            entries += more
        if request.path == "/api/sessions":
            for url in dead:
                with contextlib.suppress(RedisError):
                    entries += await self.registry.lost_sessions(url)
        if unique is not None:
            entries = list({entry.get(unique): entry for entry in reversed(entries)}.values())
            entries.reverse()
        return web.json_response(entries)

    async def _list_of(self, request: web.Request, node: str) -> list[dict[str, Any]]:
        """Another node's own list (empty if it does not answer in time)."""
        assert self._http is not None
        try:
            async with self._http.get(
                node + request.path_qs, headers=_forwarded_headers(request), timeout=LIST_TIMEOUT
            ) as answer:
                if answer.status != 200:
                    return []
                return [{**entry, "node": node} for entry in await answer.json()]
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            logger.warning("list unanswered", extra={"fields": {"node": node, "error": str(exc)}})
            return []

    async def _proxy(self, request: web.Request, node: str) -> web.StreamResponse:
        """Send the request to ``node`` and its answer back, streamed."""
        assert self._http is not None
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._proxy_websocket(request, node)
        body = await request.read()
        try:
            async with self._http.request(
                request.method,
                node + request.path_qs,
                headers=_forwarded_headers(request),
                data=body if body else None,
                allow_redirects=False,
                timeout=PROXY_TIMEOUT,
            ) as answer:
                response = web.StreamResponse(status=answer.status, reason=answer.reason)
                for name, value in answer.headers.items():
                    if name.lower() not in _HOP_BY_HOP:
                        response.headers.add(name, value)
                await response.prepare(request)
                async for chunk in answer.content.iter_chunked(64 * 1024):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            logger.warning("node unreachable", extra={"fields": {"node": node, "error": str(exc)}})
            return web.json_response(
                {"error": "NetworkError", "message": "the node holding this did not answer"},
                status=502,
            )

    async def _proxy_websocket(self, request: web.Request, node: str) -> web.StreamResponse:
        """A WebSocket to ``node``, its messages relayed both ways."""
        assert self._http is not None
        url = node.replace("http", "ws", 1) + request.path_qs
        try:
            remote = await self._http.ws_connect(url, headers=_forwarded_headers(request))
        except (aiohttp.ClientError, TimeoutError):
            return web.json_response(
                {"error": "NetworkError", "message": "the node holding this did not answer"},
                status=502,
            )
        local = web.WebSocketResponse(heartbeat=20)
        await local.prepare(request)

        async def relay(
            source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
            sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
        ) -> None:
            async for message in source:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                await sink.send_str(message.data)
            await sink.close()

        async with remote:
            await asyncio.gather(relay(local, remote), relay(remote, local))
        return local


async def _room_joined(request: web.Request) -> str | None:
    """The room a new session joins: the route's ``{room}``, or ``room`` of a JSON body."""
    room = request.match_info.get("room")
    if room is not None or request.content_type != "application/json":
        return room
    try:
        body = json.loads(await request.read())
    except ValueError:
        return None  # the handler says what is wrong with it
    value = body.get("room") if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


def _canonical(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None


def _forwarded_headers(request: web.Request) -> dict[str, str]:
    headers = {
        name: value
        for name, value in request.headers.items()
        if name.lower() not in _HOP_BY_HOP
        and name.lower() != "content-length"
        and not name.lower().startswith("sec-websocket")
    }
    headers[FORWARDED] = "1"
    return headers


CLUSTER: web.AppKey[Cluster] = web.AppKey("cluster", Cluster)


def setup(
    app: web.Application,
    settings: Settings,
    sessions: SessionManager,
    notices: Notices,
    readiness: Readiness,
    drain: Drain,
) -> None:
    """Make ``app`` a node of the cluster ``--redis`` names: its middleware, its heartbeat
    from start-up, claims from its notices, the others told when the drain starts, and the
    registry left once the drain (uploads included) is over."""
    assert settings.redis is not None
    me, capacity = settings.base_url, settings.session_limit

    def snapshot() -> tuple[NodeInfo, dict[str, str]]:
        entries = [session.to_json() for session in sessions.sessions.values()]
        ready = readiness.refusal(settling=False) is None
        info = NodeInfo(me, len(entries), capacity, ready, readiness.draining)
        stamp = time.time()
        return info, {str(entry["id"]): json.dumps({**entry, "seen": stamp}) for entry in entries}

    cluster = Cluster(
        settings.redis,
        me,
        capacity,
        settings.heartbeat,
        snapshot,
        lambda: readiness.refusal(settling=False) is not None,
    )
    app[CLUSTER] = cluster
    app.middlewares.append(cluster.middleware)
    notices.subscribe(cluster.on_notice)
    drain.starting.append(cluster.changed)
    drain.afterwards.append(cluster.leave)

    async def start(_app: web.Application) -> None:
        await cluster.start()

    async def close(_app: web.Application) -> None:
        await cluster.close()

    app.on_startup.append(start)
    app.on_cleanup.append(close)
