"""Print-quality grading of a Data Matrix from one image, after ISO/IEC 15415.

This is *process-control* grading, not a certified verifier: the image comes from the line camera
(uncalibrated reflectance, no controlled illumination or aperture), so the numbers track print
quality over a batch and catch a drifting printer, but they are not ISO 15415 / ISO 15426-2
verification results and must not be reported as such.

Method: the decoder's corners give a projective map from symbol space (module units) to the image.
The symbol's size and orientation are found by fitting the Data Matrix finder L and timing tracks
over every ECC 200 size; then each module centre is sampled through a synthetic aperture (a disc of
0.8 X, as the standard's measuring aperture), as is a one-module quiet-zone ring. From these samples:

- SC, symbol contrast: Rmax - Rmin over symbol and quiet zone.
- MOD, modulation: per module 2|R - GT| / SC; graded per level against the error correction it
  would consume (modules stand in for the standard's codewords: every module below a level is
  counted as one damaged codeword, the worst case).
- RM, reflectance margin: like MOD, but a module of the wrong nominal colour scores 0. Nominal
  colours are known for the fixed patterns, and for every module when ``expected`` is given.
- FPD, fixed pattern damage: the finder L, both timing tracks and the quiet zone, each graded by
  the share of its modules that are wrong or poorly modulated; FPD is the worst segment.
- AN, axial nonuniformity: |X - Y| / mean of the module pitch along the two axes.
- GN, grid nonuniformity: the largest distance, in modules, between a module centre found on the
  timing tracks and the ideal grid through the corners.
- UEC, unused error correction: only if the decoder reports it (``unused_ec``); else not graded.

Each parameter is graded 4..0 (A..F); the overall grade is the lowest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edge_agent.contracts import CodeRead

STANDARD = "ISO/IEC 15415 process-control grading (not a certified verifier)"
LETTERS = "FDCBA"  # index = grade 0..4

Floats = npt.NDArray[np.float64]

# ECC 200 sizes (rows, cols) and their error correction codewords (ISO/IEC 16022 table 7).
ECC_CODEWORDS: dict[tuple[int, int], int] = {
    (10, 10): 5, (12, 12): 7, (14, 14): 10, (16, 16): 12, (18, 18): 14, (20, 20): 18,
    (22, 22): 20, (24, 24): 24, (26, 26): 28, (32, 32): 36, (36, 36): 42, (40, 40): 48,
    (44, 44): 56, (48, 48): 68, (52, 52): 84, (64, 64): 112, (72, 72): 144, (80, 80): 192,
    (88, 88): 224, (96, 96): 272, (104, 104): 336, (120, 120): 408, (132, 132): 496,
    (144, 144): 620, (8, 18): 7, (8, 32): 11, (12, 26): 14, (12, 36): 18, (16, 36): 24,
    (16, 48): 28,
}  # fmt: skip

# Grade thresholds, best first (value >= threshold earns 4, 3, 2, 1; below the last: 0).
SC_LIMITS = (0.70, 0.55, 0.40, 0.20)
MOD_LIMITS = (0.50, 0.40, 0.30, 0.20)
UEC_LIMITS = (0.62, 0.50, 0.37, 0.25)
# Lower is better for these: value <= threshold earns 4, 3, 2, 1.
AN_LIMITS = (0.06, 0.08, 0.10, 0.12)
GN_LIMITS = (0.38, 0.50, 0.63, 0.75)
FPD_DAMAGE_LIMITS = (0.0, 0.09, 0.13, 0.17)  # share of a segment's modules in error

_APERTURE = 0.8  # measuring aperture diameter, in modules
_MIN_FIT = 0.8  # share of finder/timing modules that must fit for a size to be accepted
_TRACK_STEPS = 8  # samples per module along a timing track
_MIN_MODULE_PX = 1.2


def letter(grade: float) -> str:
    return LETTERS[max(0, min(4, int(grade)))]


def _grade_at_least(value: float, limits: Sequence[float]) -> int:
    return next((4 - i for i, limit in enumerate(limits) if value >= limit), 0)


def _grade_at_most(value: float, limits: Sequence[float]) -> int:
    return next((4 - i for i, limit in enumerate(limits) if value <= limit), 0)


@dataclass
class SymbolGrade:
    rows: int
    cols: int
    values: dict[str, float | None] = field(default_factory=dict)
    grades: dict[str, int | None] = field(default_factory=dict)
    error: str | None = None

    @property
    def overall(self) -> int:
        graded = [g for g in self.grades.values() if g is not None]
        return min(graded) if graded and self.error is None else 0

    def as_dict(self) -> dict[str, Any]:
        parameters = {
            name: {
                "value": None if value is None else round(value, 3),
                "grade": self.grades.get(name),
                "letter": None if self.grades.get(name) is None else letter(self.grades[name] or 0),
            }
            for name, value in self.values.items()
        }
        out: dict[str, Any] = {
            "overall": float(self.overall),
            "overall_letter": letter(self.overall),
            "rows": self.rows,
            "cols": self.cols,
            "parameters": parameters,
            "standard": STANDARD,
        }
        if self.error is not None:
            out["error"] = self.error
        return out


def grade_symbol(
    gray: npt.NDArray[np.uint8],
    corners: Sequence[Sequence[float]],
    *,
    rows: int | None = None,
    cols: int | None = None,
    expected: npt.NDArray[np.bool_] | None = None,
    unused_ec: float | None = None,
) -> dict[str, Any]:
    """Grade the Data Matrix at ``corners`` (TL, TR, BR, BL outer corners, as in ``CodeRead``).

    Never raises on a bad image or corners: the result then has grade 0 and an ``error``.
    """
    return grade(
        gray, corners, rows=rows, cols=cols, expected=expected, unused_ec=unused_ec
    ).as_dict()


def grade(
    gray: npt.NDArray[np.uint8],
    corners: Sequence[Sequence[float]],
    *,
    rows: int | None = None,
    cols: int | None = None,
    expected: npt.NDArray[np.bool_] | None = None,
    unused_ec: float | None = None,
) -> SymbolGrade:
    try:
        image = np.asarray(gray, dtype=np.float32)
        quad = np.asarray(corners, dtype=np.float64).reshape(4, 2)
        if image.ndim != 2 or not np.isfinite(quad).all():
            raise ValueError("need a 2-D grayscale image and four finite corners")
        fitted = _fit_symbol(image, quad, rows, cols)
        if fitted is None:
            raise ValueError("no Data Matrix finder and timing pattern at these corners")
        quad, size = fitted
        return _measure(image, quad, size, expected, unused_ec)
    except (ValueError, cv2.error) as exc:
        return SymbolGrade(rows or 0, cols or 0, error=str(exc))


# --- geometry ---------------------------------------------------------------------------------


class _Sampler:
    """Samples the image at points given in module coordinates (x right, y down)."""

    def __init__(self, image: npt.NDArray[np.float32], quad: Floats, rows: int, cols: int):
        self.image = image
        self.rows, self.cols = rows, cols
        unit = np.array([[0, 0], [cols, 0], [cols, rows], [0, rows]], dtype=np.float32)
        self.matrix = cv2.getPerspectiveTransform(unit, quad.astype(np.float32))

    def to_image(self, x: Floats, y: Floats) -> tuple[Floats, Floats]:
        points = np.stack([x.ravel(), y.ravel()], axis=-1).reshape(-1, 1, 2).astype(np.float32)
        mapped = cv2.perspectiveTransform(points, self.matrix).reshape(-1, 2)
        xs = np.asarray(mapped[:, 0], dtype=np.float64).reshape(x.shape)
        return xs, np.asarray(mapped[:, 1], dtype=np.float64).reshape(x.shape)

    def sample(self, x: Floats, y: Floats) -> Floats:
        """Bilinear samples; NaN outside the image."""
        ix, iy = self.to_image(x, y)
        h, w = self.image.shape
        inside = (ix >= 0) & (iy >= 0) & (ix <= w - 1) & (iy <= h - 1)
        values = cv2.remap(
            self.image,
            ix.astype(np.float32).reshape(-1, 1),
            iy.astype(np.float32).reshape(-1, 1),
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        ).reshape(x.shape)
        return np.where(inside, values, np.nan).astype(np.float64)

    def modules(self, x: Floats, y: Floats) -> Floats:
        """Mean over the measuring aperture centred on each module (x, y are module centres)."""
        r = _APERTURE / 2
        offsets = [(dx, dy) for dx in np.linspace(-r, r, 5) for dy in np.linspace(-r, r, 5)]
        offsets = [(dx, dy) for dx, dy in offsets if dx * dx + dy * dy <= r * r + 1e-9]
        stack = np.stack([self.sample(x + dx, y + dy) for dx, dy in offsets])
        return np.asarray(stack.mean(axis=0), dtype=np.float64)


def _expected_edges(rows: int, cols: int) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Nominal dark modules of the finder L + timing tracks, and the mask of those modules."""
    dark = np.zeros((rows, cols), dtype=bool)
    mask = np.zeros((rows, cols), dtype=bool)
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True
    dark[0, ::2] = True  # top timing track, dark at the L corner
    dark[1::2, -1] = True  # right timing track, light at the top-right corner
    dark[:, 0] = True  # finder L: left column
    dark[-1, :] = True  # and bottom row
    return dark, mask


