"""``MediaStream``: an ordered set of aiortc tracks, as in the Media Capture specification."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator

from aiortc.mediastreams import MediaStreamTrack

from .receive import hooks

TrackSetObserver = Callable[["MediaStream"], None]


class MediaStream:
    """A set of tracks to record.

    ``addTrack``/``removeTrack`` tell the recorders watching this stream, so a change
    while recording ends that recording with ``InvalidModificationError``.

    A track received by an aiortc peer connection is not decoded while it is in a stream
    (unless somebody reads decoded frames from it): recordings take its encoded frames,
    whenever they start. Once it has left every stream (or the streams are gone), aiortc
    handles it as it always does.
    """

    def __init__(self, tracks: Iterable[MediaStreamTrack] = ()) -> None:
        self.id = str(uuid.uuid4())
        self._tracks: list[MediaStreamTrack] = []
        self._observers: list[TrackSetObserver] = []
        self._taps: dict[MediaStreamTrack, hooks.ReceiverTap] = {}
        for track in tracks:
            self._add(track)

    def __iter__(self) -> Iterator[MediaStreamTrack]:
        return iter(list(self._tracks))

    def __len__(self) -> int:
        return len(self._tracks)

    def __repr__(self) -> str:
        kinds = ", ".join(track.kind for track in self._tracks)
        return f"MediaStream(id={self.id!r}, tracks=[{kinds}])"

    @property
    def active(self) -> bool:
        """True while at least one track is live."""
        return any(track.readyState == "live" for track in self._tracks)

    def getTracks(self) -> list[MediaStreamTrack]:
        """All tracks, in the order they were added."""
        return list(self._tracks)

    def getAudioTracks(self) -> list[MediaStreamTrack]:
        """The audio tracks, in order."""
        return [track for track in self._tracks if track.kind == "audio"]

    def getVideoTracks(self) -> list[MediaStreamTrack]:
        """The video tracks, in order."""
        return [track for track in self._tracks if track.kind == "video"]

    def getTrackById(self, track_id: str) -> MediaStreamTrack | None:
        """The track with this id, if the stream holds it."""
        return next((track for track in self._tracks if track.id == track_id), None)

    def addTrack(self, track: MediaStreamTrack) -> None:
        """Add ``track`` (nothing happens if it is already here)."""
        if self._add(track):
            self._notify()

    def removeTrack(self, track: MediaStreamTrack) -> None:
        """Remove ``track`` (nothing happens if it is not here)."""
        if track in self._tracks:
            self._tracks.remove(track)
            tap = self._taps.pop(track, None)
            if tap is not None:
                tap.release(self)
            self._notify()

    def clone(self) -> MediaStream:
        """A new stream holding the same tracks."""
        return MediaStream(self._tracks)

    def _add(self, track: MediaStreamTrack) -> bool:
        if not isinstance(track, MediaStreamTrack):
            raise TypeError(f"expected an aiortc MediaStreamTrack, got {type(track).__name__}")
        if track in self._tracks:
            return False
        self._tracks.append(track)
        tap = hooks.tap_track(track, self)
        if tap is not None:
            self._taps[track] = tap
        return True

    def _observe(self, observer: TrackSetObserver) -> None:
        self._observers.append(observer)

    def _unobserve(self, observer: TrackSetObserver) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def _notify(self) -> None:
        for observer in list(self._observers):
            observer(self)
