"""Networks as deployed: the addresses ICE gathers on, the address it announces behind a 1:1
NAT, the UDP port range its sockets use, and clear start-up errors for bad values. The
server runs as a process inside a network namespace of the test's own
(``tests/interop_support.py``), where it has two addresses besides loopback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import psutil
import pytest
from aiortc import RTCPeerConnection
from aiortc.sdp import SessionDescription

from rtc_recorder.server.settings import parse

from .interop_support import CLIENT_ADDRESS, SERVER_ADDRESS, private_network
from .server_support import publisher_pc, server_process

pytestmark = pytest.mark.timeout(60)


async def post_offer(base: str) -> tuple[int, str]:
    """POST an aiortc offer to ``/whip``; the status and body (an answer is not applied:
    nothing is sent to its candidates)."""
    pc: RTCPeerConnection = publisher_pc()
    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with (
            aiohttp.ClientSession(base) as http,
            http.post(
                "/whip",
                data=pc.localDescription.sdp,
                headers={"Content-Type": "application/sdp"},
            ) as response,
        ):
            return response.status, await response.text()
    finally:
        await pc.close()


async def answer_from(base: str) -> SessionDescription:
    status, body = await post_offer(base)
    assert status == 201, body
    return SessionDescription.parse(body)


def candidate_addresses(answer: SessionDescription) -> set[tuple[str, str]]:
    return {(c.ip, c.type) for media in answer.media for c in media.ice_candidates}


async def test_ice_gathers_only_on_the_ice_address(tmp_path: Path) -> None:
    with private_network():
        async with server_process(tmp_path, f"--ice-address={SERVER_ADDRESS}") as (_, base):
            answer = await answer_from(base)
    assert candidate_addresses(answer) == {(SERVER_ADDRESS, "host")}


async def test_ice_address_repeats_and_reads_a_list_from_the_environment(
    tmp_path: Path,
) -> None:
    with private_network():
        variable = {"RTC_RECORDER_ICE_ADDRESS": f"{SERVER_ADDRESS},127.0.0.1"}
        async with server_process(tmp_path, env=variable) as (_, base):
            from_environment = candidate_addresses(await answer_from(base))
        flags = [f"--ice-address={SERVER_ADDRESS}", f"--ice-address={CLIENT_ADDRESS}"]
        async with server_process(tmp_path, *flags) as (_, base):
            from_flags = candidate_addresses(await answer_from(base))
    assert from_environment == {(SERVER_ADDRESS, "host"), ("127.0.0.1", "host")}
    assert from_flags == {(SERVER_ADDRESS, "host"), (CLIENT_ADDRESS, "host")}


async def test_candidates_announce_the_public_address_behind_nat(tmp_path: Path) -> None:
    public = CLIENT_ADDRESS  # stands for the NAT's public address; inside the namespace
    with private_network():
        async with server_process(
            tmp_path, f"--ice-address={SERVER_ADDRESS}", f"--announce-address={public}"
        ) as (_, base):
            answer = await answer_from(base)
    assert candidate_addresses(answer) == {(public, "host")}
    assert all(media.host == public for media in answer.media)


async def test_every_ice_socket_of_a_session_is_in_the_udp_port_range(tmp_path: Path) -> None:
    low, high = 41000, 41009
    with private_network():
        async with server_process(
            tmp_path, f"--ice-address={SERVER_ADDRESS}", f"--udp-ports={low}-{high}"
        ) as (process, base):
            answers = [await answer_from(base) for _ in range(3)]
            sockets = psutil.Process(process.pid).net_connections(kind="udp")
    ports = {c.port for answer in answers for media in answer.media for c in media.ice_candidates}
    assert len(ports) == 3  # one bundled socket per session
    assert ports <= set(range(low, high + 1))
    assert sockets and all(low <= s.laddr.port <= high for s in sockets)


async def test_a_full_udp_port_range_refuses_the_session_with_503(tmp_path: Path) -> None:
    with private_network():
        async with server_process(
            tmp_path, f"--ice-address={SERVER_ADDRESS}", "--udp-ports=41020-41020"
        ) as (_, base):
            await answer_from(base)
            status, body = await post_offer(base)
    assert status == 503
    assert "no free UDP port in 41020-41020" in json.loads(body)["message"]


def test_network_settings_parse_flags_and_variables() -> None:
    settings = parse(
        ["--ice-address", "127.0.0.1", "--announce-address", "198.51.100.7"],
        {"RTC_RECORDER_UDP_PORTS": "40000-40099"},
    )
    assert settings.ice_address == ("127.0.0.1",)
    assert settings.announce_address == "198.51.100.7"
    assert settings.udp_ports == (40000, 40099)
    assert parse([], {"RTC_RECORDER_ICE_ADDRESS": " 127.0.0.1 , "}).ice_address == ("127.0.0.1",)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--ice-address", "not-an-ip"], "--ice-address: 'not-an-ip' is not an IP address"),
        (["--ice-address", "192.0.2.1"], "--ice-address: 192.0.2.1 is not an address of this"),
        (["--announce-address", "0.0.0.0"], "--announce-address: 0.0.0.0 cannot be reached"),
        (["--udp-ports", "50000"], "--udp-ports: '50000' is not MIN-MAX"),
        (["--udp-ports", "50010-50000"], "--udp-ports: 50010-50000 is not a range"),
        (["--udp-ports", "0-10"], "--udp-ports: 0-10 is not a range"),
        (
            ["--udp-ports", "50000-50010", "--ice-servers", "stun:stun.invalid:3478"],
            "--udp-ports cannot be combined with --ice-servers",
        ),
    ],
)
def test_bad_network_values_are_refused_with_a_message(arguments: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse(arguments, {})


def test_a_bad_network_value_stops_the_server_at_start() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rtc_recorder", "serve", "--udp-ports", "9-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "rtc-recorder serve: --udp-ports: 9-1 is not a range within 1-65535" in result.stderr
