"""From raw measurements to the metrics of one run, and the markdown table comparing runs."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

MB = 2**20
MEDIA_KINDS = ("video", "audio")


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The ``fraction`` quantile of ``values`` (linear interpolation), None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``(x, y)`` points, None with fewer than two distinct x."""
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def mean(values: Sequence[float]) -> float | None:
    """The mean of ``values``, None if empty."""
    return sum(values) / len(values) if values else None


def fmt(value: Any, digits: int = 1) -> str:
    """A figure for a table: a float with ``digits`` decimals (and thousands separators),
    anything else as it is, "n/a" for None."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str) -> list[str]:
    """The lines of a markdown table; ``align`` has an ``l`` or ``r`` per column."""
    rule = "|" + "".join("---:|" if side == "r" else "---|" for side in align)
    return [
        "| " + " | ".join(header) + " |",
        rule,
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _percent(part: float, whole: float) -> float | None:
    return 100.0 * part / whole if whole else None


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    """The metrics of one recorder's run (see the README for their definitions)."""
    receiver = run["receiver"]
    window = receiver["window"]
    sessions = receiver["config"]["sessions"]
    seconds = window["seconds"]
    cpu = window["cpuUser"] + window["cpuSystem"]
    lag_ms = [1000 * value for value in receiver["lagSeconds"]]
    curve = receiver["rssCurve"]
    in_window = [(t, rss) for t, rss, phase in curve if phase == "window"]
    with_sessions = sum(rss for _, rss in in_window) / len(in_window) if in_window else None
    rss_slope = slope([(t / 60, rss / MB) for t, rss in in_window])
    baseline = receiver["rssBaseline"]

    sent = {kind: 0 for kind in MEDIA_KINDS}
    recorded = {kind: 0 for kind in MEDIA_KINDS}
    decoded: dict[str, int | None] = {kind: 0 for kind in MEDIA_KINDS}
    lowest: dict[str, float | None] = {kind: None for kind in MEDIA_KINDS}
    for number, counts in run["sent"].items():
        inspected = run["files"][number]
        for kind in MEDIA_KINDS:
            sent[kind] += counts[kind]
            recorded[kind] += inspected[kind]["packets"]
            count, total = inspected[kind]["decoded"], decoded[kind]
            decoded[kind] = None if count is None or total is None else total + count
            share, current = _percent(inspected[kind]["packets"], counts[kind]), lowest[kind]
            if share is not None and (current is None or share < current):
                lowest[kind] = share

    paths: dict[str, Counter[str]] = {kind: Counter() for kind in MEDIA_KINDS}
    recorder_decoded: int | None = None
    rtp = {"received": 0, "lost": 0}
    for report in receiver["sessions"]:
        for inbound in report["inbound"].values():
            rtp["received"] += inbound["packetsReceived"]
            rtp["lost"] += max(0, inbound["packetsLost"])
        stats = report.get("recorderStats")
        if stats is None:
            continue
        for track in stats["tracks"]:
            paths[track["kind"]][track["path"]] += 1
            recorder_decoded = (recorder_decoded or 0) + int(track.get("framesDecoded", 0))

    senders = run["senders"]
    return {
        "sessions": sessions,
        "windowSeconds": seconds,
        "cpuCores": cpu / seconds,
        "cpuPerSession": cpu / seconds / sessions,
        "cpuIdleCores": receiver["idleCpuCores"],
        "cpuPerSessionNet": max(0.0, cpu / seconds - receiver["idleCpuCores"]) / sessions,
        "lagP50Ms": percentile(lag_ms, 0.50),
        "lagP99Ms": percentile(lag_ms, 0.99),
        "lagMaxMs": max(lag_ms) if lag_ms else None,
        "rssBeforeMB": baseline / MB,
        "rssWithSessionsMB": with_sessions / MB if with_sessions is not None else None,
        "rssPerSessionMB": (with_sessions - baseline) / MB / sessions
        if with_sessions is not None
        else None,
        "rssSlopeMBPerMin": rss_slope,
        "rssPeakMB": max(rss for _, rss, _ in curve) / MB,
        "rssLimitHit": window["rssLimitHit"],
        "videoSent": sent["video"],
        "videoRecorded": recorded["video"],
        "videoRecordedPct": _percent(recorded["video"], sent["video"]),
        "videoLowestSessionPct": lowest["video"],
        "audioSent": sent["audio"],
        "audioRecorded": recorded["audio"],
        "audioRecordedPct": _percent(recorded["audio"], sent["audio"]),
        "audioLowestSessionPct": lowest["audio"],
        "videoDecodablePct": None
        if decoded["video"] is None
        else _percent(decoded["video"], recorded["video"]),
        "decodeErrors": sum(f["decodeErrors"] for f in run["files"].values()),
        "fileErrors": [f["error"] for f in run["files"].values() if f["error"]],
        "rtpPacketsLost": rtp["lost"],
        "rtpLostPct": _percent(rtp["lost"], rtp["received"] + rtp["lost"]),
        "paths": {kind: dict(counter) for kind, counter in paths.items() if counter} or None,
        "framesDecodedByRecorder": recorder_decoded,
        "connectSeconds": receiver["connectSeconds"],
        "stopSeconds": receiver["stopSeconds"],
        "senderProcesses": senders["processes"],
        "senderCpuCores": senders["cpuSeconds"] / senders["windowSeconds"]
        if senders["windowSeconds"]
        else None,
        "machineBusyCores": window["machineBusyCores"],
        "machineCores": window["machineCores"],
    }


