"""FrameSource on OpenCV ``VideoCapture``: USB/V4L2 cameras, RTSP/HTTP streams, GStreamer
pipelines, video files and image sequences ("videocapture").

Trigger count: the camera is expected to be *hardware triggered* (its trigger input wired to the
line's photo-eye, the same signal the PLC counts), so every frame it delivers is one unit. The
trigger count of a frame is ``first_trigger`` plus the number of frames grabbed before it,
including ones that failed to decode, so one bad frame never shifts the units after it.
``first_trigger`` is the PLC's trigger count of the first unit after the camera starts.

``VideoCapture.open``/``read`` block (a triggered camera is silent between units, an RTSP read
waits up to FFmpeg's timeout), so they run in daemon threads of their own, not in the asyncio
executor: shutdown never waits for them (the executor's threads are joined at exit). A lock
keeps ``release`` from running during a read (OpenCV does not allow that); if a read is still
blocked at shutdown, the reading thread releases the capture when the read returns. For
FFmpeg sources ``open_timeout_s``/``read_timeout_s`` bound the blocking; a read timeout ends an
FFmpeg stream, so set it only for free-running cameras.

An MJPEG-over-HTTP camera that puts its trigger counter in the part headers is better read by
the "mjpeg" type (``drivers.cameras.mjpeg``): OpenCV drops those headers and blocks while a
triggered camera is idle. OpenCV's FFmpeg backend also opens such URLs (``backend = "ffmpeg"``)
and is fine for a free-running camera whose frames are all units; the tests run both against
the simulator.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, Self, TypeVar

import cv2
import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.cameras.images import to_gray
from edge_agent.contracts import Frame, GrayImage
from edge_agent.errors import DeviceConnectionError
from edge_agent.redaction import redact_url

log = structlog.get_logger(__name__)

T = TypeVar("T")
_RELEASE_WAIT_S = 0.5

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
    open_timeout_s: float | None = Field(
        None, gt=0, le=600, description="FFmpeg/GStreamer sources: give up opening after this."
    )
    read_timeout_s: float | None = Field(
        None,
        gt=0,
        le=3600,
        description="FFmpeg/GStreamer sources: a read waiting this long fails (ends the stream): "
        "only for free-running cameras, never for triggered ones that idle between units.",
    )
    max_failed_reads: int = Field(
        3,
        ge=1,
        le=1000,
        description="This many failed reads in a row mean the camera is gone (or the file ended).",
    )

    @model_validator(mode="before")
    @classmethod
    def _mjpeg_moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("backend") == "mjpeg":
            raise ValueError(
                'backend "mjpeg" is a camera type of its own now: write type = "mjpeg" and '
                "remove the backend line (source, trigger_header, reconnects and the other "
                "stream keys stay as they are)"
            )
        return data


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
        self._capture = await _in_daemon_thread(self._open, orphan=_release_orphan)
        return self

    async def __aexit__(self, *exc: object) -> None:
        capture, self._capture = self._capture, None
        if capture is not None:
            await _in_daemon_thread(self._release, capture)

    def _open(self) -> cv2.VideoCapture:
        cfg = self.config
        params: list[int] = []
        if cfg.open_timeout_s is not None:
            params += [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, round(cfg.open_timeout_s * 1000)]
        if cfg.read_timeout_s is not None:
            params += [cv2.CAP_PROP_READ_TIMEOUT_MSEC, round(cfg.read_timeout_s * 1000)]
        capture = cv2.VideoCapture(cfg.source, BACKENDS[cfg.backend], params)
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
        log.info("video source opened", device=self.name, source=redact_url(str(cfg.source)))
        return capture

    def _release(self, capture: cv2.VideoCapture) -> None:
        # A read still blocked after this long sees ``_capture`` is None when it returns and
        # releases the capture itself (``_read``): shutdown does not wait for an idle camera.
        if self._lock.acquire(timeout=_RELEASE_WAIT_S):
            try:
                capture.release()
            finally:
                self._lock.release()

    async def frames(self) -> AsyncIterator[Frame]:
        failed = 0
        while True:
            ok, image = await _in_daemon_thread(self._read)
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
            if self._capture is not capture:  # closed while this read was blocked
                capture.release()
                raise DeviceConnectionError(self.name, "closed")
        if not ok:
            return False, None
        self._grabbed += 1
        return True, to_gray(image)


def _in_daemon_thread(
    function: Callable[..., T], *args: Any, orphan: Callable[[T], None] | None = None
) -> asyncio.Future[T]:
    """Run a blocking call in a daemon thread; ``orphan`` cleans up a result nobody awaits."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # cancelled meanwhile
            if error is None and orphan is not None:
                orphan(result)  # type: ignore[arg-type]
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result, error = function(*args), None
        except BaseException as exc:  # handed to the awaiting task
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is closed: nobody will ever look at the result
            if error is None and orphan is not None:
                orphan(result)  # type: ignore[arg-type]

    threading.Thread(target=work, name=f"videocapture-{function.__name__}", daemon=True).start()
    return future


def _release_orphan(capture: cv2.VideoCapture) -> None:
    capture.release()
