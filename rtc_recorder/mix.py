"""A room's mix: every participant's sound decoded, summed on the room's timeline and
encoded into one Opus track, ``mix.ogg``, on a thread of its own (never the event loop).

**Always Ogg Opus**, whatever the room's type: the mix is one Opus track, and Ogg is
Opus's own container (RFC 7845), written page by page by rtc-recorder's own writer with
nothing to patch at the end, so a killed process leaves a file that plays up to its last
page; every player and FFmpeg read it; and rooms recorded as WebM, Matroska or MP4 get the
same kind of mix, so tools that read a room's folder (``compose``) read one format.

**Where the sound comes from.** Each participant's recording shows the mix every item its
writer thread takes (:meth:`RoomMix.feed`): the sound as it goes into the participant's
file, already placed on the room's timeline by the timing, so the mix lines up with the
files by construction. Each participant's sound is decoded (a decoder each), brought to
48 kHz mono and added into one sum (:class:`Mixer`). The mix's time 0 is the room
recording's time 0: it starts with silence until somebody speaks.

**How far to mix.** Sound reaches the mix late by differing amounts (the network, a
writer's batch, a newcomer's sender clock learned over its first second), so the sum is
taken out only up to where every participant it waits for has delivered, and never more
than :data:`MAX_LAG` behind the room's present (:func:`mix_horizon`): a participant whose
sound stopped (muted, a sender that sends nothing in silence) holds nothing up for long.
Sound that comes for a time already mixed is left out (counted in ``dropped``).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any

import av
import numpy as np
from av.audio.resampler import AudioResampler

from .bitstream.opus import LIBOPUS_PRE_SKIP
from .containers.ogg import OggWriter
from .encoding import MICROSECOND, EncoderSettings, MediaItem, TranscodeTrack, open_decoder
from .receive.hooks import EncodedFrame
from .sink import Sink, Target
from .writer import Chunk, Failure, WriterEvent

logger = logging.getLogger("rtc_recorder")

SAMPLE_RATE = 48_000
BLOCK = SAMPLE_RATE // 50  # samples mixed and encoded at a time: one 20 ms Opus packet
# How far behind the room's present the mix may wait for a participant's sound (samples):
# longer than a (re)start waits for video to settle it (1.5 s after video is ready) and a
# newcomer's sender clock is learned (1 s), with a writer's batch (0.25 s) on top.
MAX_LAG = 3 * SAMPLE_RATE
# A participant's sound that starts this close (samples: 1 ms) to where its previous sound
# ended follows on from there: timing jitter, not a gap.
SNAP = SAMPLE_RATE // 1000
# Sound placed further than this beyond what has been mixed (samples: 30 s) is refused: a
# sender's clock gone wrong, which must not make the mix hold (or allocate) that much.
MAX_AHEAD = 30 * SAMPLE_RATE
MIX_BITRATE = 64_000


class Mixer:
    """Sums the sound of several sources on one timeline of 48 kHz samples: each source's
    sound is added at its place (:meth:`add`); the sum is taken out in order
    (:meth:`take`), clipped to full scale. Pure arithmetic: no clock, no thread."""

    def __init__(self) -> None:
        self.position = 0  # the first sample not taken out yet
        self.dropped = 0  # samples that came for a time already taken out
        self._sum = np.zeros(0, np.float32)  # from position on
        self._ends: dict[str, int] = {}  # where each source's sound so far ends

    def end_of(self, source: str) -> int | None:
        """Where ``source``'s sound so far ends (None before any)."""
        return self._ends.get(source)

    @property
    def furthest(self) -> int:
        """Where the latest sound of any source ends (at least :attr:`position`)."""
        return max([self.position, *self._ends.values()])

    def add(self, source: str, position: int, samples: np.ndarray) -> None:
        """Add ``source``'s mono ``samples`` (float, full scale 1.0) from ``position``.

        Sound within :data:`SNAP` of where the source's previous sound ended follows on
        from there; the part before :attr:`position` (already taken out), and sound more
        than :data:`MAX_AHEAD` beyond it, are dropped."""
        if position > self.position + MAX_AHEAD:
            self.dropped += len(samples)
            return
        end = self._ends.get(source)
        if end is not None and abs(position - end) <= SNAP:
            position = end
        self._ends[source] = max(end or 0, position + len(samples))
        late = min(len(samples), max(0, self.position - position))
        self.dropped += late
        samples = samples[late:]
        if not len(samples):
            return
        offset = position + late - self.position
        missing = offset + len(samples) - len(self._sum)
        if missing > 0:
            self._sum = np.concatenate((self._sum, np.zeros(missing, np.float32)))
        self._sum[offset : offset + len(samples)] += samples

    def forget(self, source: str) -> None:
        """``source`` has left: nothing more of it will come."""
        self._ends.pop(source, None)

    def take(self, until: int) -> np.ndarray:
        """The sum from :attr:`position` to ``until`` (silence where nobody sounded),
        clipped to full scale; :attr:`position` moves to ``until``."""
        count = until - self.position
        if count <= 0:
            return np.zeros(0, np.float32)
        mixed = np.zeros(count, np.float32)
        ready = min(count, len(self._sum))
        mixed[:ready] = self._sum[:ready]
        self._sum = self._sum[ready:].copy()
        self.position = until
        return np.clip(mixed, -1.0, 1.0, out=mixed)


