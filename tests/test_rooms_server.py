"""The rooms contract on the server: participants joining by ``/offer`` and by
``/rooms/{room}/whip``, watching each other by WHEP, the room recorded through the API
(pause, a late joiner, an early leaver), its events WebSocket, the recording listed,
served, composed and deleted; the limits and the errors of the new routes."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import av
from aiohttp.test_utils import TestClient
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from rtc_recorder.server import jobs

from .forwarding_support import Viewer, decode_errors
from .media import Clock, SyntheticAudio, SyntheticVideo, ffmpeg_errors, wait_for
from .room_support import valid_manifest
from .server_support import Publisher, publish, running_app, server_log, server_process

ROOM = "standup"
Client = TestClient[Any, Any]


async def error_of(response: Any) -> tuple[int, str]:
    body = await response.json()
    assert set(body) == {"error", "message"} and body["message"], body
    return response.status, body["error"]


class EventLog:
    """Every message of an events WebSocket, read as they come."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket
        self.messages: list[dict[str, Any]] = []
        self.closed = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self.socket:
            if message.type == aiohttp.WSMsgType.TEXT:
                self.messages.append(json.loads(message.data))
        self.closed.set()

    def of(self, type_: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            m
            for m in self.messages
            if m["type"] == type_ and all(m.get(k) == v for k, v in fields.items())
        ]

    async def wait(self, type_: str, timeout: float = 15, **fields: Any) -> dict[str, Any]:
        await wait_for(lambda: bool(self.of(type_, **fields)), timeout, f"{type_} {fields}")
        return self.of(type_, **fields)[-1]

    async def close(self) -> None:
        await self.socket.close()
        self._reader.cancel()


async def watch(client: Client, session: str) -> tuple[Viewer, str]:
    """A WHEP subscription to ``session``'s media: the viewer and its location."""
    viewer = Viewer()
    response = await client.post(
        f"/whep/{session}", data=await viewer.offer(), headers={"Content-Type": "application/sdp"}
    )
    assert response.status == 201, await response.text()
    assert response.content_type == "application/sdp"
    location = response.headers["Location"]
    assert location.startswith(f"/whep/{session}/")
    await viewer.pc.setRemoteDescription(RTCSessionDescription(await response.text(), "answer"))
    return viewer, location


async def decodes_video(viewer: Viewer, frames: int = 15) -> None:
    """The viewer receives video that decodes (counted frames, none refused) and sound."""
    await wait_for(lambda: len(viewer.frames("video")) >= frames, 20, "forwarded video")
    await wait_for(lambda: len(viewer.frames("audio")) >= frames, 20, "forwarded sound")
    decoded, refused = decode_errors(viewer.frames("video"))
    assert decoded >= frames and refused == 0, (decoded, refused)
    decoded, refused = decode_errors(viewer.frames("audio"))
    assert decoded >= frames and refused == 0, (decoded, refused)


async def post_state(client: Client, method: str, **body: Any) -> str:
    response = await client.post(f"/api/rooms/{ROOM}/{method}", json=body)
    assert response.status == 200, await response.text()
    return str((await response.json())["state"])


async def room_now(client: Client) -> float:
    """The room recording's recorded seconds, as the API tells them."""
    return float((await (await client.get(f"/api/rooms/{ROOM}")).json())["recordedSeconds"])


async def recorded_until(client: Client, seconds: float) -> None:
    """Until the room recording has recorded ``seconds`` (15 s at most)."""
    async with asyncio.timeout(15):
        while await room_now(client) < seconds:
            await asyncio.sleep(0.1)


async def composed(client: Client, name: str, folder: Path) -> Path:
    """The composite of room recording ``name``, made as a job through the API."""
    response = await client.post(f"/api/recordings/{name}/compose", json={})
    assert response.status == 202, await response.text()
    job = (await response.json())["job"]
    seen: list[dict[str, Any]] = []

    async def done() -> bool:
        seen.append(await (await client.get(f"/api/jobs/{job}")).json())
        return seen[-1]["state"] in ("done", "failed", "cancelled")

    async with asyncio.timeout(120):
        while not await done():
            await asyncio.sleep(0.1)
    assert seen[-1]["state"] == "done", seen[-1]
    assert seen[-1]["progress"] == 1.0
    return folder / seen[-1]["output"]