# -- markdown ------------------------------------------------------------------------------


def _number(digits: int) -> Callable[[Any], str]:
    return lambda value: f"{value:,.{digits}f}"


_ONE_DECIMAL = _number(1)


def _recorded(kind: str) -> Callable[[dict[str, Any]], str]:
    def show(metrics: dict[str, Any]) -> str:
        pct = metrics[f"{kind}RecordedPct"]
        share = "n/a" if pct is None else f"{pct:.1f} %"
        return f"{share} ({metrics[f'{kind}Recorded']:,} / {metrics[f'{kind}Sent']:,})"

    return show


def _paths(metrics: dict[str, Any]) -> str:
    paths = metrics["paths"]
    if not paths:
        return "decode + re-encode (aiortc)"
    return "; ".join(
        f"{kind}: " + ", ".join(f"{path} ×{count}" for path, count in sorted(counts.items()))
        for kind, counts in paths.items()
    )


def _decoded_by_recorder(metrics: dict[str, Any]) -> str:
    count = metrics["framesDecodedByRecorder"]
    return "every frame it gets (no stats)" if count is None else f"{count:,}"


@dataclass(frozen=True)
class Row:
    """One metric of the table: a key of :func:`summarise`'s result (or a function of it),
    its format, and whether the aiortc ÷ rtc-recorder ratio means something."""

    label: str
    key: str | Callable[[dict[str, Any]], str]
    format: Callable[[Any], str] = _ONE_DECIMAL
    ratio: bool = False


ROWS = (
    Row("CPU per session (CPU-seconds per second)", "cpuPerSession", _number(3), True),
    Row("CPU total (cores busy)", "cpuCores", _number(3), True),
    Row("Receiver CPU before any session (cores busy)", "cpuIdleCores", _number(3)),
    Row("CPU per session, net of that (CPU-s/s)", "cpuPerSessionNet", _number(3), True),
    Row("Event-loop lag p50 (ms)", "lagP50Ms", _number(2), True),
    Row("Event-loop lag p99 (ms)", "lagP99Ms", _number(2), True),
    Row("Event-loop lag max (ms)", "lagMaxMs", _number(1), True),
    Row("RSS before sessions (MB)", "rssBeforeMB"),
    Row("RSS with N sessions, window mean (MB)", "rssWithSessionsMB"),
    Row("RSS per added session (MB)", "rssPerSessionMB", _number(1), True),
    Row("RSS slope over the window (MB/min)", "rssSlopeMBPerMin", _number(1)),
    Row("RSS peak (MB)", "rssPeakMB"),
    Row("Video frames recorded (% of sent)", _recorded("video")),
    Row("Audio frames recorded (% of sent)", _recorded("audio")),
    Row("Lowest session, video recorded (%)", "videoLowestSessionPct"),
    Row("Recorded video frames that decode (%)", "videoDecodablePct"),
    Row("RTP packets lost before the receiver read them (%)", "rtpLostPct", _number(2)),
    Row("Recording path (getStats)", _paths),
    Row("Frames decoded by the recorder (getStats)", _decoded_by_recorder),
    Row("Time to stop all recorders (s)", "stopSeconds", _number(2)),
    Row("Time until all sessions flowing (s)", "connectSeconds", _number(2)),
    Row("Sender processes' CPU (cores busy)", "senderCpuCores", _number(2)),
    Row("Machine CPU busy (cores, of all)", "machineBusyCores", _number(2)),
    Row("Measured window (s)", "windowSeconds", _number(1)),
)


def _cell(row: Row, metrics: dict[str, Any]) -> str:
    if callable(row.key):
        return row.key(metrics)
    value = metrics.get(row.key)
    return "n/a" if value is None else row.format(value)


def _ratio(row: Row, results: dict[str, dict[str, Any]]) -> str:
    if not row.ratio or callable(row.key):
        return ""
    numerator = results["aiortc"].get(row.key)
    denominator = results["rtc-recorder"].get(row.key)
    if not isinstance(numerator, (int, float)) or not isinstance(denominator, (int, float)):
        return "n/a"
    if denominator <= 0:
        return "∞" if numerator > 0 else "n/a"
    return f"{numerator / denominator:,.1f}×"


def markdown(
    command: str, results: dict[str, dict[str, Any]], media: dict[str, Any], notes: list[str]
) -> str:
    """The table: metrics as rows, one column per recorder, and the aiortc ÷ rtc-recorder
    ratio when both ran."""
    kinds = [kind for kind in ("aiortc", "rtc-recorder") if kind in results]
    both = len(kinds) == 2
    first = results[kinds[0]]
    lines = [
        f"Command: `{command}`",
        "",
        f"{first['sessions']} session{'s' * (first['sessions'] > 1)} of {media['video']} "
        f"({media['videoKbps']:.0f} kbit/s, "
        f"keyframe every {media['keyframeEveryFrames']} frames) + {media['audio']} "
        f"({media['audioKbps']:.0f} kbit/s), pre-encoded; recorded to WebM; "
        f"{first['windowSeconds']:.1f} s window; {first['machineCores']} CPU cores.",
        "",
    ]
    header = ["Metric", *kinds] + (["aiortc ÷ rtc-recorder"] if both else [])
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|---|" + "---:|" * (len(header) - 1))
    for row in ROWS:
        cells = [row.label, *(_cell(row, results[kind]) for kind in kinds)]
        if both:
            cells.append(_ratio(row, results))
        lines.append("| " + " | ".join(cells) + " |")
    lines.extend(f"\n{note}" for note in notes)
    return "\n".join(lines)
