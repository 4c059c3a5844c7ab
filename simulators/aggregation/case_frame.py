"""The case camera's frame: every unit of an open case seen from above, codes in a grid.

Each slot of the grid holds one unit's GS1 DataMatrix (or nothing: an empty slot). A slot can be
``unreadable`` (the code smeared: no decoder reads it) or ``occluded`` (a flap or a finger over
part of it). The frame is what a ~5 MP case camera gives (2592 x 1944); rendering is one canvas,
one upscale per code and one noise pass, quick enough for a case every few seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from edge_agent.contracts import GrayImage
from simulators.cameras.render import Content, symbol_modules

FIVE_MP = (2592, 1944)
QUIET = 2  # quiet zone in modules
LIGHT, DARK = 215, 40


@dataclass(frozen=True)
class Slot:
    """One position in the case. ``content`` None: the slot is empty (a unit missing)."""

    content: Content | None
    unreadable: bool = False
    occluded: bool = False


def grid_shape(count: int, width: int, height: int) -> tuple[int, int]:
    """(rows, columns) of a grid holding ``count`` slots on a ``width`` x ``height`` frame."""
    cols = max(1, math.ceil(math.sqrt(count * width / height)))
    return max(1, math.ceil(count / cols)), cols


def render_case(
    slots: Sequence[Slot],
    *,
    size: tuple[int, int] = FIVE_MP,
    module_px: int = 5,
    noise_sigma: float = 2.0,
    rng: np.random.Generator | None = None,
) -> GrayImage:
    """The frame of a case whose slots are ``slots``, in reading order (rows, then columns)."""
    rng = rng if rng is not None else np.random.default_rng()
    width, height = size
    canvas = np.full((height, width), LIGHT, dtype=np.uint8)
    if not slots:
        return canvas
    rows, cols = grid_shape(len(slots), width, height)
    cell_w, cell_h = width / cols, height / rows
    for index, slot in enumerate(slots):
        if slot.content is None:
            continue
        row, col = divmod(index, cols)
        centre = ((col + 0.5) * cell_w, (row + 0.5) * cell_h)
        _place(canvas, slot, centre, min(cell_w, cell_h), module_px, rng)
    if noise_sigma > 0:
        noise = np.empty(canvas.shape, dtype=np.int16)
        cv2.setRNGSeed(int(rng.integers(0, 2**31 - 1)))
        cv2.randn(noise, 0.0, noise_sigma)
        canvas = np.asarray(cv2.add(canvas, noise, dtype=cv2.CV_8U), dtype=np.uint8)
    return canvas


def _place(
    canvas: GrayImage,
    slot: Slot,
    centre: tuple[float, float],
    cell: float,
    module_px: int,
    rng: np.random.Generator,
) -> None:
    assert slot.content is not None
    modules = symbol_modules(slot.content)
    n_rows, n_cols = modules.shape
    px = max(2, min(module_px, int(0.8 * cell / (max(n_rows, n_cols) + 2 * QUIET))))
    levels = np.array([LIGHT, DARK], dtype=np.uint8)
    small = np.pad(levels[modules.view(np.uint8)], QUIET, constant_values=LIGHT)
    symbol = cv2.resize(
        small, (small.shape[1] * px, small.shape[0] * px), interpolation=cv2.INTER_NEAREST
    )
    if slot.unreadable:
        k = 4 * px + 1  # grey mush with no edges for a detector to latch onto
        symbol = cv2.blur(symbol, (k, k))
    if slot.occluded:
        h, w = symbol.shape
        symbol[: h // 2, : w * 3 // 5] = 90  # a flap across the upper left of the code
    h, w = symbol.shape
    jitter = rng.uniform(-0.05, 0.05, size=2) * cell
    x0 = round(centre[0] - w / 2 + float(jitter[0]))
    y0 = round(centre[1] - h / 2 + float(jitter[1]))
    x0 = min(max(0, x0), canvas.shape[1] - w)
    y0 = min(max(0, y0), canvas.shape[0] - h)
    canvas[y0 : y0 + h, x0 : x0 + w] = symbol
