"""A WHIP client made of FFmpeg's WHIP muxer (the libavformat PyAV bundles): publishes
H.264 (libx264, the profile asked for) and Opus, encoded from synthetic frames in real
time, then closes (FFmpeg's muxer hangs up with DELETE).

The connection is made before the first frame (FFmpeg connects while writing the
header); with ``--wait-recording`` the first frame waits until the server says the
session is recording, so every frame sent could be recorded. It prints one JSON line:
``{"video_frames": N, "audio_packets": M, "error": null}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from fractions import Fraction
from typing import Any

import av
import numpy as np

RATE = 30
WIDTH, HEIGHT = 320, 240
OPUS_FRAME = 960  # 20 ms at 48 kHz


def wait_until_recording(api: str, timeout: float) -> None:
    """Poll the server's session list until a session is recording."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{api}/api/sessions", timeout=5) as response:
            sessions = json.load(response)
        if any(session["recorderState"] == "recording" for session in sessions):
            return
        time.sleep(0.02)
    raise TimeoutError("the server did not start recording")


def publish(arguments: argparse.Namespace) -> dict[str, Any]:
    options = {}
    if arguments.cert and arguments.key:
        options = {"cert_file": arguments.cert, "key_file": arguments.key}
    result: dict[str, Any] = {"video_frames": 0, "audio_packets": 0, "error": None}
    output = av.open(arguments.url, "w", format="whip", options=options)
    try:
        video = output.add_stream(
            "libx264",
            rate=RATE,
            options={
                "profile": arguments.profile,
                # ultrafast leaves out every tool beyond baseline, and x264 then signals
                # constrained baseline whatever the profile asked for.
                "preset": "ultrafast" if arguments.profile == "baseline" else "veryfast",
                "tune": "zerolatency",
                "g": str(RATE),
            },
        )
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        audio = output.add_stream("libopus", rate=48000)
        audio.layout = "stereo"
        output.start_encoding()  # the WHIP exchange, ICE and DTLS happen here
        if arguments.wait_recording:
            wait_until_recording(arguments.wait_recording, 10)
        began = time.monotonic()
        samples = 0
        for index in range(arguments.frames):
            # Real time: the frame leaves when its time has come.
            time.sleep(max(0.0, began + index / RATE - time.monotonic()))
            picture = np.full((HEIGHT, WIDTH, 3), (index * 7) % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = index, Fraction(1, RATE)
            for packet in video.encode(frame):
                output.mux(packet)
                result["video_frames"] += 1
            while samples < (index + 1) * 48000 // RATE:
                sound = av.AudioFrame.from_ndarray(
                    np.zeros((1, OPUS_FRAME * 2), np.int16), format="s16", layout="stereo"
                )
                sound.sample_rate, sound.pts = 48000, samples
                samples += OPUS_FRAME
                for packet in audio.encode(sound):
                    output.mux(packet)
                    result["audio_packets"] += 1
    finally:
        output.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url", help="the WHIP endpoint, e.g. http://127.0.0.1:8080/whip")
    parser.add_argument("--profile", default="baseline", help="libx264 profile")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--cert", help="PEM certificate for DTLS (FFmpeg's cert_file)")
    parser.add_argument("--key", help="PEM private key for DTLS (FFmpeg's key_file)")
    parser.add_argument("--wait-recording", metavar="BASE_URL", help="server to poll first")
    arguments = parser.parse_args()
    try:
        result = publish(arguments)
    except (OSError, av.FFmpegError, TimeoutError) as exc:
        result = {"video_frames": 0, "audio_packets": 0, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    return 0 if result["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
