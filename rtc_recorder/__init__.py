"""rtc-recorder: record aiortc media streams on the server with the browser's MediaRecorder API.

>>> from rtc_recorder import MediaRecorder, RoomRecorder
"""

from .errors import (
    InvalidModificationError,
    InvalidStateError,
    NotSupportedError,
    RecorderError,
    SecurityError,
    UnknownError,
)
from .events import BlobEvent, ErrorEvent, Event
from .mediarecorder import MediaRecorder
from .mediastream import MediaStream
from .room import RoomBlobEvent, RoomRecorder

__all__ = [
    "BlobEvent",
    "ErrorEvent",
    "Event",
    "InvalidModificationError",
    "InvalidStateError",
    "MediaRecorder",
    "MediaStream",
    "NotSupportedError",
    "RecorderError",
    "RoomBlobEvent",
    "RoomRecorder",
    "SecurityError",
    "UnknownError",
]
__version__ = "0.1.0"
