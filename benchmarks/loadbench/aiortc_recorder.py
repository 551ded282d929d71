"""aiortc's ``MediaRecorder`` behind what ``rtc-recorder serve`` uses of a recorder, so the
server can run with it for a comparison (``loopback_server.py --recorder aiortc``; the
product has no such option).

The server makes one recorder per recording, ``MediaRecorder(path, mimeType=...,
stream=...)``, listens to its events with ``on``, calls ``start(timeslice)`` and later
``stop()`` (awaiting it on hang-up), and reads ``state``, ``mimeType`` and ``getStats()``
(``recordedTime``, ``bytes``, ``duration``, and ``tracks``, which the stop event and
``/metrics`` summarise per track). :class:`AiortcRecorder` provides those around
``aiortc.contrib.media.MediaRecorder``, which decodes every frame and encodes it again
(libvpx, libopus for WebM). aiortc's recorder cannot pause: ``pause``, ``resume`` and
``requestData`` raise ``NotSupportedError`` (the API answers 400).

aiortc's recorder gets its tracks through :func:`.aiortc_order.video_first`, as in the bare
receiver: in the server, audio always reaches it first (its decoding starts at once; video
waits for a keyframe), which would cost the file its whole video track.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aiortc.contrib.media import MediaRecorder
from aiortc.mediastreams import MediaStreamTrack

from rtc_recorder import Event, InvalidStateError, NotSupportedError

from .aiortc_order import video_first

Listener = Callable[[Event], Any]


class AiortcRecorder:
    """One recording of ``stream``'s tracks into ``path`` by aiortc's ``MediaRecorder``."""

    def __init__(
        self,
        path: str | Path,
        mimeType: str = "video/webm",
        stream: Iterable[MediaStreamTrack] = (),
    ) -> None:
        self.mimeType = mimeType
        self._path = Path(path)
        self._stream = stream
        self._tracks: list[MediaStreamTrack] = []
        self._listeners: dict[str, list[Listener]] = {}
        self._state = "inactive"
        self._recorder: MediaRecorder | None = None
        self._started: float | None = None
        self._stopped: float | None = None
        self._starting: asyncio.Future[None] | None = None
        self._stopping: asyncio.Future[None] | None = None

    @property
    def state(self) -> str:
        """``inactive`` or ``recording``."""
        return self._state

    def on(self, event: str, listener: Listener) -> None:
        """Call ``listener(Event(event))`` when ``start`` or ``stop`` happens."""
        self._listeners.setdefault(event, []).append(listener)

    def start(self, timeslice: float | None = None) -> None:
        """Record every track of the stream (``timeslice`` is ignored: one file at the end)."""
        if self._state != "inactive" or self._recorder is not None:
            raise InvalidStateError("this recorder has been started already")
        recorder = MediaRecorder(str(self._path))
        tracks = self._tracks = list(self._stream)
        first_video = asyncio.Event()
        if not any(track.kind == "video" for track in tracks):
            first_video.set()
        for track in tracks:
            recorder.addTrack(video_first(track, first_video))
        self._recorder = recorder
        self._state = "recording"
        self._started = time.monotonic()
        self._starting = asyncio.ensure_future(recorder.start())
        self._emit_soon("start")

    def stop(self) -> asyncio.Future[None]:
        """Finish the file (aiortc's ``stop``); ``stop`` is emitted once it is closed."""
        if self._stopping is None:
            if self._recorder is None:
                done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                done.set_result(None)
                return done
            self._state = "inactive"
            self._stopped = time.monotonic()
            self._stopping = asyncio.ensure_future(self._finish(self._recorder))
        return self._stopping

    def pause(self) -> None:
        raise NotSupportedError("aiortc's MediaRecorder cannot pause")

    def resume(self) -> None:
        raise NotSupportedError("aiortc's MediaRecorder cannot resume")

    def requestData(self) -> None:
        raise NotSupportedError("aiortc's MediaRecorder writes its file only at the end")

    def getStats(self) -> dict[str, Any]:
        """Recorded seconds (wall clock from start to stop), the file's size so far, and
        its tracks by kind (aiortc's recorder counts nothing per track)."""
        seconds = 0.0
        if self._started is not None:
            seconds = (self._stopped or time.monotonic()) - self._started
        size = self._path.stat().st_size if self._path.exists() else 0
        tracks = [{"kind": track.kind} for track in self._tracks]
        return {"recordedTime": seconds, "duration": seconds, "bytes": size, "tracks": tracks}

    async def _finish(self, recorder: MediaRecorder) -> None:
        await recorder.stop()
        self._emit("stop")

    def _emit_soon(self, name: str) -> None:
        asyncio.get_running_loop().call_soon(self._emit, name)

    def _emit(self, name: str) -> None:
        for listener in self._listeners.get(name, []):
            listener(Event(name))
