"""One video of a finalized room recording: the participants' pictures in a grid, or the
active speaker large, with the room's mix as the sound.

The room folder is read as the rooms contract describes it (``manifest.json``, a file
per participant placed at its ``start``, ``mix.{ext}``), and only read: each file is
decoded forward as the output advances (a few frames in memory per participant, never a
whole file). :func:`compose` does the decoding, compositing and encoding on the thread
that calls it; callers keep it off event loops (``rtc-recorder compose``, in
:mod:`.command`, runs it on a worker thread; the server in a process of its own).

The pieces, each a module: :mod:`.manifest` (the manifest, checked), :mod:`.readers` (the
files, read forward), :mod:`.layout` (where each participant goes, who speaks),
:mod:`.drawing` (the picture, drawn in place), :mod:`.render` (the encoder and
:func:`compose`).
"""

from .errors import CompositionCancelled, CompositionError, NotFinalized
from .layout import Rect, SpeakerSelector, fit, grid_cells, speaker_cells
from .manifest import Participant, RoomEvent, RoomManifest, parse_manifest, read_manifest
from .render import (
    DEFAULT_FPS,
    DEFAULT_SIZE,
    LAYOUTS,
    SUFFIXES,
    compose,
    default_output,
    partial_path,
)

__all__ = [
    "DEFAULT_FPS",
    "DEFAULT_SIZE",
    "LAYOUTS",
    "SUFFIXES",
    "CompositionCancelled",
    "CompositionError",
    "NotFinalized",
    "Participant",
    "Rect",
    "RoomEvent",
    "RoomManifest",
    "SpeakerSelector",
    "compose",
    "default_output",
    "fit",
    "grid_cells",
    "parse_manifest",
    "partial_path",
    "read_manifest",
    "speaker_cells",
]
