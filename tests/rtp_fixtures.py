"""Real Chromium RTP, captured once over loopback (``tests/fixtures/capture_chromium_rtp.py``)
and kept as small binary fixtures, for unit tests of what the receive side does with
real browser packets: frame assembly, padding and probes, DTX gaps, sender reports.

Each capture is two files in ``tests/fixtures/``:

``NAME.rtp``: the packets as they reached aiortc, *after* SRTP decryption, in arrival
order. An 8-byte magic ``b"RTPCAP\\x00\\x01"``, then one record per packet:

====== ========================= ===================================================
bytes  field                     meaning
====== ========================= ===================================================
1      kind                      0: an RTP packet; 1: an RTCP compound packet
4      arrival (big-endian u32)  microseconds since the capture's first packet
2      length (big-endian u16)   bytes of the packet that follows
length packet                    the decrypted packet, headers included
====== ========================= ===================================================

``NAME.json``: what was negotiated and who sent what:

- ``codecs``: payload type (as a string) → ``{"mimeType", "clockRate", "channels",
  "parameters"}`` from the answer (``parameters`` holds the fmtp, e.g. ``apt`` for RTX,
  ``usedtx`` for Opus);
- ``headerExtensions``: extension id (string) → URI, from the answer;
- ``ssrcs``: SSRC (string) → ``{"kind": "audio"|"video", "role": "media"|"rtx",
  "media": SSRC of the stream an RTX SSRC repairs}``, from the offer;
- ``chromium`` (version), ``seconds`` (how long it ran), ``source`` (what Chromium was
  fed), ``offer`` and ``answer`` (the SDP).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import AnyRtcpPacket, HeaderExtensionsMap, RtcpPacket, RtpPacket

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MAGIC = b"RTPCAP\x00\x01"
RTP, RTCP = 0, 1
_RECORD = struct.Struct(">BIH")


@dataclass(frozen=True)
class Codec:
    """One negotiated payload type."""

    mime_type: str
    clock_rate: int
    channels: int | None
    parameters: dict[str, Any]

    @property
    def name(self) -> str:
        """The codec's name in lower case (``vp8``, ``h264``, ``opus``, ``rtx``...)."""
        return self.mime_type.split("/")[1].lower()


@dataclass(frozen=True)
class Capture:
    """A capture read back: its records and what was negotiated."""

    name: str
    records: list[tuple[int, float, bytes]]  # (kind, arrival seconds, packet)
    codecs: dict[int, Codec]
    header_extensions: dict[int, str]
    ssrcs: dict[int, dict[str, Any]]
    info: dict[str, Any]

    def rtp(self) -> Iterator[tuple[float, RtpPacket]]:
        """``(arrival_seconds, packet)`` for every RTP packet, header extensions parsed
        with the negotiated ids."""
        extensions = HeaderExtensionsMap()
        extensions.configure(
            RTCRtpParameters(
                headerExtensions=[
                    RTCRtpHeaderExtensionParameters(id=i, uri=uri)
                    for i, uri in self.header_extensions.items()
                ]
            )
        )
        for kind, arrival, data in self.records:
            if kind == RTP:
                yield arrival, RtpPacket.parse(data, extensions)

    def rtcp(self) -> Iterator[tuple[float, AnyRtcpPacket]]:
        """``(arrival_seconds, packet)`` for every RTCP packet (compounds split)."""
        for kind, arrival, data in self.records:
            if kind == RTCP:
                for packet in RtcpPacket.parse(data):
                    yield arrival, packet

    def media_ssrc(self, kind: str) -> int:
        """The SSRC of the ``kind`` media stream (not its RTX)."""
        return next(s for s, r in self.ssrcs.items() if r["kind"] == kind and r["role"] == "media")

    def rtx_ssrc(self, kind: str) -> int | None:
        """The SSRC of the ``kind`` stream's RTX, if it has one."""
        return next(
            (s for s, r in self.ssrcs.items() if r["kind"] == kind and r["role"] == "rtx"), None
        )


def write_records(path: Path, records: list[tuple[int, float, bytes]]) -> None:
    """Writes ``(kind, arrival seconds, packet)`` records in the format above (arrival
    times made relative to the first record)."""
    first = records[0][1] if records else 0.0
    with path.open("wb") as output:
        output.write(MAGIC)
        for kind, arrival, data in records:
            output.write(_RECORD.pack(kind, round((arrival - first) * 1_000_000), len(data)))
            output.write(data)


def read_records(path: Path) -> list[tuple[int, float, bytes]]:
    """The records of a ``.rtp`` file; ``ValueError`` if it is not one or is cut short."""
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise ValueError(f"{path.name} is not an RTP capture (no {MAGIC!r} at its start)")
    records = []
    position = len(MAGIC)
    while position < len(data):
        if position + _RECORD.size > len(data):
            raise ValueError(f"{path.name} ends inside a record header at byte {position}")
        kind, micros, length = _RECORD.unpack_from(data, position)
        position += _RECORD.size
        if kind not in (RTP, RTCP) or position + length > len(data):
            raise ValueError(f"{path.name} has a broken record at byte {position}")
        records.append((kind, micros / 1_000_000, data[position : position + length]))
        position += length
    return records


def load(name: str, folder: Path = FIXTURES) -> Capture:
    """The capture ``NAME.rtp`` with its ``NAME.json``."""
    info = json.loads((folder / f"{name}.json").read_text())
    codecs = {
        int(pt): Codec(c["mimeType"], c["clockRate"], c.get("channels"), c.get("parameters", {}))
        for pt, c in info["codecs"].items()
    }
    return Capture(
        name=name,
        records=read_records(folder / f"{name}.rtp"),
        codecs=codecs,
        header_extensions={int(i): uri for i, uri in info["headerExtensions"].items()},
        ssrcs={int(s): role for s, role in info["ssrcs"].items()},
        info=info,
    )