async def test_a_room_joined_watched_and_recorded_through_the_server(tmp_path: Path) -> None:
    viewers: list[Viewer] = []
    publishers: list[Publisher] = []
    async with running_app(recordings=tmp_path, timeslice=500) as client:
        # Small composites, so the test takes little time composing.
        client.app[jobs.JOBS].size, client.app[jobs.JOBS].fps = (160, 90), 10
        ada = await publish(client, room=ROOM, name="Ada")
        publishers.append(ada)
        events = EventLog(await client.ws_connect(f"/api/rooms/{ROOM}/events"))
        hello = await events.wait("room")
        assert [p["session"] for p in hello["participants"]] == [ada.session]
        assert hello["participants"][0]["name"] == "Ada"
        bob = await publish(client, whip=True, room=ROOM)
        publishers.append(bob)
        assert bob.location == f"/whip/{bob.session}"
        await events.wait("join", session=bob.session)

        # Each watches the other by WHEP, and gets frames that decode.
        for session in (ada.session, bob.session):
            viewer, _ = await watch(client, session)
            viewers.append(viewer)
        for viewer in viewers:
            await decodes_video(viewer)

        assert await post_state(client, "start", timeslice=500) == "recording"
        started = await events.wait("start")
        name = started["name"]
        assert name.startswith(f"{ROOM}-") and (tmp_path / name).is_dir()
        room = await (await client.get(f"/api/rooms/{ROOM}")).json()
        assert room["recorderState"] == "recording" and room["recording"] == name
        assert sorted(p["session"] for p in room["participants"]) == sorted(
            [ada.session, bob.session]
        )
        assert all(set(p["kinds"]) == {"audio", "video"} for p in room["participants"])
        listed = await (await client.get("/api/rooms")).json()
        assert [r["name"] for r in listed] == [ROOM]
        await wait_for(lambda: len(events.of("dataavailable")) >= 4, 15, "chunks")
        busy = await client.delete(f"/api/recordings/{name}")
        assert await error_of(busy) == (409, "InvalidStateError")
        assert await error_of(await client.post(f"/api/rooms/{ROOM}/start")) == (
            409,
            "InvalidStateError",
        )

        assert await post_state(client, "pause") == "paused"
        await events.wait("pause")
        await asyncio.sleep(1.0)  # the span the pause cuts out
        assert await post_state(client, "resume") == "recording"
        await events.wait("resume")

        # A late joiner, watching the others, and watched.
        cy = await publish(client, room=ROOM, name="Cy")
        publishers.append(cy)
        await events.wait("join", session=cy.session)
        late = [await watch(client, session) for session in (ada.session, bob.session)]
        watched_cy, cy_location = await watch(client, cy.session)
        for viewer, _ in [*late, (watched_cy, cy_location)]:
            viewers.append(viewer)
            await decodes_video(viewer)

        # A subscription ended by its subscriber: gone, and stale afterwards.
        assert (await client.delete(cy_location)).status == 200
        assert await error_of(await client.delete(cy_location)) == (404, "NotFoundError")

        await wait_for(lambda: len(events.of("dataavailable")) >= 12, 15, "more chunks")
        # Ada leaves early (hang-up): her file is finalized, the room goes on.
        assert (await client.delete(f"/api/sessions/{ada.session}")).status == 200
        await events.wait("leave", session=ada.session)
        ada_location = late[0][1]
        await wait_for(lambda: late[0][0].pc.connectionState == "closed", 10, "ada's viewer")
        assert await error_of(await client.delete(ada_location)) == (404, "NotFoundError")
        chunks = len(events.of("dataavailable"))
        assert (await client.post(f"/api/rooms/{ROOM}/requestData")).status == 200
        await wait_for(lambda: len(events.of("dataavailable")) > chunks, 15, "requested data")
        await recorded_until(client, (await room_now(client)) + 1.5)

        assert await post_state(client, "stop") == "inactive"
        stopped = await events.wait("stop")
        assert stopped["name"] == name and stopped["duration"] > 2

        # Events: join, leave, start, pause, resume, stop, numbered in order.
        kinds = [m["type"] for m in events.messages]
        for kind in ("join", "leave", "start", "pause", "resume", "dataavailable", "stop"):
            assert kind in kinds, kinds
        order = [kinds.index(k) for k in ("start", "pause", "resume", "stop")]
        assert order == sorted(order)
        numbers = [m["seq"] for m in events.messages]
        assert numbers[1:] == list(range(numbers[0] + 1, numbers[0] + len(numbers)))
        files = {m["file"] for m in events.of("dataavailable")}
        assert {f"{ada.session}.webm", f"{bob.session}.webm", "mix.ogg"} <= files

        folder = tmp_path / name
        manifest = valid_manifest(json.loads((folder / "manifest.json").read_text()))
        assert manifest["state"] == "finalized" and manifest["room"] == ROOM
        assert len(manifest["cuts"]) == 1 and manifest["cuts"][0]["removed"] > 0.5
        entries = {p["session"]: p for p in manifest["participants"]}
        assert set(entries) == {ada.session, bob.session, cy.session}
        assert entries[ada.session]["name"] == "Ada" and entries[cy.session]["name"] == "Cy"
        assert entries[ada.session]["end"] < manifest["duration"] - 0.5  # left early
        assert entries[cy.session]["start"] > 1.0  # joined late
        for file in (*(p["file"] for p in entries.values()), "mix.ogg"):
            assert not ffmpeg_errors(folder / file), file

        # Listed once, with its participants and files; each file served with Range.
        listing = await (await client.get("/api/recordings")).json()
        entry = next(e for e in listing if e["name"] == name)
        assert [e["name"] for e in listing].count(name) == 1
        assert entry["room"] == ROOM and entry["state"] == "complete"
        assert {p["session"] for p in entry["participants"]} == set(entries)
        assert set(entry["files"]) == {
            "manifest.json",
            "mix.ogg",
            *(p["file"] for p in entries.values()),
        }
        for file in entry["files"]:
            data = (folder / file).read_bytes()
            whole = await client.get(f"/recordings/{name}/{file}")
            assert whole.status == 200 and await whole.read() == data
            part = await client.get(f"/recordings/{name}/{file}", headers={"Range": "bytes=10-99"})
            assert part.status == 206 and await part.read() == data[10:100]
        assert (await client.get(f"/recordings/{name}/mix.ogg")).content_type == "audio/ogg"
        for bad in ("..", ".manifest.json.tmp", "nothing.webm", "%2E%2E%2Fpyproject.toml"):
            assert (await client.get(f"/recordings/{name}/{bad}")).status == 404

        composite = await composed(client, name, folder)
        assert not ffmpeg_errors(composite)
        with av.open(str(composite)) as container:
            assert container.streams.video and container.streams.audio

        for publisher in publishers[1:]:
            await client.delete(f"/api/sessions/{publisher.session}")
        await events.wait("leave", session=cy.session)
        await asyncio.wait_for(events.closed.wait(), 10)  # the room has ended
        assert await (await client.get("/api/rooms")).json() == []
        assert (await client.delete(f"/api/recordings/{name}")).status == 200
        assert not folder.exists()
        await events.close()
    for viewer in viewers:
        await viewer.close()
    for publisher in publishers:
        await publisher.close()


