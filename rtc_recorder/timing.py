"""Time, in one place: from the senders' clocks to the time of each frame in the file.

Three clocks meet here:

- a *stream's* RTP timestamps (one per track, in its clock rate's ticks);
- its *sender's* wall clock, which the sender's RTCP sender reports relate to each of its
  streams (NTP time at an RTP timestamp): that is what keeps a sender's audio and video
  in sync, and what the senders meant when they captured;
- the *reference clock*, this process's ``time.monotonic()`` seconds: pauses, resumes and
  stops happen on it, and every sender's clock is mapped onto it.

:class:`StreamClock` maps a stream's timestamps to its sender's time (through the sender
reports; a stream without them gets a private clock that follows its own timestamps).
:class:`SenderClock` maps a sender's time to the reference clock by the smallest transit
delay seen (the packets that waited least in the network say best when media was live),
moving smoothly if that estimate changes, so every track of the sender moves together.
:class:`Timeline` keeps one recording's pauses and maps a reference instant to output
time, cutting out paused time; the same cut applies to every track and to every file of
a room, so they stay in sync across any number of pauses. Each pause cuts out a whole
number of video frame intervals (rounded, so the total stays within half a frame of the
time paused): video frames keep their cadence, which players that place frames on a
frame-rate grid need (FFmpeg's command line does).

Nothing here reads a clock: every instant comes in as an argument.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger("rtc_recorder")

# A sender's clock off by more than MAX_SKEW for this long (seconds of its time, with no
# frame in between that agrees) has restarted; shorter, or with frames that agree in
# between (a stream of the sender whose reports disagree), it is not followed.
JUMP_PERSISTS = 0.5
# A settled offset this much too large (seconds; frames arriving before the instant it
# gives them) steps down.
STEP_DOWN = 0.1
# For this long after its first packet a sender's offset is learned (its frames wait).
SETTLING = 1.0
# The same for the local tracks of a recording (no network: their frames come steadily
# once their source has started, which may take a moment of catching up).
LOCAL_SETTLING = 0.3
# How fast a stream that follows its sender's reports (audio) moves towards a refined
# mapping: 0.5 % of the media time elapsed (0.1 ms per 20 ms packet), which nobody hears.
SLEW = 0.005
# Sender reports or timestamps that disagree with arrival times by more than this are a
# restart (a new clock, a looped file): the mapping starts afresh.
MAX_SKEW = 2.0
# The nominal frame interval assumed before a video track has shown its own, and the
# longest one a frame-rate hint will claim (slower tracks sit on a 30 fps grid too).
DEFAULT_FRAME_INTERVAL = 1 / 30
# Frame rates whose grids video is kept on, the ones tried first preferred: 30 fps holds
# 30, 15 and 10 fps alike. A track's interval within this share of a whole number of a
# rate's intervals sits on its grid.
GRID_RATES = (30, 25, 24, 20, 60, 50)
GRID_TOLERANCE = 0.08
# A sender report that moves a stream's time by more than this (seconds) is a new clock
# (less is a sender whose reports wander: aiortc stamps them when it sends). Earlier, it
# is taken at once (the mapping followed was stamped late, or the clock is new); later,
# once JUMP_REPORTS reports in a row agree on it: one report stamped late by a stalled
# sender is not a new clock.
REPORT_JUMP = 1.0
JUMP_REPORTS = 3
# A report is stamped when the sender sends it, never before the media it describes was
# live, so of the latest reports (at most REPORT_WINDOW, sent within REPORT_SPAN seconds of
# the sender's time of each other) the one that puts the stream earliest is the best told
# (the others were stamped by a sender running late: aiortc, every 0.5-1.5 s, stamps its
# latest packet's timestamp with the instant it sends), and is followed. The span is short
# of the 2.5-7.5 s between a browser's audio reports (libwebrtc's are exact: it carries the
# timestamp forward to the instant it sends), so such a sender's latest report is followed
# whichever way it moves: a microphone whose capture slipped (a buffer lost) moves the
# sound later, and the reports say so.
REPORT_WINDOW = 4
REPORT_SPAN = 3.0
# The keyframe that answers a (re)start's request may show a picture taken up to this long
# before the (re)start (seconds): a sender working through a queue of captured pictures.
EARLY_KEYFRAME = 2.0
# A (re)start that video has not settled after this long (seconds) settles without it.
OPEN_DEADLINE = 1.5
# A pause or stop comes at least this long after the latest media recorded.
AFTER_LATEST = 1e-6


class SenderClock:
    """One sender's wall clock (seconds) mapped onto the reference clock.

    ``observe`` every frame's sender time and arrival instant; ``reference`` then gives
    the reference instant of any sender time: sender time plus the smallest transit delay
    seen while the clock was learning (its first ``settling`` seconds; until then
    ``reference`` has no answer, since a frame placed then could have to move). The
    offset then stays as it is, so that every stream of the sender keeps the cadence of
    its own timestamps (video frames on their grid, whatever the network does), unless
    frames arrive more than :data:`STEP_DOWN` before the instant it gives them (it was
    learned while congested: it steps down by whole frame intervals), or the sender's
    clock jumps by more than :data:`MAX_SKEW` for :data:`JUMP_PERSISTS` (a restart),
    which starts the learning afresh.
    """

    def __init__(self, settling: float = SETTLING) -> None:
        self._settling = settling
        self._first: float | None = None  # the sender time learning began at
        self._last: float | None = None  # the latest sender time observed
        self._offset: float | None = None
        self._jump_began: float | None = None  # sender time the clock first seemed off

    @property
    def offset(self) -> float | None:
        """Reference minus sender time (None before any frame)."""
        return self._offset

    @property
    def settled(self) -> bool:
        """Whether the offset has been learned for long enough to place frames by it."""
        if self._first is None or self._last is None:
            return False
        return self._last - self._first >= self._settling

    def observe(self, sender_time: float, arrival: float) -> None:
        """A frame the sender stamped ``sender_time`` arrived at reference ``arrival``."""
        delay = arrival - sender_time
        if self._offset is not None and abs(delay - self._offset) > MAX_SKEW:
            if not self._jumped(sender_time):
                return  # one stream of the sender disagrees, or a moment's confusion
            logger.info("a sender's clock jumped by %.3f s: following it", delay - self._offset)
            self._first = self._last = self._offset = None
        self._jump_began = None
        if self._first is None:
            self._first = sender_time
        if not self.settled:
            self._offset = delay if self._offset is None else min(self._offset, delay)
        elif self._offset is not None and self._offset - delay > STEP_DOWN:
            # Frames now come in sooner than when the offset was learned (it was learned
            # on a congested network or a starved process): nothing can be live after it
            # arrived, so the offset steps down, by whole frame intervals of the 30 fps
            # grid, which keeps video frames on their grid.
            frames = math.floor((self._offset - delay) / DEFAULT_FRAME_INTERVAL)
            self._offset -= frames * DEFAULT_FRAME_INTERVAL
        if self._last is None or sender_time > self._last:
            self._last = sender_time

    def _jumped(self, sender_time: float) -> bool:
        """Whether the sender's clock has been off by more than :data:`MAX_SKEW` for long
        enough (:data:`JUMP_PERSISTS` of its time, every frame) to be a new clock."""
        if self._jump_began is None:
            self._jump_began = sender_time
        return sender_time - self._jump_began >= JUMP_PERSISTS

    def reference(self, sender_time: float) -> float | None:
        """The reference instant of ``sender_time`` (None until the clock has settled)."""
        if self._offset is None or not self.settled:
            return None
        return sender_time + self._offset


@dataclass(frozen=True)
class SenderReport:
    """An RTCP sender report: the sender's wall clock read ``ntp_seconds`` when the
    stream's (extended) RTP timestamp was ``timestamp``."""

    ntp_seconds: float
    timestamp: int


