"""Frame assembly: RTP packets in, whole encoded frames out, in order.

Pure logic, no network and no clock: every packet comes with its arrival instant, and
the instant is the only notion of time. (pion's ``samplebuilder`` is the same idea.)

Packets are put back in sequence order. The packets of one frame share a timestamp; a
frame is *complete* when its first packet begins a frame (the codec says which do), every
sequence number up to the packet that ends it (the marker bit, for video) is there, and
nothing is missing in between. Frames come out in order, each as soon as everything
before it is resolved.

A missing packet holds back what follows it for at most ``wait`` seconds, counted from
when the hole was first seen (the arrival of the first packet after it), so that a
retransmission (NACK/RTX) can fill it whatever the frame rate; then the assembler gives
up on it: the frame it belonged to comes out marked incomplete (or not at all, if none
of its packets came), and the next frame is marked as following a gap. ``max_held``
packets waiting behind a hole also end the wait.

A stream joined in the middle of a frame (the first packets continue a frame whose
beginning came before) starts with the next whole frame.

Padding packets (no payload: bandwidth probes) take sequence numbers but carry no media;
they count as received. A new SSRC starts a new stream: what is held of the old one is
given up and the first frame of the new one is marked as following a gap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SEQUENCE_SPAN = 1 << 16
TIMESTAMP_SPAN = 1 << 32
# A sequence number this far from the cursor (either way) is not a late or early packet of
# this stream but a jump (a sender that restarted its numbering): the stream restarts.
MAX_SEQUENCE_JUMP = 3000


@dataclass(slots=True)
class Packet:
    """One RTP packet, as the assembler needs it.

    ``data`` is the depayloaded media (empty for padding); ``starts_frame`` and
    ``ends_frame`` say whether the codec marks this packet as a frame's first or last
    (for audio every packet is a whole frame).
    """

    ssrc: int
    sequence: int
    timestamp: int
    data: bytes
    arrival: float
    starts_frame: bool = True
    ends_frame: bool = True


@dataclass(slots=True)
class Frame:
    """One assembled frame.

    ``timestamp`` is the RTP timestamp extended past 32 bits (it keeps growing through
    wraparounds, and starts at the first frame's 32-bit value); ``arrival`` is when its
    first packet arrived; ``complete`` is False when some of its packets never came;
    ``gap`` is True when packets were given up on between the previous frame and this
    one (or the stream restarted).
    """

    ssrc: int
    timestamp: int
    data: bytes
    arrival: float
    complete: bool = True
    gap: bool = False


@dataclass
class AssemblerCounters:
    """What became of the packets."""

    packets: int = 0
    padding: int = 0
    duplicates: int = 0  # a sequence number already held or already passed
    missing: int = 0  # sequence numbers given up on without their packet ever coming
    discarded: int = 0  # packets that came but belonged to a frame given up on
    restarts: int = 0  # new SSRC, or a jump in sequence numbers
    frames: int = 0
    incomplete: int = 0


@dataclass
class _Stream:
    """The state of one SSRC's sequence."""

    ssrc: int
    cursor: int  # extended sequence number of the next packet to come out
    highest: int  # extended sequence number of the newest packet seen
    held: dict[int, Packet] = field(default_factory=dict)
    blocked_since: float | None = None  # when a hole at the cursor was first seen
    gap: bool = False  # packets were given up on since the last frame came out
    last_timestamp: tuple[int, int] | None = None  # (32-bit, extended) of the last frame
    emitted: bool = False  # until something came out, an earlier packet moves the cursor back


class FrameAssembler:
    """Re-assembles the frames of one RTP stream (one receiver's media SSRC)."""

    def __init__(
        self, *, wait: float, max_held: int = 1024, timestamps: tuple[int, int] | None = None
    ) -> None:
        self.wait = wait
        self.max_held = max_held
        self.counters = AssemblerCounters()
        self._stream: _Stream | None = None
        # (32-bit, extended) timestamp to extend the first stream's from, to continue a
        # scale already in use; by default the first frame's 32-bit value starts it.
        self._timestamps = timestamps

    @property
    def held(self) -> int:
        """Packets waiting to come out."""
        return len(self._stream.held) if self._stream is not None else 0

    def push(self, packet: Packet, now: float) -> list[Frame]:
        """Take one packet (arrived at ``now``); return the frames it lets out, in order."""
        self.counters.packets += 1
        out: list[Frame] = []
        stream = self._stream
        if stream is None or stream.ssrc != packet.ssrc:
            if stream is not None:
                out += self._give_up_all(stream)
            stream = self._restart(packet)
        extended = self._extend(stream, packet.sequence)
        if abs(extended - stream.cursor) > MAX_SEQUENCE_JUMP:
            out += self._give_up_all(stream)
            stream = self._restart(packet)
            extended = stream.cursor
        if extended < stream.cursor and not stream.emitted:
            stream.cursor = extended  # the stream's first packets arrived out of order
        if extended < stream.cursor or extended in stream.held:
            self.counters.duplicates += 1
            return out
        if not packet.data:
            self.counters.padding += 1
        stream.held[extended] = packet
        stream.highest = max(stream.highest, extended)
        return out + self._drain(stream, now)

    def poll(self, now: float) -> list[Frame]:
        """Frames let out by time alone (a hole waited for long enough)."""
        return self._drain(self._stream, now) if self._stream is not None else []

    def flush(self) -> list[Frame]:
        """Everything still held, giving up on every hole (the stream has ended)."""
        return self._give_up_all(self._stream) if self._stream is not None else []

    # -- sequence ---------------------------------------------------------------

    def _restart(self, packet: Packet) -> _Stream:
        restarted = self._stream is not None
        if restarted:
            self.counters.restarts += 1
        stream = _Stream(packet.ssrc, packet.sequence, packet.sequence, gap=restarted)
        if not restarted:
            stream.last_timestamp = self._timestamps
        self._stream = stream
        return stream

    @staticmethod
    def _extend(stream: _Stream, sequence: int) -> int:
        """The 16-bit ``sequence`` as the extended number nearest the newest one seen."""
        delta = (sequence - stream.highest) % SEQUENCE_SPAN
        if delta >= SEQUENCE_SPAN // 2:
            delta -= SEQUENCE_SPAN
        return stream.highest + delta

    # -- frames -----------------------------------------------------------------

    def _drain(self, stream: _Stream, now: float) -> list[Frame]:
        out: list[Frame] = []
        while stream.held:
            end = self._complete_run(stream)
            if end is not None:
                stream.blocked_since = None
                frame = self._take(stream, end)
                if frame is not None:
                    out.append(frame)
                continue
            if not self._hole_ahead(stream):
                break  # the frame at the cursor is still arriving
            if stream.blocked_since is None:
                stream.blocked_since = now
            if now - stream.blocked_since < self.wait and len(stream.held) <= self.max_held:
                break
            frame = self._give_up_hole(stream)
            if frame is not None:
                out.append(frame)
            stream.blocked_since = None
        return out

    def _complete_run(self, stream: _Stream) -> int | None:
        """The extended sequence number of the last packet of what can come out at the
        cursor (a whole frame, or one padding packet), or None."""
        sequence = stream.cursor
        first = stream.held.get(sequence)
        if first is None:
            return None
        if not first.data:
            return sequence
        packet = first
        while not packet.ends_frame:
            after = stream.held.get(sequence + 1)
            if after is None:
                return None
            if after.timestamp != first.timestamp or not after.data:
                # The next frame (or padding) began without a packet marked as this one's
                # last: this frame ends here.
                break
            sequence += 1
            packet = after
        return sequence

    def _hole_ahead(self, stream: _Stream) -> bool:
        """Whether a sequence number between the cursor and the newest packet is missing."""
        sequence = stream.cursor
        while sequence in stream.held:
            sequence += 1
        return sequence <= stream.highest

    def _take(self, stream: _Stream, end: int) -> Frame | None:
        """The packets from the cursor to ``end`` as a frame (None for padding)."""
        packets = [stream.held.pop(s) for s in range(stream.cursor, end + 1)]
        stream.cursor = end + 1
        joined, stream.emitted = stream.emitted, True
        if not packets[0].data:
            return None
        if not joined and not packets[0].starts_frame:
            # The end of a frame that began before the stream was joined: not a loss.
            self.counters.discarded += len(packets)
            return None
        return self._frame(stream, packets, complete=packets[0].starts_frame)

    def _give_up_hole(self, stream: _Stream) -> Frame | None:
        """Stop waiting for what is missing at the cursor: the partial frame there (if any
        of it came) comes out incomplete, and the cursor moves on to the next packet that
        begins another frame (or is padding)."""
        partial: Frame | None = None
        abandoned: int | None = None
        taken: set[int] = set()
        first = stream.held.get(stream.cursor)
        if first is not None and first.data:
            abandoned = first.timestamp
            taken = {s for s, p in stream.held.items() if p.timestamp == abandoned and p.data}
            packets = [stream.held.pop(s) for s in sorted(taken)]
            if stream.emitted or first.starts_frame:
                partial = self._frame(stream, packets, complete=False)
            else:  # what came of a frame begun before the stream was joined
                self.counters.discarded += len(packets)
        resume = next(
            (
                s
                for s in sorted(stream.held)
                if not stream.held[s].data
                or (stream.held[s].starts_frame and stream.held[s].timestamp != abandoned)
            ),
            stream.highest + 1,
        )
        for sequence in range(stream.cursor, resume):
            packet = stream.held.pop(sequence, None)
            if packet is not None:
                self.counters.discarded += 1
            elif sequence not in taken:
                self.counters.missing += 1
        stream.cursor = resume
        stream.gap = stream.emitted = True
        return partial

    def _give_up_all(self, stream: _Stream) -> list[Frame]:
        out: list[Frame] = []
        while stream.held:
            out += self._drain(stream, float("inf"))
            if stream.held and not self._hole_ahead(stream):
                # A last frame that never got its end.
                frame = self._give_up_hole(stream)
                if frame is not None:
                    out.append(frame)
        return out

    def _frame(self, stream: _Stream, packets: list[Packet], *, complete: bool) -> Frame:
        first = packets[0]
        frame = Frame(
            ssrc=first.ssrc,
            timestamp=self._extend_timestamp(stream, first.timestamp),
            data=b"".join(p.data for p in packets),
            arrival=min(p.arrival for p in packets),
            complete=complete,
            gap=stream.gap,
        )
        stream.gap = False
        self.counters.frames += 1
        if not complete:
            self.counters.incomplete += 1
        return frame

    @staticmethod
    def _extend_timestamp(stream: _Stream, timestamp: int) -> int:
        """A 32-bit RTP timestamp on the stream's extended scale (signed distance from the
        previous frame's, so reordering and wraparound both come out right)."""
        if stream.last_timestamp is None:
            stream.last_timestamp = (timestamp, timestamp)
            return timestamp
        raw, extended = stream.last_timestamp
        delta = (timestamp - raw) % TIMESTAMP_SPAN
        if delta >= TIMESTAMP_SPAN // 2:
            delta -= TIMESTAMP_SPAN
        extended += delta
        stream.last_timestamp = (timestamp, extended)
        return extended
