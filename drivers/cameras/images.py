"""Camera images as the core wants them: 2-D uint8 grayscale, whatever the camera delivers."""

from __future__ import annotations

import cv2
import numpy as np

from edge_agent.contracts import GrayImage


def to_gray(image: object) -> GrayImage | None:
    """A grayscale copy of a decoded camera image (BGR, BGRA, 8 or 16 bit), or None when it is
    not an image (empty, wrong shape): the caller counts that frame as malformed."""
    if not isinstance(image, np.ndarray) or image.size == 0:
        return None
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    if image.ndim != 2:
        return None
    if image.dtype == np.uint16:  # 16-bit sensors: keep the top 8 bits
        image = np.right_shift(np.asarray(image, dtype=np.uint16), 8).astype(np.uint8)
    return np.ascontiguousarray(image, dtype=np.uint8)
