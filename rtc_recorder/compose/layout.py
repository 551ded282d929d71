"""Where each participant goes: the grid, the speaker's layout, pictures fitted into
cells, and who the active speaker is."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Rect:
    """A rectangle of the output picture, in pixels (the layouts make every number even:
    the picture's colour planes have half its size)."""

    x: int
    y: int
    width: int
    height: int


def even(value: int) -> int:
    """``value`` rounded down to an even number."""
    return value - value % 2


def grid_cells(count: int, width: int, height: int, gap: int = 0) -> list[Rect]:
    """``count`` equal cells in rows, the columns chosen so that 16:9 pictures fitted in
    them are largest (ties: more columns); a last row with fewer cells is centred."""
    if count <= 0:
        return []

    def picture_scale(columns: int) -> float:
        rows = math.ceil(count / columns)
        cell_width = (width - gap * (columns + 1)) / columns
        cell_height = (height - gap * (rows + 1)) / rows
        return min(cell_width / 16, cell_height / 9)

    columns = max(range(1, count + 1), key=lambda c: (round(picture_scale(c), 6), c))
    rows = math.ceil(count / columns)
    cell_width = even((width - gap * (columns + 1)) // columns)
    cell_height = even((height - gap * (rows + 1)) // rows)
    top = (height - rows * cell_height - (rows - 1) * gap) // 2
    cells = []
    for index in range(count):
        row, column = divmod(index, columns)
        in_row = min(columns, count - row * columns)
        indent = (width - in_row * cell_width - (in_row - 1) * gap) // 2
        x = even(indent + column * (cell_width + gap))
        y = even(top + row * (cell_height + gap))
        cells.append(Rect(x, y, cell_width, cell_height))
    return cells


def speaker_cells(count: int, width: int, height: int, gap: int = 0) -> list[Rect]:
    """The speaker's cell (first: the whole picture, or all but a strip at the bottom)
    and ``count - 1`` small cells side by side in that strip, centred."""
    if count <= 0:
        return []
    gap = even(gap)
    if count == 1:
        return [Rect(gap, gap, width - 2 * gap, height - 2 * gap)]
    strip = even(height // 4)
    main = Rect(gap, gap, width - 2 * gap, height - strip - 2 * gap)
    others = count - 1
    cell_height = strip - gap
    cell_width = even(min((width - gap * (others + 1)) // others, cell_height * 16 // 9))
    indent = (width - others * cell_width - (others - 1) * gap) // 2
    top = height - strip
    return [main] + [
        Rect(even(indent + index * (cell_width + gap)), top, cell_width, cell_height)
        for index in range(others)
    ]


def fit(picture_width: int, picture_height: int, cell: Rect) -> Rect:
    """The largest rectangle of the picture's aspect ratio centred in ``cell``."""
    scale = min(cell.width / picture_width, cell.height / picture_height)
    width = max(2, even(min(cell.width, round(picture_width * scale))))
    height = max(2, even(min(cell.height, round(picture_height * scale))))
    return Rect(
        cell.x + even((cell.width - width) // 2),
        cell.y + even((cell.height - height) // 2),
        width,
        height,
    )


# -- the active speaker ---------------------------------------------------------------


@dataclass
class SpeakerSelector:
    """Who is shown large: the participant whose sound is loudest, with hysteresis.

    A participant takes over only after being louder than the one shown by ``margin``
    dB (and above ``floor`` dBFS) for ``hold`` seconds in a row, so a cough or a short
    remark does not move the picture. When the one shown leaves, the loudest present
    takes over at once (the first present when all are quiet).
    """

    hold: float = 0.6
    margin: float = 6.0
    floor: float = -50.0
    current: str | None = None
    _challenger: str | None = field(default=None, repr=False)
    _since: float = field(default=0.0, repr=False)

    def choose(self, t: float, levels: Mapping[str, float], present: Sequence[str]) -> str | None:
        """The speaker at time ``t`` given each present participant's level (dBFS)."""
        if not present:
            self.current = self._challenger = None
            return None

        def level(session: str) -> float:
            return levels.get(session, -math.inf)

        loudest = max(present, key=level)
        current = self.current
        if current is None or current not in present:
            self.current = loudest if level(loudest) > self.floor else present[0]
            self._challenger = None
            return self.current
        leads = (
            loudest != current
            and level(loudest) > self.floor
            and level(loudest) >= level(current) + self.margin
        )
        if not leads:
            self._challenger = None
        elif self._challenger != loudest:
            self._challenger, self._since = loudest, t
        if self._challenger is not None and t - self._since >= self.hold:
            self.current, self._challenger = self._challenger, None
        return self.current
