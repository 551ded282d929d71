"""MIME types: which containers and codecs the recorder writes, and how a request maps to them.

The table follows the recorder contract (section 4). A type is parsed as RFC 6838 says
(``type/subtype`` then ``;name=value`` parameters, values optionally quoted); only the
``codecs`` parameter means anything here.

A file name or ``format`` that names none of the recorder's own containers goes to FFmpeg,
as it would with aiortc's recorder: FFmpeg picks the format (:class:`FfmpegFormat`), the
codecs are the ones aiortc's recorder uses for it.
"""

from __future__ import annotations

import io
import mimetypes
import os
import re
from dataclasses import dataclass

import av

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
_CODEC_LABELS = {"vp8": "vp8", "vp9": "vp9", "av1": "av1", "h264": "avc1", "png": "png"}
_AUDIO_LABELS = {"opus": "opus", "aac": "mp4a.40.2", "pcm": "pcm", "mp3": "mp3"}
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
class FfmpegFormat:
    """An output that FFmpeg muxes: its format (muxer) name, the codec per kind (None: that
    kind is not recorded), and whether the muxer opens its files itself, by name (image
    sequences, playlists), so that it needs a path and streams no bytes."""

    muxer: str
    video: str | None
    audio: str | None
    opens_files: bool


@dataclass(frozen=True)
class RecordingType:
    """What a recorder was asked to write: a container and, per kind, a codec or a default;
    ``ffmpeg`` when FFmpeg writes it."""

    mime: str
    container: Container
    allows_video: bool
    video: str | None
    audio: str | None
    codecs_given: bool
    ffmpeg: FfmpegFormat | None = None

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

    A ``format`` or a suffix that names none of the recorder's containers is FFmpeg's
    (see :func:`ffmpeg_type`). A ``format`` that names another container than ``mimeType``
    is refused.
    """
    from_format = None
    if format is not None:
        from_format = _FFMPEG_FORMATS.get(format.lower())
        if from_format is None:
            if mime_type:
                raise NotSupportedError(f"format {format!r} contradicts mimeType {mime_type!r}")
            return ffmpeg_type(file, format)
    if mime_type:
        chosen = parse_type(mime_type)
        if from_format is not None and parse_type(from_format).container != chosen.container:
            raise NotSupportedError(f"format {format!r} contradicts mimeType {mime_type!r}")
        return chosen
    if from_format is not None:
        return parse_type(from_format)
    if isinstance(file, (str, os.PathLike)):
        suffix = os.path.splitext(os.fsdecode(file))[1].lower()
        if suffix in _SUFFIXES:
            return parse_type(_SUFFIXES[suffix])
        if suffix:
            return ffmpeg_type(file, None)
    return parse_type("video/webm")


# The codecs aiortc's recorder gives each kind (its ``MediaRecorder.addTrack``), for the
# formats that reach FFmpeg here (its choices for WebM, Ogg and WAV concern our own).
def _aiortc_codecs(muxer: str) -> dict[str, str]:
    return {
        "video": "png" if muxer == "image2" else "h264",
        "audio": "mp3" if muxer == "mp3" else "aac",
    }


# FFmpeg's names for the codecs above, to ask its muxers whether they take them.
_FFMPEG_CODECS = {"h264": "h264", "png": "png", "aac": "aac", "mp3": "mp3"}


def ffmpeg_type(file: object, format: str | None) -> RecordingType:
    """The type of an output FFmpeg writes: the format FFmpeg picks (``format``, else its
    guess from the file name: ``x.flv``, ``frames-%03d.png``), and for each kind the codec
    aiortc's recorder would use, if the muxer takes it. ``NotSupportedError`` (with the
    reason) when FFmpeg cannot write it or it would hold nothing.
    """
    path = os.fsdecode(file) if isinstance(file, (str, os.PathLike)) else None
    what = f"format {format!r}" if format is not None else f"{path!r}"
    try:
        probe = av.open(path if path is not None else io.BytesIO(), "w", format=format)
    except (ValueError, av.FFmpegError) as exc:
        raise NotSupportedError(f"FFmpeg cannot write {what}: {exc}") from None
    try:
        muxer = str(probe.format.name)
        codecs = {
            kind: codec
            for kind, codec in _aiortc_codecs(muxer).items()
            if _muxer_takes(probe, kind, codec)
        }
        opens_files = bool(probe.format.no_file)
    finally:
        probe.close()
    if not codecs:
        raise NotSupportedError(
            f"FFmpeg's {muxer} muxer takes neither of the codecs aiortc's recorder writes "
            f"into it ({', '.join(_aiortc_codecs(muxer).values())})"
        )
    if opens_files and path is None:
        raise NotSupportedError(f"FFmpeg's {muxer} muxer writes files by name: give a path")
    output = FfmpegFormat(muxer, codecs.get("video"), codecs.get("audio"), opens_files)
    mime = _ffmpeg_mime(output, path)
    video = (output.video,) if output.video else ()
    audio = (output.audio,) if output.audio else ()
    container = Container(muxer, video, audio, output.video, output.audio or "", mime, mime)
    return RecordingType(
        mime, container, output.video is not None, output.video, output.audio, True, output
    )


def _muxer_takes(probe: av.container.OutputContainer, kind: str, codec: str) -> bool:
    """Whether the muxer has room for ``kind`` and does not refuse ``codec`` for it."""
    default = probe.default_video_codec if kind == "video" else probe.default_audio_codec
    if default == "none":
        return False
    try:
        probe.add_mux_stream(_FFMPEG_CODECS[codec])
    except ValueError:
        return False
    return True


# Python's own table of types (not the machine's), for what FFmpeg writes.
_MIME_TABLE = mimetypes.MimeTypes()


def _ffmpeg_mime(output: FfmpegFormat, path: str | None) -> str:
    """The type of an FFmpeg output: image sequences by their pictures' codec; other
    outputs by the file's suffix, else the format's usual suffixes."""
    if output.muxer == "image2":
        return "image/png"
    names = [path] if path is not None else []
    suffixes = sorted(av.format.ContainerFormat(output.muxer, "w").extensions)
    names += [f"x.{suffix}" for suffix in suffixes]
    for name in names:
        guessed, _ = _MIME_TABLE.guess_type(name)
        if guessed is not None:
            return guessed
    return "application/octet-stream"


def file_extension(recording: RecordingType) -> str:
    """The usual suffix of a file of ``recording``'s container (".webm", ".mkv", ".mp4",
    ".ogg", ".wav"): the first of the suffixes above that names it."""
    for suffix, mime in _SUFFIXES.items():
        if _MIME_TYPES[mime][0] == recording.container.name:
            return suffix
    raise NotSupportedError(f"no file suffix names the {recording.container.name} container")


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