async def test_room_names_limits_and_whep_errors_are_clear_json(tmp_path: Path) -> None:
    limits = {"max_rooms": 1, "max_participants": 1, "max_subscriptions": 1, "idle_timeout": 2}
    async with running_app(recordings=tmp_path, **limits) as client:
        for bad in ("", "a b", "x" * 65, "é", "../x", 5, None):
            body = {"sdp": "v=0", "type": "offer", "room": bad}
            assert await error_of(await client.post("/offer", json=body)) == (400, "SyntaxError")
        body = {"sdp": "v=0", "type": "offer", "room": "ok", "name": 5}
        assert await error_of(await client.post("/offer", json=body)) == (400, "TypeError")
        sdp = {"Content-Type": "application/sdp"}
        for bad in ("a%20b", "x" * 65, "%2E%2E"):
            response = await client.post(f"/rooms/{bad}/whip", data="v=0", headers=sdp)
            assert await error_of(response) == (400, "SyntaxError")
        assert await error_of(await client.get("/api/rooms/nobody")) == (404, "NotFoundError")
        assert await error_of(await client.get("/api/rooms/a%20b")) == (400, "SyntaxError")
        assert await error_of(await client.post("/api/rooms/nobody/start")) == (
            404,
            "NotFoundError",
        )

        ada = await publish(client, room="one")
        # The room is full (one participant), and no second room may open.
        full = await client.post("/offer", json={"sdp": "v=0", "type": "offer", "room": "one"})
        assert await error_of(full) == (409, "QuotaExceededError")
        other = await client.post("/offer", json={"sdp": "v=0", "type": "offer", "room": "two"})
        assert await error_of(other) == (503, "QuotaExceededError")
        assert await error_of(await client.post("/api/rooms/one/explode")) == (
            404,
            "NotFoundError",
        )
        assert await error_of(await client.post("/api/rooms/one/pause")) == (
            409,
            "InvalidStateError",
        )
        bad_type = await client.post("/api/rooms/one/start", json={"mimeType": "video/avi"})
        assert await error_of(bad_type) == (400, "NotSupportedError")

        # WHEP: unknown session, wrong type, bad SDP, a codec the publisher does not send.
        viewer = Viewer()
        offer = await viewer.offer()
        unknown = await client.post("/whep/000000000000", data=offer, headers=sdp)
        assert await error_of(unknown) == (404, "NotFoundError")
        typed = await client.post(f"/whep/{ada.session}", data=offer)
        assert await error_of(typed) == (415, "NotSupportedError")
        for broken in ("", "hello", "v=0\r\ns=-\r\n", offer.replace("m=video", "m=vidio")):
            response = await client.post(f"/whep/{ada.session}", data=broken, headers=sdp)
            assert (await error_of(response))[0] == 400, broken
        h264 = Viewer(video_codec="h264")
        refused = await client.post(f"/whep/{ada.session}", data=await h264.offer(), headers=sdp)
        assert await error_of(refused) == (400, "NotSupportedError")
        stale = await client.delete(f"/whep/{ada.session}/000000000000")
        assert await error_of(stale) == (404, "NotFoundError")
        # A subscriber that never takes its answer is let go after the idle timeout.
        silent = Viewer()
        response = await client.post(f"/whep/{ada.session}", data=await silent.offer(), headers=sdp)
        assert response.status == 201, await response.text()
        location = response.headers["Location"]
        another = await client.post(f"/whep/{ada.session}", data=await h264.offer(), headers=sdp)
        assert await error_of(another) == (503, "QuotaExceededError")  # one at most
        async with asyncio.timeout(10):
            while (await client.delete(location)).status != 404:
                await asyncio.sleep(0.2)
        await silent.close()
        assert (await client.get("/healthz")).status == 200
        for pc in (viewer, h264):
            await pc.close()
        await ada.close()


