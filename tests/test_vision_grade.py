"""Process-control grading on synthetic symbols whose contrast, growth and damage are controlled."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt
import pytest
import zxingcpp

from edge_agent.contracts import CodeRead
from edge_agent.vision.grade import grade, grade_symbol, with_grades
from simulators.cameras.render import symbol_modules

HRI = "(01)09506000134352(17)281231(10)LOT42(21)SERIAL0001"
PX = 8  # pixels per module
QZ = 4  # quiet zone, modules


def _symbol(
    *,
    dark: int = 20,
    light: int = 230,
    growth_px: int = 0,
    stretch_x: float = 1.0,
    damage_finder: int = 0,
    wide_column: int | None = None,
) -> npt.NDArray[np.uint8]:
    """The symbol drawn module by module, then degraded as asked; mild sensor noise on top."""
    modules = symbol_modules(HRI).copy()
    n = modules.shape[0]
    if damage_finder:
        modules[n // 3 : n // 3 + damage_finder, 0] = False  # light holes in the finder's left leg
    widths = np.full(n, PX)
    if wide_column is not None:
        widths[wide_column] = PX * 2  # one column printed twice as wide (a stalled print head)
        widths[wide_column + 1] = 1
    xs = np.concatenate([[0], np.cumsum(widths)]) + QZ * PX
    side = n * PX + 2 * QZ * PX
    canvas = np.zeros((side, int(xs[-1]) + QZ * PX), dtype=np.uint8)  # 1 = dark
    for row in range(n):
        for col in range(n):
            if modules[row, col]:
                y = QZ * PX + row * PX
                canvas[y : y + PX, xs[col] : xs[col + 1]] = 1
    if growth_px:
        kernel = np.ones((2 * growth_px + 1, 2 * growth_px + 1), dtype=np.uint8)
        canvas = cv2.dilate(canvas, kernel)
    image = np.where(canvas == 1, dark, light).astype(np.uint8)
    if stretch_x != 1.0:
        image = cv2.resize(image, None, fx=stretch_x, fy=1.0, interpolation=cv2.INTER_NEAREST)
    noise = np.random.default_rng(7).normal(0, 2.0, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def _corners(image: npt.NDArray[np.uint8]) -> list[tuple[float, float]]:
    (found,) = zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.DataMatrix)
    assert found.text.replace("\x1d", "") or found.valid
    p = found.position
    return [(q.x, q.y) for q in (p.top_left, p.top_right, p.bottom_right, p.bottom_left)]


def _grades(image: npt.NDArray[np.uint8], **kw: object) -> dict[str, int | None]:
    result = grade(image, _corners(image), **kw)  # type: ignore[arg-type]
    assert result.error is None, result.error
    return result.grades


@pytest.fixture(scope="module")
def clean() -> dict[str, int | None]:
    return _grades(_symbol())


def test_clean_symbol_grades_a(clean: dict[str, int | None]) -> None:
    image = _symbol()
    report = grade_symbol(image, _corners(image))
    assert report["overall"] == 4.0 and report["overall_letter"] == "A"
    assert (report["rows"], report["cols"]) == symbol_modules(HRI).shape
    assert {k for k, v in clean.items() if v is not None} == {"SC", "MOD", "RM", "FPD", "AN", "GN"}
    assert all(v == 4 for v in clean.values() if v is not None)
    assert "not a certified verifier" in report["standard"]


def test_any_orientation_and_corner_order_gives_the_same_grade() -> None:
    image = _symbol()
    corners = _corners(image)
    rotated = np.ascontiguousarray(np.rot90(image))
    assert grade_symbol(rotated, _corners(rotated))["overall"] == 4.0
    # corners handed over starting at another corner, or counter-clockwise
    assert grade(image, corners[2:] + corners[:2]).overall == 4
    assert grade(image, corners[::-1]).overall == 4


@pytest.mark.parametrize(("dark", "light", "expected_sc"), [(90, 200, 2), (120, 175, 1)])
def test_lower_contrast_lowers_symbol_contrast_only(
    clean: dict[str, int | None], dark: int, light: int, expected_sc: int
) -> None:
    got = _grades(_symbol(dark=dark, light=light))
    assert got["SC"] == expected_sc
    assert {k: v for k, v in got.items() if k != "SC"} == {
        k: v for k, v in clean.items() if k != "SC"
    }


def test_print_growth_lowers_modulation_not_contrast_or_geometry(
    clean: dict[str, int | None],
) -> None:
    got = _grades(_symbol(growth_px=2))  # dark modules 50% wider than nominal
    assert got["MOD"] is not None and clean["MOD"] is not None
    assert got["MOD"] < clean["MOD"]
    assert got["SC"] == clean["SC"]
    assert got["AN"] == clean["AN"] and got["GN"] == clean["GN"]


def test_finder_damage_lowers_fixed_pattern_damage_only(clean: dict[str, int | None]) -> None:
    got = _grades(_symbol(damage_finder=3))
    assert got["FPD"] is not None and got["FPD"] <= 1
    assert {k: v for k, v in got.items() if k != "FPD"} == {
        k: v for k, v in clean.items() if k != "FPD"
    }


def test_axial_stretch_lowers_axial_nonuniformity(clean: dict[str, int | None]) -> None:
    got = _grades(_symbol(stretch_x=1.15))
    assert got["AN"] == 0
    assert got["SC"] == clean["SC"] and got["FPD"] == clean["FPD"]


def test_uneven_module_pitch_lowers_grid_nonuniformity(clean: dict[str, int | None]) -> None:
    got = _grades(_symbol(wide_column=9))
    assert got["GN"] is not None and got["GN"] < 4
    assert got["SC"] == clean["SC"]


def test_unused_error_correction_from_the_decoder_is_graded() -> None:
    image = _symbol()
    assert grade(image, _corners(image), unused_ec=0.4).grades["UEC"] == 2
    assert grade(image, _corners(image), unused_ec=0.4).overall == 2


def test_bad_input_gives_grade_zero_with_a_reason() -> None:
    blank = np.full((100, 100), 200, dtype=np.uint8)
    report = grade_symbol(blank, [(10, 10), (90, 10), (90, 90), (10, 90)])
    assert report["overall"] == 0.0 and "error" in report
    assert grade_symbol(blank, [(0, 0)] * 3)["overall"] == 0.0
    outside = grade_symbol(blank, [(-50, -50), (500, -50), (500, 500), (-50, 500)])
    assert outside["overall"] == 0.0 and outside["error"]


def test_with_grades_fills_in_missing_grades_only() -> None:
    image = _symbol(dark=120, light=175)  # SC grade 1
    corners = tuple((int(x), int(y)) for x, y in _corners(image))
    ungraded = CodeRead("t", "r", "]d2", corners)
    graded = CodeRead("t", "r", "]d2", corners, grade=3.5)
    no_corners = CodeRead("t", "r", "]d2", ())
    out = with_grades(image, [ungraded, graded, no_corners])
    assert [read.grade for read in out] == [1.0, 3.5, None]
