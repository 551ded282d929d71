"""Independent WHIP clients publish to the server (see ``tests/interop_support.py``):
FFmpeg's WHIP muxer and GStreamer's webrtcbin, each in a network namespace of its own."""

from __future__ import annotations

import pytest

from .interop_support import Case, Outcome, run_case

pytestmark = pytest.mark.timeout(120)

MKV = "video/x-matroska;codecs=avc1,opus"
MP4 = "video/mp4;codecs=avc1,opus"
WEBM = "video/webm;codecs=vp8,opus"


def assert_recorded_in_pass_through(outcome: Outcome, codec: str) -> None:
    """Finalized, clean, ≥ 95 % of the frames sent, nothing decoded."""
    assert outcome.published["error"] is None, outcome.published
    assert outcome.recording is not None, outcome.log
    assert outcome.ffmpeg_errors == ""
    assert outcome.video_ratio >= 0.95, (outcome.video_frames, outcome.published)
    assert outcome.audio_frames >= 0.95 * outcome.published["audio_packets"]
    assert {t["kind"]: t["codec"] for t in outcome.tracks} == {"video": codec, "audio": "opus"}
    assert all(t["path"] == "passthrough" and t["framesDecoded"] == 0 for t in outcome.tracks)


@pytest.mark.parametrize(
    ("codec", "mime_type"), [("vp8", WEBM), ("h264", MKV)], ids=["vp8", "h264"]
)
async def test_gstreamer_webrtcbin_publishes_by_whip(codec: str, mime_type: str) -> None:
    outcome = await run_case(Case("gstreamer", codec, "constrained-baseline", mime_type))
    assert_recorded_in_pass_through(outcome, codec)


@pytest.mark.parametrize("mime_type", [MKV, MP4], ids=["matroska", "mp4"])
async def test_ffmpeg_whip_high_profile_h264_recorded_in_pass_through(mime_type: str) -> None:
    outcome = await run_case(Case("ffmpeg", "h264", "high", mime_type, certificate="p256"))
    assert_recorded_in_pass_through(outcome, "h264")
    assert outcome.profile == "High"


async def test_ffmpeg_whip_own_p224_certificate_fails_with_the_reason_logged() -> None:
    outcome = await run_case(Case("ffmpeg", "h264", "baseline", MKV, certificate="own"))
    assert "Input/output error" in outcome.published["error"]
    assert outcome.recording is None
    assert "DTLS certificate is on secp224r1" in outcome.log
    assert '"state": "failed"' in outcome.log
