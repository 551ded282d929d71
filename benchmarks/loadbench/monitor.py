"""What a benchmark samples while the server works: ``GET /healthz`` latency, the server's
CPU and RSS, and where the machine's CPU went."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field

import aiohttp
import psutil

from .children import cpu_seconds
from .machine import busy_seconds, cpu_pressure_seconds
from .server import BenchmarkError

PROBE_INTERVAL = 0.1  # seconds between /healthz requests

PROBE_TIMEOUT = 2.0  # a request slower than this is a failure

SAMPLE_INTERVAL = 1.0  # seconds between CPU / RSS samples of the server


@dataclass
class Probe:
    """One ``GET /healthz``: when it started (seconds from the monitor's start), the phase
    of the run, how long it took, and whether it succeeded."""

    at: float
    phase: str
    ms: float
    ok: bool
    error: str | None = None


@dataclass
class Sample:
    """One sample interval: the server process (CPU in cores, RSS, threads, involuntary
    context switches per second: how often it was preempted), the CPU of the senders, of
    this script, of the kernel's interrupt handling (irq + softirq: the loopback network
    mostly), stolen by the hypervisor, and of every other process (the machine's busy CPU
    minus all those), and the share of the interval in which some runnable task waited for
    a CPU (Linux PSI ``/proc/pressure/cpu``, None where unavailable)."""

    at: float
    phase: str
    cpu_cores: float
    rss_bytes: int
    threads: int
    preemptions_per_second: float
    senders_cpu_cores: float
    self_cpu_cores: float
    other_cpu_cores: float
    interrupts_cpu_cores: float
    steal_cpu_cores: float
    machine_busy_cores: float
    cpu_pressure: float | None


@dataclass
class _Counters:
    """Cumulative counters read at one instant (see :class:`Sample`)."""

    at: float
    server: float
    preemptions: int
    senders: float
    own: float
    machine: float
    interrupts: float
    steal: float
    pressure: float | None

    def rates(self, later: _Counters) -> dict[str, float]:
        """Each counter's increase per second from this reading to ``later`` (no
        ``pressure`` without PSI)."""
        elapsed = later.at - self.at
        rates = {}
        names = ("server", "preemptions", "senders", "own", "machine", "interrupts", "steal")
        for name in (*names, "pressure"):
            first, last = getattr(self, name), getattr(later, name)
            if first is not None and last is not None:
                rates[name] = round((last - first) / elapsed, 4)
        return rates


@dataclass
class Monitor:
    """A thread with its own event loop that requests ``/healthz`` every
    :data:`PROBE_INTERVAL` (on a fixed schedule: a slow answer does not delay the next
    request, so a stall shows in every request it holds up) over a new connection each time,
    and samples the server's CPU and RSS every :data:`SAMPLE_INTERVAL`. ``phase`` (set by the
    orchestrator) labels each probe and sample."""

    healthz_url: str
    server_pid: int
    phase: str = "idle"
    probes: list[Probe] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    # Set once the senders are started: all their CPU from then on counts as theirs.
    sender_pids: list[int] = field(default_factory=list)
    late_launches: int = 0  # probes started > 50 ms after their slot (this thread starved)
    error: str | None = None

    def __post_init__(self) -> None:
        self.origin = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    def start(self) -> None:
        """Start probing and sampling, on the monitor's own thread."""
        self._thread.start()
        if not self._ready.wait(10):
            raise BenchmarkError("the monitor thread did not start")

    def stop(self) -> None:
        """Stop probing (requests in flight finish first, within the timeout) and sampling."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(stopping.set)
        self._thread.join(PROBE_TIMEOUT + 5)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as error:  # reported in the results; the run goes on
            self.error = repr(error)
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._ready.set()
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            await asyncio.gather(self._probe_loop(http), self._sample_loop())

    async def _wait_stop(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; True if stopping was asked meanwhile."""
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, delay)):
                await self._stopping.wait()
        return self._stopping.is_set()

    async def _probe_loop(self, http: aiohttp.ClientSession) -> None:
        pending: set[asyncio.Task[None]] = set()
        slot = time.monotonic()
        while True:
            if time.monotonic() - slot > 0.05:
                self.late_launches += 1
            task = asyncio.create_task(self._probe(http, self.phase))
            pending.add(task)
            task.add_done_callback(pending.discard)
            slot += PROBE_INTERVAL
            if time.monotonic() > slot:  # behind by a whole slot: start again from now
                slot = time.monotonic()
            if await self._wait_stop(slot - time.monotonic()):
                break
        if pending:
            await asyncio.gather(*pending)

    async def _probe(self, http: aiohttp.ClientSession, phase: str) -> None:
        at = time.monotonic() - self.origin
        started = time.perf_counter()
        ok, error = False, None
        try:
            async with http.get(self.healthz_url) as response:
                body = await response.json()
                ok = response.status == 200 and body.get("status") == "ok"
                if not ok:
                    error = f"HTTP {response.status}: {body}"
        except TimeoutError:
            error = "timeout"
        except (aiohttp.ClientError, ValueError, AttributeError) as exc:
            error = repr(exc)
        ms = 1000 * (time.perf_counter() - started)
        if ok and ms > 1000 * PROBE_TIMEOUT:
            ok, error = False, "slower than the timeout"
        self.probes.append(Probe(round(at, 4), phase, round(ms, 3), ok, error))

    def _read(self, server: psutil.Process) -> _Counters:
        times = server.cpu_times()
        own = psutil.Process().cpu_times()
        machine = psutil.cpu_times()
        return _Counters(
            at=time.monotonic(),
            server=times.user + times.system,
            preemptions=server.num_ctx_switches().involuntary,
            senders=cpu_seconds(list(self.sender_pids)),
            own=own.user + own.system,
            machine=busy_seconds(machine),
            interrupts=getattr(machine, "irq", 0.0) + getattr(machine, "softirq", 0.0),
            steal=getattr(machine, "steal", 0.0),
            pressure=cpu_pressure_seconds(),
        )

    async def _sample_loop(self) -> None:
        try:
            server = psutil.Process(self.server_pid)
            before = self._read(server)
        except psutil.Error:
            return
        while not await self._wait_stop(SAMPLE_INTERVAL - (time.monotonic() - before.at)):
            try:
                after = self._read(server)
                rss, threads = server.memory_info().rss, server.num_threads()
            except psutil.Error:
                return  # the server exited
            rates = before.rates(after)
            accounted = sum(
                rates[name] for name in ("server", "senders", "own", "interrupts", "steal")
            )
            self.samples.append(
                Sample(
                    at=round(after.at - self.origin, 3),
                    phase=self.phase,
                    cpu_cores=rates["server"],
                    rss_bytes=int(rss),
                    threads=int(threads),
                    preemptions_per_second=rates["preemptions"],
                    senders_cpu_cores=rates["senders"],
                    self_cpu_cores=rates["own"],
                    other_cpu_cores=round(max(0.0, rates["machine"] - accounted), 4),
                    interrupts_cpu_cores=rates["interrupts"],
                    steal_cpu_cores=rates["steal"],
                    machine_busy_cores=rates["machine"],
                    cpu_pressure=rates.get("pressure"),
                )
            )
            before = after