_DIHEDRAL = [(k, flip) for k in range(4) for flip in (False, True)]


def _transform(a: npt.NDArray[Any], k: int, flip: bool) -> npt.NDArray[Any]:
    out = np.rot90(a, k)
    return out.T if flip else out


def _fit_symbol(
    image: npt.NDArray[np.float32], quad: Floats, rows: int | None, cols: int | None
) -> tuple[Floats, tuple[int, int]] | None:
    """Size and orientation that best fit the finder/timing; corners re-ordered to the symbol's."""
    if rows and cols:
        candidates = [(rows, cols), (cols, rows)]
    else:
        candidates = [s for r, c in ECC_CODEWORDS for s in ((r, c), (c, r))]
    side_px = float(np.linalg.norm(quad - np.roll(quad, 1, axis=0), axis=1).min())
    threshold = _threshold(image, quad)
    if threshold is None:
        return None
    best: tuple[float, Floats, tuple[int, int]] | None = None
    for grows, gcols in dict.fromkeys(candidates):
        if side_px / max(grows, gcols) < _MIN_MODULE_PX and not (rows and cols):
            continue  # modules this small cannot have been decoded
        sampler = _Sampler(image, quad, grows, gcols)
        ring = _ring_mask(grows, gcols)
        ys, xs = np.nonzero(ring)
        values = sampler.sample(xs.astype(np.float64) + 0.5, ys.astype(np.float64) + 0.5)
        if np.isnan(values).any():
            return None
        dark = np.zeros((grows, gcols), dtype=bool)
        dark[ys, xs] = values < threshold
        index = np.arange(grows * gcols).reshape(grows, gcols)
        for k, flip in _DIHEDRAL:
            seen = _transform(dark, k, flip)
            size = seen.shape
            if size not in ECC_CODEWORDS and not (rows and cols):
                continue
            nominal, mask = _expected_edges(*size)
            fit = float((seen[mask] == nominal[mask]).mean())
            if best is None or fit > best[0]:
                cells = _transform(index, k, flip)
                picked = [cells[0, 0], cells[0, -1], cells[-1, -1], cells[-1, 0]]
                corner_of = {
                    0: 0, gcols - 1: 1, grows * gcols - 1: 2, (grows - 1) * gcols: 3
                }  # fmt: skip
                order = [corner_of[int(c)] for c in picked]
                best = (fit, quad[order], (int(size[0]), int(size[1])))
    if best is None or best[0] < _MIN_FIT:
        return None
    return best[1], best[2]


