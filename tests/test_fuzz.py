"""Hostile input: property-based fuzzing of every route of a real server (on a real port,
in a thread of its own), while a recording runs alongside. Every answer must be a 4xx
with a JSON error, the server must keep serving, and the recording must be unharmed.

The number of cases run is written to ``artifacts/fuzz.json``.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rtc_recorder.server.app import create_app
from rtc_recorder.server.settings import Settings

from .media import duration, ffmpeg_errors, probe
from .server_support import NO_LOAD_LIMITS, ROOT, publish

EXAMPLES = 300
# aiortc and aioice, running in the server's thread, use the random module while
# hypothesis draws: hypothesis notices and warns, but none of its draws depend on it.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
COUNTS: Counter[str] = Counter()
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class LiveServer:
    """The server and a publishing peer, on an event loop in a background thread."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.run(self._start())

    def run(self, coroutine: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _start(self) -> None:
        self.runner = web.AppRunner(
            create_app(
                Settings(
                    recordings=self.folder,
                    max_body=64 * 1024,
                    max_sessions=1000,
                    idle_timeout=5,
                    **NO_LOAD_LIMITS,
                )
            )
        )
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        from aiohttp import ClientSession

        self.http = ClientSession(f"http://127.0.0.1:{self.port}")
        self.publisher = await publish(self.http)
        async with self.http.post(f"/api/sessions/{self.publisher.session}/start") as response:
            assert response.status == 200
            self.recording = (await response.json())["recording"]
        self.started = time.monotonic()

    async def stop_recording(self) -> float:
        async with self.http.post(f"/api/sessions/{self.publisher.session}/stop") as response:
            assert response.status == 200
        elapsed = time.monotonic() - self.started
        for _ in range(200):
            meta = json.loads((self.folder / f"{self.recording}.json").read_text())
            if meta.get("state") == "complete":
                break
            await asyncio.sleep(0.05)
        return elapsed

    async def _stop(self) -> None:
        await self.publisher.close()
        await self.http.close()
        await self.runner.cleanup()

    def close(self) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, loopback_only: None) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("fuzz"))
    yield live
    live.close()


