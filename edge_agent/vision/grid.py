"""A DataMatrix read by fitting the module grid ourselves: for dots, gaps and missing modules.

zxing-cpp finds a symbol by tracing the edges of its L-shaped finder and counting the modules
of its timing pattern. Inkjet and dot-peen marks have neither edges (separated round dots) nor
a reliable count (one missing dot in the timing pattern and the count is wrong), and it then
finds nothing, even though the error correction would repair every missing dot. This stage
replaces only the detector and the sampler:

1. dark marks relative to the local background (black-hat: uneven light and glare cancel);
   where that finds no symbol and the marks are a few large ones (bold text beside a faint
   symbol sets the ink threshold above its dots), the dark marks without those; where a glyph
   of a line of text touches a printed symbol (one mark, far larger than the glyphs), first
   the dark marks without the line's band; then dark
   blobs (the determinant of the Hessian): on brushed metal the streaks are as dark as the
   dot-peen craters, but a streak is a ridge, not a blob (so the blobs come first where the
   dark marks are many dots on a texture that runs one way);
2. the symbol is the dark component at the centre of the crop once its dots are joined (the
   gap is found, not assumed: the closing grows until the component's outline stops growing);
3. its outline (the convex hull, whose four sides are the finder and the timing pattern) gives
   the four corners;
4. every ECC 200 size (square, rectangular, DMRE) whose aspect fits the outline is scored by its
   finder and timing modules in each of the four orientations (a long symbol's size that
   scores a little short, its far timing modules out of phase, is fitted to the timing dots and
   scored again once everything else has read nothing: ``_rescued``);
5. the best few are sampled module by module (as they are, then with every mark grown by a
   quarter module: a dot smaller than its module, or a crater whose bright rim sits at the
   centre, is then seen wherever in the module it is), redrawn as a clean symbol and handed to
   zxing-cpp as a pure image: Reed-Solomon decides, so a wrong grid reads nothing rather than
   something wrong;
6. a grid that reads nothing is fitted to the marks themselves (``_snap``: the homography
   through the centres of the dark modules' marks) and sampled again: an outline traced along
   round dots is a fraction of a module off, which over a long row or under perspective puts
   the far modules between two dots. For the best size of an outline, first to the timing
   pattern's dots and the finder's solid column (``_timing_fit``: under strong perspective
   the grid can be sheared by more than the half module the marks are looked for in), and
   last to the marks again after the corners were refined by the border's contrast.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import zxingcpp

from edge_agent.contracts import CodeRead, GrayImage
from edge_agent.vision.decode import DATAMATRIX, barcode_read
from edge_agent.vision.locate import shrink

Floats = npt.NDArray[np.float32]
Labels = npt.NDArray[np.integer[Any]]  # marks' labels, 16 or 32 bits
Size = tuple[int, int, int, Floats]  # a candidate grid: rows, columns, turn, corners
Read = list[CodeRead] | None  # a crop's reads, or None: go on looking

# ECC 200 sizes (rows, columns): ISO/IEC 16022 squares and rectangles, ISO/IEC 21471 DMRE.
SQUARE_SIZES = (10, 12, 14, 16, 18, 20, 22, 24, 26, 32, 36, 40, 44, 48, 52, 64)
RECTANGLES = ((8, 18), (8, 32), (12, 26), (12, 36), (16, 36), (16, 48))
DMRE = (
    (8, 48), (8, 64), (8, 80), (8, 96), (8, 120), (8, 144), (12, 64), (12, 88), (16, 64),
    (20, 36), (20, 44), (20, 64), (22, 48), (24, 48), (24, 64), (26, 40), (26, 48), (26, 64),
)  # fmt: skip
SIZES: tuple[tuple[int, int], ...] = tuple((n, n) for n in SQUARE_SIZES) + RECTANGLES + DMRE
MIN_MODULE_PX = 1.5  # a finer grid than this cannot be sampled
MAX_PITCH_SKEW = 0.3  # modules are square: the two pitches of a candidate size agree this well
MIN_BORDER_SCORE = 0.8  # share of finder and timing modules that must match
# ... or, from this share, after the grid was fitted to the timing dots (``_rescued``): the
# near misses, at most this many of an outline, fitted at most this many times.
RESCUE_SCORE = 0.65
RESCUES = 2
RESCUE_FITS = 2
RESCUE_GAIN = 0.05  # ... the second only if the first gained this much
# Only a long symbol (columns per row): the phase error of the far timing modules grows with
# the row's length, and a fit costs 1-2 ms.
RESCUE_ASPECT = 4
EXPAND = (0.0, 0.15, 0.3, 0.45)  # modules the outline is widened by on each side, best one kept
CANDIDATES = 3  # grids sampled and decoded per symbol, best border score first
# Sizes whose border is scored, best rough contrast first: on an outline half a module off, a
# size with more modules than the symbol often has more contrast than the right one.
ROUGH_CANDIDATES = 6
ALTERNATIVE_PX = 2.0  # corners from the hull's vertices are tried if this far from the first
# ... and first if this far: measured on the best crops of the 83 wide-set frames that reach the
# grid stage, of the 11 whose two are more than 12 px apart (the long DMRE trapezoids among
# them) the hull's read 6, the rectangle's none; of the 33 closer, the rectangle's 18, the
# hull's 11.
TRAPEZOID_PX = 12.0
INK_FLOOR = 0.33  # share of the darkest marks' darkness below which nothing is ink
HIST_SAMPLE_ABOVE = 512 * 512  # px: the ink percentile of a larger map is taken on a quarter
RENDER_PX = 3  # pixels per module of the redrawn symbol
SEARCH_MS = 3.0  # about what the size search costs; not started with less of the budget left
REFINE_MS = 3.0  # about what refining one outline costs
SNAP_MS = 4.0  # about what a fit to the marks and sampling on it cost (2-4 ms, then 1-3 ms)
# ... and a fit to the timing dots, its own gate: it costs about half as much (1-2 ms), and it is
# what reads a long DMRE that the outline's grid misses (frame 275, a dot-peen 8x144 at 5 MP: its
# outline's grid read nothing with 3-4 ms of the budget left, and the fit was not tried).
TIMING_MS = 2.5
OUTLINE_MS = 3.0  # about what an outline costs
BLOB_MS = 6.0  # about what the blob map and a second outline cost
BLOB_TOP = 0.998  # the percentile of the blob map taken for its strongest marks
BLOB_SIGMA = 0.85  # px: the scale of the smallest dots (0.6 of a 4 px module) the blob map finds
HULL_TRIES = 24  # outlines looked at for the symbol's blob, longest first
SPECK_PX = 2  # marks of fewer pixels are specks whatever the others are
SPECK_SHARE = 0.25  # and so are those under this share of the median mark
GLYPH_MARKS = 12  # marks at most in the dark mask for its largest ones to be cleared ...
GLYPH_SHARE = 0.5  # ... namely those of half the largest one's area or more ...
GLYPH_MARGIN_PX = 5  # ... and this far around them (their anti-aliased edges)
# Dark marks at most (more are dots) for a line of text among them to be looked for, and the
# glyphs in a row that make one (``_without_text``).
TEXT_MARKS = 64
TEXT_GLYPHS = 6
TEXT_SYMBOL_AREA = 40.0  # the largest mark is a printed symbol: this many glyphs' area at least
TEXT_SECOND = 0.05  # ... and no other mark has more than this share of its area
TEXT_HEIGHT_SPREAD = 0.25  # glyphs of a line: their heights' deviation within this share
# Dark marks in a crop above which they are dots and the blob map is tried first. Measured on
# the best candidate crops of the wide set's frames that the first pass does not read: printed
# symbols and text have at most 77 (a low-contrast square on noise); of the 83 crops that reach
# the grid stage, the 23 with more than 100 are all inkjet and dot-peen symbols, all of which
# the blob map reads, the dark marks 11 (both in turn: 270 ms in all dark marks first, 207 ms
# blobs first).
DOTTED_MARKS = 100
# ... and only on brushed metal: of those 23, the 4 inkjet symbols (on carton) have a coherence
# of 0.003-0.04 and the dark marks read them all, sooner (frame 203: 9 against 14 ms); the 19
# dot-peen ones 0.07-0.62, and the dark marks read 7 of them.
BRUSHED_COHERENCE = 0.06
SCORE_GROW = 3.0  # px: blob centres grown so that the size search's module samples meet them
GROW = 0.5  # marks grown to this share of a module for the second sampling (a disc across)
REMAP_ROW = 8192  # points per row of a batched remap
PLATEAU = 1.005  # hull areas within this ratio are the same outline
LOCAL_KERNEL = np.ones((3, 3), np.uint8)  # modules around one that its local level is learnt from
OUTLINE_SHRINK_ABOVE = 240  # px: crops of more than this squared are outlined at half resolution
# The fit to the marks: each module's mark is looked for within this many modules of where the
# grid puts its centre (5 x 5 points: the offsets of a grid off by up to half a module), ...
SNAP_REACH = 0.6
SNAP_POINTS = np.linspace(-SNAP_REACH, SNAP_REACH, 5, dtype=np.float32)
SNAP_OFFSETS = np.array([(dx, dy) for dy in SNAP_POINTS for dx in SNAP_POINTS], dtype=np.float32)
SNAP_ROUNDS = 2  # ... twice (the second from the first's grid, whose windows hold one mark each)
SNAP_SOLID = 0.9  # a window this dark all over (inside a solid patch) says nothing of the centre
SNAP_MIN_MODULES = 12  # fewer telling modules than this: no fit
TIMING_REACH = 1.0  # modules: a dark timing module's neighbours either side are light
EDGE_REACH = 2.5  # modules: the solid column is looked for this far either side of the grid's
SCAN_STEP = 0.1  # modules between the points of those searches
SNAP_INLIER = 0.35  # modules: a centre this far from the first fit is not the module's mark


@dataclass(frozen=True)
class Marks:
    """The dark marks of a crop (``marks``): what the grid stage looks for the symbol in first,
    and what says whether the crop holds a symbol of dots (``dotted``)."""

    darkness: Floats
    mask: npt.NDArray[np.uint8] | None
    count: int  # marks in ``mask``, the background not counted
    labels: Labels | None

    @property
    def dotted(self) -> bool:
        """More marks than a printed symbol or text has (``DOTTED_MARKS``): inkjet or dot-peen
        dots, which the grid stage reads and the smoothing passes rarely do."""
        return self.count > DOTTED_MARKS


def marks(image: GrayImage) -> Marks:
    """The dark marks of ``image``: its darkness, their mask, count and labels."""
    darkness = _darkness(image)
    mask = _ink(darkness)
    if mask is None:
        return Marks(darkness, None, 0, None)
    count, labels = _labels(mask)
    return Marks(darkness, mask, count - 1, labels)


def _labels(mask: npt.NDArray[np.uint8]) -> tuple[int, Labels]:
    """The mask's marks, labelled (8-connected; their count with the background's): in 16 bits
    where the mask has too few pixels for more labels (a third less time than 32: 1.3 against
    2.0 ms on a dot-peen crop of 911x827 px), returned as what they index (the label values
    are the same)."""
    small = cv2.countNonZero(mask) < np.iinfo(np.uint16).max
    count, labels = cv2.connectedComponents(
        mask, connectivity=8, ltype=cv2.CV_16U if small else cv2.CV_32S
    )
    return int(count), np.asarray(labels)


def read_sampled(
    image: GrayImage,
    offset: tuple[int, int] = (0, 0),
    *,
    strategy: str = "grid",
    time_left: Callable[[], float] = lambda: math.inf,
    found: Marks | None = None,
) -> list[CodeRead]:
    """The DataMatrix at the centre of ``image`` (a crop of one candidate), if its grid fits.

    ``time_left`` (ms of the frame budget) is asked between the steps: the costly ones (an
    outline, the blob map, the size search, refining an outline) are skipped when too little is
    left, and sampling stops when none is. ``found``: ``marks(image)`` if already taken."""
    height, width = image.shape[:2]
    if min(height, width) < 16:
        return []
    grown: dict[tuple[int, int], tuple[Floats, Floats]] = {}  # _read_grid's, of this crop
    # The near misses of every outline, rescued only once every size that scored has read
    # nothing: a rescue costs 2-4 ms, which the outlines after it often need (seed 11).
    near: list[tuple[Floats, Floats | None, Floats, list[Size]]] = []

    def read(darkness: Floats, blobs: Floats | None, size: Size, fits: Iterator[Floats]) -> Read:
        rows, cols = size[:2]
        for fitted in fits:
            barcode = _read_grid(darkness, blobs, fitted, rows, cols, time_left, grown)
            if barcode is not None:
                return [_placed(barcode, fitted, rows, cols, offset, strategy)]
            if time_left() <= 0:
                return []
        return None

    for darkness, mask, scored, blobs in _passes(image, time_left, found):
        if time_left() < OUTLINE_MS:
            break
        outline = _outline(mask, time_left)
        if outline is None:
            continue
        for corners, trapezoid in _corner_guesses(outline):
            if time_left() < SEARCH_MS:
                return []
            misses: list[Size] = []
            near.append((darkness, blobs, scored, misses))
            for rank, size in enumerate(_sizes(corners, scored, misses)):
                first = rank == 0
                fits = _fits(
                    darkness,
                    size[3],
                    size[:2],
                    refine=first,
                    timing_first=trapezoid and first,
                    time_left=time_left,
                )
                if (reads := read(darkness, blobs, size, fits)) is not None:
                    return reads
    for darkness, blobs, scored, misses in near:
        for size in _rescued(scored, misses, time_left):
            fits = _fits(darkness, size[3], size[:2], refine=True, time_left=time_left)
            if (reads := read(darkness, blobs, size, fits)) is not None:
                return reads
    return []


def _passes(
    image: GrayImage, time_left: Callable[[], float], found: Marks | None = None
) -> Iterator[tuple[Floats, npt.NDArray[np.uint8], Floats, Floats | None]]:
    """What the symbol is looked for in, in turn, each only if the one before gave no symbol:
    (the darkness sampled, the mask outlined, what finder and timing are scored on, the blob
    map if any). The dark marks; the dark marks without the few large ones (when there are
    only a few: bold text beside a faint symbol is all that the darkest marks show); the dark
    blobs, scored on the blobs grown (on brushed metal the streaks cross the darkness of the
    light modules). The blobs first when the dark marks are dots (``DOTTED_MARKS``) on brushed
    metal (``_brushed``); the dark marks without a line of text first when a glyph of it
    touches a printed symbol (``_without_text``)."""
    found = found or marks(image)
    darkness, mask, labels = found.darkness, found.mask, found.labels
    dotted = found.dotted and _brushed(image)
    if dotted and time_left() >= BLOB_MS:
        yield from _blob_pass(image, darkness)
    if mask is not None and GLYPH_MARKS < found.count <= TEXT_MARKS:
        clear = _without_text(darkness, mask)
        clear_mask = None if clear is None else _ink(clear)
        if clear is not None and clear_mask is not None:
            yield clear, clear_mask, clear, None
    if mask is not None:
        yield darkness, mask, darkness, None
    if labels is not None and 0 < found.count <= GLYPH_MARKS:
        faint = _without_glyphs(darkness, labels, found.count + 1)
        faint_mask = _ink(faint)
        if faint_mask is not None:
            yield faint, faint_mask, faint, None
    if not dotted and time_left() >= BLOB_MS:
        yield from _blob_pass(image, darkness)


def _without_text(darkness: Floats, mask: npt.NDArray[np.uint8]) -> Floats | None:
    """``darkness`` without the line of text among the dark marks (``mask``), if a glyph of it
    touches the largest mark (the symbol): joined, the two are one mark whose outline is no
    symbol's (frame 106: a 20x64 DMRE whose finder corner touches a T of bold text), and
    clearing the band the line's glyphs lie in cuts the glyph off. The glyphs: the marks other
    than the largest of about the median's area, at least ``TEXT_GLYPHS`` of them in a row
    (their centres within half a glyph of one line); the band: their rectangle, a glyph
    longer at each end (the joined one may be the last) and ``GLYPH_MARGIN_PX`` wider. Outer
    contours, not labels: 0.35 against 2-5 ms on a 835x807 crop."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if len(contours) <= TEXT_GLYPHS:
        return None
    areas = np.array([cv2.contourArea(contour) for contour in contours], dtype=np.float64)
    largest = int(np.argmax(areas))
    others = np.delete(np.arange(len(contours)), largest)
    typical = float(np.median(areas[others]))
    if typical <= 0:
        return None
    glyphs = others[(areas[others] >= 0.25 * typical) & (areas[others] <= 4.0 * typical)]
    if len(glyphs) < TEXT_GLYPHS:
        return None
    if (
        areas[largest] < TEXT_SYMBOL_AREA * typical
        or float(areas[others].max()) > TEXT_SECOND * areas[largest]
    ):
        # No solid printed symbol, one mark far larger than any other, beside the glyphs:
        # dots (clusters of them of every size), or text alone.
        return None
    boxes = np.array([cv2.boundingRect(contours[i]) for i in glyphs], dtype=np.float32)
    points = boxes[:, :2] + 0.5 * boxes[:, 2:]
    size = math.sqrt(typical)
    vx, vy, x0, y0 = cv2.fitLine(points, cv2.DIST_HUBER, 0, 0.01, 0.01).ravel()
    line = np.abs((points[:, 0] - x0) * vy - (points[:, 1] - y0) * vx) < 0.5 * size
    if int(line.sum()) < TEXT_GLYPHS:
        return None
    # Glyphs of one line are of one height (across the line: their boxes' extent across it).
    across = np.abs(boxes[line, 2] * vy) + np.abs(boxes[line, 3] * vx)
    if float(np.std(across)) > TEXT_HEIGHT_SPREAD * float(np.mean(across)):
        return None
    x, y, w, h = boxes[line].T
    corners = np.concatenate(
        [np.stack([x, y], 1), np.stack([x + w, y], 1), np.stack([x, y + h], 1),
         np.stack([x + w, y + h], 1)]
    )  # fmt: skip
    (cx, cy), (bw, bh), angle = cv2.minAreaRect(corners)
    if bw >= bh:
        grown = (bw + 2.0 * size, bh + 2.0 * GLYPH_MARGIN_PX)
    else:
        grown = (bw + 2.0 * GLYPH_MARGIN_PX, bh + 2.0 * size)
    band = np.asarray(cv2.boxPoints(((cx, cy), grown, angle)), dtype=np.float32)
    symbol = contours[largest].reshape(-1, 2).astype(np.float32)
    if not _inside(symbol, band).any():
        return None  # the text stands apart: the outline of the symbol's mark is its own
    cleared = darkness.copy()
    cv2.fillPoly(cleared, [np.round(band).astype(np.int32)], 0.0)
    return np.asarray(cleared, dtype=np.float32)


