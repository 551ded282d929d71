"""Video before audio, for aiortc's ``MediaRecorder``.

aiortc's recorder sizes its video stream from the first video frame it reads, and PyAV
cannot resize a stream once the file has begun: if an audio packet reaches the file first,
the video task dies (``Cannot change width after codec is open``), the file has no video,
and decoded frames pile up unread (hundreds of MB a minute at 720p). Which track's first
frame comes first is a race: audio usually wins (it decodes at once, video waits for a
keyframe and is slower to decode). :func:`video_first` hands aiortc's recorder its audio
behind a gate that opens once the first video frame has been read, so both are recorded
(every audio frame too, after the video stream is sized); the recorder's own work is
unchanged.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiortc.mediastreams import MediaStreamTrack
from av.frame import Frame
from av.packet import Packet


def video_first(track: MediaStreamTrack, first_video: asyncio.Event) -> MediaStreamTrack:
    """``track`` as aiortc's recorder should read it: a video track sets ``first_video``
    when its first frame is read; any other waits for it. One event per recording."""
    if track.kind == "video":
        return _Signalling(track, first_video)
    return _Gated(track, first_video)


class _Signalling(MediaStreamTrack):
    """``track``, setting ``first`` when a frame is read."""

    def __init__(self, track: MediaStreamTrack, first: asyncio.Event) -> None:
        super().__init__()
        self.kind = track.kind
        self._track = track
        self._first = first

    async def recv(self) -> Frame | Packet[Any]:
        frame = await self._track.recv()
        # Set just before aiortc sizes the video stream from this frame, with no await in
        # between: a gated audio read resumes only after that.
        self._first.set()
        return frame


class _Gated(MediaStreamTrack):
    """``track``, read from the moment ``gate`` is set."""

    def __init__(self, track: MediaStreamTrack, gate: asyncio.Event) -> None:
        super().__init__()
        self.kind = track.kind
        self._track = track
        self._gate = gate

    async def recv(self) -> Frame | Packet[Any]:
        await self._gate.wait()
        return await self._track.recv()
