"""CodeReader on zxing-cpp, restricted to DataMatrix (the other formats only cost time).

One zxing call per readable frame: in HRI text mode the result carries both the bracketed GS1
text and the element string (``Barcode.bytes``), so nothing is decoded twice. Only a frame where
nothing was found is tried again (global binarizer, then 2x upscale): that is the rare reject path.
zxing-cpp releases the GIL, so reading from a thread pool scales with cores.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import cv2
import numpy as np
import zxingcpp

from edge_agent.contracts import CodeRead, GrayImage
from edge_agent.gs1 import GS

DATAMATRIX = zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.DataMatrix)
_MIN_CONTRAST_PIXELS = 16  # fewer pixels than this inside the polygon: no meaningful percentile


class ZxingReader:
    """Synchronous and stateless after construction, hence safe to call from many threads."""

    def __init__(
        self,
        *,
        try_rotate: bool = True,
        try_downscale: bool = True,
        measure_contrast: bool = True,
        try_invert: bool = False,
        try_upscale: bool = True,
    ) -> None:
        # try_invert (light-on-dark symbols) doubles the work on frames without a code; printed
        # pharma codes are dark on light, so it is off unless a line marks light on dark.
        self.try_rotate = try_rotate
        self.try_downscale = try_downscale
        self.measure_contrast = measure_contrast
        self.try_invert = try_invert
        self.try_upscale = try_upscale

    def read(self, image: GrayImage) -> Sequence[CodeRead]:
        """Every DataMatrix in the frame; ``ms`` is the time this whole call took."""
        started = time.perf_counter()
        image = np.ascontiguousarray(image)
        barcodes = self._decode(image, zxingcpp.Binarizer.LocalAverage)
        scale = 1
        if not barcodes:
            # The local binarizer copes with uneven light but now and then loses small (3 px),
            # blurred modules; the global one reads most of those and costs well under a ms.
            barcodes = self._decode(image, zxingcpp.Binarizer.GlobalHistogram)
        if not barcodes and self.try_upscale:
            # Last resort for tiny low-contrast modules: only frames without a read pay for it.
            scale = 2
            big = np.asarray(
                cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR),
                dtype=np.uint8,
            )
            barcodes = self._decode(big, zxingcpp.Binarizer.LocalAverage)
        found = [_parts(barcode, scale) for barcode in barcodes]
        contrasts = [
            symbol_contrast(image, corners) if self.measure_contrast else None
            for _, _, _, corners in found
        ]
        ms = (time.perf_counter() - started) * 1000.0
        return [
            CodeRead(text, raw, symbology, corners, contrast, ms)
            for (text, raw, symbology, corners), contrast in zip(found, contrasts, strict=True)
        ]

    def _decode(self, image: GrayImage, binarizer: zxingcpp.Binarizer) -> list[zxingcpp.Barcode]:
        return zxingcpp.read_barcodes(
            image,
            formats=DATAMATRIX,
            try_rotate=self.try_rotate,
            try_downscale=self.try_downscale,
            try_invert=self.try_invert,
            text_mode=zxingcpp.TextMode.HRI,
            binarizer=binarizer,
        )


def _parts(
    barcode: zxingcpp.Barcode, scale: int
) -> tuple[str, str, str, tuple[tuple[int, int], ...]]:
    text, raw, symbology = _content(barcode)
    pos = barcode.position
    corners = tuple(
        (int(p.x) // scale, int(p.y) // scale)
        for p in (pos.top_left, pos.top_right, pos.bottom_right, pos.bottom_left)
    )
    return text, raw, symbology, corners


def barcode_read(
    barcode: zxingcpp.Barcode,
    *,
    scale: float = 1.0,
    offset: tuple[int, int] = (0, 0),
    strategy: str = "zxing",
) -> CodeRead:
    """A zxing result as a CodeRead in the coordinates of the full frame.

    ``scale`` is how much the decoded image was enlarged, ``offset`` where it was cut from.
    """
    text, raw, symbology = _content(barcode)
    pos = barcode.position
    dx, dy = offset
    corners = tuple(
        (round(p.x / scale) + dx, round(p.y / scale) + dy)
        for p in (pos.top_left, pos.top_right, pos.bottom_right, pos.bottom_left)
    )
    size, unused_ec = _extra(barcode)
    (x0, y0), (x1, y1) = corners[0], corners[1]
    return CodeRead(
        text=text,
        raw=raw,
        symbology=symbology,
        corners=corners,
        module_size=float(np.hypot(x1 - x0, y1 - y0)) / size[1] if size else None,
        strategy=strategy,
        size=size,
        unused_ec=unused_ec,
    )


def _content(barcode: zxingcpp.Barcode) -> tuple[str, str, str]:
    """Text, element string and symbology identifier of a zxing result."""
    symbology = str(barcode.symbology_identifier)
    raw = _element_string(bytes(barcode.bytes), symbology)
    # HRI text mode renders control characters of non-GS1 data as "<GS>"; keep those verbatim.
    is_gs1 = barcode.content_type == zxingcpp.ContentType.GS1
    return (str(barcode.text) if is_gs1 else raw), raw, symbology


def _extra(barcode: zxingcpp.Barcode) -> tuple[tuple[int, int] | None, float | None]:
    """Symbol size ("Version": "ROWSxCOLS") and unused error correction ("UEC") from ``extra``."""
    try:
        extra: dict[str, object] = dict(barcode.extra)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None, None
    size: tuple[int, int] | None = None
    try:
        rows, cols = (int(part) for part in str(extra["Version"]).split("x"))
        size = (rows, cols) if rows > 0 and cols > 0 else None
    except (KeyError, ValueError):
        pass
    uec = extra.get("UEC")
    return size, float(uec) if isinstance(uec, (int, float)) else None


def _element_string(data: bytes, symbology: str) -> str:
    """Decoded bytes without symbology prefix or leading FNC1 (which some versions report as GS)."""
    raw = data.decode("latin-1")
    if symbology and raw.startswith(symbology):
        raw = raw[len(symbology) :]
    return raw.lstrip(GS)


def symbol_contrast(image: GrayImage, corners: Sequence[tuple[int, int]]) -> float:
    """(P90 - P10) / 255 of the pixels inside the symbol polygon; 0.0 if the polygon is empty.

    Only the polygon's bounding box is masked and histogrammed, so the cost does not depend on
    the frame size.
    """
    points = np.asarray(corners, dtype=np.int32).reshape(-1, 2)
    height, width = image.shape[:2]
    x0, y0 = np.maximum(points.min(axis=0), 0)
    x1, y1 = np.minimum(points.max(axis=0) + 1, (width, height))
    if x1 <= x0 or y1 <= y0:
        return 0.0
    roi = np.ascontiguousarray(image[y0:y1, x0:x1])
    mask = np.zeros(roi.shape, dtype=np.uint8)
    cv2.fillPoly(mask, [points - (x0, y0)], 255)
    hist = cv2.calcHist([roi], [0], mask, [256], [0, 256]).ravel()
    total = float(hist.sum())
    if total < _MIN_CONTRAST_PIXELS:
        return 0.0
    cumulative = np.cumsum(hist)
    p10 = int(np.searchsorted(cumulative, 0.10 * total))
    p90 = int(np.searchsorted(cumulative, 0.90 * total))
    return (p90 - p10) / 255.0