class GatedTrack(MediaStreamTrack):
    """``source``'s frames while ``open`` is set; nothing (the frames dropped) while not,
    as a camera or microphone that stops sending."""

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = source.kind
        self.source = source
        self.open = True

    async def recv(self) -> Any:
        while True:
            frame = await self.source.recv()
            if self.open:
                return frame


async def test_mute_unmute_and_a_vanished_participant_finalized(tmp_path: Path) -> None:
    clock = Clock()
    video, audio = GatedTrack(SyntheticVideo(clock)), GatedTrack(SyntheticAudio(clock))
    pc = RTCPeerConnection()
    pc.addTrack(video)
    pc.addTrack(audio)
    async with running_app(recordings=tmp_path, idle_timeout=3) as client:
        quiet = await publish(client, room=ROOM, pc=pc)
        other = await publish(client, room=ROOM)
        events = EventLog(await client.ws_connect(f"/api/rooms/{ROOM}/events"))
        await events.wait("room")
        assert await post_state(client, "start") == "recording"
        name = (await events.wait("start"))["name"]
        await events.socket.send_json({"call": "requestData"})
        assert (await events.wait("reply", call="requestData"))["state"] == "recording"
        await events.socket.send_json({"call": "explode"})
        assert (await events.wait("reply", call="explode"))["error"] == "NotFoundError"

        video.open = False
        await events.wait("mute", session=quiet.session, kind="video")
        room = await (await client.get(f"/api/rooms/{ROOM}")).json()
        entry = next(p for p in room["participants"] if p["session"] == quiet.session)
        assert entry["muted"] == ["video"]
        video.open = True
        await events.wait("unmute", session=quiet.session, kind="video")

        # It stops sending anything, without hanging up: the idle timeout takes it out,
        # and its file is finalized while the room goes on.
        video.open = audio.open = False
        await events.wait("leave", session=quiet.session, timeout=20)
        assert (await client.get(f"/api/rooms/{ROOM}")).status == 200
        folder = tmp_path / name
        await wait_for(
            lambda: any(
                p["session"] == quiet.session and p.get("end") is not None
                for p in json.loads((folder / "manifest.json").read_text())["participants"]
            ),
            10,
            "the vanished participant's end",
        )
        assert not ffmpeg_errors(folder / f"{quiet.session}.webm")
        assert await post_state(client, "stop") == "inactive"
        await events.wait("stop")
        manifest = valid_manifest(json.loads((folder / "manifest.json").read_text()))
        kinds = [(e["type"], e.get("kind")) for e in manifest["events"]]
        assert ("mute", "video") in kinds and ("unmute", "video") in kinds
        await events.close()
        await other.close()
    await pc.close()