def _ring_mask(rows: int, cols: int) -> npt.NDArray[np.bool_]:
    ring = np.zeros((rows, cols), dtype=bool)
    ring[0, :] = ring[-1, :] = ring[:, 0] = ring[:, -1] = True
    return ring


def _threshold(image: npt.NDArray[np.float32], quad: Floats) -> float | None:
    """Midway between dark and light, from a fine sampling of the whole symbol."""
    sampler = _Sampler(image, quad, 1, 1)
    ys, xs = np.mgrid[0:64, 0:64].astype(np.float64) / 64 + 1 / 128
    values = sampler.sample(xs, ys)
    if np.isnan(values).any():
        return None
    lo, hi = np.percentile(values, (5, 95))
    return float(lo + hi) / 2


# --- measurement ------------------------------------------------------------------------------


def _measure(
    image: npt.NDArray[np.float32],
    quad: Floats,
    size: tuple[int, int],
    expected: npt.NDArray[np.bool_] | None,
    unused_ec: float | None,
) -> SymbolGrade:
    rows, cols = size
    sampler = _Sampler(image, quad, rows, cols)
    ys, xs = np.mgrid[0:rows, 0:cols].astype(np.float64) + 0.5
    refl = sampler.modules(xs, ys) / 255.0
    ring = _quiet_zone(sampler) / 255.0
    ring = ring[~np.isnan(ring)]
    everything = np.concatenate([refl.ravel(), ring])
    r_max, r_min = float(everything.max()), float(everything.min())
    sc = r_max - r_min
    result = SymbolGrade(rows, cols)
    result.values["SC"] = sc
    result.grades["SC"] = _grade_at_least(sc, SC_LIMITS)
    if sc <= 0.02:
        result.error = "no contrast between dark and light modules"
        return result
    gt = (r_max + r_min) / 2
    dark = refl < gt
    module_mod = 2 * np.abs(refl - gt) / sc
    edge_dark, edge_mask = _expected_edges(rows, cols)
    nominal = np.where(edge_mask, edge_dark, dark if expected is None else expected)
    module_rm = np.where(dark == nominal, module_mod, 0.0)
    data = ~edge_mask
    capacity = ECC_CODEWORDS.get((rows, cols), 0) / 2
    for name, per_module in (("MOD", module_mod), ("RM", module_rm)):
        grades = _module_grades(per_module)
        result.values[name] = float(per_module[data].min()) if data.any() else None
        result.grades[name] = _ec_weighted_grade(grades[data], capacity)
    fpd, worst = _fixed_pattern(dark, edge_dark, _module_grades(module_mod), ring < gt)
    result.values["FPD"] = worst
    result.grades["FPD"] = fpd
    an = _axial_nonuniformity(quad, rows, cols)
    result.values["AN"] = an
    result.grades["AN"] = _grade_at_most(an, AN_LIMITS)
    gn = _grid_nonuniformity(sampler, gt * 255.0)
    result.values["GN"] = gn
    result.grades["GN"] = _grade_at_most(gn, GN_LIMITS)
    result.values["UEC"] = unused_ec
    result.grades["UEC"] = None if unused_ec is None else _grade_at_least(unused_ec, UEC_LIMITS)
    return result