def request(
    server: LiveServer,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    status, _, answer = exchange(server, method, path, body, headers)
    return status, answer


def exchange(
    server: LiveServer,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """The answer's status, headers and body."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def assert_client_error(status: int, body: bytes, kind: str) -> None:
    COUNTS[kind] += 1
    assert 400 <= status < 500, (status, body[:300])
    answer = json.loads(body)
    assert isinstance(answer, dict) and set(answer) == {"error", "message"}, answer
    assert isinstance(answer["error"], str) and answer["error"]


# -- what hostile input is made of ------------------------------------------------------

OFFER = """v=0\r
o=- 1 1 IN IP4 127.0.0.1\r
s=-\r
t=0 0\r
a=group:BUNDLE 0\r
m=video 9 UDP/TLS/RTP/SAVPF 96\r
c=IN IP4 0.0.0.0\r
a=mid:0\r
a=sendonly\r
a=rtcp-mux\r
a=rtpmap:96 VP8/90000\r
a=ice-ufrag:abcd\r
a=ice-pwd:abcdefghijklmnopqrstuvwx\r
a=fingerprint:sha-256 {FINGERPRINT}\r
a=setup:actpass\r
""".replace("{FINGERPRINT}", ":".join(["00", "11", "22", "33", "44", "55", "66", "77"] * 4))
LINES = OFFER.split("\r\n")


@st.composite
def broken_offers(draw: st.DrawFn) -> tuple[str, bool]:
    """SDP that is wrong in one of the ways clients (or attackers) get it wrong, and whether
    it is certainly unanswerable (a mutation or a truncation may leave a valid offer)."""
    kinds = ["truncated", "shuffled", "no-media", "codecs", "many-m", "garbage", "mutated"]
    kind = draw(st.sampled_from(kinds))
    if kind == "truncated":
        return OFFER[: draw(st.integers(0, len(OFFER) - 1))], False
    if kind == "shuffled":
        return "\r\n".join(draw(st.permutations(LINES))), False
    if kind == "no-media":
        media = ("m=", "a=rtpmap", "a=mid")
        return "\r\n".join(line for line in LINES if not line.startswith(media)), True
    if kind == "codecs":
        codec = draw(st.sampled_from(["H263/90000", "MPV/90000", "FOO/1", "L16/44100/2", "x"]))
        return OFFER.replace("VP8/90000", codec), True
    if kind == "many-m":
        count = draw(st.sampled_from([17, 100, 1000, 10000]))
        return OFFER + "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\n" * count, True
    if kind == "garbage":
        return draw(st.text(max_size=2000).filter(lambda t: "m=video" not in t)), True
    lines = list(LINES)
    index = draw(st.integers(0, len(lines) - 1))
    lines[index] = draw(st.text(max_size=200))
    return "\r\n".join(lines), False


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)


@st.composite
def offer_bodies(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A hostile ``/offer`` body, and whether it is certainly unanswerable."""
    kind = draw(st.sampled_from(["json-shape", "bad-sdp", "bytes", "bad-fields", "oversized"]))
    if kind == "json-shape":
        return json.dumps(draw(json_values)).encode(), True
    if kind == "bad-sdp":
        sdp, must_fail = draw(broken_offers())
        return json.dumps({"sdp": sdp, "type": "offer"}).encode(), must_fail
    if kind == "bytes":
        return draw(st.binary(max_size=3000).filter(lambda b: b"offer" not in b)), True
    if kind == "bad-fields":
        body = {
            "sdp": OFFER,
            "type": "offer",
            "mimeType": draw(st.text(max_size=80) | json_values),
            "timeslice": draw(json_values),
        }
        return json.dumps(body).encode(), False
    return b'{"sdp": "' + b"a" * (70 * 1024) + b'", "type": "offer"}', True


names = st.one_of(
    st.sampled_from(
        [
            "..%2F..%2Fetc%2Fpasswd",
            "%2E%2E%2F%2E%2E%2Fpyproject.toml",
            "..%5C..%5Cwin.ini",
            "%2Fetc%2Fpasswd",
            "a%00b.webm",
            "..",
            ".",
            "x.webm.json",
            "%C0%AE%C0%AE%2F",
        ]
    ),
    st.text(min_size=1, max_size=60).map(
        lambda t: __import__("urllib.parse").parse.quote(t, safe="")
    ),
)


# -- the properties --------------------------------------------------------------------


def answered_or_refused(server: LiveServer, status: int, body: bytes, kind: str) -> None:
    """A possibly valid offer: refused with a JSON 4xx, or answered (then hung up)."""
    if status not in (200, 201):
        assert_client_error(status, body, kind)
        return
    COUNTS[kind] += 1
    if kind == "offer":
        session = json.loads(body)["session"]
        assert request(server, "DELETE", f"/api/sessions/{session}")[0] == 200
    else:
        assert body.startswith(b"v=0")


@FUZZ
@example(
    case=(json.dumps({"sdp": OFFER.replace("a=sendonly\r\n", ""), "type": "offer"}).encode(), False)
)
@given(case=offer_bodies())
def test_offer_answers_hostile_bodies_with_json_4xx(
    server: LiveServer, case: tuple[bytes, bool]
) -> None:
    body, must_fail = case
    status, answer = request(server, "POST", "/offer", body, {"Content-Type": "application/json"})
    if must_fail:
        assert_client_error(status, answer, "offer")
    else:
        answered_or_refused(server, status, answer, "offer")


@FUZZ
@given(
    case=broken_offers(),
    content_type=st.sampled_from(
        ["application/sdp", "application/sdp; charset=utf-8", "text/plain", "", "application/json"]
    ),
    invalid_utf8=st.booleans(),
)
def test_whip_answers_hostile_offers_with_json_4xx(
    server: LiveServer, case: tuple[str, bool], content_type: str, invalid_utf8: bool
) -> None:
    sdp, must_fail = case
    body = sdp.encode("utf-8", "surrogatepass")
    if invalid_utf8:
        body = b"v=0\r\n\xff\xfe\xc0" + body
    status, answer = request(server, "POST", "/whip", body, {"Content-Type": content_type})
    if must_fail or invalid_utf8 or not content_type.startswith("application/sdp"):
        assert_client_error(status, answer, "whip")
        return
    answered_or_refused(server, status, answer, "whip")
    if status == 201:
        for entry in json.loads(request(server, "GET", "/api/sessions")[1]):
            if entry["id"] != server.publisher.session:
                request(server, "DELETE", f"/api/sessions/{entry['id']}")


@FUZZ
@given(
    session=st.one_of(st.sampled_from(["000000000000", "..", "%2E%2E"]), names),
    method=st.one_of(
        st.sampled_from(["start", "pause", "resume", "requestData", "stop", "events", "x"]), names
    ),
    body=st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=500)),
)
def test_control_routes_answer_hostile_requests_with_json_4xx(
    server: LiveServer, session: str, method: str, body: bytes
) -> None:
    status, answer = request(server, "POST", f"/api/sessions/{session}/{method}", body)
    assert_client_error(status, answer, "control")
    status, answer = request(server, "GET", f"/api/sessions/{session}")
    assert_client_error(status, answer, "control")
    status, answer = request(server, "DELETE", f"/whip/{session}")
    assert_client_error(status, answer, "control")


