"""Running the server in tests: in-process (aiohttp's test client) or as a real process, and
aiortc clients that publish synthetic media to it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from rtc_recorder.server.app import create_app
from rtc_recorder.server.settings import Settings

from .media import Clock, SyntheticAudio, SyntheticVideo, wait_for

ROOT = Path(__file__).resolve().parent.parent


# Admission by load is off in servers the tests start, unless a test sets a limit: in
# process, the test's publishers run on the server's event loop, so the load the server
# measures is the test's own; in a process of its own, on a shared machine saturated by
# other work, the server would refuse the sessions of tests that check something else.
# (tests/test_operations.py and tests/test_admission.py test the admission itself.)
NO_LOAD_LIMITS = {
    "admission_loop_lag": 0.0,
    "admission_loop_busy": 0.0,
    "admission_cpu": 0.0,
    "admission_udp_drops": 0.0,
}
NO_LOAD_LIMITS_ENV = {f"RTC_RECORDER_{name.upper()}": "0" for name in NO_LOAD_LIMITS}


@asynccontextmanager
async def running_app(**settings: Any) -> AsyncIterator[TestClient[Any, Any]]:
    """The server's application behind aiohttp's test client (see :data:`NO_LOAD_LIMITS`)."""
    client = TestClient(TestServer(create_app(Settings(**{**NO_LOAD_LIMITS, **settings}))))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@dataclass
class Publisher:
    """An aiortc client sending synthetic camera and microphone tracks to the server."""

    pc: RTCPeerConnection
    session: str
    location: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    async def close(self) -> None:
        await self.pc.close()


def publisher_pc(video: bool = True, audio: bool = True) -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    clock = Clock()
    if video:
        pc.addTrack(SyntheticVideo(clock))
    if audio:
        pc.addTrack(SyntheticAudio(clock))
    return pc


async def publish(
    http: aiohttp.ClientSession | TestClient[Any, Any],
    *,
    whip: bool = False,
    token: str | None = None,
    video: bool = True,
    audio: bool = True,
    pc: RTCPeerConnection | None = None,
    room: str | None = None,
    **body: Any,
) -> Publisher:
    """Publish via ``/offer`` (JSON) or ``/whip`` (SDP) and wait until connected; ``pc``
    brings tracks of its own instead of the synthetic camera and microphone. With ``room``,
    join that room (WHIP: ``/rooms/{room}/whip``; ``/offer``: its body's ``room``)."""
    pc = pc or publisher_pc(video, audio)
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if whip:
        response = await http.post(
            "/whip" if room is None else f"/rooms/{room}/whip",
            data=pc.localDescription.sdp,
            headers={**headers, "Content-Type": "application/sdp"},
        )
        assert response.status == 201, await response.text()
        answer = await response.text()
        location = response.headers["Location"]
        session = location.rsplit("/", 1)[1]
    else:
        offer = {"sdp": pc.localDescription.sdp, "type": "offer", **body}
        if room is not None:
            offer["room"] = room
        response = await http.post("/offer", json=offer, headers=headers)
        assert response.status == 200, await response.text()
        reply = await response.json()
        assert reply.get("room") == room, reply
        answer, session, location = reply["sdp"], reply["session"], None
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    await wait_for(lambda: pc.connectionState == "connected", 10, "the publisher to connect")
    return Publisher(pc, session, location, headers)


def hold_ice_to_loopback() -> None:
    """aiortc's ICE gathers 127.0.0.1 only and asks no STUN server (its default is a
    public one): WebRTC between the tests' peers stays on this machine."""
    import aioice.ice
    from aiortc.rtcicetransport import RTCIceGatherer

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []
    RTCIceGatherer.getDefaultIceServers = staticmethod(lambda: [])  # type: ignore[method-assign]
    logging.getLogger("aioice").setLevel(logging.WARNING)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def server_process(
    recordings: Path | None,
    *args: str,
    preexec_fn: Any = None,
    env: dict[str, str] | None = None,
    port: int | None = None,
    cwd: Path = ROOT,
    pythonpath: Path = ROOT,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[tuple[subprocess.Popen[str], str]]:
    """``python -m rtc_recorder serve`` in a process of its own (from ``pythonpath``, run in
    ``cwd``); yields it and its base URL once it answers ``/healthz`` (over HTTPS with
    ``ssl_context``). Without ``recordings`` the server keeps its default folder. Its log
    goes to a file (a pipe nobody drains could fill and stall the server): read it with
    :func:`server_log`. Admission by load is off unless ``args`` or ``env`` set a limit (see
    :data:`NO_LOAD_LIMITS`). Its ICE gathers on 127.0.0.1 only unless ``env`` or ``args``
    say otherwise."""
    port = port or free_port()
    folder = ["--recordings", str(recordings)] if recordings is not None else []
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in the finally below
        "w+", prefix="rtc-recorder-server-", suffix=".log"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "rtc_recorder", "serve", "--port", str(port), *folder, *args],
        cwd=cwd,
        stderr=log,
        text=True,
        # ICE stays on loopback, as loopback_only holds it in this process; a test that
        # means another address says so with --ice-address (flags beat variables).
        env={
            **os.environ,
            "PYTHONPATH": str(pythonpath),
            "RTC_RECORDER_ICE_ADDRESS": "127.0.0.1",
            **NO_LOAD_LIMITS_ENV,
            **(env or {}),
        },
        preexec_fn=preexec_fn,
    )
    _logs[process.pid] = Path(log.name)
    base = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    try:
        await _until_serving(process, base, ssl_context)
        yield process, base
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        del _logs[process.pid]
        log.close()


async def _until_serving(
    process: subprocess.Popen[str], base: str, ssl_context: ssl.SSLContext | None
) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession(base) as http:
        while True:
            assert process.poll() is None, server_log(process)
            try:
                async with http.get("/healthz", ssl=ssl_context or True) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            assert time.monotonic() < deadline, f"the server did not come up\n{server_log(process)}"
            await asyncio.sleep(0.05)


_logs: dict[int, Path] = {}


def server_log(process: subprocess.Popen[str]) -> str:
    """What a server started by :func:`server_process` has logged so far."""
    return _logs[process.pid].read_text()


async def next_event(
    socket: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 15
) -> dict[str, Any]:
    """Read the events WebSocket until a message of ``kind`` arrives."""
    async with asyncio.timeout(timeout):
        while True:
            message = await socket.receive()
            assert message.type == aiohttp.WSMsgType.TEXT, message
            data = json.loads(message.data)
            if data["type"] == kind:
                return data  # type: ignore[no-any-return]
