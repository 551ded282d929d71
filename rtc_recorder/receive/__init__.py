"""The receive side: everything that touches aiortc's receivers and transports.

- :mod:`.hooks` taps an ``RTCRtpReceiver`` (its RTP packets, sender reports and keyframe
  requests) without changing what aiortc itself does with them.
"""