def _inside(points: Floats, quad: Floats) -> npt.NDArray[np.bool_]:
    """Whether each point lies inside the convex ``quad`` (either winding)."""
    sides = []
    for i in range(4):
        a, b = quad[i], quad[(i + 1) % 4]
        sides.append((b[0] - a[0]) * (points[:, 1] - a[1]) - (b[1] - a[1]) * (points[:, 0] - a[0]))
    signs = np.stack(sides)
    return np.asarray((signs >= 0).all(axis=0) | (signs <= 0).all(axis=0), dtype=np.bool_)


def _brushed(image: GrayImage) -> bool:
    """Whether the image's texture runs one way, as brushed metal's does: the coherence of its
    structure tensor (summed over the half-size image) above ``BRUSHED_COHERENCE``."""
    small = shrink(image, 2).astype(np.float32)
    gx = cv2.Sobel(small, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(small, cv2.CV_32F, 0, 1, ksize=3)
    xx = float(cv2.mean(gx * gx)[0])
    yy = float(cv2.mean(gy * gy)[0])
    xy = float(cv2.mean(gx * gy)[0])
    return math.hypot(xx - yy, 2.0 * xy) > BRUSHED_COHERENCE * max(xx + yy, 1e-9)


def _blob_pass(
    image: GrayImage, darkness: Floats
) -> Iterator[tuple[Floats, npt.NDArray[np.uint8], Floats, Floats | None]]:
    blobs = _blobs(image)
    blob_mask = _ink(blobs, BLOB_TOP)
    if blob_mask is not None:
        yield darkness, blob_mask, _grown(blobs, SCORE_GROW), blobs


def _without_glyphs(darkness: Floats, labels: Labels, count: int) -> Floats:
    """``darkness`` with its largest marks (``labels``, ``count`` with the background) and a
    margin around them cleared: when there are only a few (``GLYPH_MARKS``), they are glyphs of
    bold text or a solid symbol, and a fainter symbol beside them lies below the ink threshold
    they set."""
    areas = np.bincount(labels.ravel(), minlength=count)[1:]
    large = np.concatenate([[0], (areas >= GLYPH_SHARE * areas.max()) * 255]).astype(np.uint8)
    cleared = cv2.dilate(large[labels], _disc(GLYPH_MARGIN_PX))
    return np.asarray(np.where(cleared > 0, 0.0, darkness), dtype=np.float32)


def _fits(
    darkness: Floats,
    outlined: Floats,
    size: tuple[int, int],
    *,
    refine: bool,
    timing_first: bool = False,
    time_left: Callable[[], float],
) -> Iterator[Floats]:
    """The grid from the outline, then (each only if the one before read nothing) fitted to
    the timing dots and the finder (``_timing_fit``), to the marks (``_snap``), and to the marks
    after the corners were moved to where the border's contrast is best. With ``refine`` (the
    best size of an outline) all of them, otherwise only the fit to the marks: the others cost
    a few ms. Measured on the best crops of the 83 wide-set frames that reach the grid stage:
    70 read on the outline's grid, 8 more on the timing fit, which reads every one that the
    fit to the marks does, for about half its cost (1-2 ms against 2-4 ms on a long DMRE).
    ``timing_first`` (a trapezoid's best size): the timing fit before the outline's grid, which
    a trapezoid's sheared outline rarely reads (frames 443 and 447: 11-14 ms on their crops
    against 12-19 ms)."""
    rows, cols = size
    if timing_first:
        yield _timing_fit(darkness, outlined, rows, cols)
    yield outlined
    if refine and not timing_first and time_left() >= TIMING_MS:
        yield _timing_fit(darkness, outlined, rows, cols)
    if time_left() >= SNAP_MS:
        yield _snap(darkness, outlined, rows, cols)
    if refine and time_left() >= REFINE_MS + SNAP_MS:
        yield _snap(darkness, _refine(darkness, outlined, rows, cols), rows, cols)


def _read_grid(
    darkness: Floats,
    blobs: Floats | None,
    fitted: Floats,
    rows: int,
    cols: int,
    time_left: Callable[[], float],
    grown: dict[tuple[int, int], tuple[Floats, Floats]] | None = None,
) -> zxingcpp.Barcode | None:
    """The symbol sampled on the grid ``fitted``, as it is and with the marks grown. ``grown``
    keeps the grown maps of one crop (map and disc size: the map and its grown copy): the fits
    of one outline have about the same pitch, and a dilation of a large crop costs 0.5-0.8 ms."""
    pitch = 0.5 * (_dist(fitted[0], fitted[1]) / cols + _dist(fitted[1], fitted[2]) / rows)
    kept = {} if grown is None else grown

    def maps() -> Iterator[tuple[Floats, bool]]:
        yield darkness, True
        # Each grown map only if the one before read nothing.
        for source in (darkness, blobs):  # blobs: small dots, their centres are clearer
            if source is None:
                continue
            key = (id(source), _disc_size(GROW * pitch))
            if key not in kept or kept[key][0] is not source:
                kept[key] = (source, _grown(source, GROW * pitch))
            yield kept[key][1], False

    for sampled, local in maps():
        for module_grid in _sample(sampled, fitted, rows, cols, local=local):
            for barcode in _decode(module_grid):
                return barcode
        if time_left() <= 0:
            break
    return None


def _corner_guesses(outline: npt.NDArray[np.int32]) -> Iterator[tuple[Floats, bool]]:
    """The outline's corners from its bounding rectangle and, if they differ, from the hull's
    own vertices (a trapezoid under strong perspective is far from any rectangle); the hull's
    first when they differ by more than ``TRAPEZOID_PX``. Each with whether the outline is such
    a trapezoid."""
    boxed = _corners(outline)
    hulled = _hull_corners(outline)
    if hulled is None:
        yield boxed, False
        return
    apart = min(float(np.abs(np.roll(hulled, -turn, axis=0) - boxed).max()) for turn in range(4))
    if apart <= ALTERNATIVE_PX:
        yield boxed, False
        return
    trapezoid = apart > TRAPEZOID_PX
    for corners in (hulled, boxed) if trapezoid else (boxed, hulled):
        yield corners, trapezoid


def _placed(
    barcode: zxingcpp.Barcode,
    fitted: Floats,
    rows: int,
    cols: int,
    offset: tuple[int, int],
    strategy: str,
) -> CodeRead:
    quad = _symbol_corners(fitted)
    read = barcode_read(barcode, offset=(0, 0), strategy=strategy)
    dx, dy = offset
    placed = tuple((round(x) + dx, round(y) + dy) for x, y in quad)
    side = math.dist(quad[0], quad[1])
    return _with_geometry(read, placed, side / cols if cols else None, (rows, cols))


def _with_geometry(
    read: CodeRead,
    corners: tuple[tuple[int, int], ...],
    module_size: float | None,
    size: tuple[int, int],
) -> CodeRead:
    from dataclasses import replace

    return replace(read, corners=corners, module_size=module_size, size=size)


# --- 1. dark marks -------------------------------------------------------------------------


def _darkness(image: GrayImage) -> Floats:
    """How much darker each pixel is than its local background (0 = background or brighter)."""
    smooth = cv2.GaussianBlur(image, (0, 0), 0.8)
    height, width = image.shape[:2]
    # The background: on a copy shrunk 4x (dots and their highlights average out; by a whole
    # factor, OpenCV's fast path: the resize to a quarter of an uneven size cost more than the
    # rest, 1.2 of the 2.4 ms on a 855x579 crop), a median (streaks of brushed metal and specks
    # go) and then the local maximum over a window wider than any dark patch of a symbol,
    # smoothed so that its own blocks do not show.
    small = cv2.medianBlur(shrink(_u8(smooth), 4 if min(height, width) >= 64 else 1), 3)
    k = max(3, (min(small.shape[:2]) // 4) | 1)
    background = cv2.dilate(small, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
    background = cv2.blur(background, (k, k))
    background = cv2.resize(background, (width, height), interpolation=cv2.INTER_LINEAR)
    # Both are 8-bit: the saturating difference is the darkness, clipped at 0.
    return np.asarray(cv2.subtract(background, smooth), dtype=np.float32)


def _blobs(image: GrayImage) -> Floats:
    """How strongly each pixel is the centre of a dark blob about a dot across: the square root
    of the scale-normalised determinant of the Hessian where both curvatures are upward (in grey
    levels, like ``_darkness``). Lines (brushed-metal streaks, scratches) have one curvature
    near zero and vanish; so do the insides of solid printed modules (hence only a second
    try)."""
    # OpenCV calls throughout: numpy's temporaries cost several ms on a crop of a megapixel.
    smooth = cv2.GaussianBlur(image, (0, 0), BLOB_SIGMA)
    dxx = cv2.Sobel(smooth, cv2.CV_32F, 2, 0, ksize=3)
    dyy = cv2.Sobel(smooth, cv2.CV_32F, 0, 2, ksize=3)
    dxy = cv2.Sobel(smooth, cv2.CV_32F, 1, 1, ksize=3)
    det = cv2.subtract(cv2.multiply(dxx, dyy), cv2.multiply(dxy, dxy))
    _, upward = cv2.threshold(cv2.add(dxx, dyy), 0.0, 1.0, cv2.THRESH_BINARY)
    _, det = cv2.threshold(
        cv2.multiply(det, upward, scale=BLOB_SIGMA**4), 0.0, 0.0, cv2.THRESH_TOZERO
    )
    return np.asarray(cv2.sqrt(det), dtype=np.float32)


def _grown(darkness: Floats, across: float) -> Floats:
    """Every mark grown by a disc ``across`` px wide (the greyscale dilation of the darkness)."""
    return np.asarray(cv2.dilate(darkness, _disc(_disc_size(across))), dtype=np.float32)


def _disc_size(across: float) -> int:
    """The odd disc diameter ``_grown`` grows by for ``across`` px."""
    return max(1, round(across)) | 1


def _ink(darkness: Floats, top_share: float = 0.99) -> npt.NDArray[np.uint8] | None:
    """Marks: Otsu's split of the darkness, but no lower than a third of the darkest marks
    (streaks of brushed metal and paper texture are faint beside any mark). The darkest marks
    are the ``top_share`` percentile: a blob map is strong only at the dots' centres, a few
    pixels each, a thousandth of a large crop around a long DMRE."""
    # convertScaleAbs saturates to 0..255 (darkness is never negative): numpy's clip and cast
    # cost several ms on a large crop.
    scaled = _u8(cv2.convertScaleAbs(darkness))
    # The percentile from every other row and column of a large map: a quarter of the
    # histogram's cost (0.7 ms on a crop of 911x827 px), and still tens of thousands of pixels.
    sample = scaled[::2, ::2] if scaled.size > HIST_SAMPLE_ABOVE else scaled
    hist = cv2.calcHist([np.ascontiguousarray(sample)], [0], None, [256], [0, 256]).ravel()
    top = float(np.searchsorted(np.cumsum(hist), top_share * float(hist.sum())))
    if top < 6.0:  # nothing darker than sensor noise
        return None
    scaled = _u8(cv2.convertScaleAbs(darkness, alpha=255.0 / top))
    otsu, _ = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    _, mask = cv2.threshold(scaled, max(float(otsu), INK_FLOOR * 255.0), 255, cv2.THRESH_BINARY)
    return np.asarray(mask, dtype=np.uint8)


def _despeckle(mask: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """The mask without specks: marks much smaller than the typical one (sensor noise, grain of
    the metal), which the closing below would otherwise join to the symbol across its quiet
    zone."""
    count, labels, areas = _marks(mask)
    if count <= 2:
        return mask
    floor = max(SPECK_PX, SPECK_SHARE * float(np.median(areas)))
    keep = np.concatenate([[0], (areas >= floor).astype(np.uint8) * 255]).astype(np.uint8)
    return _u8(keep[labels])


def _marks(
    mask: npt.NDArray[np.uint8],
) -> tuple[int, Labels, npt.NDArray[np.intp]]:
    """The mask's marks: their count (the background one of them), labels and areas (the
    background's left out). The labels alone and a bincount: OpenCV's labelling with its
    statistics costs four times as much (1.9 against 0.4 ms on a dot-peen crop of 430 marks)."""
    count, labels = _labels(mask)
    return count, labels, np.bincount(labels.ravel(), minlength=count)[1:]


# --- 2. the symbol's outline ---------------------------------------------------------------


def _outline(
    mask: npt.NDArray[np.uint8], time_left: Callable[[], float] = lambda: math.inf
) -> npt.NDArray[np.int32] | None:
    """Hull points of the dark component at the centre, with its dots joined.

    Closing joins more of the symbol the wider it is, and its hull only grows, up to the
    symbol's own outline; past the quiet zone it would bridge to whatever is beside the symbol,
    which then reaches the edge of the crop (a candidate crop has margin around its symbol) and
    is no candidate any more. So: the largest central hull clear of the crop's edge.
    """
    # A large crop is outlined at half resolution (the closings cost its area times the kernel;
    # the corners are refined at full resolution afterwards).
    factor = 2 if mask.shape[0] * mask.shape[1] >= OUTLINE_SHRINK_ABOVE**2 else 1
    if factor > 1:
        small = cv2.resize(
            mask, (mask.shape[1] // 2, mask.shape[0] // 2), interpolation=cv2.INTER_AREA
        )
        mask = _u8(cv2.threshold(small, 63, 255, cv2.THRESH_BINARY)[1])
    mask = _despeckle(mask)
    height, width = mask.shape
    best: npt.NDArray[np.int32] | None = None
    best_area = 0.0
    areas: list[float] = []
    for k in (1, 3, 5, 7, 9, 13, 17, 23)[: 6 if factor > 1 else 8]:
        closed = mask if k == 1 else _u8(cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _disc(k)))
        hull = _central_hull(closed, width, height)
        area = 0.0 if hull is None else float(cv2.contourArea(hull))
        areas.append(area)
        if len(areas) >= 3 and area > 0 and max(areas[-3:]) <= PLATEAU * min(areas[-3:]):
            # Three closings in a row gave the same outline: the symbol's dots are joined and
            # the wider (costlier) closings would only find the same hull, or bridge past the
            # quiet zone (measured on the wide set: the outline grows in one or two closings,
            # then stays for four or five).
            if area > best_area:
                best, best_area = hull, area
            break
        if hull is not None and area > best_area:
            best, best_area = hull, area
        elif best_area > 0 and area < 0.5 * best_area:
            break  # the symbol has merged with its surroundings: only fragments are left
        if time_left() <= 0:
            break  # the frame's budget is spent: the outline so far, if any
    if best is None or factor == 1:
        return best
    return np.asarray(best * factor + factor // 2, dtype=np.int32)


def _u8(image: object) -> npt.NDArray[np.uint8]:
    return np.asarray(image, dtype=np.uint8)


@lru_cache(maxsize=32)
def _disc(k: int) -> npt.NDArray[np.uint8]:
    return np.asarray(cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)), dtype=np.uint8)


def _central_hull(
    closed: npt.NDArray[np.uint8], width: int, height: int
) -> npt.NDArray[np.int32] | None:
    """Convex hull of the largest dark blob centred in the crop and clear of its edge."""
    contours, _ = cv2.findContours(closed, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    # Only the longest outlines can be the largest blob: before the dots are joined there are
    # hundreds of them, and a bounding box each costs more than the closing.
    longest = sorted(contours, key=len, reverse=True)[:HULL_TRIES]
    best, best_area = None, 0
    for contour in longest:
        x, y, w, h = cv2.boundingRect(contour)
        if x <= 1 or y <= 1 or x + w >= width - 1 or y + h >= height - 1:
            continue  # reaches the edge of the crop: not a symbol with its quiet zone
        cx, cy = x + w / 2, y + h / 2
        if not (0.2 * width < cx < 0.8 * width and 0.2 * height < cy < 0.8 * height):
            continue
        if w * h > best_area:
            best, best_area = contour, w * h
    if best is None:
        return None
    return np.asarray(cv2.convexHull(best), dtype=np.int32)


def _corners(hull: npt.NDArray[np.int32]) -> Floats:
    """Four corners of the outline, in order around it (perspective: each side fitted as a line
    to the hull points near it)."""
    rect = cv2.minAreaRect(hull)
    box = np.asarray(cv2.boxPoints(rect), dtype=np.float32)
    points = hull.reshape(-1, 2).astype(np.float32)
    lines = []
    for i in range(4):
        a, b = box[i], box[(i + 1) % 4]
        direction = (b - a) / max(float(np.linalg.norm(b - a)), 1e-6)
        normal = np.array([-direction[1], direction[0]], dtype=np.float32)
        distance = np.abs((points - a) @ normal)
        along = (points - a) @ direction
        length = float(np.linalg.norm(b - a))
        near = points[(distance < max(2.0, 0.04 * length)) & (along > -1) & (along < length + 1)]
        if len(near) >= 2:
            vx, vy, x0, y0 = cv2.fitLine(near, cv2.DIST_HUBER, 0, 0.01, 0.01).ravel()
            lines.append((np.array([x0, y0], np.float32), np.array([vx, vy], np.float32)))
        else:
            lines.append((a, direction))
    corners = []
    for i in range(4):
        (p, u), (q, v) = lines[(i - 1) % 4], lines[i]
        corner = _intersect(p, u, q, v)
        far = corner is None or np.linalg.norm(corner - box[i]) > 0.1 * max(rect[1])
        corners.append(box[i] if far else corner)
    return _clockwise(np.asarray(corners, dtype=np.float32))


def _hull_corners(hull: npt.NDArray[np.int32]) -> Floats | None:
    """Four corners of the outline from its own vertices: the hull vertex nearest each corner of
    the bounding rectangle, each side a line fitted to the hull points between two of them."""
    rect = cv2.minAreaRect(hull)
    box = np.asarray(cv2.boxPoints(rect), dtype=np.float32)
    points = hull.reshape(-1, 2).astype(np.float32)
    count = len(points)
    index = [int(np.argmin(np.linalg.norm(points - corner, axis=1))) for corner in box]
    if len(set(index)) < 4:
        return None
    vertices = points[index]
    lines = []
    for i in range(4):
        a, b = index[i], index[(i + 1) % 4]
        forward = [(a + k) % count for k in range(((b - a) % count) + 1)]
        backward = [(a - k) % count for k in range(((a - b) % count) + 1)]
        side = points[forward if len(forward) <= len(backward) else backward]
        start, end = vertices[i], vertices[(i + 1) % 4]
        length = float(np.linalg.norm(end - start))
        direction = (end - start) / max(length, 1e-6)
        normal = np.array([-direction[1], direction[0]], dtype=np.float32)
        # Only points along the chord: the closing rounds the symbol's corners.
        near = side[np.abs((side - start) @ normal) < max(2.0, 0.05 * length)]
        if len(near) < 2:
            near = np.stack([start, end])
        vx, vy, x0, y0 = cv2.fitLine(near, cv2.DIST_HUBER, 0, 0.01, 0.01).ravel()
        lines.append((np.array([x0, y0], np.float32), np.array([vx, vy], np.float32)))
    corners = []
    for i in range(4):
        (p, u), (q, v) = lines[(i - 1) % 4], lines[i]
        corner = _intersect(p, u, q, v)
        far = corner is None or np.linalg.norm(corner - vertices[i]) > 0.1 * min(rect[1]) + 3
        corners.append(vertices[i] if far else corner)
    return _clockwise(np.asarray(corners, dtype=np.float32))


def _clockwise(quad: Floats) -> Floats:
    """Clockwise on screen (y down), so that a grid never comes out mirrored: the finder looks
    the same in a mirror, the data does not."""
    (x0, y0), (x1, y1), (x2, y2) = quad[0], quad[1], quad[2]
    if (x1 - x0) * (y2 - y1) - (y1 - y0) * (x2 - x1) < 0:
        return quad[::-1].copy()
    return quad


def _intersect(p: Floats, u: Floats, q: Floats, v: Floats) -> Floats | None:
    det = float(u[0] * v[1] - u[1] * v[0])
    if abs(det) < 1e-6:
        return None
    t = float((q[0] - p[0]) * v[1] - (q[1] - p[1]) * v[0]) / det
    return np.asarray(p + t * u, dtype=np.float32)


# --- 3. size and orientation ---------------------------------------------------------------


def _sizes(
    corners: Floats, darkness: Floats, near_misses: list[Size] | None = None
) -> Iterator[Size]:
    """(rows, columns, turn, corners) candidates, best border score first; those that score
    a little less are added to ``near_misses`` (for ``_rescued``). ``turn`` says which
    corner is the symbol's top-left (above the finder's L); each size's outline is the best of
    a few widenings (``EXPAND``)."""
    side_a = 0.5 * (_dist(corners[0], corners[1]) + _dist(corners[2], corners[3]))
    side_b = 0.5 * (_dist(corners[1], corners[2]) + _dist(corners[3], corners[0]))
    candidates: list[tuple[int, int, int]] = []
    for rows, cols in SIZES:
        for turn in range(4):
            # turn t: corners[t] is the symbol's top-left, corners[t+1] its top-right.
            across = side_a if turn % 2 == 0 else side_b  # length of the top edge
            down = side_b if turn % 2 == 0 else side_a
            pitch_x, pitch_y = across / cols, down / rows
            if min(pitch_x, pitch_y) < MIN_MODULE_PX:
                continue
            if abs(pitch_x - pitch_y) > MAX_PITCH_SKEW * max(pitch_x, pitch_y):
                continue
            candidates.append((rows, cols, turn))
    rough = [
        (contrast, rows, cols, turn)
        for (rows, cols, turn), contrast in zip(
            candidates, _rough_contrasts(darkness, corners, candidates), strict=True
        )
    ]
    rough.sort(reverse=True)
    top_rough = rough[:ROUGH_CANDIDATES]
    # The outline runs along the marks' edges: round dots smaller than their modules leave it
    # short of the grid by up to a third of a module on each side, which over a long DMRE row
    # puts the far timing modules half a module off. Every widening of every likely size is
    # scored in one remap.
    options = [
        [_expand(np.roll(corners, -turn, axis=0), rows, cols, grow) for grow in EXPAND]
        for _, rows, cols, turn in top_rough
    ]
    items = [
        (quad, rows, cols)
        for (_, rows, cols, _), quads in zip(top_rough, options, strict=True)
        for quad in quads
    ]
    all_scores = _border_scores_of(darkness, items)
    scored = []
    for index, (_, rows, cols, turn) in enumerate(top_rough):
        scores = all_scores[index * len(EXPAND) : (index + 1) * len(EXPAND)]
        top = int(np.argmax(scores))
        scored.append((scores[top], rows, cols, turn, options[index][top]))
    scored.sort(key=lambda item: item[0], reverse=True)
    # No size's outline is refined here: the grid is fitted to the marks (``_fits``) only once
    # a size is sampled and reads nothing. Measured on the best candidate crop of the wide
    # set's 83 frames that reach the grid stage: refining the corners of the three best sizes
    # up front (by their border contrast) read 73 of them in 1018 ms in all; the fits 76 in
    # 728 ms.
    for score, rows, cols, turn, quad in scored[:CANDIDATES]:
        if score >= MIN_BORDER_SCORE:
            yield rows, cols, turn, quad
        elif score >= RESCUE_SCORE and near_misses is not None:
            near_misses.append((rows, cols, turn, quad))


def _rescued(
    darkness: Floats, near_misses: Sequence[Size], time_left: Callable[[], float]
) -> Iterator[Size]:
    """The near misses of the border score whose grid, fitted to the timing dots and the
    finder (``_timing_fit``, a second time from the first fit's grid), scores enough. Along a
    long DMRE row an outline a module off at one end puts the far timing modules out of phase
    (seed 7: four 8x144 whose outlines are 1-4 px from the symbol's corners score 0.69-0.77;
    fitted, 0.88-1.00 and they read); a wrong size stays below, so this costs a frame without a
    symbol little."""
    long = [miss for miss in near_misses if miss[1] >= RESCUE_ASPECT * miss[0]]
    for rows, cols, turn, quad in long[:RESCUES]:
        fitted = quad
        score = _border_scores_of(darkness, [(quad, rows, cols)])[0]
        for _ in range(RESCUE_FITS):
            if time_left() < TIMING_MS:
                return
            fitted = _timing_fit(darkness, fitted, rows, cols)
            before, score = score, _border_scores_of(darkness, [(fitted, rows, cols)])[0]
            if score >= MIN_BORDER_SCORE:
                yield rows, cols, turn, fitted
                break
            if score < before + RESCUE_GAIN:
                break  # the fit does not converge on this grid: a wrong size, most likely


def _rough_contrasts(
    darkness: Floats, corners: Floats, candidates: Sequence[tuple[int, int, int]]
) -> list[float]:
    """``_contrasts`` of every candidate (rows, columns, turn) on one outline, in one remap.

    A size's module grid is the unit square's scaled by 1/cols, 1/rows; so the finder and
    timing points of all sizes, in unit coordinates, go through the four homographies of the
    turns at once (a call per size costs ten times the sampling)."""
    if not candidates:
        return []
    by_turn: dict[int, list[int]] = {}
    for index, (_, _, turn) in enumerate(candidates):
        by_turn.setdefault(turn, []).append(index)
    unit = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float32)
    xs: list[Floats] = []
    ys: list[Floats] = []
    spans: list[tuple[int, int, int]] = []  # candidate index, start, count (in modules)
    start = 0
    for turn, indices in by_turn.items():
        quad = np.ascontiguousarray(np.roll(corners, -turn, axis=0), dtype=np.float32)
        matrix = np.asarray(cv2.getPerspectiveTransform(unit, quad), dtype=np.float32)
        pieces = []
        for index in indices:
            rows, cols, _ = candidates[index]
            pieces.append(_unit_border(rows, cols))
            spans.append((index, start, len(pieces[-1]) // len(_SPREAD)))
            start += len(pieces[-1])
        points = np.concatenate(pieces)
        mapped = points @ matrix.T
        w = mapped[:, 2]
        w = np.where(np.abs(w) < 1e-9, 1e-9, w)
        xs.append(mapped[:, 0] / w)
        ys.append(mapped[:, 1] / w)
    flat = _remap_points(darkness, np.concatenate(xs), np.concatenate(ys))
    modules = flat.reshape(-1, len(_SPREAD)).mean(axis=1)
    # Mean of the dark and of the light modules of every candidate: sums over the segments
    # (a mean per candidate is a numpy call each, and there are a hundred candidates).
    dark = np.concatenate([_border(*candidates[index][:2])[1] for index, _, _ in spans])
    starts = np.array([first // len(_SPREAD) for _, first, _ in spans])
    weights = dark.astype(np.float32)
    dark_sum = np.add.reduceat(modules * weights, starts)
    dark_count = np.add.reduceat(weights, starts)
    total = np.add.reduceat(modules, starts)
    counts = np.array([count for _, _, count in spans], dtype=np.float32)
    difference = dark_sum / dark_count - (total - dark_sum) / (counts - dark_count)
    out = [0.0] * len(candidates)
    for (index, _, _), value in zip(spans, difference, strict=True):
        out[index] = float(value)
    return out


def _remap_points(image: Floats, xs: Floats, ys: Floats) -> Floats:
    """``image`` sampled (bilinear, 0 outside) at the points (xs, ys): one remap, the points in
    rows of ``REMAP_ROW`` (OpenCV's maps are at most 32767 wide)."""
    count = len(xs)
    rows = -(-count // REMAP_ROW)
    map_x = np.full(rows * REMAP_ROW, -1.0, dtype=np.float32)
    map_y = np.full(rows * REMAP_ROW, -1.0, dtype=np.float32)
    map_x[:count], map_y[:count] = xs, ys
    sampled = cv2.remap(
        image,
        map_x.reshape(rows, REMAP_ROW),
        map_y.reshape(rows, REMAP_ROW),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )
    return np.asarray(sampled, dtype=np.float32).reshape(-1)[:count]


@lru_cache(maxsize=256)
def _unit_border(rows: int, cols: int) -> Floats:
    """``_border``'s sample points (five per module) in unit-square coordinates, homogeneous."""
    points, _ = _border(rows, cols)
    spread = (points[:, None, :] + _SPREAD[None, :, :]).reshape(-1, 2) / (cols, rows)
    ones = np.ones((len(spread), 1), np.float32)
    return np.asarray(np.concatenate([spread, ones], axis=1), dtype=np.float32)


def _expand(quad: Floats, rows: int, cols: int, grow: float) -> Floats:
    """``quad`` (top-left first) widened by ``grow`` modules on every side."""
    if grow == 0:
        return quad
    src = np.array(
        [[-grow, -grow], [cols + grow, -grow], [cols + grow, rows + grow], [-grow, rows + grow]],
        dtype=np.float32,
    )
    mapped = cv2.perspectiveTransform(src.reshape(-1, 1, 2), _homography(quad, rows, cols))
    return np.asarray(mapped.reshape(4, 2), dtype=np.float32)


def _contrasts(darkness: Floats, quads: Sequence[Floats], rows: int, cols: int) -> list[float]:
    """For each quad (top-left first): how much darker the finder and timing pattern's dark
    modules are than its light ones (one size at a time: the plain form of
    ``_rough_contrasts``)."""
    dark = _border(rows, cols)[1]
    values = _samples_spread(
        darkness,
        [_homography(quad, rows, cols) for quad in quads],
        _border_spread(rows, cols),
        len(_SPREAD),
    )
    difference = values[:, dark].mean(axis=1) - values[:, ~dark].mean(axis=1)
    return [float(d) for d in difference]


def _refine(darkness: Floats, quad: Floats, rows: int, cols: int) -> Floats:
    """Move each corner by fractions of a module while the border contrast improves."""
    pitch = (_dist(quad[0], quad[1]) + _dist(quad[1], quad[2])) / (rows + cols)
    best = _contrasts(darkness, [quad], rows, cols)[0]
    for step in (0.5 * pitch, 0.25 * pitch):
        for _ in range(2):
            trials = []
            for i in range(4):
                for dx, dy in ((step, 0), (-step, 0), (0, step), (0, -step)):
                    trial = quad.copy()
                    trial[i] += (dx, dy)
                    trials.append(trial)
            scores = _contrasts(darkness, trials, rows, cols)
            top = int(np.argmax(scores))
            if scores[top] <= best:
                break
            best, quad = scores[top], trials[top]
    return quad


def _dist(a: Floats, b: Floats) -> float:
    return float(np.hypot(*(a - b)))


def _homography(quad: Floats, rows: int, cols: int) -> Floats:
    """Module coordinates (column, row; 0..cols, 0..rows) → image; ``quad`` top-left first."""
    src = np.array([[0, 0], [cols, 0], [cols, rows], [0, rows]], dtype=np.float32)
    return np.asarray(cv2.getPerspectiveTransform(src, quad), dtype=np.float32)


def _symbol_corners(quad: Floats) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in quad]


@lru_cache(maxsize=256)
def _border(rows: int, cols: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Module centres of the finder and timing pattern, and whether each is dark."""
    points: list[tuple[float, float]] = []
    dark: list[bool] = []
    for c in range(cols):
        points.append((c + 0.5, rows - 0.5))  # bottom row: solid
        dark.append(True)
        points.append((c + 0.5, 0.5))  # top row: alternating, dark first
        dark.append(c % 2 == 0)
    for r in range(1, rows - 1):
        points.append((0.5, r + 0.5))  # left column: solid
        dark.append(True)
        points.append((cols - 0.5, r + 0.5))  # right column: alternating, dark at the bottom
        dark.append((rows - 1 - r) % 2 == 0)
    return np.array(points, dtype=np.float32), np.array(dark, dtype=np.bool_)


_ACROSS = np.array([-0.2, 0.0, 0.2], dtype=np.float32)  # a timing search's points across its row
_NO_OFFSET = np.zeros((1, 2), dtype=np.float32)
_SPREAD = np.array(
    [[0, 0], [-0.22, -0.22], [0.22, -0.22], [-0.22, 0.22], [0.22, 0.22]], dtype=np.float32
)
# Close to the centre: the data modules are read where a grid a third of a module off is still
# inside them (the marks are grown instead where a dot misses the centre).
_TIGHT = np.array(
    [[0, 0], [-0.12, -0.12], [0.12, -0.12], [-0.12, 0.12], [0.12, 0.12]], dtype=np.float32
)


def _samples(darkness: Floats, matrix: Floats, points: Floats, spread: Floats = _SPREAD) -> Floats:
    """Darkness of each module: the mean of five points inside it (a dot-peen dot has a
    highlight at its centre, an inkjet dot may sit off it)."""
    return np.asarray(_samples_many(darkness, [matrix], points, spread)[0], dtype=np.float32)


def _samples_many(
    darkness: Floats, matrices: Sequence[Floats], points: Floats, offsets: Floats = _SPREAD
) -> Floats:
    """``_samples`` for several grids of the same points at once: one remap for all of them
    (a call per grid costs more than the sampling)."""
    return _samples_spread(darkness, matrices, _spread(points, offsets), len(offsets))


def _samples_spread(
    darkness: Floats, matrices: Sequence[Floats], homogeneous: Floats, per_point: int
) -> Floats:
    """Mean darkness per point of ``homogeneous`` (``per_point`` consecutive rows a point) under
    each of ``matrices``: one matmul and one remap for all."""
    stacked = np.stack(matrices).astype(np.float32)  # (grids, 3, 3)
    mapped = np.matmul(homogeneous[None, :, :], stacked.transpose(0, 2, 1)).reshape(-1, 3)
    w = mapped[:, 2]
    w = np.where(np.abs(w) < 1e-9, 1e-9, w)
    values = _remap_points(darkness, mapped[:, 0] / w, mapped[:, 1] / w)
    shaped = values.reshape(len(matrices), -1, per_point)
    return np.asarray(shaped.mean(axis=2), dtype=np.float32)


def _spread(points: Floats, offsets: Floats) -> Floats:
    """Each point with ``offsets`` added, as homogeneous rows (len(offsets) rows a point)."""
    spread = (points[:, None, :] + offsets[None, :, :]).reshape(-1, 2)
    ones = np.ones((len(spread), 1), np.float32)
    return np.asarray(np.concatenate([spread, ones], axis=1), dtype=np.float32)


@lru_cache(maxsize=256)
def _border_spread(rows: int, cols: int) -> Floats:
    return _spread(_border(rows, cols)[0], _SPREAD)


def _border_scores_of(darkness: Floats, items: Sequence[tuple[Floats, int, int]]) -> list[float]:
    """For each (quad, rows, columns) item, of any sizes: the share of its finder and timing
    modules that match, in one remap; the thresholds of the quads of one size at once (a median
    per quad costs more than its sampling)."""
    if not items:
        return []
    groups: dict[tuple[int, int], list[int]] = {}
    for index, (_, rows, cols) in enumerate(items):
        groups.setdefault((rows, cols), []).append(index)
    xs, ys = [], []
    for (rows, cols), indices in groups.items():
        matrices = np.stack([_homography(items[i][0], rows, cols) for i in indices])
        mapped = np.matmul(_border_spread(rows, cols)[None], matrices.transpose(0, 2, 1))
        mapped = mapped.reshape(-1, 3)
        w = mapped[:, 2]
        w = np.where(np.abs(w) < 1e-9, 1e-9, w)
        xs.append(mapped[:, 0] / w)
        ys.append(mapped[:, 1] / w)
    values = _remap_points(darkness, np.concatenate(xs), np.concatenate(ys))
    modules = values.reshape(-1, len(_SPREAD)).mean(axis=1)
    out = [0.0] * len(items)
    start = 0
    for (rows, cols), indices in groups.items():
        dark = _border(rows, cols)[1]
        count = len(dark) * len(indices)
        block = modules[start : start + count].reshape(len(indices), len(dark))
        start += count
        levels = 0.5 * (np.median(block[:, dark], axis=1) + np.median(block[:, ~dark], axis=1))
        shares = ((block > levels[:, None]) == dark[None, :]).mean(axis=1)
        for index, share in zip(indices, shares, strict=True):
            out[index] = float(share)
    return out


def _level(values: Floats, dark: npt.NDArray[np.bool_]) -> float:
    """Threshold between dark and light modules, learnt from the finder and timing modules,
    whose colour is known: midway between their medians (a missing dot moves neither)."""
    return 0.5 * (float(np.median(values[dark])) + float(np.median(values[~dark])))


# --- 4. sample and decode ------------------------------------------------------------------


def _sample(
    darkness: Floats, quad: Floats, rows: int, cols: int, *, local: bool = False
) -> list[npt.NDArray[np.bool_]]:
    """The module grid thresholded at the level of the finder and timing modules; with
    ``local``, then also against the modules around each one (``_local_dark``)."""
    matrix = _homography(quad, rows, cols)
    columns = np.arange(cols, dtype=np.float32) + 0.5
    cs, rs = np.meshgrid(columns, np.arange(rows, dtype=np.float32) + 0.5)
    points = np.stack([cs.ravel(), rs.ravel()], axis=1)
    values = _samples(darkness, matrix, points, _TIGHT).reshape(rows, cols)
    border, dark = _border(rows, cols)
    level = _level(_samples(darkness, matrix, border), dark)
    grids = [values > level]
    if local:
        grids.append(_local_dark(values, grids[0]))
    for grid in grids:
        # The finder and timing pattern are known once the size is: a dot missing there would
        # only make zxing-cpp miscount the size of the clean redrawn symbol.
        grid[-1, :] = True
        grid[:, 0] = True
        grid[0, :] = np.arange(cols) % 2 == 0
        grid[:, -1] = (rows - 1 - np.arange(rows)) % 2 == 0
    return grids


def _local_dark(values: Floats, dark: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Dark against the midpoint of the darkest and lightest of the 3x3 modules around each:
    under a glare spot the darkness of the dark modules falls to that of the light ones a few
    modules away, so one level for the symbol reads the spot as light. Where the 3x3 spans less
    than half the symbol's contrast (all dark or all light around), ``dark`` stands."""
    low = cv2.erode(values, LOCAL_KERNEL, borderType=cv2.BORDER_REPLICATE)
    high = cv2.dilate(values, LOCAL_KERNEL, borderType=cv2.BORDER_REPLICATE)
    spread = float(np.percentile(values, 95) - np.percentile(values, 5))
    local = values > 0.5 * (low + high)
    return np.asarray(np.where(high - low >= 0.5 * spread, local, dark), dtype=np.bool_)


def _snap(darkness: Floats, quad: Floats, rows: int, cols: int) -> Floats:
    """``quad`` moved so that the grid runs through the marks: the darkness-weighted centre of
    each dark module's mark, looked for around where the grid puts it, and the homography
    through those centres."""
    centres = _module_centres(rows, cols)
    spread = _snap_spread(rows, cols)
    border, dark = _border(rows, cols)
    corners = np.array([[0, 0], [cols, 0], [cols, rows], [0, rows]], dtype=np.float32)
    level = _level(_samples(darkness, _homography(quad, rows, cols), border), dark)
    for _ in range(SNAP_ROUNDS):
        matrix = _homography(quad, rows, cols)
        values = _samples_spread(darkness, [matrix], spread, 1)[0].reshape(len(centres), -1)
        weights = np.maximum(values - level, 0.0)
        total = weights.sum(axis=1)
        telling = (values.mean(axis=1) > level) & ((values > level).mean(axis=1) < SNAP_SOLID)
        telling &= total > 0
        if int(telling.sum()) < SNAP_MIN_MODULES:
            return quad
        found = centres[telling] + (weights[telling] @ SNAP_OFFSETS) / total[telling, None]
        # In module coordinates the correction is close to the identity and well conditioned.
        correction = _fit_homography(centres[telling], found, scale=float(max(rows, cols)))
        if correction is None:
            return quad
        moved = cv2.perspectiveTransform(corners.reshape(-1, 1, 2), matrix @ correction)
        quad = np.asarray(moved.reshape(4, 2), dtype=np.float32)
    return quad


def _fit_homography(source: Floats, target: Floats, *, scale: float) -> Floats | None:
    """The homography taking ``source`` points (modules) to ``target``, least squares, fitted
    again without the points more than ``SNAP_INLIER`` off the first fit (a mark that is a
    neighbour's, or a speck). OpenCV's findHomography costs ten times this (its RANSAC and its
    refinement: 0.6 ms for a thousand points)."""
    keep = np.ones(len(source), dtype=np.bool_)
    norm = np.diag([1.0 / scale, 1.0 / scale, 1.0]).astype(np.float32)
    fitted: Floats | None = None
    for _ in range(2):
        if int(keep.sum()) < SNAP_MIN_MODULES:
            return fitted
        fitted = _least_squares_homography(source[keep] / scale, target[keep] / scale)
        fitted = np.asarray(np.linalg.inv(norm) @ fitted @ norm, dtype=np.float32)
        mapped = cv2.perspectiveTransform(source.reshape(-1, 1, 2), fitted).reshape(-1, 2)
        keep = np.hypot(*(mapped - target).T) < SNAP_INLIER
    return fitted


def _least_squares_homography(source: Floats, target: Floats) -> Floats:
    """The 3x3 homography (last entry 1) mapping ``source`` to ``target`` best in the linear
    least-squares sense (the direct linear transform)."""
    u, v = source[:, 0], source[:, 1]
    x, y = target[:, 0], target[:, 1]
    ones, zeros = np.ones_like(u), np.zeros_like(u)
    rows_x = np.stack([u, v, ones, zeros, zeros, zeros, -u * x, -v * x], axis=1)
    rows_y = np.stack([zeros, zeros, zeros, u, v, ones, -u * y, -v * y], axis=1)
    system = np.concatenate([rows_x, rows_y]).astype(np.float64)
    solution = np.linalg.lstsq(system, np.concatenate([x, y]).astype(np.float64), rcond=None)[0]
    return np.asarray(np.append(solution, 1.0).reshape(3, 3), dtype=np.float32)


def _timing_fit(darkness: Floats, quad: Floats, rows: int, cols: int) -> Floats:
    """``quad`` moved so that the grid runs through the timing pattern's dots and along the
    finder's solid column: each dark timing module looked for within a module of where the
    grid puts it (its neighbours there are light), the solid column where the first dark run
    from the quiet zone is. Under strong perspective the outline's short sides are a few pixels
    long and a small tilt of one shears the grid by modules at the far rows, more than the fit
    to the marks (``_snap``) reaches."""
    matrix = _homography(quad, rows, cols)
    border, dark = _border(rows, cols)
    level = _level(_samples(darkness, matrix, border), dark)
    top = np.arange(0, cols, 2, dtype=np.float32) + 0.5  # dark timing modules, top row
    right = np.arange(rows - 1, -1, -2, dtype=np.float32) + 0.5  # and right column
    found_top = _along(darkness, matrix, level, top, np.full_like(top, 0.5), axis=0)
    found_right = _along(darkness, matrix, level, right, np.full_like(right, cols - 0.5), axis=1)
    found_left = _first_dark(darkness, matrix, level, rows)
    source = np.concatenate(
        [
            np.stack([top, np.full_like(top, 0.5)], axis=1),
            np.stack([np.full_like(right, cols - 0.5), right], axis=1),
            _module_centres(rows, 1),
        ]
    )
    target = np.concatenate(
        [
            np.stack([found_top, np.full_like(top, 0.5)], axis=1),
            np.stack([np.full_like(right, cols - 0.5), found_right], axis=1),
            np.stack([found_left, _module_centres(rows, 1)[:, 1]], axis=1),
        ]
    )
    correction = _fit_homography(source, target, scale=float(max(rows, cols)))
    if correction is None:
        return quad
    corners = np.array([[0, 0], [cols, 0], [cols, rows], [0, rows]], dtype=np.float32)
    moved = cv2.perspectiveTransform(corners.reshape(-1, 1, 2), matrix @ correction)
    return np.asarray(moved.reshape(4, 2), dtype=np.float32)


def _along(
    darkness: Floats, matrix: Floats, level: float, along: Floats, across: Floats, *, axis: int
) -> Floats:
    """Where (in module coordinates along ``axis``) the marks are nearest ``along``: the
    darkness-weighted centre within ``TIMING_REACH`` modules, at three points across."""
    offsets = np.arange(-TIMING_REACH, TIMING_REACH + 1e-3, SCAN_STEP, dtype=np.float32)
    u, v = np.broadcast_arrays(
        along[:, None, None] + offsets[None, :, None], across[:, None, None] + _ACROSS
    )
    points = np.stack([u, v] if axis == 0 else [v, u], axis=-1).reshape(-1, 2)
    values = _samples_spread(darkness, [matrix], _spread(points, _NO_OFFSET), 1)
    weights = np.maximum(values.reshape(len(along), len(offsets), -1).mean(axis=2) - level, 0.0)
    total = weights.sum(axis=1)
    shift = (weights @ offsets) / np.maximum(total, 1e-6)
    return np.asarray(along + np.where(total > 0, shift, 0.0), dtype=np.float32)


def _first_dark(darkness: Floats, matrix: Floats, level: float, rows: int) -> Floats:
    """Per row, where (column, in module coordinates) the finder's solid column is: the centre
    of the first dark run met coming in from the quiet zone, within ``EDGE_REACH`` modules."""
    offsets = np.arange(-EDGE_REACH, EDGE_REACH + 1e-3, SCAN_STEP, dtype=np.float32)
    u, v = np.broadcast_arrays(0.5 + offsets[None, :], np.arange(rows, dtype=np.float32)[:, None])
    points = np.stack([u, v + 0.5], axis=-1).reshape(-1, 2)
    values = _samples_spread(darkness, [matrix], _spread(points, _NO_OFFSET), 1)
    values = values.reshape(rows, len(offsets))
    out = np.full(rows, 0.5, dtype=np.float32)
    run = round(1.0 / SCAN_STEP)  # at most a module's worth of the run: a dot, not its neighbour
    for row, profile in enumerate(values):
        dark_at = np.flatnonzero(profile > level)
        if len(dark_at) == 0:
            continue
        first = int(dark_at[0])
        stop = first
        while stop + 1 < len(profile) and profile[stop + 1] > level and stop - first < run:
            stop += 1
        weights = profile[first : stop + 1] - level
        out[row] = 0.5 + float((weights * offsets[first : stop + 1]).sum() / weights.sum())
    return out


@lru_cache(maxsize=64)
def _module_centres(rows: int, cols: int) -> Floats:
    """Every module's centre in module coordinates (column, row), row by row."""
    cs, rs = np.meshgrid(np.arange(cols, dtype=np.float32), np.arange(rows, dtype=np.float32))
    return np.asarray(np.stack([cs.ravel(), rs.ravel()], axis=1) + 0.5, dtype=np.float32)


@lru_cache(maxsize=64)
def _snap_spread(rows: int, cols: int) -> Floats:
    return _spread(_module_centres(rows, cols), SNAP_OFFSETS)


def _decode(grid: npt.NDArray[np.bool_]) -> Sequence[zxingcpp.Barcode]:
    symbol = np.where(np.pad(grid, 2), 0, 255).astype(np.uint8)
    image = cv2.resize(symbol, None, fx=RENDER_PX, fy=RENDER_PX, interpolation=cv2.INTER_NEAREST)
    barcodes = zxingcpp.read_barcodes(
        np.ascontiguousarray(image),
        formats=DATAMATRIX,
        try_rotate=False,
        try_downscale=False,
        try_invert=False,
        is_pure=True,
        text_mode=zxingcpp.TextMode.HRI,
        binarizer=zxingcpp.Binarizer.FixedThreshold,
    )
    return [barcode for barcode in barcodes if barcode.valid]


for _size in SIZES:  # tables built at import: the first frame of each size would pay some ms
    _border(*_size)
    _border_spread(*_size)
# numpy's first median along an axis costs some 10 ms (measured): paid here, not by a frame.
np.median(np.zeros((2, 4), dtype=np.float32), axis=1)
