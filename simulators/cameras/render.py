"""Synthetic camera frames of a GS1 DataMatrix, quick enough to render one per unit.

Pipeline: zxing-cpp symbol (cached by content) → nearest-neighbour upscale → map to dark/light →
one ``warpAffine`` that rotates and places it on a light background → optional 3x3 blur (optics)
→ Gaussian sensor noise taken as a random window of a precomputed noise bank (drawing fresh
normals for every pixel would cost more than everything else together).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import numpy.typing as npt
import zxingcpp

from edge_agent.gs1 import bracketed

GrayImage = npt.NDArray[np.uint8]
Corners = tuple[tuple[float, float], ...]
Content = str | Sequence[tuple[str, str]]
"""What to encode: (AI, value) pairs, or bracketed text with ``(`` in values escaped as
``\\(`` (``ElementString.bracketed``). An HRI with a bare ``(`` in a value is not content: the
encoder cannot tell where that value ends."""

QUIET_ZONE_MODULES = 2  # the standard asks for 1; real print layouts leave more
_NOISE_BANK_SIZE = 1 << 21


@dataclass(frozen=True)
class Rendered:
    image: GrayImage
    corners: Corners  # symbol without quiet zone: top-left, top-right, bottom-right, bottom-left


def encoder_text(content: Content) -> str:
    """The bracketed text zxing-cpp's GS1 writer reads (it unescapes ``\\(`` as GS1's tools do)."""
    return content if isinstance(content, str) else bracketed(content)


# zxing-cpp's (zint's) DataMatrix ``version`` numbers by shape, each list smallest first:
# square ECC 200 (ISO/IEC 16022), rectangular ECC 200, and the rectangular extension DMRE
# (ISO/IEC 21471; read back with symbology identifier ``]d8`` for GS1 data).
SQUARE_VERSIONS = tuple(range(1, 25))
RECTANGULAR_VERSIONS = tuple(range(25, 31))  # 8x18 ... 16x48
DMRE_VERSIONS = tuple(range(31, 49))  # 8x48 ... 26x64
SHAPES = {"square": SQUARE_VERSIONS, "rectangular": RECTANGULAR_VERSIONS, "dmre": DMRE_VERSIONS}


def symbol_modules(content: Content, version: int | None = None) -> npt.NDArray[np.bool_]:
    """Dark-module matrix (rows x columns) of the GS1 DataMatrix for ``content``, without quiet
    zone (read-only). ``version`` picks the symbol size (``SHAPES``); None = smallest square.

    Raises ValueError for content zxing-cpp refuses, or that does not fit ``version``."""
    return _modules(encoder_text(content), version)


def fitting_versions(content: Content, shape: str) -> list[int]:
    """The ``version`` numbers of ``shape`` (a key of ``SHAPES``) that hold ``content``."""
    fits = []
    for version in SHAPES[shape]:
        try:
            symbol_modules(content, version)
        except ValueError:
            continue
        fits.append(version)
    return fits


@lru_cache(maxsize=4096)
def _modules(text: str, version: int | None = None) -> npt.NDArray[np.bool_]:
    # Only the documented kwargs are passed: some writer options make zxing-cpp abort the whole
    # process instead of raising (an int ``version`` raises ValueError when the data is too long).
    if version is None:
        barcode = zxingcpp.create_barcode(
            text, zxingcpp.BarcodeFormat.DataMatrix, gs1=True, force_square=True
        )
    else:
        if not 1 <= version <= 48:
            raise ValueError(f"DataMatrix version {version} is not 1-48")
        barcode = zxingcpp.create_barcode(
            text, zxingcpp.BarcodeFormat.DataMatrix, gs1=True, version=int(version)
        )
    dark = np.array(barcode.to_image(scale=1)) < 128
    rows = np.flatnonzero(dark.any(axis=1))
    cols = np.flatnonzero(dark.any(axis=0))
    modules = np.ascontiguousarray(dark[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
    modules.flags.writeable = False
    return modules


def render_frame(
    content: Content,
    *,
    width: int = 480,
    height: int = 360,
    module_px: int | None = None,
    rotation_deg: float | None = None,
    dark: int = 30,
    light: int = 220,
    noise_sigma: float = 4.0,
    blur: int | None = None,
    smear: bool = False,
    rng: np.random.Generator | None = None,
) -> GrayImage:
    """A grayscale frame showing the GS1 DataMatrix of ``content``.

    ``None`` parameters are drawn from ``rng``: module size 3-6 px, rotation within ±15°, blur
    0 or 1 (1 = 3x3 Gaussian). ``smear`` wipes the symbol out so that no decoder can read it.
    """
    return render(
        content,
        width=width,
        height=height,
        module_px=module_px,
        rotation_deg=rotation_deg,
        dark=dark,
        light=light,
        noise_sigma=noise_sigma,
        blur=blur,
        smear=smear,
        rng=rng,
    ).image


def render(
    content: Content,
    *,
    width: int = 480,
    height: int = 360,
    module_px: int | None = None,
    rotation_deg: float | None = None,
    dark: int = 30,
    light: int = 220,
    noise_sigma: float = 4.0,
    blur: int | None = None,
    smear: bool = False,
    rng: np.random.Generator | None = None,
) -> Rendered:
    """Like ``render_frame`` but also tells where the symbol is."""
    rng = rng if rng is not None else np.random.default_rng()
    px = int(rng.integers(3, 7)) if module_px is None else module_px
    angle = float(rng.uniform(-15.0, 15.0)) if rotation_deg is None else rotation_deg
    blur = int(rng.integers(0, 2)) if blur is None else blur

    modules = symbol_modules(content)
    px = _fit_module_px(modules.shape[0], px, angle, width, height)
    symbol = _symbol_image(modules, px, dark, light)
    if smear:
        symbol = _smear(symbol, px)
    image, matrix = _place(symbol, angle, width, height, light, rng)
    if blur:
        image = _u8(cv2.GaussianBlur(image, (3, 3), 0))
    if noise_sigma > 0:
        image = _add_noise(image, noise_sigma, rng)
    return Rendered(image, _symbol_corners(modules.shape[0], px, matrix))


def _fit_module_px(n: int, px: int, angle: float, width: int, height: int) -> int:
    """Shrink the modules if the rotated symbol (with quiet zone) would not fit the frame."""
    spread = abs(math.cos(math.radians(angle))) + abs(math.sin(math.radians(angle)))
    side_modules = n + 2 * QUIET_ZONE_MODULES
    fit = int(min(width, height) / (side_modules * spread))
    if fit < 1:
        raise ValueError(f"a {n}x{n} symbol does not fit a {width}x{height} frame")
    return max(1, min(px, fit))


def _symbol_image(modules: npt.NDArray[np.bool_], px: int, dark: int, light: int) -> GrayImage:
    levels = np.array([light, dark], dtype=np.uint8)
    small = np.pad(levels[modules.view(np.uint8)], QUIET_ZONE_MODULES, constant_values=light)
    side = small.shape[0] * px
    return _u8(cv2.resize(small, (side, side), interpolation=cv2.INTER_NEAREST))


def _smear(symbol: GrayImage, px: int) -> GrayImage:
    # A box blur a few modules wide leaves grey mush with no edges for a detector to latch onto.
    k = 4 * px + 1
    return _u8(cv2.blur(symbol, (k, k)))


def _place(
    symbol: GrayImage, angle: float, width: int, height: int, light: int, rng: np.random.Generator
) -> tuple[GrayImage, npt.NDArray[np.float64]]:
    side = symbol.shape[0]
    spread = abs(math.cos(math.radians(angle))) + abs(math.sin(math.radians(angle)))
    half = side * spread / 2
    cx = float(rng.uniform(half, max(half, width - half)))
    cy = float(rng.uniform(half, max(half, height - half)))
    centre = (side - 1) / 2
    matrix = cv2.getRotationMatrix2D((centre, centre), angle, 1.0)
    matrix[:, 2] += (cx - centre, cy - centre)
    # Only the symbol's bounding box is warped (a fifth of a VGA frame): the rest of the frame
    # is the border colour either way, and the warp of the whole frame cost the simulator more
    # than everything else in a frame.
    x0, y0, x1, y1 = _warped_box(side, matrix, width, height)
    image = np.full((height, width), light, dtype=np.uint8)
    if x1 > x0 and y1 > y0:
        shifted = matrix.copy()
        shifted[:, 2] -= (x0, y0)
        image[y0:y1, x0:x1] = cv2.warpAffine(
            symbol,
            shifted,
            (x1 - x0, y1 - y0),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=light,
        )
    return image, np.asarray(matrix, dtype=np.float64)


def _warped_box(
    side: int, matrix: npt.NDArray[np.float64], width: int, height: int
) -> tuple[int, int, int, int]:
    """Pixels the warped symbol can touch (one pixel of margin for the interpolation)."""
    corners = np.array([[0, 0, 1], [side, 0, 1], [side, side, 1], [0, side, 1]], dtype=np.float64)
    mapped = corners @ np.asarray(matrix, dtype=np.float64).T
    x0 = max(0, math.floor(mapped[:, 0].min()) - 2)
    y0 = max(0, math.floor(mapped[:, 1].min()) - 2)
    x1 = min(width, math.ceil(mapped[:, 0].max()) + 2)
    y1 = min(height, math.ceil(mapped[:, 1].max()) + 2)
    return x0, y0, x1, y1


def _symbol_corners(n: int, px: int, matrix: npt.NDArray[np.float64]) -> Corners:
    lo = QUIET_ZONE_MODULES * px - 0.5
    hi = (QUIET_ZONE_MODULES + n) * px - 0.5
    points = np.array([[lo, lo, 1.0], [hi, lo, 1.0], [hi, hi, 1.0], [lo, hi, 1.0]])
    mapped = points @ matrix.T
    return tuple((float(x), float(y)) for x, y in mapped)


@lru_cache(maxsize=8)
def _noise_bank(sigma: float, size: int) -> tuple[GrayImage, GrayImage]:
    """Positive and negative parts of a fixed Gaussian sample, so noise is two saturating ops."""
    sample = np.rint(np.random.default_rng(0x5EED).normal(0.0, sigma, size))
    sample = np.clip(sample, -255, 255)
    positive = np.maximum(sample, 0).astype(np.uint8)
    negative = np.maximum(-sample, 0).astype(np.uint8)
    positive.flags.writeable = False
    negative.flags.writeable = False
    return positive, negative


def _add_noise(image: GrayImage, sigma: float, rng: np.random.Generator) -> GrayImage:
    pixels = image.size
    positive, negative = _noise_bank(float(sigma), max(_NOISE_BANK_SIZE, 2 * pixels))
    start = int(rng.integers(0, positive.size - pixels))
    shape = image.shape
    image = _u8(cv2.add(image, positive[start : start + pixels].reshape(shape)))
    return _u8(cv2.subtract(image, negative[start : start + pixels].reshape(shape)))


def _u8(image: object) -> GrayImage:
    """OpenCV's results typed as what they are (no copy: they already are uint8)."""
    return np.asarray(image, dtype=np.uint8)
