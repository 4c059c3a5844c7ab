"""FrameSource on OpenCV ``VideoCapture``: USB/V4L2 cameras, RTSP/HTTP streams, GStreamer
pipelines, video files and image sequences ("videocapture").

Trigger count: the camera is expected to be *hardware triggered* (its trigger input wired to the
line's photo-eye, the same signal the PLC counts), so every frame it delivers is one unit. The
trigger count of a frame is ``first_trigger`` plus the number of frames grabbed before it,
including ones that failed to decode, so one bad frame never shifts the units after it.
``first_trigger`` is the PLC's trigger count of the first unit after the camera starts.

``VideoCapture.read`` blocks, so it runs in a worker thread; a lock keeps ``release`` from
running while a read is still in progress (OpenCV does not allow that).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Literal, Self

import cv2
import numpy as np
import structlog
from pydantic import BaseModel, ConfigDict, Field

from edge_agent.contracts import Frame, GrayImage
from edge_agent.errors import DeviceConnectionError

log = structlog.get_logger(__name__)

BACKENDS = {
    "any": cv2.CAP_ANY,
    "v4l2": cv2.CAP_V4L2,
    "ffmpeg": cv2.CAP_FFMPEG,
    "gstreamer": cv2.CAP_GSTREAMER,
    "images": cv2.CAP_IMAGES,
}


class VideoCaptureConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["videocapture"] = Field(description="Driver selector: OpenCV VideoCapture.")
    source: int | str = Field(
        description="Device index (0 = /dev/video0), or a URL (rtsp://...), a GStreamer pipeline "
        "(backend = 'gstreamer'), a video file, or an image sequence such as 'img_%04d.png'."
    )
    backend: Literal["any", "v4l2", "ffmpeg", "gstreamer", "images"] = Field(
        "any", description="OpenCV capture backend; 'any' lets OpenCV choose."
    )
    first_trigger: int = Field(
        1, ge=0, le=2**32, description="Trigger count of the first frame after the camera opens."
    )
    width: int | None = Field(None, ge=16, le=16384, description="Ask the camera for this width.")
    height: int | None = Field(None, ge=16, le=16384, description="Ask for this height.")
    fps: float | None = Field(None, gt=0, le=1000, description="Ask the camera for this rate.")
    max_failed_reads: int = Field(
        3,
        ge=1,
        le=1000,
        description="This many failed reads in a row mean the camera is gone (or the file ended).",
    )


class VideoCaptureSource:
    Config = VideoCaptureConfig

    def __init__(self, name: str, config: VideoCaptureConfig) -> None:
        self.name = name
        self.config = config
        self.frames_received = 0
        self.malformed_count = 0
        self._capture: cv2.VideoCapture | None = None
        self._lock = threading.Lock()
        self._grabbed = 0

    async def __aenter__(self) -> Self:
        self._capture = await asyncio.to_thread(self._open)
        return self

    async def __aexit__(self, *exc: object) -> None:
        capture, self._capture = self._capture, None
        if capture is not None:
            await asyncio.to_thread(self._release, capture)

    def _open(self) -> cv2.VideoCapture:
        cfg = self.config
        capture = cv2.VideoCapture(cfg.source, BACKENDS[cfg.backend])
        if not capture.isOpened():
            capture.release()
            raise DeviceConnectionError(
                self.name, f"cannot open video source {cfg.source!r} (backend {cfg.backend})"
            )
        for prop, value in (
            (cv2.CAP_PROP_FRAME_WIDTH, cfg.width),
            (cv2.CAP_PROP_FRAME_HEIGHT, cfg.height),
            (cv2.CAP_PROP_FPS, cfg.fps),
        ):
            if value is not None and not capture.set(prop, float(value)):
                log.warning("camera ignored a setting", device=self.name, prop=prop, value=value)
        log.info("video source opened", device=self.name, source=str(cfg.source))
        return capture

    def _release(self, capture: cv2.VideoCapture) -> None:
        with self._lock:
            capture.release()

    async def frames(self) -> AsyncIterator[Frame]:
        failed = 0
        while True:
            ok, image = await asyncio.to_thread(self._read)
            if not ok:
                failed += 1
                if failed >= self.config.max_failed_reads:
                    raise DeviceConnectionError(
                        self.name, f"{failed} reads in a row failed: camera gone or stream ended"
                    )
                continue
            failed = 0
            trigger = self.config.first_trigger + self._grabbed - 1
            if image is None:
                self.malformed_count += 1
                log.warning("malformed camera frame", device=self.name, trigger=trigger)
                continue
            self.frames_received += 1
            yield Frame(trigger, image, received_at=time.monotonic(), source=self.name)

    def _read(self) -> tuple[bool, GrayImage | None]:
        """Worker thread: (grabbed, grayscale image or None if the frame is unusable)."""
        with self._lock:
            capture = self._capture
            if capture is None:
                raise DeviceConnectionError(self.name, "not open (use 'async with')")
            ok, image = capture.read()
        if not ok:
            return False, None
        self._grabbed += 1
        return True, _gray(image)


def _gray(image: object) -> GrayImage | None:
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