@FUZZ
@given(body=st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=300)))
def test_start_on_a_live_session_rejects_bad_options(server: LiveServer, body: bytes) -> None:
    # The session is recording: every start is refused (bad options or wrong state), and
    # the recording it has goes on.
    path = f"/api/sessions/{server.publisher.session}/start"
    status, answer = request(server, "POST", path, body)
    assert_client_error(status, answer, "start")


@FUZZ
@given(name=names)
def test_recording_routes_never_leave_the_folder(server: LiveServer, name: str) -> None:
    for method, path in (("GET", f"/recordings/{name}"), ("DELETE", f"/api/recordings/{name}")):
        status, answer = request(server, method, path)
        COUNTS["recordings"] += 1
        assert status in (400, 404, 405), (path, status)
        if status != 405:
            assert json.loads(answer)["error"]
    assert (ROOT / "pyproject.toml").exists()


room_names = st.one_of(
    st.sampled_from(["", "a b", "x" * 65, "..", "../x", "é", "a/b", "a\x00b"]),
    st.text(max_size=80),
    json_values,
)


@FUZZ
@given(room=room_names, name=json_values, body=offer_bodies())
def test_joining_a_room_answers_hostile_input_with_json_4xx(
    server: LiveServer, room: Any, name: Any, body: tuple[bytes, bool]
) -> None:
    offer = {"sdp": "v=0\r\n", "type": "offer", "room": room, "name": name}
    status, answer = request(server, "POST", "/offer", json.dumps(offer).encode())
    assert_client_error(status, answer, "room")
    path = "/rooms/" + __import__("urllib.parse").parse.quote(str(room), safe="") + "/whip"
    status, answer = request(server, "POST", path, body[0], {"Content-Type": "application/sdp"})
    if status == 404 and not answer.startswith(b"{"):
        COUNTS["room"] += 1  # an empty or slashed name matches no route
        return
    assert_client_error(status, answer, "room")


@FUZZ
@given(
    case=broken_offers(),
    content_type=st.sampled_from(["application/sdp", "text/plain", ""]),
    session=st.one_of(st.just("live"), names),
)
def test_whep_answers_hostile_offers_with_json_4xx(
    server: LiveServer, case: tuple[str, bool], content_type: str, session: str
) -> None:
    # The offers send media and receive none: nothing is to forward, whatever else they say.
    target = server.publisher.session if session == "live" else session
    headers = {"Content-Type": content_type}
    status, answers, answer = exchange(server, "POST", f"/whep/{target}", case[0].encode(), headers)
    if status == 201:  # a mutation left an offer that receives
        COUNTS["whep"] += 1
        assert request(server, "DELETE", answers["Location"])[0] == 200
        return
    assert_client_error(status, answer, "whep")


@FUZZ
@given(session=st.one_of(st.just("live"), names), subscription=names, room=names)
def test_subscription_and_room_routes_answer_hostile_ids_with_json_4xx(
    server: LiveServer, session: str, subscription: str, room: str
) -> None:
    target = server.publisher.session if session == "live" else session
    status, answer = request(server, "DELETE", f"/whep/{target}/{subscription}")
    assert_client_error(status, answer, "subscription")
    for method, path in (
        ("GET", f"/api/rooms/{room}"),
        ("POST", f"/api/rooms/{room}/start"),
        ("POST", f"/api/rooms/{room}/{subscription}"),
    ):
        status, answer = request(server, method, path, b"{}")
        assert_client_error(status, answer, "rooms")
    status, answer = request(server, "GET", f"/recordings/{room}/{subscription}")
    assert status in (400, 404), status
    assert (ROOT / "pyproject.toml").exists()


def test_after_the_fuzzing_the_server_serves_and_the_recording_is_whole(server: LiveServer) -> None:
    status, body = request(server, "GET", "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    elapsed = server.run(server.stop_recording())
    path = server.folder / server.recording
    assert not ffmpeg_errors(path)
    assert duration(probe(path)) >= elapsed - 1.5
    total = sum(COUNTS.values())
    report = ROOT / "artifacts" / "fuzz.json"
    report.parent.mkdir(exist_ok=True)
    report.write_text(
        json.dumps({"requests": total, **COUNTS, "recordingSeconds": elapsed}, indent=1)
    )
    assert total >= 5 * EXAMPLES
