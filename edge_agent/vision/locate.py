"""Where in a large frame a DataMatrix may be: found on a downscaled copy, cut at full resolution.

A DataMatrix is a compact patch dense in edges in every direction; carton background is flat and
printed text is edge-dense only along lines. On a frame shrunk to about 640 px wide the
morphological gradient, thresholded and closed, turns every code into one solid blob whatever its
rotation. Decoding the full-resolution crop of each blob then costs a fraction of a full-frame
search, and a frame with no blob costs only the shrink (a few ms even at 5 MP).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge_agent.contracts import GrayImage

LOCATE_WIDTH = 640  # width of the copy the search runs on
# The smallest symbol worth a look: 10x10 modules (the smallest DataMatrix) of 3 px, in full-frame
# pixels; smaller blobs are noise or single glyphs of printed text.
MIN_SYMBOL_PX = 30
MAX_ASPECT = 3.0  # DataMatrix is square (or 1:2 rectangular); text lines are longer
MIN_FILL = 0.35  # share of the blob's rotated rectangle that is edge-dense


@dataclass(frozen=True)
class Region:
    """An axis-aligned crop of the full frame that may hold a code."""

    x: int
    y: int
    width: int
    height: int
    score: float  # edge density x area: larger = more likely a code

    def crop(self, image: GrayImage) -> GrayImage:
        return image[self.y : self.y + self.height, self.x : self.x + self.width]


def shrink_factor(image: GrayImage) -> int:
    return max(1, int(image.shape[1] // LOCATE_WIDTH))


def locate(image: GrayImage, *, max_regions: int = 8, margin: float = 0.35) -> list[Region]:
    """Candidate regions, best first. ``margin`` widens each blob (quiet zone, blob shrinkage)."""
    factor = shrink_factor(image)
    small = (
        image
        if factor == 1
        else cv2.resize(
            image,
            (image.shape[1] // factor, image.shape[0] // factor),
            interpolation=cv2.INTER_AREA,
        )
    )
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))
    gradient = np.asarray(cv2.morphologyEx(small, cv2.MORPH_GRADIENT, kernel), dtype=np.uint8)
    # Relative threshold: low-contrast codes still stand out from flat background, and sensor
    # noise (the 90th percentile: most of a frame is background) does not turn into blobs.
    level = max(10.0, 0.12 * _percentile(gradient, 99.5), 1.5 * _percentile(gradient, 90))
    _, mask = cv2.threshold(gradient, level, 255, cv2.THRESH_BINARY)
    close = cv2.getStructuringElement(cv2.MORPH_RECT, (5, 5))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, close)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    min_side = MIN_SYMBOL_PX / factor
    regions: list[Region] = []
    height, width = image.shape[:2]
    for contour in contours:
        x, y, bw, bh = cv2.boundingRect(contour)
        if max(bw, bh) < min_side:  # specks and glyphs: skip before the costlier tests
            continue
        (_, _), (w, h), _ = cv2.minAreaRect(contour)
        if min(w, h) < min_side or max(w, h) > MAX_ASPECT * min(w, h):
            continue
        fill = cv2.contourArea(contour) / max(w * h, 1.0)
        if fill < MIN_FILL:
            continue
        pad = margin * max(bw, bh) + 2
        x0 = max(0, int((x - pad) * factor))
        y0 = max(0, int((y - pad) * factor))
        x1 = min(width, int((x + bw + pad) * factor))
        y1 = min(height, int((y + bh + pad) * factor))
        regions.append(Region(x0, y0, x1 - x0, y1 - y0, fill * w * h))
    regions.sort(key=lambda r: r.score, reverse=True)
    return regions[:max_regions]


def _percentile(image: GrayImage, q: float) -> float:
    """Percentile of a uint8 image from its histogram (np.percentile sorts: ms at VGA)."""
    hist = cv2.calcHist([image], [0], None, [256], [0, 256]).ravel()
    return float(np.searchsorted(np.cumsum(hist), q / 100.0 * float(hist.sum())))
