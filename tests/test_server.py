"""The server contract: every route and error status, signaling with real aiortc clients
(``/offer`` and WHIP), the events WebSocket, recordings with Range, the token, limits,
and SIGTERM while sessions record."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .media import duration, ffmpeg_errors, probe, wait_for
from .server_support import next_event, publish, running_app, server_log, server_process

NAME = re.compile(r"^[0-9a-f]{12}-\d{8}T\d{6}Z(-\d+)?\.webm$")


async def error_of(response: Any) -> tuple[int, str]:
    body = await response.json()
    assert set(body) == {"error", "message"} and body["message"], body
    return response.status, body["error"]


async def test_health_config_and_page(tmp_path: Path) -> None:
    async with running_app(recordings=tmp_path) as client:
        assert (await (await client.get("/healthz")).json())["status"] == "ok"
        config = await (await client.get("/api/config")).json()
        assert config["mimeType"] == "video/webm;codecs=vp8,opus"
        assert "video/mp4;codecs=avc1,opus" in config["mimeTypes"]
        page = await client.get("/")
        assert page.status == 200 and "<" in await page.text()


@pytest.mark.parametrize(
    ("body", "status", "name"),
    [
        (b"{not json", 400, "SyntaxError"),
        (b"[1, 2]", 400, "TypeError"),
        (b'{"sdp": 5, "type": "offer"}', 400, "TypeError"),
        (b'{"sdp": "v=0", "type": "answer"}', 400, "TypeError"),
        (b'{"sdp": "hello", "type": "offer"}', 400, "SyntaxError"),
        (b'{"sdp": "v=0\\r\\ns=-\\r\\n", "type": "offer"}', 400, "SyntaxError"),
        (b"\xff\xfe\x00", 400, "SyntaxError"),
        (b"", 400, "SyntaxError"),
    ],
)
async def test_offer_rejects_bad_input(tmp_path: Path, body: bytes, status: int, name: str) -> None:
    async with running_app(recordings=tmp_path) as client:
        response = await client.post("/offer", data=body)
        assert await error_of(response) == (status, name)


async def test_offer_with_unsupported_type_or_too_large_body(tmp_path: Path) -> None:
    async with running_app(recordings=tmp_path, max_body=4096) as client:
        response = await client.post(
            "/offer", json={"sdp": "v=0", "type": "offer", "mimeType": "video/avi"}
        )
        assert await error_of(response) == (400, "NotSupportedError")
        response = await client.post("/offer", data=b"x" * 5000)
        assert await error_of(response) == (413, "QuotaExceededError")


async def test_offer_records_through_the_api_with_events(tmp_path: Path) -> None:
    async with running_app(recordings=tmp_path) as client:
        publisher = await publish(client, timeslice=250)
        base = f"/api/sessions/{publisher.session}"
        socket = await client.ws_connect(f"{base}/events")
        hello = json.loads((await socket.receive()).data)
        assert hello["type"] == "session" and hello["id"] == publisher.session
        listed = await (await client.get("/api/sessions")).json()
        assert [s["id"] for s in listed] == [publisher.session]

        answer = await (await client.post(f"{base}/start")).json()
        assert answer["state"] == "recording"
        started = await next_event(socket, "start")
        assert started["mimeType"] == "video/webm;codecs=vp8,opus" and NAME.match(started["name"])
        chunk = await next_event(socket, "dataavailable")
        assert chunk["size"] > 0 and chunk["timecode"] == 0.0
        assert chunk["seq"] > started["seq"]  # messages are numbered in order
        assert await error_of(await client.post(f"{base}/start")) == (409, "InvalidStateError")
        assert (await (await client.post(f"{base}/pause")).json())["state"] == "paused"
        await next_event(socket, "pause")
        assert (await (await client.post(f"{base}/resume")).json())["state"] == "recording"
        await next_event(socket, "resume")
        assert (await client.post(f"{base}/requestData")).status == 200
        await next_event(socket, "dataavailable")
        session = await (await client.get(base)).json()
        assert session["recorderState"] == "recording" and session["recordedSeconds"] > 0
        assert (await (await client.post(f"{base}/stop")).json())["state"] == "inactive"
        stopped = await next_event(socket, "stop")
        assert stopped["name"] == started["name"] and stopped["duration"] > 0
        assert await error_of(await client.post(f"{base}/pause")) == (409, "InvalidStateError")
        assert await error_of(await client.post(f"{base}/explode")) == (404, "NotFoundError")
        assert await error_of(await client.get("/api/sessions/000000000000")) == (
            404,
            "NotFoundError",
        )

        listing = await (await client.get("/api/recordings")).json()
        entry = next(e for e in listing if e["name"] == started["name"])
        assert entry["session"] == publisher.session and entry["state"] == "complete"
        assert entry["mimeType"] == "video/webm;codecs=vp8,opus" and entry["size"] > 1000
        assert abs(entry["duration"] - stopped["duration"]) < 0.01 and entry["created"]
        path = tmp_path / started["name"]
        assert not ffmpeg_errors(path)

        whole = await client.get(f"/recordings/{started['name']}")
        assert whole.status == 200 and await whole.read() == path.read_bytes()
        assert whole.headers["Content-Type"] == "video/webm"
        part = await client.get(
            f"/recordings/{started['name']}", headers={"Range": "bytes=100-199"}
        )
        assert part.status == 206 and await part.read() == path.read_bytes()[100:200]
        assert part.headers["Content-Range"] == f"bytes 100-199/{path.stat().st_size}"

        await socket.close()
        await publisher.close()


async def test_recordings_cannot_be_reached_outside_the_folder(tmp_path: Path) -> None:
    secret = tmp_path / "secret.webm"
    secret.write_bytes(b"private")
    folder = tmp_path / "recordings"
    async with running_app(recordings=folder) as client:
        for name in (
            "..%2Fsecret.webm",
            "%2E%2E%2Fsecret.webm",
            "secret.webm",
            ".hidden.webm",
            "x.json",
        ):
            response = await client.get(f"/recordings/{name}")
            assert response.status == 404, name
        response = await client.delete("/api/recordings/..%2Fsecret.webm")
        assert await error_of(response) == (404, "NotFoundError")
    assert secret.read_bytes() == b"private"


async def test_deleting_a_recording(tmp_path: Path) -> None:
    async with running_app(recordings=tmp_path) as client:
        publisher = await publish(client)
        base = f"/api/sessions/{publisher.session}"
        name = (await (await client.post(f"{base}/start")).json())["recording"]
        await wait_for(lambda: (tmp_path / name).exists(), message="file")
        assert await error_of(await client.delete(f"/api/recordings/{name}")) == (
            409,
            "InvalidStateError",
        )
        await client.post(f"{base}/stop")
        await wait_for(
            lambda: json.loads((tmp_path / f"{name}.json").read_text()).get("duration") is not None
        )
        assert (await client.delete(f"/api/recordings/{name}")).status == 200
        assert not (tmp_path / name).exists() and not (tmp_path / f"{name}.json").exists()
        assert await error_of(await client.get(f"/recordings/{name}")) == (404, "NotFoundError")
        await publisher.close()


async def test_token_guards_the_api_but_not_the_page(tmp_path: Path) -> None:
    async with running_app(recordings=tmp_path, token="s3cret") as client:
        for method, path in (
            ("GET", "/api/sessions"),
            ("POST", "/offer"),
            ("POST", "/whip"),
            ("GET", "/api/recordings"),
            ("GET", "/recordings/x.webm"),
        ):
            response = await client.request(method, path)
            assert await error_of(response) == (401, "NotAllowedError"), path
        wrong = await client.get("/api/sessions", headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401
        assert (await client.get("/")).status == 200
        assert (await client.get("/healthz")).status == 200
        config = await client.get("/api/config")  # the page learns a token is needed
        assert config.status == 200 and (await config.json())["tokenRequired"]
        publisher = await publish(client, token="s3cret")
        ok = await client.get("/api/sessions", headers=publisher.headers)
        assert ok.status == 200
        socket = await client.ws_connect(f"/api/sessions/{publisher.session}/events?token=s3cret")
        assert json.loads((await socket.receive()).data)["type"] == "session"
        await socket.close()
        await publisher.close()


async def test_whip_publishes_and_delete_finalizes(tmp_path: Path) -> None:
    async with running_app(recordings=tmp_path, auto_record=True) as client:
        publisher = await publish(client, whip=True)
        assert publisher.location == f"/whip/{publisher.session}"
        await wait_for(lambda: list(tmp_path.glob("*.webm")), message="the recording")
        socket = await client.ws_connect(f"/api/sessions/{publisher.session}/events")
        await wait_for(
            lambda: (tmp_path / next(tmp_path.glob("*.webm")).name).stat().st_size > 20000, 15
        )
        response = await client.delete(publisher.location)
        assert response.status == 200
        stopped = await next_event(socket, "stop")
        await next_event(socket, "closed")
        path = tmp_path / stopped["name"]
        assert not ffmpeg_errors(path)
        assert duration(probe(path)) > 0.5
        assert await error_of(await client.get(f"/api/sessions/{publisher.session}")) == (
            404,
            "NotFoundError",
        )
        await publisher.close()


async def test_whip_protocol_errors(tmp_path: Path) -> None:
    async with running_app(recordings=tmp_path) as client:
        response = await client.post(
            "/whip", data="v=0", headers={"Content-Type": "application/json"}
        )
        assert await error_of(response) == (415, "NotSupportedError")
        response = await client.post(
            "/whip", data="v=0\r\ns=-\r\n", headers={"Content-Type": "application/sdp"}
        )
        assert await error_of(response) == (400, "SyntaxError")
        response = await client.options(
            "/whip",
            headers={
                "Origin": "https://elsewhere.example",
                "Access-Control-Request-Method": "POST",
            },
        )
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "Location" in response.headers["Access-Control-Expose-Headers"]
        assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
        assert (await client.delete("/whip/000000000000")).status == 404
        publisher = await publish(client, whip=True)
        response = await client.patch(publisher.location or "", data="a=candidate")
        assert response.status == 405
        await publisher.close()


async def test_session_cap_answers_503(tmp_path: Path) -> None:
    async with running_app(recordings=tmp_path, max_sessions=1) as client:
        first = await publish(client)
        from .server_support import publisher_pc

        pc = publisher_pc()
        await pc.setLocalDescription(await pc.createOffer())
        response = await client.post(
            "/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}
        )
        assert await error_of(response) == (503, "QuotaExceededError")
        await pc.close()
        await first.close()


async def test_a_peer_that_hangs_up_ends_its_recording_cleanly(tmp_path: Path) -> None:
    async with running_app(recordings=tmp_path, auto_record=True) as client:
        publisher = await publish(client, mimeType="video/x-matroska;codecs=avc1,opus")
        socket = await client.ws_connect(f"/api/sessions/{publisher.session}/events")
        await wait_for(
            lambda: (
                list(tmp_path.glob("*.mkv")) and next(tmp_path.glob("*.mkv")).stat().st_size > 20000
            ),
            15,
        )
        await publisher.close()
        stopped = await next_event(socket, "stop")
        path = tmp_path / stopped["name"]
        assert path.suffix == ".mkv" and not ffmpeg_errors(path)
        info = probe(path)
        assert info["video"].codec == "h264"  # the server asked for H.264, so it passed through
        meta = json.loads((tmp_path / f"{path.name}.json").read_text())
        assert meta["state"] == "complete" and meta["duration"] > 0.5


async def test_sigterm_finalizes_every_recording(tmp_path: Path) -> None:
    async with (
        server_process(tmp_path, "--auto-record") as (process, base),
        aiohttp.ClientSession(base) as http,
    ):
        publishers = [await publish(http) for _ in range(3)]

        async def all_recording() -> bool:
            sessions = await (await http.get("/api/sessions")).json()
            return len(sessions) == 3 and all(s["bytes"] > 20000 for s in sessions)

        deadline = time.monotonic() + 20
        while not await all_recording():
            assert time.monotonic() < deadline, "the sessions did not all record"
            await asyncio.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0
        log = server_log(process)
        assert "INFO stopping sessions=3" in log and "INFO stopped sessions=3" in log, log
        for publisher in publishers:
            await publisher.close()
    files = sorted(tmp_path.glob("*.webm"))
    assert len(files) == 3
    for path in files:
        assert not ffmpeg_errors(path), path
        meta = json.loads((tmp_path / f"{path.name}.json").read_text())
        assert meta["state"] == "complete", meta
        with __import__("av").open(str(path)) as container:
            assert container.duration and container.duration > 0  # finalized: duration written


def test_settings_come_from_flags_and_environment() -> None:
    from rtc_recorder.server.settings import parse

    settings = parse(
        ["--port", "9000", "--auto-record"], {"RTC_RECORDER_TOKEN": "t", "RTC_RECORDER_PORT": "1"}
    )
    assert settings.port == 9000 and settings.auto_record and settings.token == "t"
    assert (
        parse([], {"RTC_RECORDER_AUTO_RECORD": "yes", "RTC_RECORDER_TIMESLICE": "250"}).timeslice
        == 250
    )
    with pytest.raises(ValueError):
        parse(["--mime-type", "video/avi"], {})
    with pytest.raises(ValueError):
        parse(["--cert", "x.pem"], {})


def test_cli_rejects_bad_flags_with_a_message(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "rtc_recorder", "serve", "--port", "zero"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "--port" in result.stderr


def test_recording_names_are_reserved_when_chosen(tmp_path: Path) -> None:
    from rtc_recorder.server.recordings import RecordingStore

    store = RecordingStore(tmp_path)
    names = {store.new_name("abcdef012345", "video/webm") for _ in range(5)}
    assert len(names) == 5  # same session, same second: still five files
    assert all(NAME.match(name) for name in names)


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, made with the cryptography package aiortc uses."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_https_serves_the_page_and_the_api(tmp_path: Path) -> None:
    import ssl

    cert, key = self_signed_certificate(tmp_path)
    context = ssl.create_default_context(cafile=str(cert))
    async with (
        server_process(
            tmp_path / "r", "--cert", str(cert), "--key", str(key), ssl_context=context
        ) as (_, base),
        aiohttp.ClientSession(base) as http,
    ):
        assert base.startswith("https://")
        async with http.get("/", ssl=context) as page:
            assert page.status == 200
        publisher = await publish_over(http, context)
        assert publisher


async def publish_over(http: aiohttp.ClientSession, context: Any) -> str:
    from aiortc import RTCSessionDescription

    from .server_support import publisher_pc

    pc = publisher_pc()
    await pc.setLocalDescription(await pc.createOffer())
    body = {"sdp": pc.localDescription.sdp, "type": "offer"}
    async with http.post("/offer", json=body, ssl=context) as response:
        answer = await response.json()
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
    await wait_for(lambda: pc.connectionState == "connected", 10, "connection over HTTPS")
    await pc.close()
    return str(answer["session"])
