"""The recording's clock: where each frame lands in the output, with paused time cut out.

Every track's timestamps are first mapped onto one *reference clock* (the local
``time.monotonic()`` seconds at which the media was live), by a :class:`TrackClock`:
from the sender's RTCP sender reports where there are any (so tracks of one sender stay
in sync however their packets travelled), else from the arrival of the track's first
frame. The :class:`Timeline` then keeps the recorded intervals of that clock (start to
pause, resume to pause, ...) and maps a reference instant to output time by subtracting
everything paused before it. A frame whose instant falls in a pause is dropped. Because
the same cut applies to every track, lip sync holds across any number of pauses.
"""

from __future__ import annotations

import bisect
import logging

logger = logging.getLogger("rtc_recorder")

# A track whose timestamps drift further than this from its arrival times has jumped
# (a sender restarted its clock, a file looped): it is anchored afresh.
MAX_SKEW = 2.0


class Timeline:
    """Recorded intervals of the reference clock, and the output time of an instant."""

    def __init__(self, start: float) -> None:
        self.start = start
        self._pause_starts: list[float] = []
        self._pause_ends: list[float] = []
        self._excised: list[float] = [0.0]  # total paused before the i-th pause ends
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
        self._pause_starts.append(self._paused_at)
        self._pause_ends.append(at)
        self._excised.append(self._excised[-1] + at - self._paused_at)
        self._paused_at = None

    def stop(self, at: float) -> None:
        """Record nothing from ``at`` on."""
        if self._stopped_at is None:
            self._stopped_at = at

    def paused_time(self, now: float) -> float:
        """Seconds excised so far (a pause in progress counts up to ``now``)."""
        ongoing = max(0.0, now - self._paused_at) if self._paused_at is not None else 0.0
        return self._excised[-1] + ongoing

    def recorded_time(self, now: float) -> float:
        """Seconds of the reference clock recorded so far (what the output will last)."""
        end = now if self._stopped_at is None else min(now, self._stopped_at)
        return max(0.0, end - self.start - self.paused_time(end))

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
    """Maps one track's media time (seconds on the track's own clock) to the reference clock."""

    def __init__(self, group: SyncGroup | None = None) -> None:
        self._group = group
        self._anchor: tuple[float, float] | None = None  # (reference, media)
        self._report: tuple[float, float] | None = None  # (sender NTP seconds, media)
        self.synchronised = False

    def sender_report(self, ntp_seconds: float, media: float) -> None:
        """The sender's wall clock read ``ntp_seconds`` at media time ``media``."""
        if self._group is not None:
            self._report = (ntp_seconds, media)

    def reference(self, media: float, arrival: float) -> float:
        """The reference instant of media time ``media``, which arrived at ``arrival``."""
        if self._report is not None and self._group is not None:
            ntp, at = self._report
            sender_time = ntp + media - at
            if self._group.offset is None:
                self._group.offset = self._arrival_based(media, arrival) - sender_time
            instant = sender_time + self._group.offset
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
