"""Varied synthetic camera frames of GS1 DataMatrix codes, for the decode benchmark and tests.

Unlike ``render`` (one quick frame per unit for the line simulator), these frames cover what a
real line camera sees: module size 3-12 px, any rotation, mild perspective, blur, sensor noise,
low contrast, uneven light, partial damage, printed text around the code, frames without a code,
1.3 MP and 5 MP, and cases with many codes seen from above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from simulators.cameras.render import symbol_modules

GrayImage = npt.NDArray[np.uint8]
Corners = tuple[tuple[float, float], ...]
QUIET = 2  # quiet zone in modules
SIZES = {"1.3MP": (1280, 1024), "5MP": (2592, 1944), "VGA": (640, 480)}
_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"


@dataclass(frozen=True)
class Synth:
    image: GrayImage
    codes: tuple[str, ...]  # HRI of every code in the frame (empty: no code)
    corners: tuple[Corners, ...] = ()
    conditions: dict[str, float] = field(default_factory=dict)
    # Where the generator put every module centre of the (single) code, frame pixels (x, y),
    # rows x columns x 2; None where the generator does not record it (``wide`` does).
    module_centres: npt.NDArray[np.float32] | None = field(default=None, compare=False)


def random_hri(rng: np.random.Generator) -> str:
    serial = "".join(rng.choice(list(_CHARS), size=int(rng.integers(8, 20))))
    lot = "".join(rng.choice(list(_CHARS), size=int(rng.integers(3, 10))))
    return f"(01)09506000134352(17){27 + int(rng.integers(0, 3))}1231(10){lot}(21){serial}"


def _background(
    rng: np.random.Generator, width: int, height: int, light: int
) -> tuple[GrayImage, list[tuple[int, int, int, int]]]:
    """A carton surface with printed text; returns the text boxes (x0, y0, x1, y1)."""
    image = np.full((height, width), light, dtype=np.uint8)
    boxes = []
    # Printed text on the carton: edges that a localiser must not take for a code.
    for _ in range(int(rng.integers(0, 6))):
        text = "".join(rng.choice(list(_CHARS + "  "), size=int(rng.integers(5, 20))))
        scale = float(rng.uniform(0.6, 2.5)) * width / 1280
        x, y = int(rng.integers(0, width)), int(rng.integers(20, height))
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
        cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, int(light * 0.4), 2)
        boxes.append((x, y - th, x + tw, y + th // 2))
    return image, boxes


def _free_center(
    rng: np.random.Generator, width: int, height: int, half: float, boxes: list[tuple[int, ...]]
) -> tuple[float, float]:
    """A symbol centre whose square (with a quiet margin) stays clear of the text, as any
    print layout keeps it; after 50 tries take whatever was drawn last."""
    cx, cy = width / 2, height / 2
    for _ in range(50):
        cx, cy = float(rng.uniform(half, width - half)), float(rng.uniform(half, height - half))
        pad = 1.3 * half
        if not any(
            x0 < cx + pad and cx - pad < x1 and y0 < cy + pad and cy - pad < y1
            for x0, y0, x1, y1 in boxes
        ):
            break
    return cx, cy


def _place_symbol(
    canvas: npt.NDArray[np.float32],
    hri: str,
    rng: np.random.Generator,
    *,
    module_px: float,
    angle: float,
    perspective: float,
    center: tuple[float, float],
    dark: float,
    light: float,
    damage: float,
) -> Corners:
    modules = symbol_modules(hri)
    n = modules.shape[0]
    scale = 4  # draw at 4 px per module, then warp: edges stay sharp but anti-aliased
    sym = np.where(np.pad(modules, QUIET), dark, light).astype(np.float32)
    sym = cv2.resize(sym, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    if damage > 0:
        # Scratches across the data region (not the finder pattern): a person still reads it.
        for _ in range(math.ceil(damage * 10)):
            x0, y0 = (rng.uniform(QUIET + 2, QUIET + n - 2, size=2) * scale).astype(int)
            x1, y1 = x0 + int(rng.uniform(-3, 3) * scale), y0 + int(rng.uniform(-3, 3) * scale)
            cv2.line(sym, (x0, y0), (x1, y1), float(light), thickness=scale)
    side = (n + 2 * QUIET) * scale
    src = np.float32([[0, 0], [side, 0], [side, side], [0, side]])
    half = (n + 2 * QUIET) * module_px / 2
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    dst = []
    for ux, uy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        jx, jy = rng.uniform(-perspective, perspective, size=2) * half
        x, y = ux * half + jx, uy * half + jy
        dst.append((center[0] + x * cos - y * sin, center[1] + x * sin + y * cos))
    matrix = cv2.getPerspectiveTransform(src, np.float32(dst))
    h, w = canvas.shape
    # Transparent border: the canvas keeps its pixels outside the symbol, no seam at the edge.
    cv2.warpPerspective(
        sym,
        matrix,
        (w, h),
        dst=canvas,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_TRANSPARENT,
    )
    q = QUIET * scale
    inner = np.float32([[[q, q]], [[side - q, q]], [[side - q, side - q]], [[q, side - q]]])
    pts = cv2.perspectiveTransform(inner, matrix).reshape(-1, 2)
    return tuple((float(x), float(y)) for x, y in pts)


def _finish(
    canvas: npt.NDArray[np.float32],
    rng: np.random.Generator,
    *,
    uneven: float,
    blur: float,
    noise: float,
) -> GrayImage:
    h, w = canvas.shape
    if uneven > 0:
        # A light gradient plus a vignette: one side of the frame darker by up to ``uneven``.
        gx, gy = rng.uniform(-1, 1, size=2)
        ys, xs = np.mgrid[0:h:8, 0:w:8].astype(np.float32)
        field_ = 1 - uneven * (0.5 + 0.5 * (gx * (xs / w - 0.5) + gy * (ys / h - 0.5)) * 2)
        field_ = cv2.resize(field_, (w, h), interpolation=cv2.INTER_LINEAR)
        canvas *= np.clip(field_, 0.2, 1.0)
    if blur > 0:
        canvas = cv2.GaussianBlur(canvas, (0, 0), blur)
    if noise > 0:
        canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * noise
    return np.clip(canvas, 0, 255).astype(np.uint8)


def synth_frame(
    rng: np.random.Generator,
    *,
    size: str = "1.3MP",
    code: bool = True,
    module_px: float | None = None,
    hard: bool = True,
    hri: str | None = None,
    **conditions: float,
) -> Synth:
    """One frame with zero or one code; ``None`` parameters and all conditions drawn from ``rng``.

    ``hard`` draws the full range of conditions; otherwise a clean frame (tests of geometry).
    Keyword ``conditions`` (angle, perspective, blur, noise, contrast, uneven, damage) override
    the drawn ones.
    """
    width, height = SIZES[size]
    light = float(rng.uniform(170, 235)) if hard else 220.0
    contrast = float(rng.choice([rng.uniform(0.15, 0.3), rng.uniform(0.3, 0.85)])) if hard else 0.8
    contrast = conditions.get("contrast", contrast)
    dark = light * (1 - contrast)
    cond = {
        "module_px": float(module_px if module_px is not None else rng.uniform(3, 12)),
        "angle": float(rng.uniform(0, 360)) if hard else 0.0,
        "perspective": float(rng.uniform(0, 0.06)) if hard else 0.0,
        "blur": float(rng.choice([0.0, rng.uniform(0.4, 1.0)])) if hard else 0.0,
        "noise": float(rng.uniform(1, 6)) if hard else 1.0,
        "contrast": contrast,
        "uneven": float(rng.choice([0.0, rng.uniform(0.1, 0.5)])) if hard else 0.0,
        "damage": float(rng.choice([0.0, 0.0, rng.uniform(0.1, 0.3)])) if hard else 0.0,
    }
    unknown = set(conditions) - set(cond)
    if unknown:
        raise ValueError(f"unknown conditions: {sorted(unknown)}")
    cond.update({key: float(value) for key, value in conditions.items()})
    background, boxes = _background(rng, width, height, int(light))
    canvas = background.astype(np.float32)
    codes: tuple[str, ...] = ()
    corners: tuple[Corners, ...] = ()
    if code:
        hri = hri if hri is not None else random_hri(rng)
        n = symbol_modules(hri).shape[0] + 2 * QUIET
        # Fit: the rotated symbol must lie inside the frame.
        px = min(cond["module_px"], 0.6 * min(width, height) / (n * 1.45))
        cond["module_px"] = px
        half = n * px * 0.75
        center = _free_center(rng, width, height, half, boxes)
        corner = _place_symbol(
            canvas,
            hri,
            rng,
            module_px=px,
            angle=cond["angle"],
            perspective=cond["perspective"],
            center=center,
            dark=dark,
            light=light,
            damage=cond["damage"],
        )
        codes, corners = (hri,), (corner,)
    image = _finish(canvas, rng, uneven=cond["uneven"], blur=cond["blur"], noise=cond["noise"])
    return Synth(image, codes, corners, cond)


def synth_case(
    rng: np.random.Generator,
    count: int,
    *,
    size: str = "5MP",
    duplicates: int = 0,
    module_px: float = 5.0,
) -> Synth:
    """A case seen from above: ``count`` codes on a grid, the last ``duplicates`` repeat earlier
    ones (a double-printed serial)."""
    width, height = SIZES[size]
    canvas = np.full((height, width), 215.0, dtype=np.float32)
    hris = [random_hri(rng) for _ in range(count - duplicates)]
    hris += [hris[int(i)] for i in rng.integers(0, len(hris), size=duplicates)]
    cols = math.ceil(math.sqrt(count * width / height))
    rows = math.ceil(count / cols)
    cell = min(width / cols, height / rows)
    corners = []
    for index, hri in enumerate(hris):
        n = symbol_modules(hri).shape[0] + 2 * QUIET
        px = min(module_px, 0.8 * cell / (n * 1.45))
        row, col = divmod(index, cols)
        center = ((col + 0.5) * width / cols, (row + 0.5) * height / rows)
        corners.append(
            _place_symbol(
                canvas,
                hri,
                rng,
                module_px=px,
                angle=float(rng.uniform(-10, 10)),
                perspective=0.0,
                center=center,
                dark=40.0,
                light=215.0,
                damage=0.0,
            )
        )
    image = _finish(canvas, rng, uneven=0.1, blur=0.0, noise=2.0)
    return Synth(image, tuple(hris), tuple(corners), {"count": count, "duplicates": duplicates})
