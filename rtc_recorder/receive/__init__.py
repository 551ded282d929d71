"""The receive side: everything that touches aiortc's receivers and transports.

- :mod:`.hooks` taps an ``RTCRtpReceiver`` (its RTP packets, sender reports and keyframe
  requests) without changing what aiortc itself does with them.
- :mod:`.transport` works around what stops independent clients from connecting (DTLS
  cipher suites, certificates) and places ICE where the server is told (addresses, NAT,
  port range).
- :mod:`.negotiation` answers H.264 of every profile and level an encoder offers.
"""

from . import negotiation, transport

transport.install()
negotiation.install()