class StreamClock:
    """One stream's RTP timestamps on its sender's clock (and on the reference clock).

    With a ``sender`` (a peer whose streams share one wall clock), the stream's time comes
    from the sender's reports. Until the first one the stream has no time (``reference``
    is None) and its frames wait, for at most ``deadline`` seconds after the first one
    arrived; a stream still without a report then gets a private clock (its own
    timestamps, placed by their arrival), as do streams without a sender (tracks that are
    not received over RTP). Streams whose timestamps already are their sender's clock
    (``own_time``: the tracks of one local source, say) need no reports.

    A *leading* stream (a sender's video) keeps the mapping of the first report it was
    placed by: its frames keep the exact cadence of their timestamps, which is what keeps
    video on its frame grid. The other streams (audio) follow the best told of the latest
    reports (:data:`REPORT_WINDOW`, :data:`REPORT_SPAN`), moving towards it by at most
    :data:`SLEW` of the media time elapsed, so a sender whose audio clock drifts from its
    wall clock, or whose microphone slipped, stays in sync without a click or an
    overlap. A change beyond :data:`REPORT_JUMP` (a sender that restarted its clock) is
    taken by either: at once if it puts the stream earlier, once :data:`JUMP_REPORTS`
    reports in a row agree on it if later.
    """

    def __init__(
        self,
        rate: int,
        sender: SenderClock | None = None,
        deadline: float = 4.0,
        *,
        leading: bool = False,
        own_time: bool = False,
    ) -> None:
        self.rate = rate
        self._sender = sender
        self._leading = leading
        # The timestamps are the sender's own clock (local tracks: their pts): no reports.
        self._own_time = own_time
        self._deadline = deadline
        self._anchor: SenderReport | None = None  # the mapping applied
        self._target: SenderReport | None = None  # the report followed
        self._reports: deque[SenderReport] = deque(maxlen=REPORT_WINDOW)
        self._jumps: list[SenderReport] = []  # reports in a row that say a new clock
        self._moved_at: int | None = None  # the timestamp the mapping last moved at
        self._first_arrival: float | None = None
        self._private: SenderClock | None = None if sender is not None else SenderClock(0.0)
        self.frames = FrameInterval()
        self._placed_offset: float | None = None  # a leading stream's reference - media time

    @property
    def synchronised(self) -> bool:
        """Whether the stream is placed by its sender's reports."""
        return self._anchor is not None and self._sender is not None

    def sender_report(self, report: SenderReport) -> None:
        """The sender's latest report for this stream."""
        target = self._target
        if self._anchor is None or target is None:
            self._anchor = self._target = report
            self._reports.append(report)
            return
        moved = self._offset_of(report) - self._offset_of(target)
        if moved < -REPORT_JUMP:
            # Far earlier: the report followed was stamped late (a sender far behind when
            # it sent it, its first report say), or the clock is new; either way this one
            # is better told.
            self._take_clock([report])
            return
        if moved > REPORT_JUMP:
            # A new clock, or one report stamped by a sender far behind: taken once
            # JUMP_REPORTS in a row agree with each other.
            jumps = self._jumps
            if jumps and abs(self._offset_of(report) - self._offset_of(jumps[-1])) > REPORT_JUMP:
                jumps.clear()
            jumps.append(report)
            if len(jumps) < JUMP_REPORTS:
                return
            self._take_clock(jumps)
            return
        self._jumps.clear()
        reports = self._reports
        reports.append(report)
        while report.ntp_seconds - reports[0].ntp_seconds > REPORT_SPAN:
            reports.popleft()
        self._target = min(reports, key=self._offset_of)

    def _take_clock(self, reports: list[SenderReport]) -> None:
        """Follow ``reports`` from now, at once (they tell a clock the earlier ones did not)."""
        logger.info("a sender's reports moved a stream by over %.1f s: following them", REPORT_JUMP)
        self._reports.clear()
        self._reports.extend(reports)
        self._jumps = []
        self._target = self._anchor = min(self._reports, key=self._offset_of)
        self._moved_at = None

    def _offset_of(self, report: SenderReport) -> float:
        """Sender time minus media time, as ``report`` tells it."""
        return report.ntp_seconds - report.timestamp / self.rate

    def sender_time(self, timestamp: int) -> float | None:
        """The sender's time of an (extended) RTP timestamp, if the sender has said; moves
        the applied mapping towards the best told of the latest reports."""
        anchor, target = self._anchor, self._target
        if anchor is None or target is None:
            return None
        current = anchor.ntp_seconds + (timestamp - anchor.timestamp) / self.rate
        if self._leading:
            return current
        if target is anchor:
            # On the mapping followed: a move to the next starts from here, so a report
            # that comes seconds later still moves the stream at the slew's pace.
            if self._moved_at is None or timestamp > self._moved_at:
                self._moved_at = timestamp
            return current
        wanted = target.ntp_seconds + (timestamp - target.timestamp) / self.rate
        error = wanted - current
        elapsed = (timestamp - self._moved_at) / self.rate if self._moved_at is not None else 0
        if self._moved_at is not None and elapsed <= 0:
            return current
        step = SLEW * elapsed
        moved = current + max(-step, min(step, error))
        self._anchor = target if moved == wanted else SenderReport(moved, timestamp)
        self._moved_at = timestamp
        return moved

    def place_by_arrival(self) -> None:
        """Give up on the sender's clock for this stream (its reports never came, or never
        made sense): its frames are placed by their own timestamps and arrival from now."""
        if self._sender is None and self._private is not None and not self._own_time:
            return  # already so
        logger.warning("a stream's sender clock never settled: placing it by arrival")
        self._sender = None
        self._own_time = False
        self._private = SenderClock(0.0)

    @property
    def ready(self) -> bool:
        """Whether the stream's frames can be placed now (``reference`` answers)."""
        if (self._anchor is not None or self._own_time) and self._sender is not None:
            return self._sender.settled
        return self._private is not None and self._private.settled

    def reference(self, timestamp: int, arrival: float) -> float | None:
        """The reference instant of a frame with ``timestamp`` that arrived at ``arrival``
        (which also teaches the sender's clock its transit delay); None while the stream
        waits for its sender's first report.

        A leading stream's placement only ever moves by whole intervals of its frame grid
        (the nearest to what its clocks say: a sender clock learned afresh after a stall,
        a new clock, placing by arrival from now on), so its frames stay on one grid, never
        closer than a frame interval, which is what FFmpeg's frame-rate guess needs."""
        reference = self._unkept_reference(timestamp, arrival)
        if reference is None or not self._leading:
            return reference
        media = timestamp / self.rate
        offset = reference - media
        if self._placed_offset is not None and offset != self._placed_offset:
            grid = self.frames.grid
            offset = self._placed_offset + round((offset - self._placed_offset) / grid) * grid
        self._placed_offset = offset
        return media + offset

    def _unkept_reference(self, timestamp: int, arrival: float) -> float | None:
        if self._first_arrival is None:
            self._first_arrival = arrival
        self.frames.add(timestamp / self.rate)
        sender_time = timestamp / self.rate if self._own_time else self.sender_time(timestamp)
        if sender_time is not None and self._sender is not None:
            self._sender.observe(sender_time, arrival)
            return self._sender.reference(sender_time)
        if self._private is None:
            if arrival - self._first_arrival < self._deadline:
                return None
            logger.info(
                "no sender report after %.1f s: placing a stream by arrival", self._deadline
            )
            self._private = SenderClock()
        own = timestamp / self.rate
        self._private.observe(own, arrival)
        return self._private.reference(own)


