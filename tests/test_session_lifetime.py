"""A session's cost and lifetime in the server: nothing decoded for nobody, nothing kept
after the session ends, and a failing receive hook that ends a recording, not a call."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path
from typing import Any

import pytest

from rtc_recorder.receive import hooks
from rtc_recorder.server.app import SESSIONS

from .media import ffmpeg_errors, wait_for
from .server_support import next_event, publish, running_app


def taps_of(client: Any, session: str) -> list[hooks.ReceiverTap]:
    stream = client.server.app[SESSIONS].get(session).stream
    taps = [hooks.tap_track(track) for track in stream]
    assert all(tap is not None for tap in taps)
    return [tap for tap in taps if tap is not None]


async def frames_assembled(taps: list[hooks.ReceiverTap], count: int) -> None:
    """Wait until every tap has assembled ``count`` more frames."""
    targets = [tap.frames_seen + count for tap in taps]
    await wait_for(
        lambda: all(t.frames_seen >= n for t, n in zip(taps, targets, strict=True)),
        15,
        "frames to arrive",
    )


async def test_no_frame_is_decoded_connected_recording_or_between_recordings(
    tmp_path: Path, decoder_calls: list[str]
) -> None:
    async with running_app(recordings=tmp_path) as client:
        publisher = await publish(client)
        base = f"/api/sessions/{publisher.session}"
        taps = taps_of(client, publisher.session)
        assert {tap.kind for tap in taps} == {"audio", "video"}
        await frames_assembled(taps, 30)  # connected, not recording
        socket = await client.ws_connect(f"{base}/events")
        for _ in range(2):  # two recordings, and the time between them
            await client.post(f"{base}/start")
            await next_event(socket, "dataavailable")
            await client.post(f"{base}/stop")
            stopped = await next_event(socket, "stop")
            assert not ffmpeg_errors(tmp_path / stopped["name"])
            await frames_assembled(taps, 30)
        assert decoder_calls == []
        assert all(tap.frames_to_decoder == 0 and not tap.decoding for tap in taps)
        await socket.close()
        await publisher.close()


async def test_a_reader_of_decoded_frames_gets_them_and_only_then_is_anything_decoded(
    tmp_path: Path, decoder_calls: list[str]
) -> None:
    async with running_app(recordings=tmp_path) as client:
        publisher = await publish(client)
        session = client.server.app[SESSIONS].get(publisher.session)
        video = next(track for track in session.stream if track.kind == "video")
        await frames_assembled(taps_of(client, publisher.session), 10)
        assert decoder_calls == []
        frame = await asyncio.wait_for(video.recv(), 10)  # somebody wants pictures
        assert frame.width == 320 and decoder_calls == ["video/VP8"]
        await publisher.close()


async def test_a_closed_session_leaves_nothing_behind(tmp_path: Path) -> None:
    async with running_app(recordings=tmp_path) as client:
        publisher = await publish(client)
        base = f"/api/sessions/{publisher.session}"
        session = client.server.app[SESSIONS].get(publisher.session)
        taps = taps_of(client, publisher.session)
        socket = await client.ws_connect(f"{base}/events")
        await client.post(f"{base}/start")
        await next_event(socket, "dataavailable")
        kept = [weakref.ref(o) for o in (session, session.pc, *taps, *session.stream)]
        kept += [weakref.ref(tap._receiver) for tap in taps]
        del session, taps
        assert (await client.delete(base)).status == 200
        await next_event(socket, "closed")
        await socket.close()
        await publisher.close()
        await wait_for(lambda: gc.collect() >= 0 and all(r() is None for r in kept), 10, "gc")


async def test_a_failing_receive_hook_ends_the_recording_and_not_the_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_app(recordings=tmp_path) as client:
        publisher = await publish(client)
        base = f"/api/sessions/{publisher.session}"
        session = client.server.app[SESSIONS].get(publisher.session)
        video = next(track for track in session.stream if track.kind == "video")
        socket = await client.ws_connect(f"{base}/events")
        await client.post(f"{base}/start")
        first = await next_event(socket, "dataavailable")
        assert first["size"] > 0

        def broken(self: Any, packet: Any, now: float) -> list[Any]:
            raise RuntimeError("a bug in frame assembly")

        monkeypatch.setattr(hooks.FrameAssembler, "push", broken)
        failed = await next_event(socket, "error")
        assert failed["error"] == "UnknownError"
        stopped = await next_event(socket, "stop")
        assert not ffmpeg_errors(tmp_path / stopped["name"])  # what was written plays
        # The call goes on, and aiortc's own path still has every frame.
        frames = [await asyncio.wait_for(video.recv(), 10) for _ in range(30)]
        assert len({frame.pts for frame in frames}) == 30
        assert session.pc.connectionState == "connected"
        assert publisher.pc.connectionState == "connected"
        await socket.close()
        await publisher.close()