def mix_horizon(waiting: Iterable[int], present: int, max_lag: int = MAX_LAG) -> int:
    """How far the mix may be taken out: to the earliest of the points the sources it
    waits for have delivered up to (``waiting``), but never more than ``max_lag`` behind
    ``present`` (the room's present, or the furthest sound delivered)."""
    floor = present - max_lag
    return max(floor, min(waiting, default=floor))


def _samples(micros: int) -> int:
    return micros * SAMPLE_RATE // MICROSECOND


def mono(frame: av.AudioFrame) -> np.ndarray:
    """A decoded frame's sound as mono float samples (the channels' mean), full scale 1.0."""
    samples = frame.to_ndarray()
    if not frame.format.is_planar:
        samples = samples.reshape(-1, len(frame.layout.channels)).T
    scale = 2.0 ** (8 * samples.dtype.itemsize - 1) if samples.dtype.kind == "i" else 1.0
    result: np.ndarray = (samples.astype(np.float32).mean(axis=0) / scale).astype(np.float32)
    return result


class _Source:
    """One participant's sound on its way into the sum: its decoder and resampler."""

    def __init__(self) -> None:
        self.codec: str | None = None
        self.decoder: Any = None
        self.resampler: AudioResampler | None = None

    def frames(self, payload: EncodedFrame | av.AudioFrame | av.VideoFrame) -> list[av.AudioFrame]:
        """The decoded sound of one item, at 48 kHz."""
        if isinstance(payload, EncodedFrame):
            if payload.codec != self.codec:
                self.codec, self.decoder = payload.codec, open_decoder(payload.codec)
            try:
                decoded = list(self.decoder.decode(av.Packet(payload.data)))
            except av.FFmpegError as exc:
                logger.debug("the mix could not decode a %s frame: %s", payload.codec, exc)
                return []
        elif isinstance(payload, av.AudioFrame):
            decoded = [payload]
        else:
            return []
        return [converted for frame in decoded for converted in self._at_mix_rate(frame)]

    def _at_mix_rate(self, frame: av.AudioFrame) -> list[av.AudioFrame]:
        if frame.sample_rate == SAMPLE_RATE:
            return [frame]
        if self.resampler is None:
            self.resampler = AudioResampler(format="fltp", layout="mono", rate=SAMPLE_RATE)
        return list(self.resampler.resample(frame))


# Commands for the mix's thread, besides the calls it is given (see RoomMix._run).
_REQUEST_DATA = object()
_CLOSE = object()


