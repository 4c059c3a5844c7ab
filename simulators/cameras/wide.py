"""The wider decode benchmark set: what lines print, one stressor per category.

``synth`` covers square symbols printed as clean squares. Lines also print rectangular
DataMatrix (ISO/IEC 16022: 8x18 ... 16x48) and DMRE (ISO/IEC 21471: 8x48 ... 26x64), with
continuous inkjet (separated round dots, dot gain, missing dots), dot peen on metal, on glossy
foil (glare), on vials and bottles (cylindrical warp), at low contrast and with modules down to
about 2 px. Every category puts one such stressor at a hard but readable level over mild
everything else (rotation, noise, a little blur and perspective); the symbol shape is drawn
from square, rectangular and DMRE in every category, so rectangles meet every stressor.

Deterministic: a frame is a function of (seed, category, index) only, so a category can be
regenerated alone (tests) and adding a category does not change the others.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
import zxingcpp

from simulators.cameras.render import fitting_versions, symbol_modules
from simulators.cameras.synth import (
    SIZES,
    Corners,
    GrayImage,
    Synth,
    _background,
    _free_center,
    random_hri,
)

QUIET = 2  # quiet zone in modules
SPRITE_PX = 8  # the symbol is drawn at 8 px per module, then warped down (anti-aliased dots)
Float = npt.NDArray[np.float32]

CATEGORIES = (
    "square",  # the baseline: clean printed squares, mild conditions
    "rectangular",
    "dmre",
    "low_contrast",
    "small_modules",
    "inkjet",
    "dot_peen",
    "glare",
    "curved",
    "blur",
    "noise",
    "perspective",
    "uneven_light",
    "field_mix",  # what missed in the field: low-contrast rectangles, small modules, 5 MP
    "no_code",
)


@dataclass(frozen=True)
class Params:
    """Everything that decides one frame (the ``conditions`` of its ``Synth``)."""

    size: str
    shape: str  # square | rectangular | dmre
    look: str  # print | inkjet | dot_peen
    module_px: float
    angle: float
    contrast: float
    perspective: float = 0.02
    blur: float = 0.0
    noise: float = 2.0
    uneven: float = 0.0
    glare: float = 0.0  # peak of the specular highlight, 0..1 of the way to white
    curve: float = 0.0  # half the arc the symbol spans on the cylinder, radians
    dot_gain: float = 1.0  # inkjet/dot peen: dot diameter / module pitch
    missing: float = 0.0  # share of dark modules without a dot
    code: bool = True


def category_frames(category: str, count: int, seed: int = 1, *, start: int = 0) -> Iterator[Synth]:
    """``count`` frames of ``category`` (1.3 MP and 5 MP alternating)."""
    for index in range(start, start + count):
        yield wide_frame(category, index, seed)


def wide_frame(category: str, index: int, seed: int = 1) -> Synth:
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; one of {', '.join(CATEGORIES)}")
    key = zlib.crc32(category.encode())
    rng = np.random.default_rng([seed, key, index])
    params = draw_params(category, index, rng)
    return render_params(params, rng)


def draw_params(category: str, index: int, rng: np.random.Generator) -> Params:
    size = "5MP" if index % 2 else "1.3MP"
    shape = str(rng.choice(["square", "rectangular", "dmre"], p=[0.4, 0.3, 0.3]))
    base = Params(
        size=size,
        shape=shape,
        look=str(rng.choice(["print", "inkjet"], p=[0.7, 0.3])),
        module_px=float(rng.uniform(3.0, 8.0)),
        angle=float(rng.uniform(0, 360)),
        contrast=float(rng.uniform(0.35, 0.8)),
        perspective=float(rng.uniform(0, 0.03)),
        blur=float(rng.choice([0.0, rng.uniform(0.3, 0.7)])),
        noise=float(rng.uniform(1.0, 4.0)),
        dot_gain=float(rng.uniform(0.8, 1.1)),
    )
    changes: dict[str, object] = {}
    if category == "square":
        changes = {"shape": "square"}
    elif category in ("rectangular", "dmre"):
        changes = {"shape": category}
    elif category == "low_contrast":
        changes = {"contrast": float(rng.uniform(0.10, 0.20))}
    elif category == "small_modules":
        changes = {"module_px": float(rng.uniform(2.0, 3.0)), "blur": 0.0}
    elif category == "inkjet":
        changes = {
            "look": "inkjet",
            "dot_gain": float(rng.uniform(0.6, 1.25)),
            "missing": float(rng.uniform(0.0, 0.04)),
            "module_px": float(rng.uniform(3.0, 8.0)),
        }
    elif category == "dot_peen":
        changes = {
            "look": "dot_peen",
            "dot_gain": float(rng.uniform(0.6, 0.95)),
            "missing": float(rng.uniform(0.0, 0.02)),
            "contrast": float(rng.uniform(0.3, 0.6)),
            "module_px": float(rng.uniform(4.0, 9.0)),
        }
    elif category == "glare":
        changes = {"glare": float(rng.uniform(0.4, 0.8))}
    elif category == "curved":
        changes = {"curve": float(rng.uniform(0.35, 0.85))}
    elif category == "blur":
        changes = {"blur": float(rng.uniform(0.25, 0.4)) * base.module_px}
    elif category == "noise":
        changes = {"noise": float(rng.uniform(6.0, 12.0)), "contrast": float(rng.uniform(0.4, 0.8))}
    elif category == "perspective":
        changes = {"perspective": float(rng.uniform(0.06, 0.12))}
    elif category == "uneven_light":
        changes = {"uneven": float(rng.uniform(0.4, 0.65))}
    elif category == "field_mix":
        changes = {
            "size": "5MP",
            "shape": str(rng.choice(["rectangular", "dmre"])),
            "contrast": float(rng.uniform(0.12, 0.25)),
            "module_px": float(rng.uniform(2.0, 3.5)),
            "blur": float(rng.choice([0.0, rng.uniform(0.3, 0.6)])),
        }
    elif category == "no_code":
        changes = {"code": False, "glare": float(rng.choice([0.0, rng.uniform(0.4, 0.8)]))}
    return _replace(base, changes)


def _replace(params: Params, changes: dict[str, object]) -> Params:
    values = {**params.__dict__, **changes}
    return Params(**values)  # type: ignore[arg-type]


def render_params(params: Params, rng: np.random.Generator) -> Synth:
    width, height = SIZES[params.size]
    light = float(rng.uniform(175, 235))
    metal = params.look == "dot_peen"
    boxes: list[tuple[int, int, int, int]] = []
    if metal:
        canvas = _brushed_metal(rng, width, height, light)
    else:
        background, boxes = _background(rng, width, height, int(light))
        canvas = background.astype(np.float32)
    codes: tuple[str, ...] = ()
    corners: tuple[Corners, ...] = ()
    conditions: dict[str, float] = {
        "module_px": params.module_px,
        "angle": params.angle,
        "contrast": params.contrast,
        "perspective": params.perspective,
        "blur": params.blur,
        "noise": params.noise,
        "uneven": params.uneven,
        "glare": params.glare,
        "curve": params.curve,
        "dot_gain": params.dot_gain,
        "missing": params.missing,
        "5MP": float(params.size == "5MP"),
    }
    symbol_box: tuple[float, float, float] | None = None
    module_centres: Float | None = None
    if params.code:
        hri = random_hri(rng)
        modules = _pick_symbol(hri, params.shape, rng)
        conditions["rows"], conditions["cols"] = float(modules.shape[0]), float(modules.shape[1])
        conditions["dmre"] = float(params.shape == "dmre")
        cover, relief, inner = _sprite(modules, params, rng)
        centres = _sprite_centres(modules.shape, params.look)
        if params.curve > 0:
            width_before = cover.shape[1]
            cover, relief, inner = _curve(cover, relief, inner, params.curve)
            centres[..., 0] = _curved_x(centres[..., 0], width_before, cover.shape[1], params.curve)
        px = _fit(cover.shape, params.module_px, width, height)
        conditions["module_px"] = px
        half = 0.5 * max(cover.shape) * px / SPRITE_PX * 1.1
        center = _free_center(rng, width, height, half, boxes)  # type: ignore[arg-type]
        center = _inside(center, cover.shape, px / SPRITE_PX, params.perspective, width, height)
        matrix = _placement(cover.shape, px / SPRITE_PX, params, center, rng)
        ink = _warp(cover, matrix, width, height)
        canvas *= 1.0 - params.contrast * ink
        if metal:
            canvas += light * params.contrast * 0.6 * _warp(relief, matrix, width, height)
        pts = cv2.perspectiveTransform(np.float32(inner).reshape(-1, 1, 2), matrix)
        corner = tuple((float(x), float(y)) for x, y in pts.reshape(-1, 2))
        codes, corners = (hri,), (corner,)
        module_centres = cv2.perspectiveTransform(centres.reshape(-1, 1, 2), matrix).reshape(
            centres.shape
        )
        symbol_box = (center[0], center[1], half)
    if params.glare > 0:
        _glare(canvas, rng, params.glare, symbol_box)
    image = _finish(canvas, rng, params)
    return Synth(image, codes, corners, conditions, module_centres)


def _pick_symbol(hri: str, shape: str, rng: np.random.Generator) -> npt.NDArray[np.bool_]:
    """The smallest fitting size of a square or rectangular symbol (what printers choose), any
    fitting DMRE size (DMRE is chosen for the space on the pack)."""
    if shape == "square":
        return symbol_modules(hri)
    versions = fitting_versions(hri, shape)
    if not versions:  # content too long for every 8-16 row rectangle: take the extension
        versions = fitting_versions(hri, "dmre")
    version = versions[0] if shape == "rectangular" else int(rng.choice(versions))
    return symbol_modules(hri, version)


def _sprite(
    modules: npt.NDArray[np.bool_], params: Params, rng: np.random.Generator
) -> tuple[Float, Float, list[tuple[float, float]]]:
    """Ink coverage (0..1), relief (dot peen highlights, -1..1) and the symbol's inner corners,
    at ``SPRITE_PX`` per module with the quiet zone."""
    rows, cols = modules.shape
    s = SPRITE_PX
    height, width = (rows + 2 * QUIET) * s, (cols + 2 * QUIET) * s
    relief = np.zeros((height, width), np.float32)
    if params.look == "print":
        padded = np.pad(modules, QUIET).astype(np.float32)
        cover = cv2.resize(padded, (width, height), interpolation=cv2.INTER_NEAREST)
    else:
        cover_u8 = np.zeros((height, width), np.uint8)
        relief_u8 = np.zeros((height, width), np.uint8)
        shadow_u8 = np.zeros((height, width), np.uint8)
        shift = 4  # cv2 sub-pixel circles: coordinates in 1/16 px
        light_dir = rng.uniform(-1, 1, size=2)
        light_dir /= max(float(np.hypot(*light_dir)), 1e-6)
        for r, c in zip(*np.nonzero(modules), strict=True):
            if rng.random() < params.missing:
                continue
            jitter = rng.normal(0, 0.06 * s, size=2)
            cx = (c + QUIET + 0.5) * s + jitter[0]
            cy = (r + QUIET + 0.5) * s + jitter[1]
            radius = 0.5 * s * params.dot_gain * float(rng.uniform(0.92, 1.08))
            density = int(255 * rng.uniform(0.85, 1.0))
            centre = (int(cx * 16), int(cy * 16))
            cv2.circle(cover_u8, centre, int(radius * 16), density, -1, cv2.LINE_AA, shift)
            if params.look == "dot_peen":
                # A conical crater: the side facing the light catches a bright crescent.
                off = light_dir * radius * 0.45
                rim = (int((cx - off[0]) * 16), int((cy - off[1]) * 16))
                cv2.circle(relief_u8, rim, int(radius * 0.45 * 16), 255, -1, cv2.LINE_AA, shift)
                cv2.circle(shadow_u8, centre, int(radius * 16), 255, -1, cv2.LINE_AA, shift)
        cover = cover_u8.astype(np.float32) / 255.0
        if params.look == "dot_peen":
            relief = (relief_u8.astype(np.float32) / 255.0) * (shadow_u8 > 0)
            cover = np.clip(cover - relief, 0.0, 1.0)
            relief = cv2.GaussianBlur(relief, (0, 0), 0.15 * s)
    q = QUIET * s
    inner = [(q, q), (width - q, q), (width - q, height - q), (q, height - q)]
    return cover, relief, [(float(x), float(y)) for x, y in inner]


def _sprite_centres(shape: tuple[int, ...], look: str) -> Float:
    """Module centres in the sprite's pixel coordinates (x, y), rows x columns x 2: a printed
    module fills pixels (c + QUIET) * s ... + s - 1 (centre at -0.5 of its edge mid-point), a
    dot is drawn at (c + QUIET + 0.5) * s (before its jitter, which stays under a module)."""
    rows, cols = shape[:2]
    shift = -0.5 if look == "print" else 0.0
    xs = (np.arange(cols, dtype=np.float32) + QUIET + 0.5) * SPRITE_PX + shift
    ys = (np.arange(rows, dtype=np.float32) + QUIET + 0.5) * SPRITE_PX + shift
    grid_x, grid_y = np.meshgrid(xs, ys)
    return np.stack([grid_x, grid_y], axis=-1).astype(np.float32)


def _curved_x(x: Float, width: int, out_width: int, half_arc: float) -> Float:
    """Where ``_curve`` moves sprite column ``x`` (pixel coordinates): the inverse of its remap."""
    radius = width / 2 / half_arc
    edge = x + 0.5  # pixel index -> continuous coordinate, as the remap's arithmetic counts
    return (radius * np.sin((edge - width / 2) / radius) + out_width / 2 - 0.5).astype(np.float32)


def _curve(
    cover: Float, relief: Float, inner: list[tuple[float, float]], half_arc: float
) -> tuple[Float, Float, list[tuple[float, float]]]:
    """The sprite printed on a cylinder whose axis runs along the symbol's short side, seen
    from the front: columns crowd towards the edges (orthographic projection)."""
    height, width = cover.shape
    radius = width / 2 / half_arc
    out_width = math.ceil(2 * radius * math.sin(half_arc))
    u = np.arange(out_width, dtype=np.float32) - out_width / 2 + 0.5
    s = radius * np.arcsin(np.clip(u / radius, -1.0, 1.0)) + width / 2 - 0.5
    map_x = np.repeat(s[None, :], height, axis=0).astype(np.float32)
    map_y = np.repeat(np.arange(height, dtype=np.float32)[:, None], out_width, axis=1)
    # The surface turns away from the camera towards the edges: less light comes back.
    shade = np.cos(np.arcsin(np.clip(u / radius, -1.0, 1.0)))[None, :].astype(np.float32)
    curved = cv2.remap(cover, map_x, map_y, cv2.INTER_LINEAR) * (0.6 + 0.4 * shade)
    bent = cv2.remap(relief, map_x, map_y, cv2.INTER_LINEAR)

    def project(x: float) -> float:
        return radius * math.sin((x - width / 2) / radius) + out_width / 2

    return curved, bent, [(project(x), y) for x, y in inner]


def _fit(shape: tuple[int, ...], module_px: float, width: int, height: int) -> float:
    """Shrink the modules if the rotated sprite would not fit well inside the frame."""
    longest = max(shape) / SPRITE_PX
    return float(min(module_px, 0.55 * min(width, height) / (longest * 1.1)))


def _inside(
    center: tuple[float, float],
    shape: tuple[int, ...],
    scale: float,
    perspective: float,
    width: int,
    height: int,
) -> tuple[float, float]:
    """The centre moved (if need be) so that the whole symbol with its quiet zone is in the
    frame at any rotation: ``half`` above bounds the unrotated sprite, and a rotated one reaches
    out to its half diagonal (a line camera is set up to see the whole code; a code cut by the
    edge of the frame is a framing fault no print is read through). Draws nothing from the
    generator, so every other frame stays as it was."""
    rows, cols = shape[:2]
    reach = scale * (0.5 * math.hypot(rows, cols) + perspective * max(rows, cols)) + 1.0
    x = min(max(center[0], reach), width - reach)
    y = min(max(center[1], reach), height - reach)
    return x, y


def _placement(
    shape: tuple[int, ...],
    scale: float,
    params: Params,
    center: tuple[float, float],
    rng: np.random.Generator,
) -> npt.NDArray[np.float64]:
    height, width = shape
    src = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    hw, hh = width * scale / 2, height * scale / 2
    cos, sin = math.cos(math.radians(params.angle)), math.sin(math.radians(params.angle))
    dst = []
    for ux, uy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        jx, jy = rng.uniform(-params.perspective, params.perspective, size=2) * max(hw, hh)
        x, y = ux * hw + jx, uy * hh + jy
        dst.append((center[0] + x * cos - y * sin, center[1] + x * sin + y * cos))
    return np.asarray(cv2.getPerspectiveTransform(src, np.float32(dst)), dtype=np.float64)


def _warp(sprite: Float, matrix: npt.NDArray[np.float64], width: int, height: int) -> Float:
    # INTER_AREA does not apply to warps; the sprite is pre-blurred to its scale instead, so
    # 8 px drawn per module shrunk to 2 px do not alias.
    scale = math.sqrt(abs(float(np.linalg.det(matrix[:2, :2]))))
    if scale < 0.5:
        sprite = cv2.GaussianBlur(sprite, (0, 0), 0.45 / scale)
    return np.asarray(
        cv2.warpPerspective(
            sprite, matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=0.0
        ),
        dtype=np.float32,
    )


def _brushed_metal(rng: np.random.Generator, width: int, height: int, light: float) -> Float:
    """A metal part: mid grey with streaks along one direction."""
    streaks = rng.normal(0, 1, size=(height // 4 + 1, 1)).astype(np.float32)
    streaks = cv2.resize(streaks, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.float32(light * 0.8) + 6.0 * streaks


def _glare(
    canvas: Float,
    rng: np.random.Generator,
    peak: float,
    symbol: tuple[float, float, float] | None,
) -> None:
    """A specular highlight: an elliptical blob brightened towards white, over part of the
    symbol when there is one (a foil or a varnished carton under a ring light)."""
    height, width = canvas.shape
    if symbol is None:
        cx, cy, half = float(rng.uniform(0, width)), float(rng.uniform(0, height)), 150.0
    else:
        cx, cy, half = symbol
    gx = cx + float(rng.uniform(-0.6, 0.6)) * half
    gy = cy + float(rng.uniform(-0.6, 0.6)) * half
    sx = max(8.0, half * float(rng.uniform(0.25, 0.6)))
    sy = sx * float(rng.uniform(0.3, 1.0))
    theta = float(rng.uniform(0, math.pi))
    step = 4  # the blob is smooth: compute it at 1/4 resolution
    ys, xs = np.mgrid[0:height:step, 0:width:step].astype(np.float32)
    dx, dy = xs - gx, ys - gy
    a = (dx * math.cos(theta) + dy * math.sin(theta)) / sx
    b = (-dx * math.sin(theta) + dy * math.cos(theta)) / sy
    blob = np.exp(-0.5 * (a * a + b * b)).astype(np.float32) * peak
    blob = cv2.resize(blob, (width, height), interpolation=cv2.INTER_LINEAR)
    canvas += (255.0 - canvas) * blob


def _finish(canvas: Float, rng: np.random.Generator, params: Params) -> GrayImage:
    height, width = canvas.shape
    if params.uneven > 0:
        gx, gy = rng.uniform(-1, 1, size=2)
        ys, xs = np.mgrid[0:height:8, 0:width:8].astype(np.float32)
        light = 1 - params.uneven * (0.5 + (gx * (xs / width - 0.5) + gy * (ys / height - 0.5)))
        light = cv2.resize(light, (width, height), interpolation=cv2.INTER_LINEAR)
        canvas *= np.clip(light, 0.2, 1.0)
    if params.blur > 0:
        canvas = cv2.GaussianBlur(canvas, (0, 0), params.blur)
    if params.noise > 0:
        canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * params.noise
    return np.clip(canvas, 0, 255).astype(np.uint8)


# --- the physical-readability oracle -------------------------------------------------------

ORACLE_SPREAD = 0.2  # modules: the 3x3 points sampled around each centre (inside a 0.6 dot)
ORACLE_PX = 8  # pixels per module of the clean redrawn symbol
# Modules: the neighbourhoods local thresholds learn dark and light from, smallest first (a
# glare spot lifts the dark modules under it to the light ones' level a few modules away).
ORACLE_WINDOWS = (3, 5, 9)
# Share of the outer finder and timing modules that must sample right for the symbol to be
# found at all (as grid.MIN_BORDER_SCORE); then the fixed pattern, which carries no data, is
# redrawn (a missing dot in the timing track must not miscount the size of the redrawn symbol).
ORACLE_BORDER = 0.8


def oracle_read(synth: Synth) -> str | None:
    """What the frame's symbol says when read at the module centres the generator put it at:
    the grey level sampled there (3x3 points ``ORACLE_SPREAD`` of a module apart), thresholded
    by the symbol's own levels, redrawn clean and decoded by zxing-cpp with its Reed-Solomon
    correction. None: error correction cannot recover it (a print no reader may pass), or the
    outer finder and timing pattern sample too wrong for the symbol to be found.

    Honest by construction: the bits come from the frame alone (the content is never looked
    at; the caller compares the text). A global Otsu threshold first, then a local one (uneven
    light, glare); the first that decodes at all is the answer, right or wrong: RS correction
    does not accept a wrong threshold's bits."""
    if synth.module_centres is None:
        return None
    samples = module_samples(synth.image, synth.module_centres)
    mean = samples.mean(axis=0)
    # The mean of a module's points, then their darkest (a dot-peen crater is as bright on its
    # lit side as the metal around it is, and dark only on its shadow side), then the mean
    # relative to the light around (``_flat_field``: what a specular highlight leaves alone).
    for values in (mean, samples.min(axis=0), _flat_field(mean)):
        otsu = _otsu_dark(values)
        for dark in (otsu, *(_local_dark(values, otsu, window) for window in ORACLE_WINDOWS)):
            if border_share(dark) < ORACLE_BORDER:
                continue
            text = _decode_modules(with_border(dark))
            if text is not None:
                return text
    return None


