"""The receiving process: a WebRTC server recording every session, and what it costs.

It serves ``POST /offer`` on 127.0.0.1 (JSON ``{sdp, type, session}`` -> the answer) the way
a recording server does: a peer connection per offer, ``@pc.on("track")`` ->
``recorder.addTrack(track)``, ``await recorder.start()`` after ``setRemoteDescription``,
``await recorder.stop()`` at the end. The recorder is aiortc's
(``aiortc.contrib.media.MediaRecorder``) or rtc-recorder's; rtc-recorder is imported
before any peer connection exists, as it requires, and only in its own run.

Measured in this process, over the window that starts ``warmup`` seconds after every
session is connected with media flowing: CPU time (``psutil``, all threads), the event
loop's lag (how late a 10 ms sleep wakes), RSS (sampled all along: the curve), the
machine's busy CPU, and per session the RTP received, the decoded frames waiting unread in
aiortc's track queues, and rtc-recorder's ``getStats()``.

Messages to the orchestrator: ``ready`` (port), ``connected``, ``window_start``,
``window_end``, then on ``stop``: recorders stopped, ``result`` with everything.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from .aiortc_order import video_first
from .common import LOOPBACK, Channel, loopback_only, rtc_configuration, run_child
from .lag import LagProbe
from .machine import MachineWindow

KINDS = ("aiortc", "rtc-recorder")
MEDIA_KINDS = ("video", "audio")
STOP_TIMEOUT = 120.0  # for stopping every recorder at the end of a run
CLOSE_TIMEOUT = 10.0  # for each step of the clean-up
IDLE_SECONDS = 2.0  # before the first session: the idle CPU and the baseline RSS


@dataclass(frozen=True)
class ReceiverConfig:
    """What to record and measure."""

    kind: str
    sessions: int
    seconds: float
    warmup: float
    sample_interval: float
    recordings: str
    connect_timeout: float
    max_rss_mb: float


@dataclass
class Session:
    """One recorded peer connection."""

    number: int
    pc: RTCPeerConnection
    recorder: Any
    path: Path
    tracks: list[MediaStreamTrack] = field(default_factory=list)
    offered_at: float = field(default_factory=time.monotonic)
    stopped: bool = False
    finished: bool = False

    async def inbound(self) -> dict[str, dict[str, int]]:
        """RTP packets received and lost, per kind."""
        result: dict[str, dict[str, int]] = {}
        for transceiver in self.pc.getTransceivers():
            report = await transceiver.receiver.getStats()
            for stats in report.values():
                if stats.type == "inbound-rtp":
                    result[stats.kind] = {
                        "packetsReceived": stats.packetsReceived,
                        "packetsLost": stats.packetsLost,
                    }
        return result

    async def flowing(self) -> bool:
        """Connected, both tracks arrived and RTP received on both."""
        if self.pc.connectionState != "connected" or len(self.tracks) < 2:
            return False
        inbound = await self.inbound()
        return all(inbound.get(kind, {}).get("packetsReceived", 0) > 0 for kind in MEDIA_KINDS)

    async def stop(self) -> None:
        """``await recorder.stop()``, once."""
        if not self.stopped:
            self.stopped = True
            await self.recorder.stop()
            self.finished = True


class RssSampler:
    """The process' resident set size every ``interval`` seconds, with the phase it was in.

    Sampled on a thread of its own: a recorder that blocks the event loop for seconds would
    otherwise leave holes in the curve exactly where it matters. Passing ``limit_bytes``
    sets :attr:`over_limit` (on the loop).
    """

    def __init__(self, process: psutil.Process, interval: float, limit_bytes: float) -> None:
        self.process = process
        self.interval = interval
        self.limit_bytes = limit_bytes
        self.phase = "idle"
        self.samples: list[tuple[float, int, str]] = []
        self.over_limit = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> int:
        """Take a sample now (from any thread)."""
        rss = int(self.process.memory_info().rss)
        with self._lock:
            self.samples.append((time.monotonic(), rss, self.phase))
        if rss > self.limit_bytes and not self.over_limit.is_set():
            self._loop.call_soon_threadsafe(self.over_limit.set)
        return rss

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def curve(self, origin: float) -> list[list[Any]]:
        """``[seconds from origin, rss bytes, phase]`` for every sample."""
        with self._lock:
            return [[round(t - origin, 3), rss, phase] for t, rss, phase in self.samples]

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stopping.is_set():
            self.sample()
            next_at += self.interval
            self._stopping.wait(max(0.0, next_at - time.monotonic()))


def file_name(number: int) -> str:
    """The recording of session ``number``, in the recordings folder."""
    return f"session-{number:03d}.webm"


def _recorder_factory(kind: str) -> Any:
    """The recorder class; rtc-recorder must be imported before any RTCPeerConnection."""
    if kind == "aiortc":
        from aiortc.contrib.media import MediaRecorder as AiortcRecorder

        return AiortcRecorder
    if kind == "rtc-recorder":
        import rtc_recorder

        return rtc_recorder.MediaRecorder
    raise ValueError(f"unknown recorder kind {kind!r}")


def _module_file(recorder_class: Any) -> str | None:
    """Where the recorder was imported from (which checkout or install was measured)."""
    module = sys.modules.get(recorder_class.__module__)
    return getattr(module, "__file__", None)


class Receiver:
    """The recording server and its measurements."""

    def __init__(self, config: ReceiverConfig, channel: Channel) -> None:
        self.config = config
        self.channel = channel
        self.recorder_class = _recorder_factory(config.kind)
        self.directory = Path(config.recordings)
        self.sessions: dict[int, Session] = {}
        self.process = psutil.Process()
        self.lag = LagProbe()
        self.rss = RssSampler(self.process, config.sample_interval, config.max_rss_mb * 2**20)

    async def offer(self, request: web.Request) -> web.Response:
        """``POST /offer``: a new session, recorded from its first frame."""
        params = await request.json()
        number = int(params["session"])
        if number in self.sessions or not 0 <= number < self.config.sessions:
            raise web.HTTPBadRequest(text=f"unexpected session {number}")
        pc = RTCPeerConnection(rtc_configuration())
        path = self.directory / file_name(number)
        session = Session(number, pc, self.recorder_class(str(path)), path)
        self.sessions[number] = session
        first_video = asyncio.Event()

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            session.tracks.append(track)
            if self.config.kind == "aiortc":
                track = video_first(track, first_video)
            session.recorder.addTrack(track)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=params["sdp"], type=params["type"]))
        await session.recorder.start()
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})

    async def wait_flowing(self) -> float:
        """Seconds until every session is connected and receiving both tracks."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                await self._until_flowing()
        except TimeoutError:
            flowing = sum([await s.flowing() for s in self.sessions.values()])
            raise RuntimeError(
                f"{flowing} of {self.config.sessions} sessions flowing (with "
                f"{len(self.sessions)} offers) after {self.config.connect_timeout:g} s"
            ) from None
        return time.monotonic() - started

    async def _until_flowing(self) -> None:
        while True:
            if len(self.sessions) == self.config.sessions:
                states = await asyncio.gather(*(s.flowing() for s in self.sessions.values()))
                if all(states):
                    return
            failed = [s.number for s in self.sessions.values() if s.pc.connectionState == "failed"]
            if failed:
                raise RuntimeError(f"sessions {failed} failed to connect")
            await asyncio.sleep(0.1)

    async def measure_idle(self) -> float:
        """The receiver's own CPU (cores) before any session: the event loop, the lag probe
        and the RSS sampler, all of which keep running during the window."""
        before = self.process.cpu_times()
        started = time.monotonic()
        await asyncio.sleep(max(IDLE_SECONDS, 2 * self.config.sample_interval))
        after = self.process.cpu_times()
        busy = float(after.user + after.system - before.user - before.system)
        return busy / (time.monotonic() - started)

    async def measure_window(self) -> dict[str, Any]:
        """CPU, lag and machine load over ``seconds`` (fewer if RSS passes the limit)."""
        machine = MachineWindow()
        cpu_before = self.process.cpu_times()
        started = time.monotonic()
        self.lag.recording = True
        self.rss.phase = "window"
        self.rss.sample()
        self.channel.send({"type": "window_start"})
        limit_hit = False
        try:
            async with asyncio.timeout(self.config.seconds):
                await self.rss.over_limit.wait()
                limit_hit = True
        except TimeoutError:
            pass
        cpu_after = self.process.cpu_times()
        ended = time.monotonic()
        load = machine.end()
        self.rss.sample()
        self.lag.recording = False
        self.rss.phase = "after"
        self.channel.send({"type": "window_end"})
        elapsed = ended - started
        return {
            "start": started,
            "seconds": elapsed,
            "cpuUser": cpu_after.user - cpu_before.user,
            "cpuSystem": cpu_after.system - cpu_before.system,
            "machineBusyCores": load["busyCores"],
            "machineCores": load["cores"],
            "rssLimitHit": limit_hit,
        }

    async def session_report(self, session: Session) -> dict[str, Any]:
        return {
            "session": session.number,
            "file": str(session.path),
            "connectionState": session.pc.connectionState,
            "inbound": await session.inbound(),
        }

    async def stop_all(self) -> float:
        """Stop every recorder (in turn, as a server would on hang-up); the seconds it took."""
        started = time.monotonic()
        async with asyncio.timeout(STOP_TIMEOUT):
            for session in self.sessions.values():
                await session.stop()
        return time.monotonic() - started

    async def close(self) -> None:
        """Finalize what is still recording and close every peer connection, within
        :data:`CLOSE_TIMEOUT` each (this also runs when the run is aborted)."""
        stopping = [s.stop() for s in self.sessions.values() if not s.stopped]
        if stopping:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await asyncio.gather(*stopping, return_exceptions=True)
            except TimeoutError:
                unfinished = [s.number for s in self.sessions.values() if not s.finished]
                print(f"receiver: recorders of sessions {unfinished} did not stop", flush=True)
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.gather(
                    *(s.pc.close() for s in self.sessions.values()), return_exceptions=True
                )
        except TimeoutError:
            print("receiver: closing the peer connections timed out", flush=True)

    async def run(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob("session-*.webm"):
            stale.unlink()
        app = web.Application()
        app.router.add_post("/offer", self.offer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        lag_probe = asyncio.create_task(self.lag.run())
        self.rss.start()
        try:
            site = web.TCPSite(runner, LOOPBACK, 0)
            await site.start()
            port = runner.addresses[0][1]
            gc.collect()
            idle_cpu = await self.measure_idle()
            baseline = self.rss.sample()
            self.rss.phase = "connecting"
            self.channel.send({"type": "ready", "port": port, "pid": os.getpid()})
            connect_seconds = await self.wait_flowing()
            self.channel.send({"type": "connected", "seconds": connect_seconds})
            self.rss.phase = "warmup"
            await asyncio.sleep(self.config.warmup)
            window = await self.measure_window()
            sessions = [await self.session_report(s) for s in self.sessions.values()]
            await self.channel.receive("stop")
            self.rss.phase = "stopping"
            stop_seconds = await self.stop_all()
            for report, session in zip(sessions, self.sessions.values(), strict=True):
                stats = getattr(session.recorder, "getStats", None)
                report["recorderStats"] = stats() if stats is not None else None
            self.rss.sample()
            self.channel.send(
                {
                    "type": "result",
                    "kind": self.config.kind,
                    "recorderModule": _module_file(self.recorder_class),
                    "config": asdict(self.config),
                    "connectSeconds": connect_seconds,
                    "stopSeconds": stop_seconds,
                    "rssBaseline": baseline,
                    "idleCpuCores": idle_cpu,
                    "window": window,
                    "lagSeconds": self.lag.samples,
                    "rssCurve": self.rss.curve(window["start"]),
                    "sessions": sessions,
                }
            )
        finally:
            lag_probe.cancel()
            self.rss.stop()
            await self.close()
            await runner.cleanup()


async def _main(channel: Channel, config: ReceiverConfig) -> None:
    loopback_only()
    await Receiver(config, channel).run()


def run(connection: Connection, config: ReceiverConfig) -> None:
    """Process entry point."""
    run_child(connection, lambda channel: _main(channel, config))
