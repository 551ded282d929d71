"""The recorder contract, section 2: one test per row of the state table and per ordering
rule, observing events through ``on(...)`` and through ``onX`` attributes, with the state
read inside each handler."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from aiortc.mediastreams import AudioStreamTrack

from rtc_recorder import (
    BlobEvent,
    ErrorEvent,
    InvalidStateError,
    MediaRecorder,
    MediaStream,
    NotSupportedError,
)
from rtc_recorder.errors import InvalidStateError as OurInvalidStateError

from .media import SyntheticAudio, SyntheticVideo, ffmpeg_errors, probe
from .support import EventLog, log_media

STYLES = ["on", "attribute"]


def audio_recorder(**kwargs: object) -> MediaRecorder:
    recorder = MediaRecorder(mimeType="audio/webm;codecs=opus", **kwargs)  # type: ignore[arg-type]
    recorder.addTrack(SyntheticAudio())
    return recorder


# -- constructor ---------------------------------------------------------------------


def test_constructor_rejects_unsupported_type_with_not_supported_error() -> None:
    with pytest.raises(NotSupportedError) as raised:
        MediaRecorder(mimeType="video/x-flv;codecs=h263")
    assert raised.value.name == "NotSupportedError"


def test_constructor_starts_inactive_with_the_given_type() -> None:
    recorder = MediaRecorder(mimeType="video/webm;codecs=vp8,opus")
    assert recorder.state == "inactive"
    assert recorder.mimeType == "video/webm;codecs=vp8,opus"


def test_invalid_state_error_is_aiortcs_and_carries_a_dom_name() -> None:
    from aiortc.exceptions import InvalidStateError as AiortcInvalidStateError

    assert issubclass(InvalidStateError, AiortcInvalidStateError)
    assert InvalidStateError is OurInvalidStateError
    assert InvalidStateError("x").name == "InvalidStateError"


# -- start -------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["recording", "paused"])
async def test_start_while_active_raises_invalid_state_error(state: str) -> None:
    recorder = audio_recorder()
    recorder.start()
    if state == "paused":
        recorder.pause()
    with pytest.raises(InvalidStateError):
        recorder.start()
    assert recorder.state == state
    await recorder.stop()


async def test_start_without_live_track_raises_not_supported_error() -> None:
    recorder = MediaRecorder(mimeType="audio/webm")
    with pytest.raises(NotSupportedError):
        recorder.start()
    ended = AudioStreamTrack()
    ended.stop()
    recorder.addTrack(ended)
    with pytest.raises(NotSupportedError):
        recorder.start()
    assert recorder.state == "inactive"


async def test_start_without_a_track_the_type_takes_raises_not_supported_error() -> None:
    recorder = MediaRecorder(mimeType="audio/ogg")
    recorder.addTrack(SyntheticVideo())
    with pytest.raises(NotSupportedError):
        recorder.start()


@pytest.mark.parametrize("style", STYLES)
async def test_start_records_now_and_fires_start_then_timeslice_chunks(style: str) -> None:
    recorder = audio_recorder()
    log = EventLog(recorder, style)
    done = recorder.start(200)
    assert recorder.state == "recording"
    assert log.names == []  # events are queued, never fired from inside the call
    await done
    assert log.entries[0][:2] == ("start", "recording")
    assert recorder.mimeType == "audio/webm;codecs=opus"
    for _ in range(3):
        await log.next("dataavailable")
    await recorder.stop()
    chunks = log.events("dataavailable")
    assert all(isinstance(chunk, BlobEvent) for chunk in chunks)
    timecodes = [chunk.timecode for chunk in chunks]
    assert timecodes[0] == 0.0
    assert timecodes == sorted(timecodes)
    # every timeslice chunk spans at least the timeslice of media
    assert all(round(b - a, 3) >= 200 for a, b in itertools.pairwise(timecodes)), timecodes


# -- pause -------------------------------------------------------------------------------


async def test_pause_while_inactive_raises_invalid_state_error() -> None:
    recorder = audio_recorder()
    with pytest.raises(InvalidStateError):
        recorder.pause()


@pytest.mark.parametrize("style", STYLES)
async def test_pause_while_paused_does_nothing(style: str) -> None:
    recorder = audio_recorder()
    log = EventLog(recorder, style)
    recorder.start()
    await recorder.pause()
    await recorder.pause()
    assert recorder.state == "paused"
    await recorder.stop()
    assert log.names.count("pause") == 1


@pytest.mark.parametrize("style", STYLES)
async def test_pause_while_recording_pauses_now_and_fires_pause(style: str) -> None:
    recorder = audio_recorder()
    log = EventLog(recorder, style)
    await recorder.start()
    done = recorder.pause()
    assert recorder.state == "paused"
    assert "pause" not in log.names
    await done
    assert log.entries[-1][:2] == ("pause", "paused")
    await recorder.stop()


# -- resume ------------------------------------------------------------------------------


async def test_resume_while_inactive_raises_invalid_state_error() -> None:
    recorder = audio_recorder()
    with pytest.raises(InvalidStateError):
        recorder.resume()


@pytest.mark.parametrize("style", STYLES)
async def test_resume_while_recording_does_nothing(style: str) -> None:
    recorder = audio_recorder()
    log = EventLog(recorder, style)
    await recorder.start()
    await recorder.resume()
    assert recorder.state == "recording"
    await recorder.stop()
    assert "resume" not in log.names


@pytest.mark.parametrize("style", STYLES)
async def test_resume_while_paused_records_now_and_fires_resume(style: str) -> None:
    recorder = audio_recorder()
    log = EventLog(recorder, style)
    await recorder.start()
    await recorder.pause()
    done = recorder.resume()
    assert recorder.state == "recording"
    assert "resume" not in log.names
    await done
    assert log.entries[-1][:2] == ("resume", "recording")
    await recorder.stop()


# -- requestData -------------------------------------------------------------------------


async def test_request_data_while_inactive_raises_invalid_state_error() -> None:
    recorder = audio_recorder()
    with pytest.raises(InvalidStateError):
        recorder.requestData()


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("state", ["recording", "paused"])
async def test_request_data_fires_dataavailable_with_what_was_gathered(
    style: str, state: str
) -> None:
    recorder = audio_recorder()
    log = EventLog(recorder, style)
    await recorder.start()
    await log_media(recorder, 0.5)
    if state == "paused":
        await recorder.pause()
    await recorder.requestData()
    first = log.events("dataavailable")
    assert len(first) == 1 and len(first[0].data) > 0
    assert log.states("dataavailable") == [state]
    # nothing new gathered while paused: the next chunk may be empty, but it fires
    if state == "paused":
        await recorder.requestData()
        assert len(log.events("dataavailable")) == 2
    await recorder.stop()
    data = b"".join(chunk.data for chunk in log.events("dataavailable"))
    assert probe(data)["audio"].frames


# -- stop --------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
async def test_stop_while_inactive_does_nothing(style: str) -> None:
    recorder = audio_recorder()
    log = EventLog(recorder, style)
    await recorder.stop()
    await recorder.stop()
    assert recorder.state == "inactive"
    assert log.names == []


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("state", ["recording", "paused"])
async def test_stop_fires_the_rest_then_stop(style: str, state: str, tmp_path: Path) -> None:
    path = tmp_path / "out.webm"
    recorder = audio_recorder(file=path)
    log = EventLog(recorder, style)
    await recorder.start()
    await log_media(recorder, 0.3)
    if state == "paused":
        recorder.pause()
    done = recorder.stop()
    assert recorder.state == "inactive"
    await done
    assert log.names[-2:] == ["dataavailable", "stop"]
    assert log.states("stop") == ["inactive"]
    assert log.states("dataavailable")[-1] == "inactive"
    # stop() resolves once the file is finalized and closed
    assert path.read_bytes() and not ffmpeg_errors(path)


# -- ordering rules ------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
async def test_events_come_in_contract_order(style: str) -> None:
    recorder = audio_recorder()
    log = EventLog(recorder, style)
    recorder.start(100)
    recorder.pause()
    recorder.resume()
    recorder.pause()
    recorder.requestData()
    recorder.resume()
    await log_media(recorder, 0.4)
    await recorder.stop()
    names = log.names
    assert names[0] == "start" and names[-1] == "stop"
    assert [n for n in names if n in ("pause", "resume")] == ["pause", "resume", "pause", "resume"]
    assert names.count("stop") == 1 and "error" not in names
    assert all(i < names.index("stop") for i, n in enumerate(names) if n == "dataavailable")


@pytest.mark.parametrize("style", STYLES)
async def test_start_fires_even_when_stop_follows_synchronously(style: str) -> None:
    recorder = audio_recorder()
    log = EventLog(recorder, style)
    recorder.start()
    done = recorder.stop()
    await done
    assert log.names == ["start", "dataavailable", "stop"]
    assert log.states("start") == ["inactive"]


async def test_a_new_recordings_events_wait_for_the_previous_stop() -> None:
    recorder = audio_recorder()
    log = EventLog(recorder)
    recorder.start()
    recorder.stop()
    recorder.start()
    await recorder.stop()
    assert log.names == ["start", "dataavailable", "stop"] * 2


async def test_second_stop_waits_for_finalization(tmp_path: Path) -> None:
    path = tmp_path / "a.webm"
    recorder = audio_recorder(file=path)
    log = EventLog(recorder)
    await recorder.start()
    recorder.stop()
    await recorder.stop()  # inactive already: no event, but waits for the first stop
    assert log.names[-1] == "stop"
    assert not ffmpeg_errors(path)


async def test_awaitables_resolve_after_their_event_and_may_be_ignored() -> None:
    recorder = audio_recorder()
    seen: list[str] = []
    recorder.on("start", lambda e: seen.append("start"))
    await recorder.start()
    assert seen == ["start"]
    recorder.pause()  # never awaited: nothing warns, nothing leaks
    recorder.resume()
    await recorder.stop()


@pytest.mark.parametrize("style", STYLES)
async def test_recording_stops_by_itself_when_every_track_ends(style: str) -> None:
    video, audio = SyntheticVideo(), SyntheticAudio()
    recorder = MediaRecorder(stream=MediaStream([video, audio]))
    log = EventLog(recorder, style)
    await recorder.start()
    video.stop()
    await log_media(recorder, 0.2)
    assert recorder.state == "recording"  # one track is still live
    audio.stop()
    await log.next("stop")
    assert log.names[-2:] == ["dataavailable", "stop"]
    assert "error" not in log.names
    assert recorder.state == "inactive"


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("change", ["add", "remove"])
async def test_track_set_change_while_recording_errors_then_stops(style: str, change: str) -> None:
    audio = SyntheticAudio()
    stream = MediaStream([audio])
    recorder = MediaRecorder(stream=stream, mimeType="audio/webm")
    log = EventLog(recorder, style)
    await recorder.start()
    if change == "add":
        recorder.addTrack(SyntheticAudio())
    else:
        stream.removeTrack(audio)
    assert "error" not in log.names  # queued, not fired inside the call
    await log.next("stop")
    assert log.names[-3:] == ["error", "dataavailable", "stop"]
    error = log.events("error")[0]
    assert isinstance(error, ErrorEvent)
    assert error.error.name == "InvalidModificationError"
    assert log.states("error") == ["inactive"]


@pytest.mark.parametrize("style", STYLES)
async def test_unwritable_path_errors_then_stops(style: str, tmp_path: Path) -> None:
    recorder = audio_recorder(file=tmp_path / "missing-folder" / "out.webm")
    log = EventLog(recorder, style)
    await recorder.start()
    await log.next("stop")
    assert log.names == ["start", "error", "dataavailable", "stop"]
    assert log.events("error")[0].error.name == "UnknownError"


def test_permission_denied_is_reported_as_a_security_error() -> None:
    # Tests run as root, for whom file permissions do not apply: check the mapping itself.
    from rtc_recorder.errors import as_recorder_error

    assert as_recorder_error(PermissionError(13, "Permission denied")).name == "SecurityError"
    assert as_recorder_error(OSError(28, "No space left on device")).name == "UnknownError"


async def test_failing_handlers_do_not_break_the_recording() -> None:
    recorder = audio_recorder()
    log = EventLog(recorder)

    def broken(event: object) -> None:
        raise RuntimeError("handler bug")

    async def broken_async(event: object) -> None:
        raise RuntimeError("async handler bug")

    recorder.on("start", broken)
    recorder.on("dataavailable", broken_async)
    await recorder.start()
    await recorder.stop()
    assert log.names == ["start", "dataavailable", "stop"]


def test_is_type_supported_follows_the_algorithm() -> None:
    supported = MediaRecorder.isTypeSupported
    assert supported("")
    for good in (
        "video/webm;codecs=vp8,opus",
        "video/webm;codecs=vp9,opus",
        "video/webm;codecs=av1,opus",
        "video/x-matroska;codecs=avc1,opus",
        "video/mp4;codecs=avc1,opus",
        "video/mp4;codecs=avc1,mp4a.40.2",
        "audio/webm;codecs=opus",
        "audio/ogg;codecs=opus",
        "audio/wav",
        'video/webm; codecs="vp8, opus"',
        "VIDEO/WEBM",
        "video/mp4;codecs=avc1.42E01E",
    ):
        assert supported(good), good
    for bad in (
        "video",
        "video/",
        "video/webm;codecs=",
        "video/avi",
        "video/webm;codecs=vp8,vp9",
        "video/webm;codecs=opus,opus",
        "video/webm;codecs=avc1",
        "audio/webm;codecs=vp8",
        "audio/ogg;codecs=vorbis",
        "video/mp4;codecs=vp8",
        "video/webm;codecs=vp8;codecs=vp9",
    ):
        assert not supported(bad), bad
