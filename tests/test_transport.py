"""The aiortc/aioice workarounds of ``rtc_recorder.receive`` on real aiortc objects: DTLS
suites and certificate curves, H.264 answered in kind, and each workaround stepping aside
on versions it was not written for."""

from __future__ import annotations

import asyncio
import datetime
import logging
from pathlib import Path

import aioice
import aiortc
import pytest
from aioice import stun
from aioice.candidate import candidate_priority
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtcdtlstransport import SRTP_PROFILES, RTCCertificate
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

import rtc_recorder  # noqa: F401 - installs the workarounds
from rtc_recorder.receive.transport import (
    IcePolicy,
    apply_ice_policy,
    unusable_curve,
    version_supported,
)

from .media import wait_for
from .server_support import next_event, publish, publisher_pc, running_app


def self_signed(curve: ec.EllipticCurve) -> x509.Certificate:
    key = ec.generate_private_key(curve)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "peer")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def test_dtls_offers_ecdhe_rsa_suites_besides_aiortcs_ecdsa_ones() -> None:
    context = RTCCertificate.generateCertificate()._create_ssl_context(SRTP_PROFILES)
    ciphers = SSL.Connection(context).get_cipher_list()
    assert {"ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"} <= set(ciphers)
    # Forward secret only (TLS_* are TLS 1.3's suites, which DTLS 1.2 never uses).
    assert all(name.startswith(("ECDHE-", "TLS_")) for name in ciphers)


def test_a_p224_certificate_is_named_as_unusable_and_p256_is_not() -> None:
    assert unusable_curve(self_signed(ec.SECP224R1())) == "secp224r1"
    assert unusable_curve(self_signed(ec.SECP256R1())) is None


def munged_offer(sdp: str, profile_level_id: str) -> str:
    return sdp.replace("profile-level-id=42e01f", f"profile-level-id={profile_level_id}")


@pytest.mark.parametrize("profile_level_id", ["640028", "4d001f", "42e034"])
async def test_h264_of_any_profile_is_answered_with_the_offered_profile_level_id(
    profile_level_id: str,
) -> None:
    offerer, answerer = publisher_pc(audio=False), RTCPeerConnection()
    transceiver = offerer.getTransceivers()[0]
    transceiver.setCodecPreferences(
        [c for c in aiortc.RTCRtpSender.getCapabilities("video").codecs if "42e01f" in str(c)]
    )
    await offerer.setLocalDescription(await offerer.createOffer())
    offer = munged_offer(offerer.localDescription.sdp, profile_level_id)
    assert f"profile-level-id={profile_level_id}" in offer
    await answerer.setRemoteDescription(RTCSessionDescription(offer, "offer"))
    await answerer.setLocalDescription(await answerer.createAnswer())
    answer = answerer.localDescription.sdp
    await offerer.close()
    await answerer.close()
    assert "m=video 9 " not in answer  # not rejected
    assert f"profile-level-id={profile_level_id}" in answer


def test_workarounds_step_aside_on_other_aiortc_versions(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(aiortc, "__version__", "1.17.0")
    with caplog.at_level(logging.WARNING, "rtc_recorder"):
        assert not version_supported("the thing")
    assert "aiortc 1.17.0 is not the version the thing was written for" in caplog.text


async def test_ice_settings_leave_gathering_alone_on_other_aiortc_versions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    offerer, answerer = publisher_pc(), RTCPeerConnection()
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    monkeypatch.setattr(aiortc, "__version__", "1.17.0")
    apply_ice_policy(answerer, IcePolicy(ports=(1, 1)))  # would fail to bind if applied
    await answerer.setLocalDescription(await answerer.createAnswer())
    assert "typ host" in answerer.localDescription.sdp
    await offerer.close()
    await answerer.close()


async def test_an_ice_check_without_priority_is_taken_as_a_peer_reflexive_candidate() -> None:
    controlled = aioice.Connection(ice_controlling=False)
    await controlled.gather_candidates()
    controlled.remote_username, controlled.remote_password = "peer", "peer-password-of-22+chars"
    await controlled.add_remote_candidate(None)
    connecting = asyncio.ensure_future(controlled.connect())
    local = controlled.local_candidates[0]
    loop = asyncio.get_running_loop()
    responses: asyncio.Queue[bytes] = asyncio.Queue()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Collector(responses), local_addr=("127.0.0.1", 0)
    )
    try:
        request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        request.attributes["USERNAME"] = f"{controlled.local_username}:peer"
        request.attributes["ICE-CONTROLLING"] = 1
        request.attributes["USE-CANDIDATE"] = None
        request.add_message_integrity(controlled.local_password.encode())
        request.add_fingerprint()
        transport.sendto(bytes(request), (local.host, local.port))
        reply = stun.parse_message(await asyncio.wait_for(responses.get(), 5))
        assert reply.message_class == stun.Class.RESPONSE
        address = transport.get_extra_info("sockname")
        await wait_for(
            lambda: any(c.port == address[1] for c in controlled._remote_candidates),
            5,
            "the peer-reflexive candidate",
        )
    finally:
        transport.close()
        connecting.cancel()
        await controlled.close()
    learned = next(c for c in controlled._remote_candidates if c.port == address[1])
    assert (learned.type, learned.priority) == ("prflx", candidate_priority(1, "prflx"))


class _Collector(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue[bytes]) -> None:
        self.queue = queue

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait(data)


@pytest.mark.parametrize(
    ("mime_type", "codec"),
    [("video/mp4;codecs=avc1,opus", "h264"), ("video/webm;codecs=vp8,opus", "vp8")],
)
async def test_the_answer_puts_the_codec_the_recording_keeps_first(
    mime_type: str, codec: str, tmp_path: Path
) -> None:
    async with running_app(recordings=tmp_path, mime_type=mime_type) as client:
        publisher = await publish(client)  # aiortc offers VP8 first, then H.264
        base = f"/api/sessions/{publisher.session}"
        socket = await client.ws_connect(f"{base}/events")
        await client.post(f"{base}/start")
        await next_event(socket, "dataavailable")
        await client.post(f"{base}/stop")
        stopped = await next_event(socket, "stop")
        await socket.close()
        await publisher.close()
    video = next(t for t in stopped["tracks"] if t["kind"] == "video")
    assert (video["codec"], video["path"], video["framesDecoded"]) == (codec, "passthrough", 0)