class FrameInterval:
    """A video track's typical frame interval (the median of the last two seconds' or so,
    in seconds, worked out again every 15 frames: long enough for a jittery source's to
    hold still).

    The estimate is kept as a plain attribute, so another thread (the writer's) may read
    it while the event loop adds frames."""

    def __init__(self, size: int = 61) -> None:
        self._last: float | None = None
        self._recent: deque[float] = deque(maxlen=size)
        self._count = 0
        self.interval: float | None = None  # None until three intervals were seen
        # The frame interval of the grid the frames are kept on (see _grid_of).
        self.grid = DEFAULT_FRAME_INTERVAL

    def add(self, media: float) -> None:
        """Note a frame's media time (seconds on the stream's clock)."""
        last, self._last = self._last, media
        if last is None or not 0.0 < media - last < 1.0:
            return
        self._recent.append(media - last)
        self._count += 1
        if len(self._recent) >= 3 and (self.interval is None or self._count % 15 == 0):
            self.interval = sorted(self._recent)[len(self._recent) // 2]
            self.grid = _grid_of(self.interval)


def _grid_of(interval: float) -> float:
    """The frame interval of the grid video is kept on: the common rate a track's frames
    sit on a grid of (30 fps for 30, 15 or 10 fps, so a track that changes between them
    keeps one grid), or the track's own interval."""
    for rate in GRID_RATES:
        slots = interval * rate
        if round(slots) >= 1 and abs(slots - round(slots)) <= GRID_TOLERANCE * round(slots):
            return 1 / rate
    return interval


class Timeline:
    """One recording's recorded intervals of the reference clock, and the output time of
    a reference instant (paused time cut out).

    Each pause cuts out a whole number of video frame intervals, the nearest to the time
    paused. Video (re)starts on a keyframe the sender makes when asked, and that picture
    may have been taken a little before the request (an encoder working through its
    queue), or rounding may put it just before the cut, among the frames from before the
    pause. So a start or resume stays *open* until video's first keyframe to arrive since
    :meth:`settle` s it: the (re)start moves back to that keyframe if it was taken before
    (within the pause, or :data:`EARLY_KEYFRAME` before a start), and the pause's cut is
    rounded down if the keyframe needs it. While open, media from around the (re)start
    waits (:meth:`holds`): nothing is placed before the boundary is final, so settling
    moves nothing already written. For the same reason media taken during a pause waits
    too (the last :data:`EARLY_KEYFRAME` seconds of it): the resume may move back to it,
    and then the sound from the keyframe on is recorded with the picture.
    A (re)start video does not settle in time (:meth:`settle_if_late`) stays as it is.

    :meth:`paused_time` is the time paused as asked; :meth:`recorded_time` what the
    output lasts (a boundary moved back gives some of a pause back to the recording).
    """

    def __init__(
        self,
        start: float,
        quantum: Callable[[], float | None] = lambda: DEFAULT_FRAME_INTERVAL,
        *,
        video: bool = True,
    ) -> None:
        self.start = start
        # Pauses cut out whole multiples of this (the video frame grid), when it says one.
        self.quantum = quantum
        self._video = video
        self._pause_starts: list[float] = []
        self._pause_ends: list[float] = []
        self._excised: list[float] = [0.0]  # total cut out once the i-th pause has ended
        self._paused_total = 0.0  # total paused as asked (completed pauses)
        self._given_back = 0.0  # paused time recorded after all (resumes moved back)
        self._paused_at: float | None = None  # where the pause in progress cuts
        self._paused_asked = start  # when it was asked for
        self._stopped_at: float | None = None
        self._open_at: float | None = start if video else None  # the open (re)start
        self._latest = start  # the latest reference instant recorded

    @property
    def paused(self) -> bool:
        """Whether a pause is in progress."""
        return self._paused_at is not None

    @property
    def open(self) -> bool:
        """Whether the latest (re)start waits for video to settle it."""
        return self._open_at is not None

    def holds(self, instant: float) -> bool:
        """Whether media at reference ``instant`` must wait: for the open (re)start, or,
        during a pause (of a recording with video), for the resume, which may move back
        to it (see :meth:`beyond_resume`)."""
        if self._paused_at is not None:
            return self._video and self._stopped_at is None and instant >= self._paused_at
        if self._open_at is None:
            return False
        return instant >= self._earliest()

    def beyond_resume(self, instant: float, now: float) -> bool:
        """Whether media at ``instant``, held during a pause, is too old for any resume
        from ``now`` on to move back to (:data:`EARLY_KEYFRAME`): it will not be recorded."""
        return self._paused_at is not None and instant < now - EARLY_KEYFRAME

    def _earliest(self) -> float:
        """The earliest instant the open (re)start may move back to: the pause it ends
        began there, or the sender's queue could reach back that far."""
        if self._pause_starts:
            return max(self._pause_starts[-1], self._pause_ends[-1] - EARLY_KEYFRAME)
        return self.start - EARLY_KEYFRAME

    def can_settle_at(self, instant: float, arrival: float) -> bool:
        """Whether a keyframe at reference ``instant`` that arrived at ``arrival`` settles
        the open (re)start: the first one to arrive after it (the sender's answer to the
        request made then), whenever it was taken, back to :meth:`_earliest`."""
        if self._open_at is None:
            return False
        return arrival >= self._open_at and instant >= self._earliest()

    def settle(self, keyframe: float | None = None, after: float = 0.0) -> None:
        """Make the open (re)start final; with ``keyframe`` (the reference instant of
        video's first keyframe since, see :meth:`can_settle_at`), so that the keyframe is
        recorded and lands at least ``after`` seconds past the cut."""
        if self._open_at is None:
            return
        self._open_at = None
        if keyframe is None:
            return
        if not self._pause_starts:
            self.start = min(self.start, keyframe)
            return
        begin, end = self._pause_starts[-1], self._pause_ends[-1]
        cut = self._excised[-1] - self._excised[-2]
        room = keyframe - begin - after  # the most this pause may cut out
        if cut > room:
            quantum = self.quantum()
            cut = max(0.0, math.floor(room / quantum) * quantum if quantum else room)
            self._excised[-1] = self._excised[-2] + cut
        # The output goes on at the cut with what was taken at begin + cut: record from
        # there (sound before the keyframe; video waits for it), so the sound has no gap
        # at the cut. That is never after the keyframe (the cut leaves it room), so a
        # keyframe taken before the resume is recorded: the resume moves back past it.
        seamless = begin + cut
        if seamless < end:
            self._given_back += end - seamless
            self._pause_ends[-1] = seamless

    def settle_if_late(
        self, now: float, deadline: float = OPEN_DEADLINE, since: float | None = None
    ) -> None:
        """Make the open (re)start final as it is if video has not settled it within
        ``deadline`` seconds of it (or of ``since``, if later: when video could first
        tell), as with a sender that sends no keyframe."""
        if self._open_at is None:
            return
        if now - max(self._open_at, since if since is not None else self._open_at) >= deadline:
            self.settle()

    def placed(self, instant: float) -> None:
        """Media at reference ``instant`` was recorded (a pause or stop cannot come before)."""
        if instant > self._latest:
            self._latest = instant

    def pause(self, at: float) -> None:
        """Stop recording from reference instant ``at`` (or just after the latest media
        recorded, if that is later: a sender's clock may run a little ahead of ours)."""
        if self._paused_at is None:
            self.settle()
            earliest = self._pause_ends[-1] if self._pause_ends else self.start
            self._paused_asked = at
            self._paused_at = max(at, earliest, self._latest + AFTER_LATEST)

    def resume(self, at: float) -> None:
        """Record again from reference instant ``at``."""
        if self._paused_at is None:
            return
        at = max(at, self._paused_at)
        self._paused_total += at - self._paused_asked
        self._given_back += self._paused_at - self._paused_asked  # recorded after all
        excised = self._paused_total - self._given_back
        quantum = self.quantum()
        if quantum:
            excised = round(excised / quantum) * quantum
        # Never less than was cut before.
        excised = max(self._excised[-1], excised)
        self._pause_starts.append(self._paused_at)
        self._pause_ends.append(at)
        self._excised.append(excised)
        self._paused_at = None
        if self._video:
            self._open_at = at

    def stop(self, at: float) -> None:
        """Record nothing from ``at`` on (or from just after the latest media recorded)."""
        if self._stopped_at is None:
            self.settle()
            self._stopped_at = max(at, self._latest + AFTER_LATEST)

    def after_stop(self, instant: float) -> bool:
        """Whether reference ``instant`` comes after the recording stopped."""
        return self._stopped_at is not None and instant >= self._stopped_at

    def paused_time(self, now: float) -> float:
        """Seconds paused so far (a pause in progress counts up to ``now``)."""
        ongoing = max(0.0, now - self._paused_asked) if self._paused_at is not None else 0.0
        return self._paused_total + ongoing

    def recorded_time(self, now: float) -> float:
        """Seconds of the reference clock recorded so far (what the output will last)."""
        end = now if self._stopped_at is None else min(now, self._stopped_at)
        given_back = self._given_back
        if self._paused_at is not None:
            given_back += min(end, self._paused_at) - self._paused_asked
        return max(0.0, end - self.start - self.paused_time(end) + given_back)

    def cuts(self) -> list[float]:
        """Output times (seconds) at which each completed pause was cut out."""
        return [
            start - self.start - self._excised[index]
            for index, start in enumerate(self._pause_starts)
        ]

    def output_time(self, instant: float) -> float | None:
        """Seconds into the output for a reference instant, or None if it is not recorded
        (or must wait: see :meth:`holds`)."""
        if instant < self.start or self.holds(instant):
            return None
        if self._stopped_at is not None and instant >= self._stopped_at:
            return None
        if self._paused_at is not None and instant >= self._paused_at:
            return None
        done = bisect.bisect_right(self._pause_ends, instant)
        if done < len(self._pause_starts) and instant >= self._pause_starts[done]:
            return None
        return instant - self.start - self._excised[done]

    def segment(self, instant: float) -> int:
        """Which recorded stretch reference ``instant`` belongs to: 0 before the first
        pause, then one more after each."""
        return bisect.bisect_right(self._pause_ends, instant)

    def cut_lengths(self) -> list[float]:
        """Seconds each completed pause cut out of the output (see :meth:`cuts` for where)."""
        return [after - before for before, after in itertools.pairwise(self._excised)]


class MemberTimeline:
    """One file's share of a :class:`Timeline` that several files share (a room's, whose
    participants' files must stay aligned): the shared start, pauses and cuts, which only
    the owner of the shared timeline changes (``pause`` and ``resume`` here leave them
    be), and a stop of its own, so that one file can be finalized while the others go on.
    """

    def __init__(self, shared: Timeline) -> None:
        self.shared = shared
        self._stopped_at: float | None = None

    def pause(self, at: float) -> None:
        """Nothing: the shared timeline's owner pauses it."""

    def resume(self, at: float) -> None:
        """Nothing: the shared timeline's owner resumes it."""

    def stop(self, at: float) -> None:
        """This file records nothing from ``at`` on (or from just after the latest media
        recorded); the shared timeline goes on."""
        if self._stopped_at is None:
            self._stopped_at = max(at, self.shared._latest + AFTER_LATEST)

    def after_stop(self, instant: float) -> bool:
        """Whether reference ``instant`` comes after this file, or the whole, stopped."""
        own = self._stopped_at is not None and instant >= self._stopped_at
        return own or self.shared.after_stop(instant)

    def output_time(self, instant: float) -> float | None:
        """As :meth:`Timeline.output_time`, and None from this file's stop on."""
        if self._stopped_at is not None and instant >= self._stopped_at:
            return None
        return self.shared.output_time(instant)

    def recorded_time(self, now: float) -> float:
        """Seconds of the shared timeline recorded up to ``now`` or this file's stop."""
        end = now if self._stopped_at is None else min(now, self._stopped_at)
        return self.shared.recorded_time(end)

    def paused_time(self, now: float) -> float:
        """Seconds the shared timeline has been paused."""
        return self.shared.paused_time(now)

    def cuts(self) -> list[float]:
        """Output times of the shared timeline's cuts."""
        return self.shared.cuts()

    def segment(self, instant: float) -> int:
        """The shared timeline's recorded stretch of ``instant``."""
        return self.shared.segment(instant)

    def placed(self, instant: float) -> None:
        """Media at ``instant`` was recorded (no pause of the whole may come before it)."""
        self.shared.placed(instant)

    def holds(self, instant: float) -> bool:
        """Whether media at ``instant`` waits for the shared timeline's (re)start (not for
        a resume once this file has stopped)."""
        if self._stopped_at is not None and self.shared.paused:
            return False
        return self.shared.holds(instant)

    def beyond_resume(self, instant: float, now: float) -> bool:
        """See :meth:`Timeline.beyond_resume`."""
        return self.shared.beyond_resume(instant, now)

    @property
    def paused(self) -> bool:
        """Whether the shared timeline is paused."""
        return self.shared.paused

    def can_settle_at(self, instant: float, arrival: float) -> bool:
        """Whether a keyframe of this file settles the shared timeline's open (re)start."""
        return self.shared.can_settle_at(instant, arrival)

    def settle(self, keyframe: float | None = None, after: float = 0.0) -> None:
        """Settle the shared timeline's open (re)start (every file moves with it)."""
        self.shared.settle(keyframe, after)

    def settle_if_late(
        self, now: float, deadline: float = OPEN_DEADLINE, since: float | None = None
    ) -> None:
        """See :meth:`Timeline.settle_if_late`."""
        self.shared.settle_if_late(now, deadline, since)


# What a recording's sources and conductor place media on: a timeline of its own, or its
# share of one that several recordings share.
RecordingTimeline = Timeline | MemberTimeline


# A first audio packet this close to half a video frame interval off the video's grid is
# left out of the file (see file_origin).
HALF_FRAME_GUARD = 0.002


def file_origin(video: list[float], audio: list[float], interval: float) -> tuple[float, int]:
    """Where a file's time 0 goes, given the output times of its first video frames and
    audio packets (sorted), and the video frame interval: ``(origin, audio_to_drop)``.

    Time 0 is the earliest sample, moved back (by less than a frame interval) to a point
    of the video's grid, so that video frames fall on the grid of their frame interval.
    Players and FFmpeg count video frames from the file's first packet, and when that is
    audio half a frame interval off the grid, FFmpeg rounds neighbouring frames onto one
    tick: such leading audio packets are left out (``audio_to_drop`` of them; the next,
    20 ms later, is well clear of the half-way point).
    """
    if not video:
        return (audio[0] if audio else 0.0), 0
    first = video[0]
    dropped = 0
    while True:
        earliest = min(first, audio[dropped]) if dropped < len(audio) else first
        periods = -(-(first - earliest) // interval) if earliest < first else 0
        origin = first - periods * interval
        if earliest == first or abs(earliest - origin - interval / 2) > HALF_FRAME_GUARD:
            return origin, dropped
        dropped += 1