def _border_mask(rows: int, cols: int) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Where the outer finder (L: left column, bottom row) and timing (top row, right column)
    modules are, and which of them are dark (ISO/IEC 16022: the timing starts dark top left)."""
    where = np.zeros((rows, cols), np.bool_)
    where[0, :] = where[-1, :] = where[:, 0] = where[:, -1] = True
    dark = np.zeros((rows, cols), np.bool_)
    dark[0, :] = np.arange(cols) % 2 == 0
    dark[:, -1] = (rows - 1 - np.arange(rows)) % 2 == 0
    dark[-1, :] = True
    dark[:, 0] = True
    return where, dark


def border_share(dark: npt.NDArray[np.bool_]) -> float:
    """Share of the outer finder and timing modules ``dark`` has right."""
    where, truth = _border_mask(*dark.shape)
    return float(np.mean(dark[where] == truth[where]))


def with_border(dark: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    where, truth = _border_mask(*dark.shape)
    return np.where(where, truth, dark)


def oracle_readable(synth: Synth) -> bool:
    """Whether ``oracle_read`` gives back the frame's content (False for a frame without one)."""
    return bool(synth.codes) and oracle_read(synth) == synth.codes[0]


def module_samples(image: GrayImage, centres: Float) -> Float:
    """Grey levels at 3x3 points around each module centre (9 x rows x columns), the points
    spread along the local module axes (so perspective and curvature are followed)."""
    col_step = np.gradient(centres, axis=1) if centres.shape[1] > 1 else np.zeros_like(centres)
    row_step = np.gradient(centres, axis=0) if centres.shape[0] > 1 else np.zeros_like(centres)
    steps = (-ORACLE_SPREAD, 0.0, ORACLE_SPREAD)
    points = np.stack(
        [centres + a * col_step + b * row_step for a in steps for b in steps], axis=0
    ).astype(np.float32)
    flat = points.reshape(-1, 1, 2)
    samples = cv2.remap(
        image.astype(np.float32),
        np.ascontiguousarray(flat[..., 0]),
        np.ascontiguousarray(flat[..., 1]),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return np.asarray(samples.reshape(points.shape[:-1]), dtype=np.float32)


def _flat_field(values: Float) -> Float:
    """Each module's distance from white over that of the light modules around it, negated
    (dark stays low): glare mixes a share b of white into the reflected light, v -> v + (255 -
    v) b, so this ratio is the same with and without it."""
    kernel = np.ones((ORACLE_WINDOWS[-1], ORACLE_WINDOWS[-1]), np.uint8)
    light = cv2.dilate(values, kernel, borderType=cv2.BORDER_REPLICATE)
    light = cv2.GaussianBlur(light, (0, 0), ORACLE_WINDOWS[-1] / 4)
    ratio = (255.0 - values) / np.maximum(255.0 - light, 1.0)
    return np.asarray(-ratio, dtype=np.float32)


def _otsu_dark(values: Float) -> npt.NDArray[np.bool_]:
    scaled = cv2.normalize(values, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    level, _ = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return np.asarray(scaled <= level, dtype=np.bool_)


def _local_dark(values: Float, otsu: npt.NDArray[np.bool_], window: int) -> npt.NDArray[np.bool_]:
    """Dark against the midpoint of the darkest and lightest modules around each one; where
    those differ by under half the symbol's contrast (all dark or all light around), the global
    threshold's decision stands (the midpoint there is noise). The reader's ``grid._local_dark``
    does the like on its own samples; the oracle keeps its own so as never to share a defect
    with the reader it judges."""
    kernel = np.ones((window, window), np.uint8)
    low = cv2.erode(values, kernel, borderType=cv2.BORDER_REPLICATE)
    high = cv2.dilate(values, kernel, borderType=cv2.BORDER_REPLICATE)
    spread = float(np.percentile(values, 95) - np.percentile(values, 5))
    local = values < 0.5 * (low + high)
    return np.asarray(np.where(high - low >= 0.5 * spread, local, otsu), dtype=np.bool_)


def _decode_modules(dark: npt.NDArray[np.bool_]) -> str | None:
    symbol = np.where(np.pad(dark, 2 * QUIET), 0, 255).astype(np.uint8)
    image = cv2.resize(symbol, None, fx=ORACLE_PX, fy=ORACLE_PX, interpolation=cv2.INTER_NEAREST)
    for barcode in zxingcpp.read_barcodes(
        np.ascontiguousarray(image),
        formats=zxingcpp.BarcodeFormat.DataMatrix,
        try_rotate=False,
        try_invert=False,
        text_mode=zxingcpp.TextMode.HRI,
        binarizer=zxingcpp.Binarizer.FixedThreshold,
    ):
        if barcode.valid:
            return str(barcode.text)
    return None
