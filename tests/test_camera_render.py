"""The camera simulator's frames: warping only the symbol's box gives the whole-frame warp."""

from __future__ import annotations

import cv2
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators.cameras import render

CONTENT = [("01", "09506000134352"), ("21", "ABC123"), ("10", "LOT1"), ("17", "301231")]


@settings(max_examples=40, deadline=None)
@given(
    angle=st.floats(-45.0, 45.0),
    px=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
    size=st.sampled_from([(480, 360), (200, 120), (96, 96)]),
)
def test_the_symbol_box_warp_matches_the_whole_frame_warp(
    angle: float, px: int, seed: int, size: tuple[int, int]
) -> None:
    width, height = size
    modules = render.symbol_modules(CONTENT)
    px = render._fit_module_px(modules.shape[0], px, angle, width, height)
    symbol = render._symbol_image(modules, px, 30, 220)
    image, matrix = render._place(symbol, angle, width, height, 220, np.random.default_rng(seed))
    whole = cv2.warpAffine(
        symbol,
        matrix,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=220,
    )
    # Fixed-point rounding of the shifted matrix may move a pixel by one grey level, no more.
    assert np.abs(image.astype(int) - whole.astype(int)).max() <= 1
