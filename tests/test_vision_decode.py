"""ZxingReader and symbol_contrast on rendered frames."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import zxingcpp

from edge_agent.contracts import CodeReader
from edge_agent.vision import decode
from edge_agent.vision.decode import ZxingReader, symbol_contrast
from simulators.cameras.render import render, render_frame

GS = "\x1d"


def _hri(rng: np.random.Generator) -> tuple[str, str]:
    """Random content and its element string (FNC1 separators as GS)."""
    serial = "".join(rng.choice(list("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"), size=12))
    lot = f"L{rng.integers(0, 10**5):05d}"
    hri = f"(01)09506000134352(17)271231(10){lot}(21){serial}"
    raw = f"01095060001343521727123110{lot}{GS}21{serial}"
    return hri, raw


def test_reads_200_random_frames_exactly() -> None:
    rng = np.random.default_rng(20240601)
    reader: CodeReader = ZxingReader()
    for _ in range(200):
        hri, raw = _hri(rng)
        rendered = render(hri, rng=rng)
        (read,) = reader.read(rendered.image)
        assert read.text == hri
        assert read.raw == raw
        assert read.symbology == "]d2"
        assert read.contrast is not None and read.contrast > 0.6
        assert read.ms > 0
        assert len(read.corners) == 4
        assert all(isinstance(v, int) for corner in read.corners for v in corner)
        for (x, y), (ex, ey) in zip(read.corners, rendered.corners, strict=True):
            assert abs(x - ex) <= 3 and abs(y - ey) <= 3


def test_one_zxing_call_per_readable_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = zxingcpp.read_barcodes

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(decode.zxingcpp, "read_barcodes", counting)
    hri, raw = _hri(np.random.default_rng(1))
    (read,) = ZxingReader().read(render_frame(hri, rng=np.random.default_rng(2)))
    assert (read.text, read.raw) == (hri, raw)
    assert len(calls) == 1


def test_smeared_code_reads_nothing() -> None:
    rng = np.random.default_rng(3)
    reader = ZxingReader()
    for _ in range(20):
        hri, _ = _hri(rng)
        assert reader.read(render_frame(hri, smear=True, rng=rng)) == []


def test_empty_frame_reads_nothing() -> None:
    assert ZxingReader().read(np.full((360, 480), 200, dtype=np.uint8)) == []


def test_low_contrast_still_reads_with_low_measured_contrast() -> None:
    rng = np.random.default_rng(4)
    reader = ZxingReader()
    for _ in range(20):
        hri, _ = _hri(rng)
        light = int(rng.integers(150, 211))
        dark = light - round(float(rng.uniform(0.20, 0.28)) * 255)
        (read,) = reader.read(render_frame(hri, light=light, dark=dark, module_px=4, rng=rng))
        assert read.text == hri
        assert read.contrast is not None and read.contrast < 0.35


def test_non_gs1_symbol_keeps_its_text() -> None:
    symbol = np.array(
        zxingcpp.create_barcode("hello\x1dworld", zxingcpp.BarcodeFormat.DataMatrix).to_image(
            scale=1
        )
    )
    image = np.pad(
        cv2.resize(symbol, None, fx=5, fy=5, interpolation=cv2.INTER_NEAREST),
        40,
        constant_values=255,
    )
    (read,) = ZxingReader(measure_contrast=False).read(image)
    assert read.text == read.raw == "hello\x1dworld"
    assert read.symbology == "]d1"
    assert read.contrast is None


def test_reader_is_thread_safe() -> None:
    rng = np.random.default_rng(5)
    contents = [_hri(rng)[0] for _ in range(16)]
    images = [render_frame(hri, rng=rng) for hri in contents]
    reader = ZxingReader()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(reader.read, images * 2))
    assert [r[0].text for r in results] == contents * 2


def test_element_string_drops_prefix_and_leading_fnc1() -> None:
    assert decode._element_string(b"\x1d0109506000134352", "]d2") == "0109506000134352"
    assert decode._element_string(b"]d20109506000134352", "]d2") == "0109506000134352"
    assert decode._element_string(b"10AB\x1d21X", "]d2") == "10AB\x1d21X"


def test_symbol_contrast_measures_inside_the_polygon_only() -> None:
    image = np.full((100, 100), 250, dtype=np.uint8)
    image[20:80, 20:50] = 40  # left half of the square dark
    image[20:80, 50:80] = 200
    corners = ((20, 20), (79, 20), (79, 79), (20, 79))
    assert symbol_contrast(image, corners) == pytest.approx((200 - 40) / 255)
    assert symbol_contrast(image, ((-50, -50), (-10, -50), (-10, -10), (-50, -10))) == 0.0
    # Partly outside the frame: clipped, not an error.
    assert 0.0 <= symbol_contrast(image, ((90, 90), (150, 90), (150, 150), (90, 150))) <= 1.0
