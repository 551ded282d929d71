"""H.264 as real encoders offer it.

aiortc answers an H.264 offer only when its profile is one of aiortc's own (constrained
baseline or baseline), and then with aiortc's own ``profile-level-id`` (level 3.1).
Encoders in the field (OBS, FFmpeg, hardware encoders) offer main (``4d00xx``), high
(``6400xx``) and other levels: their video was refused, or capped at level 3.1.

A recording keeps H.264 as it arrives (parameter sets come from the stream), so
:func:`install` makes aiortc answer each offered H.264 format with the offer's own
``profile-level-id``, provided aiortc can depacketize it (same ``packetization-mode``).
aiortc's decoder, used only when somebody reads decoded frames, is FFmpeg's, which
decodes every profile offered.

Written against aiortc 1.16; on other versions, or without the internal it wraps, it
logs a warning and leaves aiortc's matching as it is.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import aiortc.rtcpeerconnection
from aiortc import RTCPeerConnection, RTCRtpCodecParameters

from .transport import has_internals, version_supported

_installed = False

CodecMatcher = Callable[
    [list[RTCRtpCodecParameters], list[RTCRtpCodecParameters]], list[RTCRtpCodecParameters]
]


def _is_h264(codec: RTCRtpCodecParameters) -> bool:
    return codec.mimeType.lower() == "video/h264"


def _packetization(codec: RTCRtpCodecParameters) -> str:
    return str(codec.parameters.get("packetization-mode", "0"))


def local_codecs_for(
    local: list[RTCRtpCodecParameters], remote: list[RTCRtpCodecParameters]
) -> list[RTCRtpCodecParameters]:
    """``local`` with one H.264 format per offered ``profile-level-id`` ahead of aiortc's
    own (aiortc's format of the same packetization mode, carrying the offer's profile and
    level), so each offered format is answered in kind."""
    templates = {_packetization(c): c for c in reversed(local) if _is_h264(c)}
    tailored: list[RTCRtpCodecParameters] = []
    seen: set[tuple[str, str]] = set()
    for offered in remote:
        template = templates.get(_packetization(offered)) if _is_h264(offered) else None
        profile = offered.parameters.get("profile-level-id")
        if template is None or profile is None:
            continue
        key = (_packetization(offered), str(profile).lower())
        if key in seen:
            continue
        seen.add(key)
        codec = copy.deepcopy(template)
        codec.parameters["profile-level-id"] = str(profile).lower()
        tailored.append(codec)
    if not tailored:
        return local
    position = next(index for index, codec in enumerate(local) if _is_h264(codec))
    return local[:position] + tailored + local[position:]


def install() -> None:
    """Make aiortc answer H.264 offers of any profile and level (once per process)."""
    global _installed
    if _installed:
        return
    _installed = True
    workaround = "answering H.264 of every profile"
    if not version_supported(workaround) or not has_internals(
        workaround, (aiortc.rtcpeerconnection, "find_common_codecs")
    ):
        return
    original: CodecMatcher = aiortc.rtcpeerconnection.find_common_codecs

    def find_common_codecs(
        local_codecs: list[RTCRtpCodecParameters], remote_codecs: list[RTCRtpCodecParameters]
    ) -> list[RTCRtpCodecParameters]:
        return original(local_codecs_for(local_codecs, remote_codecs), remote_codecs)

    aiortc.rtcpeerconnection.find_common_codecs = find_common_codecs


def prefer_codec(pc: RTCPeerConnection, mime_type: str) -> None:
    """Put ``mime_type`` (``"video/H264"``, say) first among the codecs ``pc`` will answer
    with, so the sender sends it. Call it between setting the remote description and
    creating the answer.

    aiortc reads ``setCodecPreferences`` only while it takes the remote description, and
    the transceivers of an answer do not exist before then: preferences set in between
    were ignored, and the answer kept the offer's order.
    """
    workaround = "preferring a codec in the answer"
    if not version_supported(workaround):
        return
    for transceiver in pc.getTransceivers():
        if transceiver.kind == mime_type.split("/")[0] and has_internals(
            workaround, (transceiver, "_codecs")
        ):
            transceiver._codecs = codecs_preferring(transceiver._codecs, mime_type)


def codecs_preferring(
    codecs: list[RTCRtpCodecParameters], mime_type: str
) -> list[RTCRtpCodecParameters]:
    """``codecs`` with those of ``mime_type`` (and their retransmission formats) first,
    each part in its original order."""
    wanted = {c.payloadType for c in codecs if c.mimeType.lower() == mime_type.lower()}

    def preferred(codec: RTCRtpCodecParameters) -> bool:
        return codec.payloadType in wanted or codec.parameters.get("apt") in wanted

    return [c for c in codecs if preferred(c)] + [c for c in codecs if not preferred(c)]


__all__ = ["codecs_preferring", "install", "local_codecs_for", "prefer_codec"]
