"""The decode benchmark's physical-readability oracle (``wide.oracle_read``): the wide set's
frame sampled at the true module centres and decoded with Reed-Solomon correction. It must
call a clean frame readable and a destroyed print unreadable, and decide the bits from the
frame alone."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from simulators.cameras import wide
from simulators.cameras.render import symbol_modules


def _clean(index: int = 1) -> wide.Synth:
    return wide.wide_frame("square", index)


def _module_quad(frame: wide.Synth, rows: slice, cols: slice) -> np.ndarray:
    """The frame polygon covering the given modules (their centres' hull, a module wider)."""
    centres = frame.module_centres
    assert centres is not None
    block = centres[rows, cols].reshape(-1, 2)
    middle = block.mean(axis=0)
    grown = middle + (block - middle) * 1.3 + np.sign(block - middle) * 3.0
    return cv2.convexHull(grown.astype(np.int32))


def _paint_modules(frame: wide.Synth, where: np.ndarray, level: int) -> wide.Synth:
    """The modules at ``where`` (rows x columns, True: paint) covered with ``level``."""
    centres = frame.module_centres
    assert centres is not None
    pitch = float(np.linalg.norm(centres[0, 1] - centres[0, 0]))
    image = frame.image.copy()
    for x, y in centres[where]:
        cv2.circle(
            image, (round(float(x)), round(float(y))), max(1, round(0.75 * pitch)), level, -1
        )
    return replace(frame, image=image)


def _paint(frame: wide.Synth, quads: list[np.ndarray], level: int) -> wide.Synth:
    image = frame.image.copy()
    for quad in quads:
        cv2.fillPoly(image, [quad], level)
    return replace(frame, image=image)


def test_module_centres_land_on_the_modules() -> None:
    frame = _clean()
    assert frame.module_centres is not None
    modules = symbol_modules(frame.codes[0])
    assert frame.module_centres.shape == (*modules.shape, 2)
    levels = wide.module_samples(frame.image, frame.module_centres).mean(axis=0)
    assert levels[modules].max() < levels[~modules].min()  # every dark darker than any light


@pytest.mark.parametrize(
    ("category", "index"),
    [
        ("square", 1),
        ("rectangular", 0),
        ("dmre", 2),
        ("curved", 3),
        ("dot_peen", 4),  # craters dark only on their shadow side
        ("glare", 5),  # a highlight over much of the symbol: read relative to the light around
    ],
)
def test_clean_and_warped_frames_are_readable(category: str, index: int) -> None:
    frame = wide.wide_frame(category, index)
    assert wide.oracle_read(frame) == frame.codes[0]
    assert wide.oracle_readable(frame)


def test_a_destroyed_finder_pattern_is_unreadable() -> None:
    frame = _clean()
    assert frame.module_centres is not None
    rows, cols = frame.module_centres.shape[:2]
    light = int(np.percentile(frame.image, 90))
    finder = np.zeros((rows, cols), np.bool_)
    finder[:, 0] = finder[-1, :] = True  # the L only: every data module left as printed
    destroyed = _paint_modules(frame, finder, light)
    assert wide.oracle_read(destroyed) is None
    assert not wide.oracle_readable(destroyed)


def test_most_modules_destroyed_is_unreadable() -> None:
    frame = _clean()
    assert frame.module_centres is not None
    rows, cols = frame.module_centres.shape[:2]
    light = int(np.percentile(frame.image, 90))
    # The data region wiped, the finder and timing pattern left as printed.
    data = _module_quad(frame, slice(2, rows - 2), slice(2, cols - 2))
    assert wide.oracle_read(_paint(frame, [data], light)) is None


def test_a_few_damaged_modules_are_corrected() -> None:
    frame = _clean()
    assert frame.module_centres is not None
    rows, cols = frame.module_centres.shape[:2]
    dark = int(np.percentile(frame.image, 1))
    spot = _module_quad(frame, slice(rows // 2, rows // 2 + 2), slice(cols // 2, cols // 2 + 2))
    assert wide.oracle_read(_paint(frame, [spot], dark)) == frame.codes[0]


def test_the_bits_come_from_the_frame_not_the_content() -> None:
    """Told another content, the oracle reads the same text (the frame's) and calls it
    unreadable: the content only judges the result."""
    frame = _clean()
    lied = replace(frame, codes=("(01)09506000134352(17)271231(10)X(21)Y",))
    assert wide.oracle_read(lied) == frame.codes[0]
    assert not wide.oracle_readable(lied)


def test_no_code_and_no_geometry_are_not_readable() -> None:
    empty = wide.wide_frame("no_code", 0)
    assert wide.oracle_read(empty) is None
    assert not wide.oracle_readable(empty)
    assert not wide.oracle_readable(replace(_clean(), module_centres=None))


def test_the_benchmark_reports_readable_beside_the_raw_rate() -> None:
    from benchmarks.decode import Tally

    read, missed, destroyed = _clean(1), _clean(3), _clean(5)
    tally = Tally()
    tally.add(read, {read.codes[0]}, 1.0, 1.0, 0, True)
    tally.add(missed, set(), 1.0, 1.0, 1, True)
    tally.add(destroyed, set(), 1.0, 1.0, 2, False)
    report = tally.report()
    assert report["read_rate"] == round(1 / 3, 4)  # the headline stays the raw rate
    assert report["readable"] == 2
    assert report["read_of_readable"] == 0.5
    assert report["missed_readable"] == [1]
    assert report["read_but_oracle_unreadable"] == []
    assert "readable" not in Tally().report()  # no verdicts (the synth set): no such fields