async def test_sigterm_finalizes_a_room_recording(tmp_path: Path) -> None:
    async with (
        server_process(tmp_path) as (process, base),
        aiohttp.ClientSession(base) as http,
    ):
        publishers = [await publish(http, room=ROOM, whip=index == 1) for index in range(2)]
        response = await http.post(f"/api/rooms/{ROOM}/start", json={"timeslice": 500})
        assert response.status == 200, await response.text()
        name = (await response.json())["recording"]

        async def recorded() -> float:
            room = await (await http.get(f"/api/rooms/{ROOM}")).json()
            return float(room["recordedSeconds"])

        async with asyncio.timeout(20):
            while await recorded() < 2.0:
                await asyncio.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0, server_log(process)
        for publisher in publishers:
            await publisher.close()
    folder = tmp_path / name
    manifest = valid_manifest(json.loads((folder / "manifest.json").read_text()))
    assert manifest["state"] == "finalized" and manifest["duration"] >= 2.0
    assert len(manifest["participants"]) == 2
    for file in (*(p["file"] for p in manifest["participants"]), "mix.ogg"):
        assert not ffmpeg_errors(folder / file), file


async def test_the_room_routes_need_the_token(tmp_path: Path) -> None:
    async with running_app(recordings=tmp_path, token="s3cret") as client:
        sdp = {"Content-Type": "application/sdp"}
        for method, path in (
            ("POST", "/whep/000000000000"),
            ("DELETE", "/whep/000000000000/000000000000"),
            ("POST", f"/rooms/{ROOM}/whip"),
            ("GET", "/api/rooms"),
            ("GET", f"/api/rooms/{ROOM}"),
            ("POST", f"/api/rooms/{ROOM}/start"),
            ("GET", f"/recordings/{ROOM}-20261201T101500Z/manifest.json"),
        ):
            response = await client.request(method, path, data="v=0", headers=sdp)
            assert await error_of(response) == (401, "NotAllowedError"), path
        bearer = {**sdp, "Authorization": "Bearer s3cret"}
        response = await client.post("/whep/000000000000", data="v=0", headers=bearer)
        assert await error_of(response) == (404, "NotFoundError")
