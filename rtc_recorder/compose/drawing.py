"""Drawing the composite's picture in place, in the YUV 4:2:0 the encoder takes: fills,
pictures, and names (Pillow draws the text)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from av.video.frame import VideoFrame
from PIL import Image, ImageDraw, ImageFont

from .layout import Rect, even, fit

BACKGROUND = (17, 19, 24)
NAME_TILE = (52, 58, 72)
TEXT = (240, 242, 246)


def yuv(rgb: Sequence[int]) -> tuple[int, int, int]:
    """An RGB colour in the output's YUV (BT.601, limited range, as FFmpeg converts)."""
    r, g, b = (channel / 255 for channel in rgb)
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    u = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    v = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    return round(y), round(u), round(v)


class Canvas:
    """An output picture in YUV 4:2:0, drawn on in place (what the encoder takes, so no
    colour conversion per frame); every rectangle drawn has even corners."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.data = np.empty((height * 3 // 2, width), np.uint8)
        self.planes = _planes(self.data, width, height)

    def fill(self, cell: Rect, colour: tuple[int, int, int]) -> None:
        """Paint ``cell`` one YUV colour."""
        for plane, value, (x, y, w, h) in zip(self.planes, colour, _plane_rects(cell), strict=True):
            plane[y : y + h, x : x + w] = value

    def paste(self, cell: Rect, picture: VideoFrame) -> None:
        """A yuv420p picture of the cell's size, at the cell."""
        sources = _planes(picture.to_ndarray(), cell.width, cell.height)
        for plane, source, (x, y, w, h) in zip(
            self.planes, sources, _plane_rects(cell), strict=True
        ):
            plane[y : y + h, x : x + w] = source

    def darken(self, cell: Rect, keep: float) -> None:
        """Scale the cell's colours towards black, keeping ``keep`` of them."""
        for plane, zero, (x, y, w, h) in zip(
            self.planes, (16, 128, 128), _plane_rects(cell), strict=True
        ):
            region = plane[y : y + h, x : x + w].astype(np.float32)
            plane[y : y + h, x : x + w] = (zero + (region - zero) * keep).astype(np.uint8)

    def blend(self, mask: np.ndarray, x: int, y: int, colour: tuple[int, int, int]) -> None:
        """Paint ``colour`` through ``mask`` (coverage 0..1) at even (x, y), clipped."""
        width = min(mask.shape[1], self.width - x) // 2 * 2
        height = min(mask.shape[0], self.height - y) // 2 * 2
        if width <= 0 or height <= 0:
            return
        cover = mask[:height, :width]
        half = cover.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))
        cell = Rect(x, y, width, height)
        for plane, value, weight, (px, py, w, h) in zip(
            self.planes, colour, (cover, half, half), _plane_rects(cell), strict=True
        ):
            region = plane[py : py + h, px : px + w].astype(np.float32)
            region += (value - region) * weight
            plane[py : py + h, px : px + w] = region.astype(np.uint8)


def _planes(data: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Y, U and V planes (views) of a yuv420p picture as PyAV lays it out: the three
    planes one after the other."""
    flat = data.reshape(-1)
    luma, chroma = width * height, (width // 2) * (height // 2)
    return (
        flat[:luma].reshape(height, width),
        flat[luma : luma + chroma].reshape(height // 2, width // 2),
        flat[luma + chroma : luma + 2 * chroma].reshape(height // 2, width // 2),
    )


def _plane_rects(cell: Rect) -> tuple[tuple[int, int, int, int], ...]:
    x, y, w, h = cell.x, cell.y, cell.width, cell.height
    return (x, y, w, h), (x // 2, y // 2, w // 2, h // 2), (x // 2, y // 2, w // 2, h // 2)


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans where the system has it (most scripts), else Pillow's own font."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size)


@lru_cache(maxsize=256)
def text_mask(text: str, size: int, width: int) -> np.ndarray:
    """``text`` drawn ``size`` pixels high (smaller if it would be wider than ``width``),
    cut to ``width``: coverage 0..1 as a height x width array."""
    while True:
        font = _font(size)
        left, top, right, bottom = font.getbbox(text)
        if right - left <= width or size <= 8:
            break
        size = max(8, size * 3 // 4)
    image = Image.new("L", (max(1, math.ceil(right - left)), max(1, math.ceil(bottom - top))))
    ImageDraw.Draw(image).text((-left, -top), text, fill=255, font=font)
    return (np.asarray(image, np.float32) / 255.0)[:, :width]


def draw_name_tile(canvas: Canvas, cell: Rect, name: str) -> None:
    """A participant without a picture: a plain 16:9 tile with the name in the middle."""
    cell = fit(16, 9, cell)
    canvas.fill(cell, yuv(NAME_TILE))
    mask = text_mask(name, max(10, cell.height // 7), cell.width - 8)
    x = even(cell.x + (cell.width - mask.shape[1]) // 2)
    y = even(cell.y + (cell.height - mask.shape[0]) // 2)
    canvas.blend(mask, x, y, yuv(TEXT))


def draw_name_label(canvas: Canvas, cell: Rect, name: str) -> None:
    """The name in a dark box at the bottom left of a picture."""
    size = max(10, cell.height // 14)
    pad = even(max(2, size // 3))
    mask = text_mask(name, size, max(8, cell.width - 4 * pad))
    box = Rect(
        cell.x + pad,
        even(cell.y + cell.height - mask.shape[0] - 3 * pad),
        even(min(cell.width - 2 * pad, mask.shape[1] + 2 * pad)),
        even(mask.shape[0] + 2 * pad),
    )
    if box.y < cell.y or box.width <= 0:
        return
    canvas.darken(box, 0.4)
    canvas.blend(mask, box.x + pad, box.y + pad, yuv(TEXT))
