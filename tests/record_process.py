"""A recording in a process of its own, for tests that kill it or starve it of disk.

    python -m tests.record_process PATH --timeslice MS [--file-size-limit BYTES] [--seconds S]

Prints one JSON line per recorder event ({"event": ..., "state": ..., "name": ...}) and
"ready" once recording has started. With --file-size-limit, the process may not write a
file larger than that (RLIMIT_FSIZE, as a full disk or quota would stop it): writes fail
with EFBIG. A second recorder (audio only, data kept in memory) records alongside and must
be unaffected; its result is printed as {"other": {...}}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys

from rtc_recorder import MediaRecorder, MediaStream

from .media import Clock, SyntheticAudio, SyntheticVideo, probe


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--timeslice", type=int, default=1000)
    parser.add_argument("--file-size-limit", type=int)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    if args.file_size_limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.file_size_limit, args.file_size_limit))
    clock = Clock()
    recorder = MediaRecorder(
        args.path,
        stream=MediaStream([SyntheticVideo(clock, 640, 480, noise=True), SyntheticAudio(clock)]),
        videoBitsPerSecond=2_000_000,
    )
    for name in ("start", "pause", "resume", "dataavailable", "error", "stop"):
        recorder.on(
            name,
            lambda event, name=name: emit(
                event=name,
                state=recorder.state,
                error=getattr(getattr(event, "error", None), "name", None),
                size=len(getattr(event, "data", b"")),
            ),
        )
    other = MediaRecorder(mimeType="audio/webm;codecs=opus", stream=[SyntheticAudio(clock)])
    other_chunks: list[bytes] = []
    other.on("dataavailable", lambda event: other_chunks.append(event.data))
    stopped = asyncio.get_running_loop().create_future()
    recorder.on("stop", lambda event: stopped.done() or stopped.set_result(None))
    await recorder.start(args.timeslice)
    await other.start(args.timeslice)
    emit(event="ready")
    try:
        await asyncio.wait_for(stopped, args.seconds)
    except TimeoutError:
        await recorder.stop()
    await other.stop()
    audio = probe(b"".join(other_chunks))["audio"]
    emit(other={"state": other.state, "frames": len(audio.frames), "end": audio.end})


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