class RoomMix:
    """The mix of one room recording, written to ``target`` on a thread of its own.

    Every method may be called from any thread (the participants' writer threads feed
    it, the event loop tells it who joins, leaves and mutes, and where the room's present
    is). ``notify`` is called from the mix's thread with the file's chunks (every
    ``timeslice_us`` of mix, and when asked), a :class:`~rtc_recorder.writer.Failure`,
    and last the final chunk, once the file is complete.
    """

    def __init__(
        self,
        target: Target,
        notify: Callable[[WriterEvent], None],
        *,
        timeslice_us: int | None = None,
        keep_chunks: bool = True,
        bitrate: int = MIX_BITRATE,
    ) -> None:
        self._sink = Sink(target, keep_chunks=keep_chunks)
        self._notify = notify
        self._timeslice = None if timeslice_us is None else _samples(timeslice_us)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="rtc-recorder-mix", daemon=True)
        # mix-thread state
        self.mixer = Mixer()
        self._encoder = TranscodeTrack(0, "audio", "opus", EncoderSettings(audio_bitrate=bitrate))
        self._container: OggWriter | None = None
        self._sources: dict[str, _Source] = {}
        self._joined: dict[str, int] = {}  # source -> where it joined (samples)
        self._muted: set[str] = set()
        self._present = 0
        self._chunk_start: int | None = None
        self._chunks = 0
        self._failed = False

    # -- any thread -------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (it creates the file first)."""
        self._thread.start()

    def feed(self, source: str, kind: str, item: MediaItem) -> None:
        """A participant's writer took ``item`` (its sound is mixed; video is not)."""
        if kind == "audio":
            self._queue.put(functools.partial(self._add, source, item))

    def join(self, source: str, at_us: int) -> None:
        """``source`` is recorded from room time ``at_us``: the mix waits for its sound."""
        self._queue.put(functools.partial(self._join, source, _samples(at_us)))

    def leave(self, source: str) -> None:
        """Everything of ``source`` has been fed: the mix waits for it no more."""
        self._queue.put(functools.partial(self._leave, source))

    def mute(self, source: str, muted: bool) -> None:
        """``source``'s sound stopped (or started again): while muted, not waited for."""
        self._queue.put(functools.partial(self._mute, source, muted))

    def advance(self, present_us: int) -> None:
        """The room's recording has reached ``present_us`` of its timeline."""
        self._queue.put(functools.partial(self._advance, _samples(present_us)))

    def request_data(self) -> None:
        """Ask for a chunk with everything written so far."""
        self._queue.put(_REQUEST_DATA)

    def close(self) -> None:
        """Mix everything fed so far (to the room's present at least), finish the file."""
        self._queue.put(_CLOSE)

    def join_thread(self, timeout: float | None = None) -> None:
        """Wait for the thread to end (after :meth:`close`)."""
        self._thread.join(timeout)

    # -- the mix's thread ---------------------------------------------------------------

    def _run(self) -> None:
        self._guarded(self._sink.open)
        while True:
            for command in self._commands():
                if command is _CLOSE:
                    self._finish()
                    return
                if command is _REQUEST_DATA:
                    self._guarded(self._cut, requested=True)  # answered, failed or not
                elif not self._failed:
                    self._guarded(command)
            if not self._failed:
                self._guarded(self._mix_to, self._horizon())

    def _commands(self) -> list[Any]:
        """The commands queued: at least one (waited for), and all that came meanwhile, so
        the sum is taken out once for all of them."""
        commands = [self._queue.get()]
        while True:
            try:
                commands.append(self._queue.get_nowait())
            except queue.Empty:
                return commands

    def _guarded(self, action: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        try:
            action(*args, **kwargs)
        except Exception as exc:
            self._fail(exc)

    def _join(self, source: str, at: int) -> None:
        self._joined[source] = at

    def _leave(self, source: str) -> None:
        self._joined.pop(source, None)
        self._sources.pop(source, None)
        self.mixer.forget(source)

    def _mute(self, source: str, muted: bool) -> None:
        (self._muted.add if muted else self._muted.discard)(source)

    def _advance(self, present: int) -> None:
        self._present = max(self._present, present)

    def _add(self, source: str, item: MediaItem) -> None:
        position = round(item.time * SAMPLE_RATE / MICROSECOND)
        if isinstance(item.payload, EncodedFrame) and item.payload.codec == "opus":
            # Decoding gives the sound libopus took its look-ahead before the packet's time
            # (the participant's file says so with its pre-skip).
            position -= LIBOPUS_PRE_SKIP
        for frame in self._sources.setdefault(source, _Source()).frames(item.payload):
            samples = mono(frame)
            self.mixer.add(source, position, samples)
            position += len(samples)
        self._present = max(self._present, self.mixer.furthest)

    def _horizon(self) -> int:
        waiting = [
            self.mixer.end_of(source) or joined
            for source, joined in self._joined.items()
            if source not in self._muted
        ]
        return mix_horizon(waiting, self._present)

    def _mix_to(self, until: int) -> None:
        """Take the sum out up to ``until`` (whole blocks), encode it and write it."""
        blocks = (until - self.mixer.position) // BLOCK
        for _ in range(max(0, blocks)):
            start = self.mixer.position
            frame = av.AudioFrame.from_ndarray(
                self.mixer.take(start + BLOCK)[None, :], format="flt", layout="mono"
            )
            frame.sample_rate = SAMPLE_RATE
            time = start * MICROSECOND // SAMPLE_RATE
            self._write(self._encoder.process(MediaItem(0, time, frame)))

    def _write(self, samples: list[Any]) -> None:
        for sample in samples:
            if self._container is None:
                assert self._encoder.format is not None
                self._container = OggWriter(self._sink, [self._encoder.format])
            if (
                self._timeslice is not None
                and self._chunk_start is not None
                and self.mixer.position - self._chunk_start >= self._timeslice
            ):
                self._cut()
            if self._chunk_start is None:
                self._chunk_start = self.mixer.position - BLOCK
            self._container.write(sample)

    def _cut(self, *, final: bool = False, requested: bool = False) -> None:
        """Emit everything written since the last chunk as one."""
        if self._container is not None and not self._failed:
            self._container.flush()
        start = self._chunk_start if self._chunk_start is not None else self.mixer.position
        timecode = start * 1000 / SAMPLE_RATE if self._chunks else 0.0
        self._chunks += 1
        self._chunk_start = None
        self._notify(Chunk(self._sink.take_chunk(), timecode, final, requested))

    def _finish(self) -> None:
        """The last of the mix, then the final chunk (failed or not)."""
        if not self._failed:
            self._guarded(self._complete)
        self._sink.close()
        self._cut(final=True)

    def _complete(self) -> None:
        """Mix what is left (to the room's present at least), drain the encoder, close
        the file."""
        end = max(self._present, self.mixer.furthest)
        self._mix_to(end + BLOCK - 1)
        self._write(self._encoder.finish())
        if self._container is not None:
            container, self._container = self._container, None
            self._sink.finalize(container.close(end * MICROSECOND // SAMPLE_RATE))

    def _fail(self, exc: BaseException) -> None:
        if self._failed:
            return
        logger.error("the room's mix failed: %s", exc, exc_info=exc)
        self._failed = True
        self._notify(Failure(exc))
