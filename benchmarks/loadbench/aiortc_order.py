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
        return _Ordered(track, opens=first_video)
    return _Ordered(track, waits_for=first_video)


class _Ordered(MediaStreamTrack):
    """``track``, read once ``waits_for`` is set (if given), setting ``opens`` (if given)
    whenever a frame is read."""

    def __init__(
        self,
        track: MediaStreamTrack,
        waits_for: asyncio.Event | None = None,
        opens: asyncio.Event | None = None,
    ) -> None:
        super().__init__()
        self.kind = track.kind
        self._track = track
        self._waits_for = waits_for
        self._opens = opens

    async def recv(self) -> Frame | Packet[Any]:
        if self._waits_for is not None:
            await self._waits_for.wait()
        frame = await self._track.recv()
        if self._opens is not None:
            # Set just before aiortc sizes the video stream from this frame, with no await
            # in between: a waiting audio read resumes only after that.
            self._opens.set()
        return frame