def _quiet_zone(sampler: _Sampler) -> Floats:
    rows, cols = sampler.rows, sampler.cols
    xs = np.concatenate([np.arange(-1, cols + 1), np.full(rows, cols), np.arange(-1, cols + 1)])
    ys = np.concatenate([np.full(cols + 2, -1), np.arange(rows), np.full(cols + 2, rows)])
    xs = np.concatenate([xs, np.full(rows, -1)]).astype(np.float64) + 0.5
    ys = np.concatenate([ys, np.arange(rows)]).astype(np.float64) + 0.5
    return sampler.modules(xs, ys)


def _module_grades(per_module: Floats) -> npt.NDArray[np.int64]:
    limits = np.array(MOD_LIMITS)
    # count of limits reached: 4 = every limit, i.e. grade A
    return np.asarray((per_module[..., None] >= limits).sum(axis=-1), dtype=np.int64)


def _ec_weighted_grade(grades: npt.NDArray[np.int64], capacity: float) -> int:
    """ISO 15415's codeword-level rule with modules for codewords: at each level, the modules
    below it are treated as damaged codewords that eat into the error correction."""
    best = 0
    for level in range(1, 5):
        damaged = int((grades < level).sum())
        # no error correction known (unlisted size): any damage uses it all up
        unused = 1.0 - damaged / capacity if capacity > 0 else float(damaged == 0)
        best = max(best, min(level, _grade_at_least(unused, UEC_LIMITS)))
    return best


