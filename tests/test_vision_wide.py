"""What lines print beyond clean squares: rectangular and DMRE symbols, 2 px modules, low
contrast beside text, inkjet and dot-peen dots with missing dots (issue 13).

A few frames per category of ``simulators.cameras.wide`` that the pipeline before issue 13
missed (checked: every frame listed here was a no-read then), read with a generous budget:
these tests are about what the cascade reads, not how fast (``benchmarks/decode.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
import zxingcpp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent import gs1
from edge_agent.config.models import VisionSection
from edge_agent.vision import grid
from edge_agent.vision import locate as locate_module
from edge_agent.vision.grid import _blobs, read_sampled
from edge_agent.vision.locate import locate
from edge_agent.vision.pipeline import DecodePipeline
from simulators.cameras import wide
from simulators.cameras.render import fitting_versions, symbol_modules
from simulators.cameras.synth import random_hri

HRI = "(01)09506000134352(17)271231(10)LOT42(21)SER123456"


@pytest.fixture(scope="module")
def reader() -> DecodePipeline:
    return DecodePipeline(VisionSection(frame_budget_ms=5000.0))


def _covered(frame: wide.Synth, regions: list[object]) -> bool:
    xs = [x for x, _ in frame.corners[0]]
    ys = [y for _, y in frame.corners[0]]
    return any(
        r.x <= min(xs) and r.y <= min(ys) and r.x + r.width >= max(xs) and r.y + r.height >= max(ys)  # type: ignore[attr-defined]
        for r in regions
    )


@pytest.mark.parametrize(
    ("category", "index"),
    [
        ("dmre", 4),  # 8x144 at 1.3 MP: aspect 18, rejected as "not square" before
        ("dmre", 12),  # 8x80
        ("small_modules", 3),  # 12x88 of 2.4 px at 5 MP: gone in the 4x shrink before
        ("small_modules", 12),
        ("field_mix", 9),  # low-contrast 12x64, 3.3 px, 5 MP, beside high-contrast text
        ("low_contrast", 26),
    ],
)
def test_locate_finds_rectangles_small_modules_and_low_contrast(category: str, index: int) -> None:
    frame = wide.wide_frame(category, index)
    assert _covered(frame, locate(frame.image, max_regions=4))


@pytest.mark.parametrize(
    ("category", "index"),
    [
        ("dmre", 4),
        ("dmre", 20),
        ("small_modules", 10),
        ("field_mix", 29),
        ("low_contrast", 30),
        ("inkjet", 3),  # separated dots, missing dots: only the grid stage reads these
        ("inkjet", 8),
        ("dot_peen", 26),
        # Brushed-metal streaks as dark as the craters, small dots: the blob map (issue 13)
        ("dot_peen", 12),
        ("dot_peen", 29),
        ("dot_peen", 31),
        ("rectangular", 15),
    ],
)
def test_pipeline_reads_what_it_missed(reader: DecodePipeline, category: str, index: int) -> None:
    frame = wide.wide_frame(category, index)
    reads = reader.read(frame.image)
    assert [read.text for read in reads] == list(frame.codes)
    (read,) = reads
    assert gs1.parse_scanned(read.raw).get("21") is not None
    xs = [x for x, _ in frame.corners[0]]
    ys = [y for _, y in frame.corners[0]]
    cx, cy = sum(x for x, _ in read.corners) / 4, sum(y for _, y in read.corners) / 4
    assert min(xs) <= cx <= max(xs) and min(ys) <= cy <= max(ys)


def test_dmre_reads_back_as_gs1_dmre(reader: DecodePipeline) -> None:
    frame = wide.wide_frame("dmre", 6)
    (read,) = reader.read(frame.image)
    assert read.text == frame.codes[0]
    # ISO/IEC 21471: GS1 data in a DMRE symbol is announced as ]d8 (]d2 + 6), not ]d2.
    assert read.symbology == "]d8"
    assert read.size is not None and read.size[1] >= 36


def test_frames_without_code_read_nothing(reader: DecodePipeline) -> None:
    for index in range(4):
        assert reader.read(wide.wide_frame("no_code", index).image) == []


def test_wide_frames_are_deterministic() -> None:
    first = wide.wide_frame("inkjet", 5, seed=3)
    again = wide.wide_frame("inkjet", 5, seed=3)
    assert np.array_equal(first.image, again.image) and first.codes == again.codes
    assert not np.array_equal(first.image, wide.wide_frame("inkjet", 5, seed=4).image)
    with pytest.raises(ValueError, match="unknown category"):
        wide.wide_frame("sideways", 0)


@pytest.mark.parametrize(
    ("category", "index"), [("inkjet", 20), ("dot_peen", 20), ("square", 30), ("curved", 16)]
)
def test_symbol_and_quiet_zone_stay_in_the_frame(category: str, index: int) -> None:
    # These rotated symbols used to reach past the frame's edge (the placement bounded the
    # unrotated sprite): a code the camera does not wholly see is a framing fault, not a print.
    frame = wide.wide_frame(category, index)
    height, width = frame.image.shape
    quiet = wide.QUIET * frame.conditions["module_px"]
    for x, y in frame.corners[0]:
        assert quiet <= x <= width - quiet and quiet <= y <= height - quiet


@pytest.mark.parametrize("shape", ["rectangular", "dmre"])
def test_writer_makes_rectangular_and_dmre_symbols(shape: str) -> None:
    versions = fitting_versions(HRI, shape)
    assert versions
    for version in versions:
        modules = symbol_modules(HRI, version)
        rows, cols = modules.shape
        assert rows < cols and rows % 2 == 0 and cols % 2 == 0
        assert modules[:, 0].all() and modules[-1, :].all()  # the finder's L
    with pytest.raises(ValueError):
        symbol_modules(HRI + "(91)" + "X" * 60, 25)  # does not fit 8x18


# --- the grid stage on its own -------------------------------------------------------------


def _dotted(
    hri: str, version: int | None, *, gain: float, missing: float, seed: int
) -> tuple[np.ndarray, str]:
    """A crop of one inkjet-printed symbol, dots separated and some missing."""
    rng = np.random.default_rng(seed)
    modules = symbol_modules(hri, version)
    params = wide.Params(
        size="VGA",
        shape="dmre",
        look="inkjet",
        module_px=5.0,
        angle=float(rng.uniform(0, 360)),
        contrast=0.6,
        dot_gain=gain,
        missing=missing,
    )
    cover, _, _ = wide._sprite(modules, params, rng)
    height, width = cover.shape
    scale = 5.0 / wide.SPRITE_PX
    side = int(max(height, width) * scale * 1.6)
    matrix = wide._placement(cover.shape, scale, params, (side / 2, side / 2), rng)
    ink = wide._warp(cover, matrix, side, side)
    image = 210.0 * (1.0 - params.contrast * ink) + rng.normal(0, 2.0, ink.shape)
    return np.clip(image, 0, 255).astype(np.uint8), hri


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    shape=st.sampled_from(["square", "rectangular", "dmre"]),
    gain=st.floats(0.65, 1.1),
    missing=st.floats(0.0, 0.02),
)
def test_grid_reads_dotted_symbols_right_or_not_at_all(
    seed: int, shape: str, gain: float, missing: float
) -> None:
    hri = random_hri(np.random.default_rng(seed))
    versions = fitting_versions(hri, shape) if shape != "square" else [None]
    version = versions[seed % len(versions)] if versions else None
    crop, hri = _dotted(hri, version, gain=gain, missing=missing, seed=seed)
    # Never a wrong content (Reed-Solomon decides); zxing-cpp itself reads none of these.
    assert all(read.text == hri for read in read_sampled(crop))


def test_grid_reads_dots_zxing_cannot() -> None:
    read_by_grid = 0
    for seed in range(6):
        crop, hri = _dotted(HRI, [None, 30, 40][seed % 3], gain=0.75, missing=0.01, seed=seed)
        assert zxingcpp.read_barcodes(crop, formats=zxingcpp.BarcodeFormat.DataMatrix) == []
        reads = read_sampled(crop, (10, 20))
        assert all(read.text == hri for read in reads)
        read_by_grid += bool(reads)
        for read in reads:
            assert read.strategy == "grid" and read.size is not None
            assert all(x >= 10 and y >= 20 for x, y in read.corners)
    assert read_by_grid >= 5


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(["noise", "text", "blobs"]))
def test_grid_reads_nothing_where_there_is_no_symbol(seed: int, kind: str) -> None:
    import cv2

    rng = np.random.default_rng(seed)
    crop = np.full((160, 200), 200, np.uint8)
    if kind == "noise":
        crop = np.clip(rng.normal(150, 40, crop.shape), 0, 255).astype(np.uint8)
    elif kind == "text":
        cv2.putText(crop, "LOT 42 EXP 12/27", (5, 90), cv2.FONT_HERSHEY_SIMPLEX, 0.9, 40, 2)
    else:
        for _ in range(40):
            centre = (int(rng.integers(40, 160)), int(rng.integers(40, 120)))
            cv2.circle(crop, centre, int(rng.integers(2, 6)), 40, -1)
    assert read_sampled(crop) == []


def test_blob_map_keeps_dots_and_drops_streaks() -> None:
    import cv2

    image = np.full((120, 160), 180, np.uint8)
    image[40:43, :] = 140  # a streak of brushed metal, darker than the dot below
    cv2.circle(image, (80, 85), 3, 150, -1)
    blobs = _blobs(image)
    assert blobs[80:91, 74:87].max() > 4 * blobs[36:47, 10:70].max()


def test_grid_reads_a_long_dmre_seen_as_a_trapezoid() -> None:
    # 8x120 under strong perspective: its outline is far from any rectangle, and the corners
    # from the bounding rectangle put the far end four modules off; the hull's vertices do not.
    frame = wide.wide_frame("perspective", 7)
    xs = [x for x, _ in frame.corners[0]]
    ys = [y for _, y in frame.corners[0]]
    pad = 0.3 * max(max(xs) - min(xs), max(ys) - min(ys))
    x0, y0 = int(min(xs) - pad), int(min(ys) - pad)
    crop = np.ascontiguousarray(frame.image[y0 : int(max(ys) + pad), x0 : int(max(xs) + pad)])
    assert [read.text for read in read_sampled(crop)] == list(frame.codes)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_batched_size_scores_equal_the_per_size_ones(seed: int) -> None:
    # The size search scores every size and turn in one remap, and every widening of the
    # likely sizes in another: the figures must be those of one size and one quad at a time.
    rng = np.random.default_rng(seed)
    darkness = (rng.random((240, 320)) * 60).astype(np.float32)
    centre = rng.uniform(100, 160, size=2)
    corners = np.float32(
        [centre + rng.uniform(40, 90, size=2) * (sx, sy) for sx, sy in grid_signs()]
    )
    candidates = [(rows, cols, turn) for rows, cols in grid.SIZES[::3] for turn in range(4)]
    batched = grid._rough_contrasts(darkness, corners, candidates)
    for (rows, cols, turn), value in zip(candidates, batched, strict=True):
        quad = np.roll(corners, -turn, axis=0)
        assert value == pytest.approx(grid._contrasts(darkness, [quad], rows, cols)[0], abs=1e-3)
    items = [(np.roll(corners, -turn, axis=0), rows, cols) for rows, cols, turn in candidates[:12]]
    for (quad, rows, cols), share in zip(
        items, grid._border_scores_of(darkness, items), strict=True
    ):
        points, dark = grid._border(rows, cols)
        values = grid._samples(darkness, grid._homography(quad, rows, cols), points)
        expected = float(np.mean((values > grid._level(values, dark)) == dark))
        assert share == pytest.approx(expected, abs=1e-6)


def grid_signs() -> list[tuple[float, float]]:
    """Corner directions in order around a quad: top-left, top-right, bottom-right, bottom-left."""
    return [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]


def test_grid_reads_a_symbol_half_under_a_glare_spot() -> None:
    # glare 6 of the wide set (frame 286): the spot lifts the dark modules under it to the light
    # ones' level elsewhere, so one threshold for the symbol misreads a corner of it; the local
    # one (against the 3x3 modules around) reads it. zxing-cpp's own passes read it only after
    # CLAHE, which the grid stage used to leave no time for.
    frame = wide.wide_frame("glare", 6)
    region = locate(frame.image, max_regions=1)[0]
    crop = np.ascontiguousarray(region.crop(frame.image))
    # Darkness of a checkerboard whose right half is under the spot: its dark modules fall
    # below the symbol's one level (0.65) but stay darker than the light ones around them.
    checker = np.indices((6, 6)).sum(axis=0) % 2 == 0
    darkness = np.where(checker, 0.9, 0.1).astype(np.float32)
    darkness[:, 3:] = np.where(checker[:, 3:], 0.6, 0.1)
    one_level = darkness > 0.65
    assert not one_level[:, 3:].any()
    assert np.array_equal(grid._local_dark(darkness, one_level), checker)
    assert [read.text for read in read_sampled(crop)] == list(frame.codes)


def test_a_thin_dmre_ranked_fifth_is_still_tried(reader: DecodePipeline) -> None:
    # low_contrast 13 (frame 133): an 8x120 DMRE of 13 % contrast at 5 MP ranks fifth behind
    # lines of bold text; the fast pass reads it at once when it is among the candidates (and
    # no fallback, whatever its time, reads it from the four before).
    frame = wide.wide_frame("low_contrast", 13)
    reads = reader.read(frame.image)
    assert [read.text for read in reads] == list(frame.codes)
    assert reads[0].strategy == "zxing"


@pytest.mark.parametrize(
    ("category", "index"),
    [("inkjet", 34), ("dot_peen", 23), ("perspective", 3)],
)
def test_grid_fitted_to_the_marks_reads_what_the_outline_missed(category: str, index: int) -> None:
    # Dots whose outline is a fraction of a module off (a 16x64 of 4 px modules, a 16x48 dot
    # peen, a 12x88 under perspective). The grid stage before 7abd914 read none of these,
    # whatever the time (checked): it refined the three best sizes' corners by the border's
    # contrast up front, which moved these grids off; their outline's grid as it is reads two,
    # the grid fitted to the timing dots the dot peen.
    frame = wide.wide_frame(category, index)
    best = locate(frame.image)[0]
    crop = np.ascontiguousarray(best.crop(frame.image))
    assert [read.text for read in read_sampled(crop)] == list(frame.codes)


def test_grid_finds_a_faint_dotted_symbol_beside_bold_text() -> None:
    # A 12x64 DMRE of dots at contrast 0.19 beside a line of bold text: the darkest marks are
    # the text's four glyphs, and the ink threshold they set leaves out every dot. Without them
    # the dots are the ink (before, no outline of the symbol in any pass: no read).
    frame = wide.wide_frame("low_contrast", 8)
    best = locate(frame.image)[0]
    crop = np.ascontiguousarray(best.crop(frame.image))
    assert [read.text for read in read_sampled(crop)] == list(frame.codes)


def test_grid_follows_the_timing_dots_of_a_trapezoid_cut_by_locate() -> None:
    # The same 8x120 trapezoid as above, in the crop the pipeline cuts for it: its outline is
    # traced at half resolution, where the far end's modules are 1.5 px, and the short side
    # there tilts enough to shear the grid by two modules at the bottom row; neither the fit to
    # the marks nor the border's contrast recovers that (checked: no read, whatever the time).
    # The timing dots and the finder's solid column do.
    frame = wide.wide_frame("perspective", 7)
    best = locate(frame.image)[0]
    crop = np.ascontiguousarray(best.crop(frame.image))
    assert [read.text for read in read_sampled(crop)] == list(frame.codes)


def test_grid_looks_for_dots_on_brushed_metal_in_the_blob_map_first() -> None:
    # A dot-peen 16x48 on brushed metal (frame 253: 323 dark marks) is tried on the blob map
    # first, where it reads; the dark marks' outline, tried first before, finds no size. A
    # printed symbol's few marks, and an inkjet 26x64's many on carton (frame 203, which the
    # dark marks read sooner), keep the dark marks first.
    dots = wide.wide_frame("dot_peen", 13)
    printed = wide.wide_frame("rectangular", 19)
    inkjet = wide.wide_frame("inkjet", 3)
    for frame, blob_first in ((dots, True), (printed, False), (inkjet, False)):
        crop = np.ascontiguousarray(locate(frame.image)[0].crop(frame.image))
        _, _, _, blobs = next(grid._passes(crop, lambda: 1e9))
        assert (blobs is not None) is blob_first


def test_a_best_candidate_of_dots_goes_to_the_grid_stage_first(reader: DecodePipeline) -> None:
    # inkjet 3 (frame 203): a 26x64 of 339 separated dots at 5 MP. Neither zxing pass reads a
    # symbol of dots, nor do the smoothing passes read this one: after the plain pass the grid
    # stage (it read at 27 ms of CPU before, at the budget's edge, behind 12 ms of the rotated
    # search and the smoothing passes; 17-18 ms now).
    frame = wide.wide_frame("inkjet", 3)
    reads = reader.read(frame.image)
    assert [read.text for read in reads] == list(frame.codes)
    assert reads[0].strategy == "grid"
    assert [name for name, _ in reads[0].timings] == ["locate", "zxing", "grid"]
    printed = reader.read(wide.wide_frame("rectangular", 15).image)
    assert "denoise" in [name for name, _ in printed[0].timings]  # printed: the usual order


def test_grid_cuts_off_a_line_of_text_that_touches_the_symbol() -> None:
    # dmre 26 (frame 106): the finder's corner of a 20x64 touches a T of a line of bold text,
    # so the two are one dark mark and its outline no symbol's (before: no read, whatever the
    # time). The line's band cleared, the symbol's outline is its own. Dots in a row are no
    # line of text: a dotted symbol's marks are clusters of every size, no solid symbol.
    frame = wide.wide_frame("dmre", 26)
    crop = np.ascontiguousarray(locate(frame.image)[1].crop(frame.image))
    assert [read.text for read in read_sampled(crop)] == list(frame.codes)
    found = grid.marks(crop)
    assert found.mask is not None and grid._without_text(found.darkness, found.mask) is not None
    for category, index in (("inkjet", 9), ("perspective", 7)):
        dots = wide.wide_frame(category, index)
        found = grid.marks(np.ascontiguousarray(locate(dots.image)[0].crop(dots.image)))
        assert found.mask is not None
        assert grid._without_text(found.darkness, found.mask) is None


@pytest.mark.parametrize(("category", "index"), [("dmre", 23), ("perspective", 14)])
def test_grid_rescues_a_long_dmre_whose_timing_row_is_out_of_phase(
    category: str, index: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seed 7's 8x144 DMRE (frames 103 and 454): the outline is 1-7 px off the symbol's
    # corners, a module or two at the far end of a 144-module row, so the timing modules there
    # are sampled out of phase and no size scores 0.8 (0.69-0.77). Fitted to the timing dots,
    # the right size scores 0.88-1.00 and reads; without that rescue, no read (checked below).
    frame = wide.wide_frame(category, index, seed=7)
    crop = np.ascontiguousarray(locate(frame.image)[0].crop(frame.image))
    assert [read.text for read in read_sampled(crop)] == list(frame.codes)
    monkeypatch.setattr(grid, "RESCUES", 0)
    assert read_sampled(crop) == []


@pytest.mark.parametrize("index", [12, 23])
def test_locate_splits_a_dot_peen_symbol_from_the_streak_it_joins(
    index: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seed 11's dot peen 12 and 23 (an 8x80 and a 24x24): a streak of the brushed metal runs
    # through the symbol's quiet zone across the whole frame, and the closing joins the two
    # into one blob of fill 0.05-0.15, far below a code's: no candidate at all. Opened, the
    # streak goes and the symbol is a solid blob of its own (fill 0.7-0.86).
    frame = wide.wide_frame("dot_peen", index, seed=11)
    assert _covered(frame, list(locate(frame.image)))
    monkeypatch.setattr(locate_module, "SPLIT_DISCS", ())
    assert not _covered(frame, list(locate(frame.image)))
