"""A cluster of ``rtc-recorder serve --redis`` nodes: real processes sharing a real Redis
(Debian's ``redis-server``, started here), aiortc publishers, SeaweedFS for the nodes that
upload. WHIP publishers follow ``307`` as RFC 9725 clients do."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiortc import RTCSessionDescription
from yarl import URL

from benchmarks.loadbench.object_store import WEBHOOK_SECRET, SeaweedFS
from benchmarks.loadbench.redis_server import RedisServer
from rtc_recorder.server.cluster import OWNER_SECONDS, RESERVED_SECONDS, NodeInfo, Registry, choose
from rtc_recorder.server.settings import Settings, parse
from rtc_recorder.server.workers import (
    RESTART_DELAY,
    RESTART_DELAY_MAX,
    STABLE_SECONDS,
    restart_delay,
    worker_arguments,
)

from .media import ffmpeg_errors, wait_for
from .server_support import Publisher, free_port, publish, publisher_pc, server_process
from .storage_support import object_bytes
from .test_operations import until
from .test_storage import storage_args, until_stored

HEARTBEAT = 0.5
LOST_WITHIN = 3 * HEARTBEAT + 2.0  # three heartbeats, and room for polling on a busy machine
MAX_REDIRECTS = 5


# -- placement, on explicit loads ----------------------------------------------------------


def node(url: str, sessions: int, capacity: int = 4, *, ready: bool = True) -> NodeInfo:
    return NodeInfo(url, sessions, capacity, ready, draining=False)


def test_a_new_session_goes_to_the_least_loaded_node_with_room() -> None:
    nodes = [node("http://a", 3), node("http://b", 1), node("http://c", 2)]
    assert choose(nodes, "http://a") == "http://b"
    # load is the share of capacity used, not the count
    assert choose([node("http://a", 2, 8), node("http://b", 1, 2)], "http://b") == "http://a"


def test_a_tie_keeps_the_session_on_the_node_asked() -> None:
    nodes = [node("http://a", 1), node("http://b", 1), node("http://c", 1)]
    assert choose(nodes, "http://b") == "http://b"
    assert choose(nodes, "http://z") == "http://a"


def test_full_draining_or_unready_nodes_take_no_session() -> None:
    draining = NodeInfo("http://b", 0, 4, ready=False, draining=True)
    nodes = [node("http://a", 4), draining, node("http://c", 0, ready=False)]
    assert choose(nodes, "http://a") is None
    assert choose([*nodes, node("http://d", 3)], "http://a") == "http://d"


def test_cluster_flags_come_from_flags_and_environment_and_bad_ones_are_refused() -> None:
    settings = parse(
        ["--redis", "redis://127.0.0.1:6390/0", "--capacity", "3", "--max-sessions", "10"],
        {"RTC_RECORDER_HEARTBEAT": "0.5", "RTC_RECORDER_NODE_URL": "http://10.0.0.5:8080/"},
    )
    assert (settings.session_limit, settings.heartbeat) == (3, 0.5)
    assert settings.base_url == "http://10.0.0.5:8080"
    assert Settings(redis="redis://h", port=9000).base_url == "http://127.0.0.1:9000"
    for bad, reason in (
        ({"workers": 2}, "--workers needs --redis"),
        ({"capacity": 2}, "--capacity needs --redis"),
        ({"redis": "http://h"}, "not a redis://"),
        ({"redis": "redis://h", "host": "0.0.0.0"}, "needs --node-url"),
        ({"redis": "redis://h", "workers": 2, "node_url": "http://h:1"}, "each worker"),
        ({"redis": "redis://h", "capacity": 0}, "--capacity must be positive"),
    ):
        with pytest.raises(ValueError, match=reason):
            Settings(**bad)  # type: ignore[arg-type]


def test_each_worker_has_its_port_and_with_object_storage_a_spool_of_its_own() -> None:
    settings = parse(["--workers", "2", "--redis", "redis://h", "--port", "9000"])
    assert worker_arguments(["--redis", "redis://h"], settings, 1) == [
        *("--redis", "redis://h"),
        *("--workers", "1", "--port", "9001"),
    ]
    bucket = parse(
        ["--workers", "2", "--redis", "redis://h", "--storage", "s3://b", "--spool", "/s"]
    )
    assert worker_arguments([], bucket, 0)[-2:] == ["--spool", "/s/node-8080"]
    assert worker_arguments([], bucket, 1)[-2:] == ["--spool", "/s/node-8081"]


# -- real nodes ------------------------------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@dataclass
class Node:
    """One ``serve --redis`` process and how it was started (to start it again)."""

    process: subprocess.Popen[str]
    base: str
    folder: Path
    args: tuple[str, ...]  # besides --redis and --heartbeat
    env: dict[str, str]


@asynccontextmanager
async def node_process(
    redis_url: str, folder: Path, port: int, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[Node]:
    cluster_args = ("--redis", redis_url, "--heartbeat", str(HEARTBEAT), *args)
    async with server_process(folder, *cluster_args, port=port, env=env) as (process, base):
        yield Node(process, base, folder, args, env or {})


@asynccontextmanager
async def cluster(
    redis_url: str, folder: Path, count: int, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[list[Node]]:
    """``count`` nodes started together, each with a folder of its own."""
    async with AsyncExitStack() as stack:
        nodes = await asyncio.gather(
            *(
                stack.enter_async_context(
                    node_process(redis_url, folder / f"node{i}", free_port(), *args, env=env)
                )
                for i in range(count)
            )
        )
        yield sorted(nodes, key=lambda n: n.base)


async def whip_publish(http: aiohttp.ClientSession, url: str) -> tuple[Publisher, list[str]]:
    """Publish over WHIP at ``url``, following redirects as RFC 9725 clients do; the
    publisher (its ``location`` absolute) and every URL the offer was posted to."""
    pc = publisher_pc()
    await pc.setLocalDescription(await pc.createOffer())
    posted = [url]
    for _ in range(MAX_REDIRECTS):
        async with http.post(
            url,
            data=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp"},
            allow_redirects=False,
        ) as response:
            if response.status in (307, 308):
                url = str(URL(url).join(URL(response.headers["Location"])))
                posted.append(url)
                continue
            assert response.status == 201, await response.text()
            answer = await response.text()
            location = str(URL(url).join(URL(response.headers["Location"])))
            break
    else:
        raise AssertionError(f"more than {MAX_REDIRECTS} redirects: {posted}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    await wait_for(lambda: pc.connectionState == "connected", 10, "the publisher to connect")
    return Publisher(pc, location.rsplit("/", 1)[1], location), posted


def origin(url: str) -> str:
    return str(URL(url).origin())


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def sessions_by_id(http: aiohttp.ClientSession, node: Node) -> dict[str, dict[str, Any]]:
    return {entry["id"]: entry for entry in await get_json(http, f"{node.base}/api/sessions")}


async def recording_of(http: aiohttp.ClientSession, node: Node, session: str) -> str:
    """The session's recording's name (asked of ``node``), once it has one."""
    entry: dict[str, Any] = {}

    async def named() -> bool:
        entry.update(await get_json(http, f"{node.base}/api/sessions/{session}"))
        return bool(entry.get("recording"))

    await until(named, 15, f"a recording of {session}")
    return str(entry["recording"])


async def test_placement_redirects_whip_proxies_offer_and_any_node_controls_any_session(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with (
        cluster(redis_server.url, tmp_path, 3, "--capacity", "1") as nodes,
        aiohttp.ClientSession() as http,
    ):
        a = nodes[0]
        async with aiohttp.ClientSession(a.base) as at_a:
            first = await publish(at_a)  # /offer: every node is empty, so it stays on a
        holder = {first.session: a.base}

        # a is full: WHIP is sent on (307) to a node with room, and recorded there
        second, posted = await whip_publish(http, f"{a.base}/whip")
        assert len(posted) == 2 and origin(posted[1]) != a.base
        holder[second.session] = origin(second.location or "")
        assert holder[second.session] == origin(posted[1])

        # /offer to the full node is proxied to the one left
        async with aiohttp.ClientSession(a.base) as at_a:
            third = await publish(at_a)
        listed = await sessions_by_id(http, nodes[1])
        holder[third.session] = listed[third.session]["node"]
        assert set(holder.values()) == {node.base for node in nodes}
        assert {s: e["node"] for s, e in listed.items()} == holder  # every node's, from any

        # every node full: refused
        refused = publisher_pc()
        await refused.setLocalDescription(await refused.createOffer())
        async with http.post(
            f"{a.base}/whip",
            data=refused.localDescription.sdp,
            headers={"Content-Type": "application/sdp"},
            allow_redirects=False,
        ) as response:
            assert response.status == 503
        await refused.close()

        # the session on b, started over a's events WebSocket, stopped through c's API
        b = next(n for n in nodes if n.base == holder[second.session])
        c = next(n for n in nodes if n.base not in (a.base, b.base))
        events = await http.ws_connect(f"{a.base}/api/sessions/{second.session}/events")
        hello = await events.receive_json(timeout=10)
        assert (hello["type"], hello["id"]) == ("session", second.session)
        await events.send_json({"call": "start"})
        while (reply := await events.receive_json(timeout=10))["type"] != "reply":
            pass
        assert (reply["call"], reply["state"]) == ("start", "recording")
        name = await recording_of(http, c, second.session)
        assert (b.folder / name).exists() and not (a.folder / name).exists()

        async def recorded_two_seconds() -> bool:
            entry = (await sessions_by_id(http, a))[second.session]
            return float(entry["recordedSeconds"]) > 2.0

        await until(recorded_two_seconds, 20, "two seconds recorded")
        async with http.post(f"{c.base}/api/sessions/{second.session}/stop") as response:
            assert response.status == 200, await response.text()

        async def complete() -> bool:
            entries = await get_json(http, f"{a.base}/api/recordings")
            return any(e["name"] == name and e["state"] == "complete" for e in entries)

        await until(complete, 15, "the recording, complete, in a's list")
        async with http.get(f"{a.base}/recordings/{name}") as response:
            assert response.status == 200
            served = await response.read()
        assert served == (b.folder / name).read_bytes()
        assert ffmpeg_errors(b.folder / name) == ""

        # hang-up through another node, then the list no longer has it
        async with http.delete(f"{c.base}/api/sessions/{first.session}") as response:
            assert response.status == 200
        assert first.session not in await sessions_by_id(http, c)
        await events.close()
        for publisher in (first, second, third):
            await publisher.close()


async def test_a_killed_node_s_sessions_are_lost_the_others_record_on_and_its_spool_is_uploaded(
    redis_server: RedisServer, seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    args = (*storage_args(seaweedfs, tmp_path.name), "--capacity", "1")
    http = aiohttp.ClientSession()
    async with (
        cluster(redis_server.url, tmp_path, 3, *args, env=seaweedfs.environment) as nodes,
        http,
        seaweedfs.s3() as s3,
    ):
        publishers: dict[str, Publisher] = {}
        names: dict[str, str] = {}
        for each in nodes:
            async with aiohttp.ClientSession(each.base) as there:
                publishers[each.base] = await publish(there)
            names[each.base] = await recording_of(http, each, publishers[each.base].session)
        for each in nodes:
            spooled = each.folder / names[each.base]
            await wait_for(lambda f=spooled: f.exists() and f.stat().st_size > 30_000, 15, "media")
        a, b, c = nodes
        b.process.kill()
        killed = time.monotonic()
        lost = publishers[b.base].session

        async def lost_everywhere() -> bool:
            for other in (a, c):
                entry = (await sessions_by_id(http, other)).get(lost)
                if entry is None or entry["connectionState"] != "lost":
                    return False
            return True

        await until(lost_everywhere, LOST_WITHIN, "b's session listed as lost")
        print(f"lost after {time.monotonic() - killed:.2f} s (heartbeat {HEARTBEAT} s)")
        await publishers[b.base].close()
        listed = await sessions_by_id(http, a)
        before = {n.base: listed[publishers[n.base].session]["recordedSeconds"] for n in (a, c)}
        for survivor in (a, c):
            entry = listed[publishers[survivor.base].session]
            assert (entry["connectionState"], entry["recorderState"]) == ("connected", "recording")

        async def recording_on() -> bool:
            now = await sessions_by_id(http, c)
            return all(
                now[publishers[n.base].session]["recordedSeconds"] > before[n.base] + 1
                for n in (a, c)
            )

        await until(recording_on, 15, "a and c to record on")
        for survivor in (a, c):  # hung up through the other one
            other = c if survivor is a else a
            session = publishers[survivor.base].session
            async with http.delete(f"{other.base}/api/sessions/{session}") as response:
                assert response.status == 200, await response.text()
            await publishers[survivor.base].close()
            stored = await until_stored(s3, f"{tmp_path.name}/{names[survivor.base]}", 30)
            copy = tmp_path / names[survivor.base]
            copy.write_bytes(stored)
            assert ffmpeg_errors(copy) == ""
            sidecar = await object_bytes(s3, f"{tmp_path.name}/{names[survivor.base]}.json")
            assert json.loads(sidecar)["state"] == "complete"

        port = URL(b.base).port
        assert port is not None
        async with node_process(redis_server.url, b.folder, port, *b.args, env=b.env):
            stored = await until_stored(s3, f"{tmp_path.name}/{names[b.base]}", 60)
            sidecar = await object_bytes(s3, f"{tmp_path.name}/{names[b.base]}.json")

            async def forgotten() -> bool:
                return lost not in await sessions_by_id(http, a)

            await until(forgotten, 10, "the lost session forgotten once b is back")
        copy = tmp_path / names[b.base]
        copy.write_bytes(stored)
        assert ffmpeg_errors(copy) == ""
        assert json.loads(sidecar)["state"] == "interrupted"


@asynccontextmanager
async def holding_webhooks(held_type: str) -> AsyncIterator[tuple[str, asyncio.Event, list[str]]]:
    """A webhook receiver answering ``503`` to every ``held_type`` event until the event
    is set (so a node's drain waits on it); its URL, the event, and the types that came."""
    release = asyncio.Event()
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        kind = (await request.json())["type"]
        seen.append(kind)
        return web.Response(status=503 if kind == held_type and not release.is_set() else 204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/hook", release, seen
    finally:
        await runner.cleanup()


async def test_sigterm_drains_a_node_new_sessions_go_elsewhere_its_recording_uploads_it_leaves(
    redis_server: RedisServer, seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    async with holding_webhooks("recording.uploaded") as (hook, release, seen):
        args = (
            *storage_args(seaweedfs, tmp_path.name),
            *("--webhook", hook, "--webhook-secret", WEBHOOK_SECRET),
        )
        async with (
            cluster(redis_server.url, tmp_path, 2, *args, env=seaweedfs.environment) as nodes,
            aiohttp.ClientSession() as http,
            seaweedfs.s3() as s3,
            aioredis.from_url(redis_server.url, decode_responses=True) as registry,
        ):
            a, b = nodes
            async with aiohttp.ClientSession(a.base) as at_a:
                publisher = await publish(at_a)
            name = await recording_of(http, a, publisher.session)
            spooled = a.folder / name
            await wait_for(
                lambda: spooled.exists() and spooled.stat().st_size > 30_000, 15, "media"
            )

            a.process.send_signal(signal.SIGTERM)
            # the drain's webhooks wait on the receiver: the upload was confirmed before
            await wait_for(lambda: "recording.uploaded" in seen, 20, "recording.uploaded")
            stored = await object_bytes(s3, f"{tmp_path.name}/{name}")
            sidecar = json.loads(await object_bytes(s3, f"{tmp_path.name}/{name}.json"))
            assert sidecar["state"] == "complete"
            copy = tmp_path / name
            copy.write_bytes(stored)
            assert ffmpeg_errors(copy) == ""

            async with http.get(f"{a.base}/readyz") as response:
                assert response.status == 503
                assert (await response.json())["reason"] == "draining"
            entry = NodeInfo.from_json(await registry.get(f"rtc-recorder:node:{a.base}"))
            assert entry.draining and not entry.ready
            newcomer, posted = await whip_publish(http, f"{a.base}/whip")
            assert [origin(url) for url in posted] == [a.base, b.base]
            assert origin(newcomer.location or "") == b.base
            async with aiohttp.ClientSession(a.base) as at_a:
                proxied = await publish(at_a)  # /offer: proxied to b
            assert set(await sessions_by_id(http, b)) == {newcomer.session, proxied.session}

            release.set()
            assert await asyncio.to_thread(a.process.wait, 30) == 0
            assert await registry.get(f"rtc-recorder:node:{a.base}") is None
            assert await registry.smembers("rtc-recorder:nodes") == {b.base}
            assert {e["node"] for e in await get_json(http, f"{b.base}/api/sessions")} == {b.base}
            for each in (publisher, newcomer, proxied):
                await each.close()


def two_free_ports() -> int:
    """A port free on 127.0.0.1, the next one too."""
    while True:
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


async def test_workers_run_nodes_on_consecutive_ports_and_leave_on_sigterm(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    port = two_free_ports()
    args = ("--workers", "2", "--redis", redis_server.url, "--heartbeat", str(HEARTBEAT))
    async with (
        server_process(tmp_path / "rec", *args, port=port) as (process, base),
        aiohttp.ClientSession() as http,
        aioredis.from_url(redis_server.url, decode_responses=True) as registry,
    ):
        second = f"http://127.0.0.1:{port + 1}"

        async def both_registered() -> bool:
            return await registry.smembers("rtc-recorder:nodes") == {base, second}

        await until(both_registered, 30, "both workers in the registry")
        first, _ = await whip_publish(http, f"{base}/whip")
        other, posted = await whip_publish(http, f"{base}/whip")  # the least loaded: 2nd
        assert [origin(url) for url in posted] == [base, second]
        listed = await sessions_by_id(http, Node(process, second, tmp_path, (), {}))
        assert {e["node"] for e in listed.values()} == {base, second}
        # A worker killed outright is started again on its port, and joins again.
        killed = worker_on(process.pid, port + 1)
        killed.kill()
        await asyncio.to_thread(killed.wait, 10)

        async def started_again() -> bool:
            try:
                again = worker_on(process.pid, port + 1)
                async with http.get(f"{second}/readyz") as response:
                    ready = response.status == 200
            except (LookupError, aiohttp.ClientError):
                return False
            return again.pid != killed.pid and ready and await both_registered()

        await until(started_again, 30, "the killed worker to be started again")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0
        assert await registry.smembers("rtc-recorder:nodes") == set()
        for publisher in (first, other):
            await publisher.close()


def worker_on(parent: int, port: int) -> psutil.Process:
    """The worker process of ``parent`` serving ``port``."""
    for child in psutil.Process(parent).children():
        with contextlib.suppress(psutil.Error):
            command = child.cmdline()
            if child.is_running() and command[-2:] == ["--port", str(port)]:
                return child
    raise LookupError(f"no worker on port {port}")


def test_a_worker_that_keeps_dying_young_waits_longer_each_time() -> None:
    assert restart_delay(None, 0.5) == RESTART_DELAY
    assert restart_delay(RESTART_DELAY, 0.5) == 2 * RESTART_DELAY
    assert restart_delay(16.0, 1.0) == RESTART_DELAY_MAX == restart_delay(RESTART_DELAY_MAX, 1)
    # one that ran long enough is not held back for its earlier deaths
    assert restart_delay(RESTART_DELAY_MAX, STABLE_SECONDS) == RESTART_DELAY


async def test_a_room_stays_on_its_node_whatever_the_load_and_any_node_records_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with (
        cluster(redis_server.url, tmp_path, 2, "--capacity", "3") as (a, b),
        aiohttp.ClientSession() as http,
    ):
        async with aiohttp.ClientSession(a.base) as at_a, aiohttp.ClientSession(b.base) as at_b:
            first = await publish(at_a, room="standup")
            second = await publish(at_b, room="standup")  # b is emptier: the room wins
            third = await publish(at_b)  # no room: the least-loaded node, b
        listed = await sessions_by_id(http, b)
        assert listed[first.session]["node"] == listed[second.session]["node"] == a.base
        assert listed[third.session]["node"] == b.base
        # The room is listed and recorded through the node that does not hold it.
        rooms = await get_json(http, f"{b.base}/api/rooms")
        assert [(r["name"], r["node"], len(r["participants"])) for r in rooms] == [
            ("standup", a.base, 2)
        ]
        for method in ("start", "stop"):
            async with http.post(f"{b.base}/api/rooms/standup/{method}") as response:
                assert response.status == 200, await response.text()

        async def room_recording_listed() -> bool:
            entries = await get_json(http, f"{b.base}/api/recordings")
            return any(e.get("room") == "standup" for e in entries)

        await until(room_recording_listed, 15, "the room's recording in the cluster's list")
        entries = [e for e in await get_json(http, f"{b.base}/api/recordings") if e.get("room")]
        assert len(entries) == 1 and len(entries[0]["participants"]) == 2
        for publisher in (first, second, third):
            await publisher.close()


async def test_nodes_placing_a_room_at_once_agree_on_one(redis_server: RedisServer) -> None:
    """The registry's reservation, on a real Redis: two nodes placing the same new room at
    the same moment, each choosing itself, get the same node; a dead node's old claim is
    taken over, a live node's kept; a reservation lasts until the node claims the room."""
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    a, b = Registry(client, "http://a", 60), Registry(client, "http://b", 60)
    try:
        for registry in (a, b):
            await registry.beat(node(registry.me, 0), {})
        for index in range(20):
            room = f"room{index}"
            held = await asyncio.gather(
                a.reserve("room", room, a.me), b.reserve("room", room, b.me)
            )
            assert held[0] == held[1] == await a.owner("room", room), held
        key = "rtc-recorder:owner:room:old"
        await client.set(key, "http://gone")  # a node whose entry has expired
        assert await b.reserve("room", "old", b.me) == b.me
        assert 0 < await client.ttl(key) <= RESERVED_SECONDS
        assert await a.reserve("room", "old", a.me) == b.me  # b is alive: it keeps the room
        await b.claim("room", "old")  # b made the room: it holds it as long as any claim
        assert await client.ttl(key) > RESERVED_SECONDS
        assert await client.ttl(key) <= OWNER_SECONDS
    finally:
        await client.aclose()


async def test_a_room_s_first_participants_at_two_nodes_at_once_meet_on_one(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Both nodes empty: each would keep a session offered to it (a tie stays where it is
    asked), so without the room's reservation the room would start on both."""
    async with (
        cluster(redis_server.url, tmp_path, 2, "--capacity", "3") as (a, b),
        aiohttp.ClientSession() as http,
    ):
        async with aiohttp.ClientSession(a.base) as at_a, aiohttp.ClientSession(b.base) as at_b:
            first, second = await asyncio.gather(
                publish(at_a, room="retro"), publish(at_b, room="retro")
            )
        listed = await sessions_by_id(http, a)
        assert listed[first.session]["node"] == listed[second.session]["node"]
        rooms = await get_json(http, f"{a.base}/api/rooms")
        assert [(r["name"], len(r["participants"])) for r in rooms] == [("retro", 2)]
        for publisher in (first, second):
            await publisher.close()


async def test_a_node_whose_redis_is_gone_answers_alone(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with (
        cluster(redis_server.url, tmp_path, 1) as (alone,),
        aiohttp.ClientSession() as http,
    ):
        redis_server.stop()
        publisher, posted = await whip_publish(http, f"{alone.base}/whip")
        assert posted == [f"{alone.base}/whip"]
        listed = await sessions_by_id(http, alone)
        assert listed[publisher.session]["node"] == alone.base
        async with http.post(f"{alone.base}/api/sessions/{publisher.session}/start") as answer:
            assert answer.status == 200, await answer.text()
        await publisher.close()
        assert alone.process.poll() is None
