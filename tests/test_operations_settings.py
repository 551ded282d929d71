"""The storage and webhook settings, and the pure pieces of uploading: part arithmetic,
backoff, and which session messages leave the server as notices."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import pytest

from benchmarks.loadbench.object_store import WEBHOOK_SECRET
from rtc_recorder.server import settings
from rtc_recorder.server.notices import Notice, Notices
from rtc_recorder.server.storage import (
    MIB,
    Backoff,
    BucketLocation,
    FolderLocation,
    parse_storage,
)
from rtc_recorder.server.uploader import complete_parts, part_ranges


def test_storage_urls_name_a_folder_or_a_bucket_and_prefix() -> None:
    assert parse_storage("file:/data/rec") == FolderLocation(Path("/data/rec"))
    assert parse_storage("s3://bucket") == BucketLocation("bucket", "")
    assert parse_storage("s3://bucket/a/b/") == BucketLocation("bucket", "a/b/")
    assert BucketLocation("bucket", "a/").url("x.webm") == "s3://bucket/a/x.webm"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("gs://bucket", "only S3"),
        ("az://container", "only S3"),
        ("s3://", "needs a bucket"),
        ("ftp://host", "expected file:DIR"),
        ("file:", "needs a folder"),
    ],
)
def test_storage_urls_that_cannot_be_used_are_refused_with_the_reason(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_storage(url)


def test_the_spool_is_the_recordings_folder_unless_told_otherwise() -> None:
    assert settings.parse([]).spool_folder == Path("recordings")
    assert settings.parse(["--storage", "file:/tmp/r"]).spool_folder == Path("/tmp/r")
    bucket = settings.parse(["--storage", "s3://b", "--recordings", "/tmp/x"])
    assert bucket.spool_folder == Path("/tmp/x")
    spooled = settings.parse(["--storage", "s3://b", "--spool", "/tmp/s"])
    assert spooled.spool_folder == Path("/tmp/s") and spooled.part_size == 8 * MIB


def test_storage_and_webhook_settings_come_from_flags_or_the_environment() -> None:
    environ = {
        "RTC_RECORDER_STORAGE": "s3://b/p",
        "RTC_RECORDER_S3_ENDPOINT": "http://127.0.0.1:9000",
        "RTC_RECORDER_PART_SIZE": str(6 * MIB),
        "RTC_RECORDER_KEEP_LOCAL": "1",
        "RTC_RECORDER_WEBHOOK": "http://127.0.0.1:1/a  http://127.0.0.1:1/b",
        "RTC_RECORDER_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "RTC_RECORDER_WEBHOOK_RETRY_SECONDS": "60",
    }
    parsed = settings.parse([], environ)
    assert parsed.location == BucketLocation("b", "p/")
    assert parsed.s3_endpoint == "http://127.0.0.1:9000" and parsed.keep_local
    assert parsed.part_size == 6 * MIB and parsed.webhook_retry_seconds == 60
    assert parsed.webhook == ("http://127.0.0.1:1/a", "http://127.0.0.1:1/b")
    flags = ["--webhook", "http://h/1", "--webhook", "http://h/2"]
    flags += ["--webhook-secret", WEBHOOK_SECRET]
    assert settings.parse(flags, environ).webhook == ("http://h/1", "http://h/2")


def test_every_repeatable_setting_splits_its_variable_on_commas_and_whitespace() -> None:
    environ = {
        "RTC_RECORDER_ICE_ADDRESS": "127.0.0.1, 127.0.0.1\t127.0.0.1,,",
        "RTC_RECORDER_WEBHOOK": " http://h/1,http://h/2\n http://h/3 ",
        "RTC_RECORDER_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    parsed = settings.parse([], environ)
    assert parsed.ice_address == ("127.0.0.1",) * 3
    assert parsed.webhook == ("http://h/1", "http://h/2", "http://h/3")
    # A flag's value is taken whole: a URL may hold a comma.
    flagged = settings.parse(["--webhook", "http://h/?a=1,2"], environ)
    assert flagged.webhook == ("http://h/?a=1,2",)
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    shown = " ".join(parser.format_help().split())
    for name in ("ICE_ADDRESS", "WEBHOOK"):
        rule = f"repeatable (env RTC_RECORDER_{name}: the values separated by commas or spaces)"
        assert rule in shown


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--part-size", str(MIB)], "at least"),
        (["--webhook", "http://h/1"], "needs --webhook-secret"),
        (["--webhook", "h/1", "--webhook-secret", WEBHOOK_SECRET], "not an http"),
        (["--webhook-secret", "whsec_"], "webhook-secret"),
        (["--storage", "file:/a", "--recordings", "/b"], "different folders"),
    ],
)
def test_settings_that_cannot_work_are_refused(argv: list[str], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        settings.parse(argv, {})


def test_parts_are_whole_part_sizes_with_the_head_held_back_until_the_end() -> None:
    assert list(complete_parts(9, 5)) == []
    assert list(complete_parts(10, 5)) == [2]
    assert list(complete_parts(16, 5)) == [2, 3]
    assert part_ranges(0, 5) == [(0, 0)]
    assert part_ranges(12, 5) == [(0, 5), (5, 10), (10, 12)]
    assert part_ranges(10, 5) == [(0, 5), (5, 10)]


def test_backoff_doubles_up_to_its_cap_and_starts_again_after_a_success() -> None:
    backoff = Backoff(first=0.5, cap=10, jitter=0)
    assert [backoff.next_delay() for _ in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]
    backoff.reset()
    assert backoff.next_delay() == 0.5
    spread = Backoff(first=1, cap=10, jitter=0.2, rng=random.Random(1))
    assert all(0.8 <= spread.next_delay() / 2**i <= 1.2 for i in range(3))


def test_session_messages_become_public_notices_and_the_rest_stay_inside() -> None:
    notices = Notices()
    heard: list[Notice] = []
    notices.subscribe(heard.append)
    notices.from_session("s1", {"type": "dataavailable", "size": 10, "seq": 4})
    notices.from_session("s1", {"type": "connectionstatechange", "seq": 5})
    notices.from_session("s1", {"type": "stop", "name": "s1-x.webm", "duration": 2.0, "seq": 6})
    notices.from_session("s1", {"type": "closed", "reason": "hang-up", "seq": 7})
    assert [(n.type, n.data) for n in heard] == [
        ("recording.stopped", {"session": "s1", "name": "s1-x.webm", "duration": 2.0}),
        ("session.ended", {"session": "s1", "reason": "hang-up"}),
    ]
    assert heard[0].recording == "s1-x.webm" and heard[1].recording is None


def test_a_failing_listener_does_not_keep_a_notice_from_the_others() -> None:
    notices = Notices()
    heard: list[str] = []

    def broken(notice: Notice) -> None:
        raise RuntimeError("broken")

    notices.subscribe(broken)
    notices.subscribe(lambda notice: heard.append(notice.type))
    notices.from_session("s1", {"type": "session"})
    assert heard == ["session.started"]
