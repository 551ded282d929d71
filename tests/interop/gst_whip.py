"""A WHIP client made of GStreamer's webrtcbin: publishes a test pattern (VP8 or H.264) and
a tone (Opus) to a WHIP endpoint, then hangs up with DELETE.

Run it with Debian's own ``/usr/bin/python3`` (``gi`` and GStreamer come from Debian's
packages, not from the virtualenv). Counting starts at the keyframe the client forces
once the connection is up; it stops after ``--frames`` video frames. It prints one JSON
line: ``{"session": ..., "video_frames": N, "audio_packets": M, "error": null}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstVideo", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstVideo, GstWebRTC  # noqa: E402

VIDEO = {
    "vp8": "vp8enc deadline=1 keyframe-max-dist=300 ! rtpvp8pay name=pay pt=96 "
    "! application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000",
    # ultrafast leaves out every tool beyond baseline (x264 then signals constrained
    # baseline whatever the profile caps ask for); veryfast keeps high's tools.
    "h264": "x264enc tune=zerolatency speed-preset={preset} key-int-max=300 "
    "! video/x-h264,profile={profile} ! rtph264pay name=pay pt=102 config-interval=-1 "
    "aggregate-mode=zero-latency "
    "! application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000",
}
AUDIO = (
    "audiotestsrc is-live=true wave=sine samplesperbuffer=960 ! audio/x-raw,rate=48000 "
    "! audioconvert ! opusenc ! rtpopuspay name=apay pt=111 "
    "! application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000 ! w."
)


class Publisher:
    """One WHIP publication: offer, answer, media, hang-up."""

    def __init__(self, url: str, codec: str, profile: str, frames: int, timeout: float) -> None:
        self.url, self.frames = url, frames
        preset = "ultrafast" if profile in ("baseline", "constrained-baseline") else "veryfast"
        video = VIDEO[codec].format(profile=profile, preset=preset)
        self.pipeline = Gst.parse_launch(
            "webrtcbin name=w bundle-policy=max-bundle "
            "videotestsrc is-live=true pattern=ball "
            "! video/x-raw,width=320,height=240,framerate=30/1 "
            f"! videoconvert ! queue ! {video} ! w. {AUDIO}"
        )
        self.webrtc = self.pipeline.get_by_name("w")
        self.loop = GLib.MainLoop()
        self.result: dict[str, Any] = {
            "session": None,
            "video_frames": 0,
            "audio_packets": 0,
            "error": None,
        }
        self.location: str | None = None
        self.counting = False
        self.done = False
        self.ended: set[str] = set()
        self.webrtc.connect("on-negotiation-needed", self._on_negotiation_needed)
        self.webrtc.connect("notify::ice-gathering-state", self._on_gathering)
        self.webrtc.connect("notify::connection-state", self._on_connection)
        self.pipeline.get_by_name("pay").get_static_pad("sink").add_probe(
            Gst.PadProbeType.BUFFER, self._on_video
        )
        self.pipeline.get_by_name("apay").get_static_pad("sink").add_probe(
            Gst.PadProbeType.BUFFER, self._on_audio
        )
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self._on_error)
        self.sources = [
            element
            for element in self.pipeline.iterate_elements()
            if element.get_factory().get_name() in ("videotestsrc", "audiotestsrc")
        ]
        GLib.timeout_add(int(timeout * 1000), self._fail, "timed out")

    def run(self) -> dict[str, Any]:
        self.pipeline.set_state(Gst.State.PLAYING)
        self.loop.run()
        self.pipeline.set_state(Gst.State.NULL)
        return self.result

    # -- signalling -------------------------------------------------------------------

    def _on_negotiation_needed(self, webrtc: Gst.Element) -> None:
        promise = Gst.Promise.new_with_change_func(self._on_offer, None)
        webrtc.emit("create-offer", None, promise)

    def _on_offer(self, promise: Gst.Promise, _data: object) -> None:
        reply = promise.get_reply()
        if reply.has_field("error"):
            GLib.idle_add(self._fail, f"create-offer: {reply.get_value('error')}")
            return
        offer = reply.get_value("offer")
        self.webrtc.emit("set-local-description", offer, Gst.Promise.new())

    def _on_gathering(self, webrtc: Gst.Element, _spec: object) -> None:
        # Every candidate goes in the offer: the endpoint takes no trickled ones.
        if webrtc.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            GLib.idle_add(self._post_offer)

    def _post_offer(self) -> bool:
        offer = self.webrtc.get_property("local-description").sdp.as_text()
        request = urllib.request.Request(
            self.url, data=offer.encode(), headers={"Content-Type": "application/sdp"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                answer, location = response.read().decode(), response.headers["Location"]
        except OSError as exc:
            return self._fail(f"POST {self.url}: {exc}")
        self.location = urllib.request.urljoin(self.url, location)
        self.result["session"] = location.rsplit("/", 1)[1]
        _, message = GstSdp.SDPMessage.new_from_text(answer)
        description = GstWebRTC.WebRTCSessionDescription.new(
            GstWebRTC.WebRTCSDPType.ANSWER, message
        )
        self.webrtc.emit("set-remote-description", description, Gst.Promise.new())
        return False

    def _on_connection(self, webrtc: Gst.Element, _spec: object) -> None:
        state = webrtc.get_property("connection-state")
        if state == GstWebRTC.WebRTCPeerConnectionState.CONNECTED and not self.counting:
            # As browsers do: the first frame on a new connection is a keyframe.
            event = GstVideo.video_event_new_upstream_force_key_unit(Gst.CLOCK_TIME_NONE, True, 0)
            self.pipeline.get_by_name("pay").send_event(event)
            self.counting = True
        elif state == GstWebRTC.WebRTCPeerConnectionState.FAILED:
            GLib.idle_add(self._fail, "the connection failed")

    # -- media ------------------------------------------------------------------------

    def _on_video(self, _pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        if not self.counting or self.done:
            return Gst.PadProbeReturn.DROP
        buffer = info.get_buffer()
        if self.result["video_frames"] == 0 and buffer.has_flags(Gst.BufferFlags.DELTA_UNIT):
            return Gst.PadProbeReturn.DROP  # still before the forced keyframe
        self.result["video_frames"] += 1
        if self.result["video_frames"] == self.frames:
            self.done = True
            GLib.idle_add(self._hang_up)
        return Gst.PadProbeReturn.OK

    def _on_audio(self, _pad: Gst.Pad, _info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        if self.result["video_frames"] == 0 or self.done:
            return Gst.PadProbeReturn.DROP
        self.result["audio_packets"] += 1
        return Gst.PadProbeReturn.OK

    def _hang_up(self) -> bool:
        # End of stream follows the last buffer down each branch: once it reaches every
        # sink pad of webrtcbin, all the media was handed to webrtcbin (which posts no EOS
        # of its own); then the client hangs up.
        for pad in self.webrtc.sinkpads:
            pad.add_probe(Gst.PadProbeType.EVENT_DOWNSTREAM, self._on_branch_event)
        for source in self.sources:
            source.send_event(Gst.Event.new_eos())
        return False

    def _on_branch_event(self, pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        if info.get_event().type == Gst.EventType.EOS:
            self.ended.add(pad.get_name())
            if len(self.ended) == len(self.webrtc.sinkpads):
                GLib.idle_add(self._delete)
        return Gst.PadProbeReturn.OK

    def _delete(self) -> bool:
        assert self.location is not None
        request = urllib.request.Request(self.location, method="DELETE")
        try:
            with urllib.request.urlopen(request, timeout=30):
                pass
        except OSError as exc:
            return self._fail(f"DELETE {self.location}: {exc}")
        self.loop.quit()
        return False

    def _on_error(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        error, _debug = message.parse_error()
        self._fail(f"GStreamer: {error.message}")

    def _fail(self, reason: str) -> bool:
        self.result["error"] = self.result["error"] or reason
        self.loop.quit()
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url", help="the WHIP endpoint, e.g. http://127.0.0.1:8080/whip")
    parser.add_argument("--codec", choices=sorted(VIDEO), default="vp8")
    parser.add_argument("--profile", default="constrained-baseline", help="H.264 profile")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--timeout", type=float, default=30.0)
    arguments = parser.parse_args()
    Gst.init(None)
    publisher = Publisher(
        arguments.url, arguments.codec, arguments.profile, arguments.frames, arguments.timeout
    )
    result = publisher.run()
    print(json.dumps(result), flush=True)
    return 0 if result["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
