"""One run of a bare recorder: a receiver process (:mod:`.receiver`) recording every
session with aiortc's or rtc-recorder's ``MediaRecorder`` in a plain aiortc server, fed by
sender processes (:mod:`.sender`); then its files, read back.

This is the orchestrating side of ``recording_load.py``; ``session_cost.py`` runs it too.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import files, receiver, sender
from .children import Children, cpu_seconds
from .common import LOOPBACK
from .machine import load_average


@dataclass(frozen=True)
class BareOptions:
    """How to run one bare recorder (see ``recording_load.py --help``)."""

    sessions: int
    seconds: float
    warmup: float = 3.0
    drain: float = 1.0
    sample_interval: float = 0.5
    sessions_per_sender: int = 5
    connect_timeout: float | None = None
    max_rss_mb: float = 4096.0

    @property
    def connect_seconds(self) -> float:
        """Seconds every session may take to be flowing: 20 + 2 per session by default."""
        return self.connect_timeout or 20.0 + 2.0 * self.sessions


def _log(kind: str, text: str) -> None:
    print(f"[{kind}] {text}", file=sys.stderr, flush=True)


def run_bare(kind: str, options: BareOptions, media_path: Path, recordings: Path) -> dict[str, Any]:
    """One receiver process recording every session into ``recordings`` with ``kind``'s
    recorder (one of :data:`receiver.KINDS`), and its senders; returns the raw
    measurements (the files are inspected by :func:`inspect_files`).

    ``load`` holds the machine's 1-minute load average before anything started and at the
    end of the window."""
    connect_timeout = options.connect_seconds
    load_before = load_average()
    children = Children()
    try:
        children.start(
            "receiver",
            receiver.run,
            receiver.ReceiverConfig(
                kind=kind,
                sessions=options.sessions,
                seconds=options.seconds,
                warmup=options.warmup,
                sample_interval=options.sample_interval,
                recordings=str(recordings),
                connect_timeout=connect_timeout,
                max_rss_mb=options.max_rss_mb,
            ),
        )
        ready = children.expect("receiver", "ready", timeout=60)
        url = f"http://{LOOPBACK}:{ready['port']}/offer"
        senders = sender.start_senders(
            children,
            url,
            options.sessions,
            options.sessions_per_sender,
            media_path,
            connect_timeout,
        )
        _log(kind, f"receiver pid {ready['pid']}; {len(senders)} sender process(es) connecting")
        connected = children.expect("receiver", "connected", timeout=connect_timeout + 10)
        for name in senders:
            children.expect(name, "connected", timeout=10)
        _log(kind, f"{options.sessions} sessions flowing after {connected['seconds']:.1f} s")
        children.expect("receiver", "window_start", timeout=options.warmup + 30)
        sender_pids = [children.pid(name) for name in senders]
        sender_cpu, window_start = cpu_seconds(sender_pids), time.monotonic()
        _log(kind, f"measuring for {options.seconds:g} s")
        children.expect("receiver", "window_end", timeout=options.seconds + 30)
        load_during = load_average()
        sender_cpu = cpu_seconds(sender_pids) - sender_cpu
        window = time.monotonic() - window_start
        sent = sender.ask_all(children, senders, "pause", "sent")
        time.sleep(options.drain)  # what was sent reaches the recorders
        children.send("receiver", {"type": "stop"})
        result = children.expect("receiver", "result", timeout=receiver.STOP_TIMEOUT + 60)
        _log(kind, f"recorders stopped in {result['stopSeconds']:.2f} s")
        sender.close_all(children, senders)
    finally:
        children.end()
    result.pop("type")
    return {
        "receiver": result,
        "sent": sent,
        "senders": {"processes": len(senders), "cpuSeconds": sender_cpu, "windowSeconds": window},
        "load": {"before": load_before, "windowEnd": load_during},
    }


def inspect_files(run: dict[str, Any], recordings: Path, decode: bool) -> None:
    """Read back every session's file of ``run`` (PyAV), into ``run["files"]``."""
    run["files"] = {
        number: files.inspect(recordings / receiver.file_name(int(number)), decode)
        for number in run["sent"]
    }