def _fixed_pattern(
    dark: npt.NDArray[np.bool_],
    nominal: npt.NDArray[np.bool_],
    module_grades: npt.NDArray[np.int64],
    ring_dark: npt.NDArray[np.bool_],
) -> tuple[int, float]:
    """Worst segment grade and worst segment damage share (finder L, timing tracks, quiet zone)."""
    wrong = dark != nominal
    segments = {
        "finder-left": (wrong[:, 0], module_grades[:, 0]),
        "finder-bottom": (wrong[-1, :], module_grades[-1, :]),
        "timing-top": (wrong[0, :], module_grades[0, :]),
        "timing-right": (wrong[:, -1], module_grades[:, -1]),
    }
    if ring_dark.size:
        segments["quiet-zone"] = (ring_dark, np.full(ring_dark.shape, 4))
    grade, worst = 4, 0.0
    for errors, grades in segments.values():
        worst = max(worst, float(errors.mean()))
        segment = 0
        for level in range(1, 5):
            share = float((errors | (grades < level)).mean())
            damage_grade = next(
                (4 - i for i, limit in enumerate(FPD_DAMAGE_LIMITS) if share <= limit), 0
            )
            segment = max(segment, min(level, damage_grade))
        grade = min(grade, segment)
    return grade, worst


def _axial_nonuniformity(quad: Floats, rows: int, cols: int) -> float:
    tl, tr, br, bl = quad
    x_pitch = (np.linalg.norm(tr - tl) + np.linalg.norm(br - bl)) / 2 / cols
    y_pitch = (np.linalg.norm(bl - tl) + np.linalg.norm(br - tr)) / 2 / rows
    return float(abs(x_pitch - y_pitch) / ((x_pitch + y_pitch) / 2))


def _grid_nonuniformity(sampler: _Sampler, threshold: float) -> float:
    """Largest offset (in modules) of a timing-track module centre from the ideal grid."""
    rows, cols = sampler.rows, sampler.cols
    worst = 0.0
    for length, horizontal in ((cols, True), (rows, False)):
        along = np.arange(length * _TRACK_STEPS, dtype=np.float64) / _TRACK_STEPS
        along += 0.5 / _TRACK_STEPS
        across = np.linspace(0.3, 0.7, 5)  # a band over the middle of the track's modules
        if horizontal:
            grid_x, grid_y = np.meshgrid(along, across)
        else:
            grid_y, grid_x = np.meshgrid(along, across)
            grid_x = cols - grid_x  # the right-hand track
        profile = sampler.sample(grid_x, grid_y).mean(axis=0)
        worst = max(worst, _track_deviation(profile, along, threshold, length))
    return worst


def _track_deviation(profile: Floats, along: Floats, threshold: float, length: int) -> float:
    above = profile >= threshold
    flips = np.flatnonzero(above[1:] != above[:-1])
    crossings = []
    for i in flips:
        a, b = profile[i], profile[i + 1]
        t = 0.5 if b == a else (threshold - a) / (b - a)
        crossings.append(along[i] + t * (along[i + 1] - along[i]))
    found = np.asarray(crossings, dtype=np.float64)
    edges = []
    for boundary in range(1, length):
        near = found[np.abs(found - boundary) < 0.5] if found.size else found
        if near.size == 0:
            return 1.0  # a timing transition is missing: the grid cannot be followed there
        edges.append(float(near[np.argmin(np.abs(near - boundary))]))
    # Centres between two transitions: the corner modules have only one and print growth would
    # shift them, which is not a grid error.
    centres = (np.asarray(edges[:-1]) + np.asarray(edges[1:])) / 2
    return float(np.abs(centres - (np.arange(1, length - 1) + 0.5)).max(initial=0.0))


def with_grades(image: npt.NDArray[np.uint8], reads: Sequence[CodeRead]) -> list[CodeRead]:
    """``reads`` with ``grade`` filled in from ``image`` where the decoder left it empty."""
    out = []
    for read in reads:
        if read.grade is None and len(read.corners) == 4:
            rows, cols = read.size if read.size is not None else (None, None)
            report = grade(image, read.corners, rows=rows, cols=cols, unused_ec=read.unused_ec)
            read = replace(read, grade=float(report.overall))
        out.append(read)
    return out
