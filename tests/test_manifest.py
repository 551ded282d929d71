"""A room recording's manifest and its shared timeline, on explicit instants (no wall
clock): what the manifest says, that it always satisfies its schema, and that it is
replaced whole on disk."""

from __future__ import annotations

import datetime
import json
import threading
from pathlib import Path

import jsonschema
import pytest

from rtc_recorder.manifest import (
    MANIFEST,
    Manifest,
    ManifestWriter,
    Participant,
    RoomEvent,
    utc_text,
    write_manifest,
)
from rtc_recorder.timing import MemberTimeline, Timeline

from .room_support import valid_manifest

STARTED = datetime.datetime(2026, 12, 1, 10, 15, 0, 123_456, tzinfo=datetime.UTC)
FRAME = 1 / 30


def room_timeline() -> Timeline:
    """Started at 100 s of the reference clock, paused from 103 to 108 and from 110 to 111
    (exactly 150 and 30 frame intervals)."""
    timeline = Timeline(100.0, lambda: FRAME, video=False)
    timeline.pause(103.0)
    timeline.resume(108.0)
    timeline.pause(110.0)
    timeline.resume(111.0)
    return timeline


def test_cuts_are_where_and_how_much_each_pause_cut_in_room_time() -> None:
    timeline = room_timeline()
    assert timeline.cuts() == pytest.approx([3.0, 5.0])
    assert timeline.cut_lengths() == pytest.approx([5.0, 1.0])
    assert timeline.recorded_time(115.0) == pytest.approx(9.0)


def test_a_manifest_says_the_contracts_fields_in_room_seconds() -> None:
    timeline = room_timeline()
    manifest = Manifest("standup", "standup-20261201T101500Z", STARTED, "video/webm", "mix.ogg")
    manifest.participants = [
        Participant("a1b2c3", "Ada", "a1b2c3.webm", ["audio", "video"], 0.0, 9.0),
        Participant("d4e5f6", "Bob", "d4e5f6.webm", ["audio"], 4.2, None),
        Participant("g7h8i9", "", "g7h8i9.webm", ["video"], None, 6.5, "UnknownError"),
    ]
    manifest.events = [
        RoomEvent(0.0, "join", "a1b2c3"),
        RoomEvent(4.0, "join", "d4e5f6"),
        RoomEvent(4.5, "mute", "d4e5f6", "audio"),
    ]
    manifest.cuts = list(zip(timeline.cuts(), timeline.cut_lengths(), strict=True))
    manifest.duration = timeline.recorded_time(115.0)
    content = valid_manifest(manifest.to_json())
    assert content == {
        "room": "standup",
        "name": "standup-20261201T101500Z",
        "started": "2026-12-01T10:15:00.123Z",
        "state": "recording",
        "duration": 9.0,
        "mimeType": "video/webm",
        "cuts": [{"at": 3.0, "removed": 5.0}, {"at": 5.0, "removed": 1.0}],
        "mix": "mix.ogg",
        "participants": [
            {
                "session": "a1b2c3",
                "name": "Ada",
                "file": "a1b2c3.webm",
                "kinds": ["audio", "video"],
                "start": 0.0,
                "end": 9.0,
            },
            {
                "session": "d4e5f6",
                "name": "Bob",
                "file": "d4e5f6.webm",
                "kinds": ["audio"],
                "start": 4.2,
                "end": None,
            },
            {
                "session": "g7h8i9",
                "name": "",
                "file": "g7h8i9.webm",
                "kinds": ["video"],
                "start": None,
                "end": 6.5,
                "error": "UnknownError",
            },
        ],
        "events": [
            {"t": 0.0, "type": "join", "session": "a1b2c3"},
            {"t": 4.0, "type": "join", "session": "d4e5f6"},
            {"t": 4.5, "type": "mute", "session": "d4e5f6", "kind": "audio"},
        ],
    }


def test_times_are_written_to_the_microsecond_and_only_a_start_before_zero() -> None:
    manifest = Manifest("r", "r-x", STARTED, "audio/ogg", "mix.ogg", duration=1 / 3)
    manifest.participants = [Participant("s", "S", "s.ogg", ["audio"], -0.0065, 1 / 3)]
    manifest.events = [RoomEvent(-1e-9, "join", "s")]
    content = valid_manifest(manifest.to_json())
    assert content["duration"] == 0.333333
    assert content["participants"][0]["start"] == -0.0065  # Opus's pre-skip before 0
    assert content["events"][0]["t"] == 0.0


