"""The recording's clock: where each frame lands in the output, with paused time cut out.

Every track's timestamps are first mapped onto one *reference clock* (the local
``time.monotonic()`` seconds at which the media was live), by a :class:`TrackClock`:
from the sender's RTCP sender reports where there are any (so tracks of one sender stay
in sync however their packets travelled), else from the arrival of the track's first
frame. The :class:`Timeline` then keeps the recorded intervals of that clock (start to
pause, resume to pause, ...) and maps a reference instant to output time by subtracting
everything paused before it. A frame whose instant falls in a pause is dropped. Because
the same cut applies to every track, lip sync holds across any number of pauses.

Video keeps a regular cadence in the output, so that players and tools that place frames
on a grid of the frame rate (ffmpeg's command line does) never see two frames in one
slot: a video track's clock follows its own timestamps exactly, the other tracks of its
sender follow it (moving smoothly where the sender's reports say they should be), and
each pause cuts out a whole number of video frame intervals (rounded so that the total
cut stays within half a frame of the time actually paused).
"""

from __future__ import annotations

import bisect
import logging

logger = logging.getLogger("rtc_recorder")

# A track whose timestamps drift further than this from its arrival times has jumped
# (a sender restarted its clock, a file looped): it is anchored afresh.
MAX_SKEW = 2.0
# How fast a following track's clock may move towards a better estimate of its timing:
# 3% of the media time (0.6 ms per 20 ms audio packet).
SLEW = 0.03
FOLLOW_JUMP = 0.04  # seconds: two audio packets


class Timeline:
    """Recorded intervals of the reference clock, and the output time of an instant."""

    def __init__(self, start: float) -> None:
        self.start = start
        # The video frame interval (seconds), once a video track has shown it: pauses cut
        # out whole intervals of it.
        self.quantum: float | None = None
        self._pause_starts: list[float] = []
        self._pause_ends: list[float] = []
        self._excised: list[float] = [0.0]  # total cut out before the i-th pause ends
        self._paused_total = 0.0  # total actually paused (completed pauses)
        self._paused_at: float | None = None
        self._stopped_at: float | None = None

    def pause(self, at: float) -> None:
        """Stop recording from reference instant ``at``."""
        if self._paused_at is None:
            self._paused_at = max(at, self._pause_ends[-1] if self._pause_ends else self.start)

    def resume(self, at: float) -> None:
        """Record again from reference instant ``at``."""
        if self._paused_at is None:
            return
        at = max(at, self._paused_at)
        self._paused_total += at - self._paused_at
        excised = self._paused_total
        if self.quantum:
            excised = round(self._paused_total / self.quantum) * self.quantum
        self._pause_starts.append(self._paused_at)
        self._pause_ends.append(at)
        self._excised.append(excised)
        self._paused_at = None

    def stop(self, at: float) -> None:
        """Record nothing from ``at`` on."""
        if self._stopped_at is None:
            self._stopped_at = at

    def paused_time(self, now: float) -> float:
        """Seconds paused so far (a pause in progress counts up to ``now``)."""
        ongoing = max(0.0, now - self._paused_at) if self._paused_at is not None else 0.0
        return self._paused_total + ongoing

    def recorded_time(self, now: float) -> float:
        """Seconds of the reference clock recorded so far (what the output will last)."""
        end = now if self._stopped_at is None else min(now, self._stopped_at)
        return max(0.0, end - self.start - self.paused_time(end))

    def cuts(self) -> list[float]:
        """Output times (seconds) at which each completed pause was cut out."""
        return [
            start - self.start - self._excised[index]
            for index, start in enumerate(self._pause_starts)
        ]

    def output_time(self, instant: float) -> float | None:
        """Seconds into the output for a reference instant, or None if it is not recorded."""
        if instant < self.start:
            return None
        if self._stopped_at is not None and instant >= self._stopped_at:
            return None
        if self._paused_at is not None and instant >= self._paused_at:
            return None
        done = bisect.bisect_right(self._pause_ends, instant)
        if done < len(self._pause_starts) and instant >= self._pause_starts[done]:
            return None
        return instant - self.start - self._excised[done]


