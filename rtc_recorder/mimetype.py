"""MIME types: which containers and codecs the recorder writes, and how a request maps to them.

The table follows the recorder contract (section 4). A type is parsed as RFC 6838 says
(``type/subtype`` then ``;name=value`` parameters, values optionally quoted); only the
``codecs`` parameter means anything here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import NotSupportedError


@dataclass(frozen=True)
class Container:
    """One container the recorder writes, with the codecs it may hold."""

    name: str
    video_codecs: tuple[str, ...]
    audio_codecs: tuple[str, ...]
    default_video: str | None
    default_audio: str
    video_mime: str | None
    audio_mime: str


CONTAINERS: dict[str, Container] = {
    "webm": Container(
        "webm", ("vp8", "vp9", "av1"), ("opus",), "vp8", "opus", "video/webm", "audio/webm"
    ),
    "matroska": Container(
        "matroska",
        ("h264", "vp8", "vp9", "av1"),
        ("opus", "aac", "pcm"),
        "h264",
        "opus",
        "video/x-matroska",
        "audio/x-matroska",
    ),
    "mp4": Container("mp4", ("h264",), ("opus", "aac"), "h264", "opus", "video/mp4", "audio/mp4"),
    "ogg": Container("ogg", (), ("opus",), None, "opus", None, "audio/ogg"),
    "wav": Container("wav", (), ("pcm",), None, "pcm", None, "audio/wav"),
}

# MIME type (lower case) -> (container, whether it may hold video)
_MIME_TYPES: dict[str, tuple[str, bool]] = {
    "video/webm": ("webm", True),
    "audio/webm": ("webm", False),
    "video/x-matroska": ("matroska", True),
    "audio/x-matroska": ("matroska", False),
    "video/mp4": ("mp4", True),
    "audio/mp4": ("mp4", False),
    "audio/ogg": ("ogg", False),
    "audio/wav": ("wav", False),
    "audio/wave": ("wav", False),
    "audio/x-wav": ("wav", False),
    "audio/vnd.wave": ("wav", False),
}

# File suffixes and FFmpeg format names (the ``format`` argument, as in aiortc).
_SUFFIXES: dict[str, str] = {
    ".webm": "video/webm",
    ".weba": "audio/webm",
    ".mkv": "video/x-matroska",
    ".mka": "audio/x-matroska",
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".m4a": "audio/mp4",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".wav": "audio/wav",
}
_FFMPEG_FORMATS: dict[str, str] = {
    "webm": "video/webm",
    "matroska": "video/x-matroska",
    "mkv": "video/x-matroska",
    "mp4": "video/mp4",
    "ipod": "audio/mp4",
    "ogg": "audio/ogg",
    "opus": "audio/ogg",
    "wav": "audio/wav",
}

# Codec strings of RFC 6381 / the WebCodecs registry -> (kind, codec), and the label a
# recorder reports in ``mimeType`` once it knows what it writes.
_CODEC_LABELS = {"vp8": "vp8", "vp9": "vp9", "av1": "av1", "h264": "avc1"}
_AUDIO_LABELS = {"opus": "opus", "aac": "mp4a.40.2", "pcm": "pcm"}
_CODEC_PATTERNS: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(r"vp8(\.0)?"), "video", "vp8"),
    (re.compile(r"vp9(\.0)?|vp09(\.\d+){3,8}"), "video", "vp9"),
    (re.compile(r"av1|av01\.\d\.\d\d[mh]\.\d\d(\.[\d.]+)?"), "video", "av1"),
    (re.compile(r"avc[13](\.[0-9a-f]{6})?|h264"), "video", "h264"),
    (re.compile(r"opus"), "audio", "opus"),
    (re.compile(r"mp4a\.40\.2|aac"), "audio", "aac"),
    (re.compile(r"pcm|1"), "audio", "pcm"),
]

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_MIME_RE = re.compile(rf"\s*({_TOKEN})/({_TOKEN})\s*((?:;.*)?)", re.DOTALL)
# Browsers take unquoted lists (``codecs=vp8,opus``), so an unquoted value runs to the next ";".
_PARAM_RE = re.compile(rf'\s*;\s*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|[^;"]*)', re.DOTALL)


@dataclass(frozen=True)
class RecordingType:
    """What a recorder was asked to write: a container and, per kind, a codec or a default."""

    mime: str
    container: Container
    allows_video: bool
    video: str | None
    audio: str | None
    codecs_given: bool

    def records(self, kind: str) -> bool:
        """Whether tracks of ``kind`` go into this recording."""
        if kind == "video":
            return self.allows_video and (self.video is not None or not self.codecs_given)
        return self.audio is not None or not self.codecs_given

    def mime_with_codecs(self, video: str | None, audio: str | None) -> str:
        """The full type, naming the codecs actually written (video first)."""
        labels = []
        if video is not None:
            labels.append(_CODEC_LABELS[video])
        if audio is not None:
            labels.append(_AUDIO_LABELS[audio])
        return f"{self.mime};codecs={','.join(labels)}" if labels else self.mime


def _parse(mime_type: str) -> tuple[str, list[str] | None] | None:
    """Split a type into (``type/subtype`` in lower case, codec strings or None)."""
    match = _MIME_RE.fullmatch(mime_type)
    if match is None:
        return None
    essence = f"{match.group(1)}/{match.group(2)}".lower()
    rest = match.group(3)
    codecs: list[str] | None = None
    position = 0
    while position < len(rest):
        param = _PARAM_RE.match(rest, position)
        if param is None:
            return None
        position = param.end()
        if param.group(1).lower() != "codecs":
            continue
        if codecs is not None:
            return None
        value = param.group(2).strip()
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        codecs = [codec.strip() for codec in value.split(",")]
        if any(not codec for codec in codecs):
            return None
    return essence, codecs


def _classify(codec: str) -> tuple[str, str] | None:
    for pattern, kind, name in _CODEC_PATTERNS:
        if pattern.fullmatch(codec.lower()):
            return kind, name
    return None


def parse_type(mime_type: str) -> RecordingType:
    """Parse a non-empty type, raising ``NotSupportedError`` (with the reason) if it is not
    one the recorder can write."""
    parsed = _parse(mime_type)
    if parsed is None:
        raise NotSupportedError(f"{mime_type!r} is not a valid MIME type")
    essence, codecs = parsed
    if essence not in _MIME_TYPES:
        raise NotSupportedError(f"the recorder cannot write {essence!r}")
    container_name, allows_video = _MIME_TYPES[essence]
    container = CONTAINERS[container_name]
    video = audio = None
    for codec in codecs or []:
        classified = _classify(codec)
        if classified is None:
            raise NotSupportedError(f"unknown codec {codec!r}")
        kind, name = classified
        if kind == "video":
            allowed = container.video_codecs if allows_video else ()
        else:
            allowed = container.audio_codecs
        if name not in allowed:
            raise NotSupportedError(f"{essence} cannot hold {codec!r}")
        if (video if kind == "video" else audio) is not None:
            raise NotSupportedError(f"{mime_type!r} names two {kind} codecs")
        if kind == "video":
            video = name
        else:
            audio = name
    return RecordingType(essence, container, allows_video, video, audio, codecs is not None)


def is_type_supported(mime_type: str) -> bool:
    """The specification's ``isTypeSupported``: "" is supported; so is any type this
    recorder can write with the codecs it names."""
    if mime_type == "":
        return True
    try:
        parse_type(mime_type)
    except NotSupportedError:
        return False
    return True


def resolve_type(mime_type: str, file: object, format: str | None) -> RecordingType:
    """Decide what to write from ``mimeType``, else ``format``, else the file's suffix, else WebM.

    A ``format`` that names another container than ``mimeType`` is refused.
    """
    from_format = None
    if format is not None:
        from_format = _FFMPEG_FORMATS.get(format.lower())
        if from_format is None:
            raise NotSupportedError(
                f"format {format!r} is not one the recorder writes "
                f"(choose from {', '.join(sorted(_FFMPEG_FORMATS))})"
            )
    if mime_type:
        chosen = parse_type(mime_type)
        if from_format is not None and parse_type(from_format).container != chosen.container:
            raise NotSupportedError(f"format {format!r} contradicts mimeType {mime_type!r}")
        return chosen
    if from_format is not None:
        return parse_type(from_format)
    if isinstance(file, (str, os.PathLike)):
        suffix = os.path.splitext(os.fspath(file))[1].lower()
        if isinstance(suffix, str) and suffix in _SUFFIXES:
            return parse_type(_SUFFIXES[suffix])
    return parse_type("video/webm")


def supported_types() -> list[str]:
    """The types of the contract's table (and their variants), for pickers in user interfaces."""
    return [
        "video/webm;codecs=vp8,opus",
        "video/webm;codecs=vp9,opus",
        "video/webm;codecs=av1,opus",
        "video/x-matroska;codecs=avc1,opus",
        "video/mp4;codecs=avc1,opus",
        "video/mp4;codecs=avc1,mp4a.40.2",
        "audio/webm;codecs=opus",
        "audio/ogg;codecs=opus",
        "audio/wav",
    ]