@pytest.mark.parametrize(
    "change",
    [
        {"state": "stopped"},
        {"room": "no spaces"},
        {"started": "2026-12-01 10:15:00"},
        {"cuts": [{"at": -1.0, "removed": 1.0}]},
        {"participants": [{"session": "s", "name": "S", "file": "../s.webm", "kinds": []}]},
        {"events": [{"t": 1.0, "type": "dance", "session": "s"}]},
        {"extra": True},
    ],
)
def test_the_schema_refuses_what_the_contract_does_not_say(change: dict[str, object]) -> None:
    content = Manifest("r", "r-x", STARTED, "audio/ogg", "mix.ogg").to_json()
    valid_manifest(content)
    with pytest.raises(jsonschema.ValidationError):
        valid_manifest({**content, **change})


def test_utc_text_is_utc_to_the_millisecond() -> None:
    paris = datetime.timezone(datetime.timedelta(hours=1))
    assert utc_text(datetime.datetime(2026, 1, 2, 3, 4, 5, 999_999, tzinfo=paris)) == (
        "2026-01-02T02:04:05.999Z"
    )


def test_a_manifest_is_replaced_whole(tmp_path: Path) -> None:
    write_manifest(tmp_path, {"version": 1})
    write_manifest(tmp_path, {"version": 2}, durable=False)
    assert json.loads((tmp_path / MANIFEST).read_text()) == {"version": 2}
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST]  # no temporary file left


def test_the_manifest_writer_writes_the_latest_and_reports_failures(tmp_path: Path) -> None:
    failures: list[BaseException] = []
    writer = ManifestWriter(tmp_path, failures.append)
    writer.start()
    for version in range(50):
        writer.publish({"version": version})
    writer.close()
    writer.join(10)
    assert json.loads((tmp_path / MANIFEST).read_text()) == {"version": 49}
    assert not failures

    gone = tmp_path / "gone"
    failed = threading.Event()
    broken = ManifestWriter(gone, lambda exc: (failures.append(exc), failed.set()))
    broken.start()
    broken.publish({"version": 0})
    assert failed.wait(10)
    broken.close()
    broken.join(10)
    assert isinstance(failures[0], FileNotFoundError)


# -- a file's share of the room's timeline --------------------------------------------------


def test_a_member_stops_alone_and_the_room_goes_on() -> None:
    room = Timeline(100.0, lambda: FRAME, video=False)
    leaving, staying = MemberTimeline(room), MemberTimeline(room)
    leaving.stop(102.0)
    assert leaving.output_time(101.0) == pytest.approx(1.0)
    assert leaving.output_time(102.5) is None and leaving.after_stop(102.5)
    assert staying.output_time(102.5) == pytest.approx(2.5)
    assert not staying.after_stop(102.5)
    assert leaving.recorded_time(105.0) == pytest.approx(2.0)
    room.stop(106.0)
    assert staying.after_stop(106.0) and staying.output_time(106.5) is None


def test_pauses_are_the_rooms_and_cut_every_member_alike() -> None:
    room = Timeline(100.0, lambda: FRAME, video=False)
    member = MemberTimeline(room)
    member.pause(101.0)  # a member's own pause changes nothing
    assert not room.paused
    room.pause(102.0)
    member.resume(103.0)  # nor does its resume
    assert room.paused and member.output_time(103.5) is None
    room.resume(104.0)
    assert member.output_time(104.5) == room.output_time(104.5) == pytest.approx(2.5)
    assert member.cuts() == room.cuts() == pytest.approx([2.0])
    assert member.segment(104.5) == room.segment(104.5) == 1


def test_a_member_stop_comes_after_the_latest_media_recorded() -> None:
    room = Timeline(100.0, lambda: FRAME, video=False)
    member = MemberTimeline(room)
    member.placed(102.0)
    member.stop(101.0)  # asked for before media already recorded: that stays
    assert member.output_time(102.0) == pytest.approx(2.0)
    assert member.output_time(102.01) is None