class SyncGroup:
    """Tracks from one sender: the offset from the sender's wall clock (RTCP NTP time)
    to the reference clock, shared so their relative timing is the sender's."""

    def __init__(self) -> None:
        self.offset: float | None = None


class TrackClock:
    """Maps one track's media time (seconds on the track's own clock) to the reference clock.

    A *leading* clock (a video track, or any track without a sender to sync with) follows
    its own timestamps from where its first frame arrived; when its sender's reports
    arrive, it tells the sender's :class:`SyncGroup` how the sender's wall clock maps onto
    the reference clock. A *following* clock (the other tracks of that sender) places its
    frames by the sender's reports through that mapping, so it lands where the sender says
    relative to the leading track; before there are reports it follows its arrival times.
    A following clock moves towards a refined estimate by at most :data:`SLEW` of the media
    time elapsed, which nobody hears; a correction larger than :data:`FOLLOW_JUMP` (the
    first report, a sender that restarted) is taken at once, at the cost of a short gap
    or of the packets it overlaps. A leading clock follows a discontinuity larger than
    :data:`MAX_SKEW` at once.
    """

    def __init__(self, group: SyncGroup | None = None, *, leading: bool = True) -> None:
        self._group = group
        self._leading = leading
        self._anchor: tuple[float, float] | None = None  # (reference, media)
        self._report: tuple[float, float] | None = None  # (sender NTP seconds, media)
        self._last: tuple[float, float] | None = None  # (media, reference) of the last frame
        self.synchronised = False

    def sender_report(self, ntp_seconds: float, media: float) -> None:
        """The sender's wall clock read ``ntp_seconds`` at media time ``media``."""
        if self._group is not None:
            self._report = (ntp_seconds, media)

    def reference(self, media: float, arrival: float) -> float:
        """The reference instant of media time ``media``, which arrived at ``arrival``."""
        if self._leading:
            instant = self._arrival_based(media, arrival)
            sender = self._sender_time(media)
            if sender is not None and self._group is not None:
                self._group.offset = instant - sender
                self.synchronised = True
            return instant
        target = self._estimate(media, arrival)
        instant = target
        if self._last is not None:
            last_media, last_instant = self._last
            expected = last_instant + media - last_media
            error = target - expected
            if abs(error) <= FOLLOW_JUMP:
                step = SLEW * abs(media - last_media)
                instant = expected + max(-step, min(step, error))
        self._last = (media, instant)
        return instant

    def _sender_time(self, media: float) -> float | None:
        if self._report is None:
            return None
        ntp, at = self._report
        return ntp + media - at

    def _estimate(self, media: float, arrival: float) -> float:
        sender = self._sender_time(media)
        if sender is not None and self._group is not None and self._group.offset is not None:
            instant = sender + self._group.offset
            if abs(instant - arrival) <= MAX_SKEW:
                self.synchronised = True
                return instant
            logger.warning("sender report far from arrival times: ignoring it")
            self._report = None
            self.synchronised = False
        return self._arrival_based(media, arrival)

    def _arrival_based(self, media: float, arrival: float) -> float:
        if self._anchor is not None:
            reference, at = self._anchor
            instant = reference + media - at
            if abs(instant - arrival) <= MAX_SKEW:
                return instant
            logger.info("track timestamps jumped by %.3f s: re-anchoring", instant - arrival)
        self._anchor = (arrival, media)
        return arrival


class FrameInterval:
    """The typical interval between a video track's frames (the median of recent ones)."""

    def __init__(self, size: int = 15) -> None:
        self._size = size
        self._last: float | None = None
        self._recent: list[float] = []

    def add(self, media: float) -> float | None:
        """Note a frame's media time; return the current estimate (None until there is one)."""
        if self._last is not None and 0.0 < media - self._last < 1.0:
            self._recent.append(media - self._last)
            del self._recent[: -self._size]
        self._last = media
        if len(self._recent) < 3:
            return None
        return sorted(self._recent)[len(self._recent) // 2]
