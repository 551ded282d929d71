"""Where aiortc's and aioice's transports fall short of the clients and networks met in
practice, and what rtc-recorder does about it.

DTLS (installed process-wide by :func:`install`, so library users get it too):

- aiortc offers only ECDHE-ECDSA cipher suites, so a peer whose DTLS certificate is RSA
  (GStreamer's webrtcbin) finds no shared cipher. The ECDHE-RSA suites with AEAD
  ciphers are added; rtc-recorder's own certificate stays ECDSA, and either side's
  certificate is still pinned by its SDP fingerprint.
- A peer certificate on a curve this OpenSSL no longer accepts in (D)TLS (FFmpeg's WHIP
  muxer presents one on P-224; OpenSSL 4 removed P-224 from TLS) fails the handshake.
  That cannot be fixed on this side; it is logged as a warning naming the curve, so an
  operator sees why instead of a bare "DTLS handshake failed".

ICE (installed by :func:`install` too):

- A connectivity check must carry a PRIORITY attribute (RFC 8445 section 7.1.1), and
  aioice reads it unguarded when the check comes from an address it has not seen (a
  peer-reflexive candidate): a check without one raised ``KeyError`` out of aioice's
  datagram handler and was lost, every time, so a peer known only by its checks never
  connected. Such a check is given the priority RFC 8445 section 5.1.2 gives a
  peer-reflexive candidate of that component.

ICE (per peer connection, by :func:`apply_ice_policy`, as the server's settings say):
the addresses candidates are gathered on, the address they announce (1:1 NAT) and the
UDP port range their sockets are bound in; aioice has no setting for any of them.

Written against aiortc 1.16 and aioice 0.13. On other versions, or when an internal is
missing, each workaround logs a warning and stays off.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import random
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aioice
import aioice.ice
import aioice.stun
import aioice.turn
import aiortc
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCCertificate
from aiortc.rtcicetransport import RTCIceCandidate, RTCIceGatherer
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL, crypto

logger = logging.getLogger("rtc_recorder")

TESTED = {"aiortc": ("1.16.",), "aioice": ("0.13.",)}

# aiortc's own suites first (its certificate is ECDSA), then those an RSA certificate
# can use: forward secret (ECDHE) and AEAD only.
DTLS_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:"
    b"ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES256-GCM-SHA384"
)
# The curves OpenSSL 4 still accepts for a (D)TLS 1.2 peer's ECDSA key.
DTLS_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})

_installed = False
_warned: set[str] = set()


def version_supported(workaround: str) -> bool:
    """Whether the installed aiortc and aioice are the versions these workarounds were
    written for; warns (naming ``workaround``) when they are not."""
    installed = {"aiortc": aiortc.__version__, "aioice": aioice.__version__}
    for package, prefixes in TESTED.items():
        if not installed[package].startswith(prefixes):
            _warn_once(
                f"rtc_recorder: {package} {installed[package]} is not the version {workaround} "
                f"was written for ({', '.join(prefixes)}x); skipping it"
            )
            return False
    return True


def has_internals(workaround: str, *internals: tuple[object, str]) -> bool:
    """Whether each ``(owner, attribute)`` exists; warns (naming ``workaround``) if not."""
    for owner, name in internals:
        if not hasattr(owner, name):
            owner_name = getattr(owner, "__name__", type(owner).__name__)
            _warn_once(f"rtc_recorder: {owner_name} has no {name}; skipping {workaround}")
            return False
    return True


def _warn_once(message: str) -> None:
    """A warning logged once per process (the checks run for every session)."""
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def install() -> None:
    """Install the DTLS and ICE check workarounds (once per process)."""
    global _installed
    if _installed:
        return
    _installed = True
    _install_dtls()
    _install_check_priority()


# -- DTLS ------------------------------------------------------------------------------


def _install_dtls() -> None:
    workaround = "the DTLS cipher and certificate workarounds"
    if not version_supported(workaround) or not has_internals(
        workaround, (RTCCertificate, "_create_ssl_context")
    ):
        return
    original: Callable[..., SSL.Context] = RTCCertificate._create_ssl_context

    def _create_ssl_context(self: RTCCertificate, *args: Any, **kwargs: Any) -> SSL.Context:
        context = original(self, *args, **kwargs)
        context.set_cipher_list(DTLS_CIPHERS)
        # aiortc accepts any certificate here and checks its fingerprint after the
        # handshake; this keeps that and only names a curve that will fail it.
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _accept_and_diagnose)
        return context

    RTCCertificate._create_ssl_context = _create_ssl_context  # type: ignore[method-assign]


def unusable_curve(certificate: x509.Certificate) -> str | None:
    """The curve of an ECDSA certificate that (D)TLS here cannot use, else ``None``."""
    key = certificate.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name not in DTLS_CURVES:
        return key.curve.name
    return None


def _accept_and_diagnose(
    _connection: SSL.Connection, certificate: crypto.X509, _error: int, depth: int, _ok: int
) -> bool:
    if depth == 0:
        curve = unusable_curve(certificate.to_cryptography())
        if curve is not None:
            logger.warning(
                "rtc_recorder: the peer's DTLS certificate is on %s, which this OpenSSL "
                "does not accept in (D)TLS: the handshake will fail. (FFmpeg's WHIP muxer "
                "makes such a certificate; give it a P-256 one with its cert_file and "
                "key_file options.)",
                curve,
            )
    return True


# -- ICE -------------------------------------------------------------------------------


def _install_check_priority() -> None:
    workaround = "accepting ICE checks without PRIORITY"
    if not version_supported(workaround) or not has_internals(
        workaround, (aioice.ice.Connection, "check_incoming")
    ):
        return
    original: Callable[..., None] = aioice.ice.Connection.check_incoming

    def check_incoming(
        self: aioice.ice.Connection,
        message: aioice.stun.Message,
        addr: tuple[str, int],
        protocol: aioice.ice.StunProtocol,
    ) -> None:
        if "PRIORITY" not in message.attributes:
            component = protocol.local_candidate.component
            message.attributes["PRIORITY"] = candidate_priority(component, "prflx")
        original(self, message, addr, protocol)

    aioice.ice.Connection.check_incoming = check_incoming  # type: ignore[method-assign]


class PortsExhausted(OSError):
    """No UDP port of the configured range is free on an address."""


@dataclass(frozen=True)
class IcePolicy:
    """Where a peer connection's ICE lives.

    ``addresses``: the local addresses candidates are gathered on (empty: every interface,
    aioice's choice). ``announce``: the address host candidates carry instead of the
    local one (a server behind 1:1 NAT). ``ports``: the inclusive range every ICE socket
    is bound in; with it only host candidates are gathered (aioice's STUN and TURN clients
    bind sockets of their own, outside any range).
    """

    addresses: tuple[str, ...] = ()
    announce: str | None = None
    ports: tuple[int, int] | None = None

    @property
    def default(self) -> bool:
        """Whether this is aioice's own behaviour (nothing to apply)."""
        return not self.addresses and self.announce is None and self.ports is None


def apply_ice_policy(pc: RTCPeerConnection, policy: IcePolicy) -> None:
    """Make ``pc``'s ICE gatherers follow ``policy``. Call it after the remote description
    is set (which creates the gatherers) and before the local one (which gathers)."""
    if policy.default:
        return
    workaround = "the ICE address and port settings"
    if not version_supported(workaround) or not has_internals(
        workaround,
        (aioice.ice.Connection, "get_component_candidates"),
        (aioice.ice, "StunProtocol"),
        (aioice.turn, "UDP_SOCKET_BUFFER_SIZE"),
    ):
        return
    for gatherer in _ice_gatherers(pc):
        if has_internals(workaround, (gatherer, "_connection")) and has_internals(
            workaround, (gatherer._connection, "_protocols")
        ):
            _apply_to_gatherer(gatherer, policy)


def _ice_gatherers(pc: RTCPeerConnection) -> Iterator[RTCIceGatherer]:
    seen: set[int] = set()
    transports = [transceiver.receiver.transport for transceiver in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    for dtls in transports:
        gatherer = dtls.transport.iceGatherer
        if id(gatherer) not in seen:
            seen.add(id(gatherer))
            yield gatherer


def _apply_to_gatherer(gatherer: RTCIceGatherer, policy: IcePolicy) -> None:
    connection: aioice.ice.Connection = gatherer._connection
    original = connection.get_component_candidates

    async def get_component_candidates(
        component: int, addresses: list[str], timeout: int = 5
    ) -> list[Candidate]:
        addresses = list(policy.addresses) or addresses
        if policy.ports is None:
            return await original(component=component, addresses=addresses, timeout=timeout)
        return await _bind_host_candidates(connection, component, addresses, policy.ports)

    # Instance attributes: only this connection changes, and aioice looks them up per call.
    connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]
    if policy.announce is not None:
        local_candidates = gatherer.getLocalCandidates
        announce = policy.announce

        def announced() -> list[RTCIceCandidate]:
            return [announced_candidate(c, announce) for c in local_candidates()]

        gatherer.getLocalCandidates = announced  # type: ignore[method-assign]


def announced_candidate(candidate: RTCIceCandidate, address: str) -> RTCIceCandidate:
    """``candidate`` as a peer outside a 1:1 NAT reaches it: a host candidate of the
    announced address's family carries that address; any other stays as it is."""
    same_family = (
        ipaddress.ip_address(candidate.ip).version == ipaddress.ip_address(address).version
    )
    if candidate.type != "host" or not same_family:
        return candidate
    return dataclasses.replace(candidate, ip=address)


async def _bind_host_candidates(
    connection: aioice.ice.Connection,
    component: int,
    addresses: list[str],
    ports: tuple[int, int],
) -> list[Candidate]:
    loop = asyncio.get_running_loop()
    candidates = []
    for address in addresses:
        sock = bind_in_range(address, ports)
        _, protocol = await loop.create_datagram_endpoint(
            lambda: aioice.ice.StunProtocol(connection), sock=sock
        )
        host, port = sock.getsockname()[:2]
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("host", "udp", host),
            component=component,
            transport="udp",
            priority=candidate_priority(component, "host"),
            host=host,
            port=port,
            type="host",
        )
        connection._protocols.append(protocol)
        candidates.append(protocol.local_candidate)
    return candidates


def bind_in_range(address: str, ports: tuple[int, int]) -> socket.socket:
    """A UDP socket bound to ``address`` on a free port of the inclusive range ``ports``
    (tried from a random start, so concurrent sessions rarely race for the same one)."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    low, high = ports
    count = high - low + 1
    start = random.randrange(count)
    for offset in range(count):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((address, low + (start + offset) % count))
        except OSError:
            sock.close()
            continue
        sock.setblocking(False)
        # As aioice does for its own sockets: room for a burst of video packets.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, aioice.turn.UDP_SOCKET_BUFFER_SIZE)
        return sock
    raise PortsExhausted(f"no free UDP port in {low}-{high} on {address}")


__all__ = [
    "DTLS_CIPHERS",
    "IcePolicy",
    "PortsExhausted",
    "announced_candidate",
    "apply_ice_policy",
    "bind_in_range",
    "install",
    "unusable_curve",
]
