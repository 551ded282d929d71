"""Chromium as a subscriber of a forwarded aiortc publisher: its video plays (frames
presented one after another) and its sound arrives, decoded by Chromium itself."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from rtc_recorder.receive.forward import Forwarder

from .chromium import TIMEOUT_MS, launched_chromium
from .forwarding_support import Publication
from .media import Clock, SyntheticAudio, SyntheticVideo

# The page's side of the WHEP exchange: a recvonly offer (its candidates gathered).
OFFER = """async () => {
  const pc = new RTCPeerConnection();
  window.pc = pc;
  window.received = new MediaStream();
  pc.ontrack = (event) => window.received.addTrack(event.track);
  pc.addTransceiver("audio", {direction: "recvonly"});
  pc.addTransceiver("video", {direction: "recvonly"});
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") resolve();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && resolve();
  });
  return pc.localDescription.sdp;
}"""

# The answer taken, the video shown in a <video> whose presented frames are counted, the
# sound played by an <audio>.
PLAY = """async (answer) => {
  await window.pc.setRemoteDescription({type: "answer", sdp: answer});
  const audio = document.createElement("audio");
  audio.srcObject = window.received;
  document.body.append(audio);
  const video = document.createElement("video");
  video.muted = true;
  document.body.append(video);
  window.video = video;
  window.presented = [];
  const count = (now, metadata) => {
    window.presented.push(metadata.rtpTimestamp);
    video.requestVideoFrameCallback(count);
  };
  video.requestVideoFrameCallback(count);
  video.srcObject = window.received;
  await Promise.all([video.play(), audio.play()]);
}"""

INBOUND = """async () => {
  const stats = {};
  (await window.pc.getStats()).forEach((report) => {
    if (report.type === "inbound-rtp") stats[report.kind] = report;
  });
  return stats;
}"""


@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_chromium_plays_a_forwarded_publisher(codec: str) -> None:
    clock = Clock()
    publication = Publication()
    await publication.start([SyntheticVideo(clock), SyntheticAudio(clock)], codec)
    forwarder = Forwarder(publication.stream)
    async with launched_chromium("--autoplay-policy=no-user-gesture-required") as browser:
        page = await browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        server = RTCPeerConnection()
        offer = RTCSessionDescription(await page.evaluate(OFFER), "offer")
        await server.setRemoteDescription(offer)
        subscription = forwarder.subscribe(server)
        assert subscription.tracks["video"].codec.mimeType.lower() == f"video/{codec}"
        await server.setLocalDescription(await server.createAnswer())
        await page.evaluate(PLAY, server.localDescription.sdp)
        await page.wait_for_function("window.video.readyState >= 2")
        # Two seconds of pictures, each presented after the one before, by the RTP
        # timestamps the forwarder gave them (``mediaTime`` is Chromium's estimate of a
        # render time: while its jitter estimate settles it can step back a few ms).
        await page.wait_for_function("window.presented.length >= 60")
        steps = rtp_steps(await page.evaluate("window.presented"))
        assert all(0 < step < 1 << 31 for step in steps), steps
        # The publisher's cadence kept: each step a whole number of its frame intervals
        # (30 a second on a 90 kHz clock, to its rounding); Chromium may skip frames.
        assert all(min(step % 3000, -step % 3000) <= 2 for step in steps), steps
        await page.wait_for_function(
            "async () => { const s = await (" + INBOUND + ")();"
            " return s.audio && s.audio.totalSamplesReceived >= 96000; }"
        )
        stats = await page.evaluate(INBOUND)
        audio, video = stats["audio"], stats["video"]
        print(f"\n{codec}: " + json.dumps({k: stats_of(v) for k, v in stats.items()}))
        assert (
            audio["totalAudioEnergy"] > 0
            and audio["concealedSamples"] < 0.05 * (audio["totalSamplesReceived"])
        )
        assert video["framesDecoded"] >= 60 and video["keyFramesDecoded"] >= 1
        assert video["pliCount"] <= 2 and video["framesDropped"] <= 3
        assert not errors, errors
        await subscription.close()
    await publication.close()


def rtp_steps(timestamps: list[int]) -> list[int]:
    """The steps between successive 32-bit RTP timestamps, modulo the wrap."""
    return [(later - earlier) % (1 << 32) for earlier, later in pairwise(timestamps)]


def stats_of(report: dict[str, object]) -> dict[str, object]:
    """The figures worth printing of an inbound-rtp report."""
    keys = (
        "packetsLost",
        "framesDecoded",
        "keyFramesDecoded",
        "framesDropped",
        "pliCount",
        "nackCount",
        "totalSamplesReceived",
        "concealedSamples",
        "jitterBufferDelay",
        "jitterBufferEmittedCount",
    )
    return {key: report[key] for key in keys if key in report}
