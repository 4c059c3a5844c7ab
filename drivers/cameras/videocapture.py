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

MJPEG over HTTP (``backend = "mjpeg"``, source ``http(s)://...``): the stream of most IP and
industrial cameras (``multipart/x-mixed-replace``, one JPEG per part) is read by the agent's own
client (aiohttp + ``drivers.cameras.mjpeg``), not by OpenCV, for three reasons:

- A hardware-triggered camera is silent between units, for hours during a stop. OpenCV's FFmpeg
  backend blocks in a worker thread that cannot be interrupted (its read timeout ends the stream
  instead), and it does not even finish opening until frames flow. The asyncio client just awaits
  the socket: shutdown cancels it at once, idle or not. A dead peer is noticed by TCP keepalive
  (``keepalive_s``), not by a read timeout that would fire on every production stop.
- OpenCV drops the part headers. Cameras put the trigger/frame counter there (``X-Trigger: n``
  with ``trigger_header``): the frame is filed under that number, so a lost, repeated or
  keep-alive frame can never shift later frames onto the wrong units. Repeats (the last number
  again) are discarded, gaps are logged and counted (``frames_missed``; the runtime rejects a
  unit without a frame), and a counter that goes back (camera restarted) raises ProtocolError,
  which stops the line: from then on no frame can be trusted to belong to its unit.
- Because the number travels with the frame, a dropped connection can be re-established
  (``reconnects`` attempts in a row, with back-off); units passing meanwhile get no frame and are
  rejected. Without ``trigger_header`` frames are counted from ``first_trigger``, as with OpenCV;
  a reconnect would lose the count, so a dropped stream then ends with DeviceConnectionError.

OpenCV's FFmpeg backend also opens such URLs (``backend = "ffmpeg"``) and is fine for a
free-running camera whose frames are all units; the tests run both against the simulator.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, Self, TypeVar

import aiohttp
import cv2
import numpy as np
import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.cameras.mjpeg import Malformed, MultipartParser, Part, boundary_from_content_type
from edge_agent.contracts import Frame, GrayImage
from edge_agent.errors import DeviceConnectionError, ProtocolError
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
    backend: Literal["any", "v4l2", "ffmpeg", "gstreamer", "images", "mjpeg"] = Field(
        "any",
        description="OpenCV capture backend; 'any' lets OpenCV choose. 'mjpeg': the agent's "
        "own MJPEG-over-HTTP client for an http(s) source (see the module docstring).",
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
    trigger_header: str | None = Field(
        "X-Trigger",
        min_length=1,
        max_length=64,
        description="mjpeg: part header carrying the camera's trigger/frame count; omit to "
        "count frames from first_trigger instead (then a dropped stream stops the line).",
    )
    connect_timeout_s: float = Field(5.0, gt=0, le=120, description="mjpeg: connect timeout.")
    reconnects: int = Field(
        3,
        ge=0,
        le=100,
        description="mjpeg with trigger_header: reconnect attempts in a row after the stream "
        "drops before the camera counts as gone.",
    )
    keepalive_s: float = Field(
        10.0, ge=1, le=3600, description="mjpeg: TCP keepalive idle time (dead-peer detection)."
    )
    max_frame_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, le=2**31, description="mjpeg: largest JPEG part accepted."
    )

    @model_validator(mode="after")
    def _mjpeg_needs_http(self) -> VideoCaptureConfig:
        is_http = isinstance(self.source, str) and self.source.startswith(("http://", "https://"))
        if self.backend == "mjpeg" and not is_http:
            raise ValueError("backend 'mjpeg' needs an http:// or https:// source URL")
        return self


class VideoCaptureSource:
    Config = VideoCaptureConfig

    def __init__(self, name: str, config: VideoCaptureConfig) -> None:
        self.name = name
        self.config = config
        self.frames_received = 0
        self.malformed_count = 0
        self._capture: cv2.VideoCapture | None = None
        self.frames_missed = 0  # mjpeg: trigger numbers skipped by the camera's counter
        self.repeats_discarded = 0  # mjpeg: frames whose number was not above the last one
        self._lock = threading.Lock()
        self._grabbed = 0
        self._http: _MjpegHttp | None = None
        self._last_trigger: int | None = None

    async def __aenter__(self) -> Self:
        if self.config.backend == "mjpeg":
            http = _MjpegHttp(self.name, self.config)
            try:
                await http.connect()
            except BaseException:
                await http.close()
                raise
            self._http = http
        else:
            self._capture = await _in_daemon_thread(self._open, orphan=_release_orphan)
        return self

    async def __aexit__(self, *exc: object) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.close()
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
        if self.config.backend == "mjpeg":
            async for frame in self._mjpeg_frames():
                yield frame
            return
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
        return True, _gray(image)

    # --- MJPEG over HTTP ----------------------------------------------------------------------

    async def _mjpeg_frames(self) -> AsyncIterator[Frame]:
        http = self._http
        if http is None:
            raise DeviceConnectionError(self.name, "not open (use 'async with')")
        cfg = self.config
        attempts = 0
        while True:
            parser = MultipartParser(http.boundary, cfg.max_frame_bytes)
            try:
                async for data in http.chunks():
                    for item in parser.feed(data):
                        frame = await self._part_frame(item)
                        if frame is not None:
                            attempts = 0
                            yield frame
            except DeviceConnectionError as exc:
                attempts = await self._reconnect(http, exc, attempts)

    async def _reconnect(
        self, http: _MjpegHttp, error: DeviceConnectionError, attempts: int
    ) -> int:
        """Re-open the stream (trigger numbers in the headers only) or raise the last error."""
        cfg = self.config
        while cfg.trigger_header is not None and attempts < cfg.reconnects:
            attempts += 1
            log.warning(
                "camera stream lost, reconnecting",
                device=self.name,
                error=str(error),
                attempt=attempts,
                of=cfg.reconnects,
            )
            await asyncio.sleep(min(0.25 * 2 ** (attempts - 1), 2.0))
            try:
                await http.connect()
            except DeviceConnectionError as again:
                error = again
                continue
            return attempts
        raise error

    async def _part_frame(self, item: Part | Malformed) -> Frame | None:
        if isinstance(item, Malformed):
            self._malformed(item.reason, None, skipped=item.skipped)
            return None
        trigger = self._part_trigger(item)
        if trigger is None:
            return None
        # JPEG decoding of a large frame takes tens of ms: keep it off the event loop.
        buffer = np.frombuffer(item.body, dtype=np.uint8)
        image = await asyncio.to_thread(cv2.imdecode, buffer, cv2.IMREAD_UNCHANGED)
        gray = _gray(image) if image is not None else None
        if gray is None:
            self._malformed("undecodable JPEG", trigger, skipped=len(item.body))
            return None
        self.frames_received += 1
        return Frame(trigger, gray, received_at=time.monotonic(), source=self.name)

    def _part_trigger(self, part: Part) -> int | None:
        """The unit of a part, or None (logged) when it must not be filed under any unit."""
        header = self.config.trigger_header
        if header is None:
            self._grabbed += 1  # counted even if the JPEG turns out bad: no shift
            return self.config.first_trigger + self._grabbed - 1
        value = part.headers.get(header.lower(), "")
        if not value.isdigit():
            self._malformed(f"missing or bad {header} header {value[:20]!r}", None)
            return None
        trigger, last = int(value), self._last_trigger
        if last is not None and trigger < last:
            # A restarted camera counts from 1 again: no frame can be matched to a unit any more.
            raise ProtocolError(
                self.name,
                f"trigger counter went back from {last} to {trigger} (camera restarted?): "
                "frames can no longer be matched to units",
            )
        if trigger == last:
            self.repeats_discarded += 1
            log.debug("repeated camera frame discarded", device=self.name, trigger=trigger)
            return None
        if last is not None and trigger > last + 1:
            self.frames_missed += trigger - last - 1
            log.warning("camera frames missing", device=self.name, after=last, next=trigger)
        self._last_trigger = trigger
        return trigger

    def _malformed(self, reason: str, trigger: int | None, skipped: int = 0) -> None:
        self.malformed_count += 1
        log.warning(
            "malformed camera frame",
            device=self.name,
            reason=reason,
            trigger=trigger,
            skipped_bytes=skipped,
        )


class _MjpegHttp:
    """One HTTP session to the camera; ``connect`` (again) opens the stream."""

    def __init__(self, name: str, config: VideoCaptureConfig) -> None:
        self.name = name
        self.config = config
        self.url = str(config.source)
        self.boundary = b""
        self._session: aiohttp.ClientSession | None = None
        self._response: aiohttp.ClientResponse | None = None

    async def connect(self) -> None:
        await self._close_response()
        cfg = self.config
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=None, connect=cfg.connect_timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout)
        try:
            response = await self._session.get(
                self.url, headers={"Accept": "multipart/x-mixed-replace"}
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise DeviceConnectionError(self.name, f"cannot open {self.url}: {exc!r}") from exc
        content_type = response.headers.get("Content-Type", "")
        boundary = boundary_from_content_type(content_type)
        if response.status != 200 or boundary is None:
            response.close()
            raise DeviceConnectionError(
                self.name,
                f"{self.url} is not an MJPEG stream: HTTP {response.status}, "
                f"Content-Type {content_type!r}",
            )
        self._response, self.boundary = response, boundary
        _set_keepalive(response, cfg.keepalive_s)
        log.info("camera stream opened", device=self.name, url=redact_url(self.url))

    async def chunks(self) -> AsyncIterator[bytes]:
        response = self._response
        if response is None:
            raise DeviceConnectionError(self.name, "stream not open")
        try:
            async for data in response.content.iter_any():
                yield data
        except (aiohttp.ClientError, OSError) as exc:
            raise DeviceConnectionError(self.name, f"stream lost: {exc!r}") from exc
        raise DeviceConnectionError(self.name, "camera closed the stream")

    async def _close_response(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            response.close()

    async def close(self) -> None:
        await self._close_response()
        session, self._session = self._session, None
        if session is not None:
            await session.close()


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


def _set_keepalive(response: aiohttp.ClientResponse, idle_s: float) -> None:
    """TCP keepalive: a camera that is idle between units cannot be told from a dead one by
    silence, but a dead peer does not answer keepalive probes."""
    connection = response.connection
    transport = connection.transport if connection is not None else None
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", idle_s), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), max(1, int(value)))


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
