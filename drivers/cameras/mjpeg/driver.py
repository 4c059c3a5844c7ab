"""FrameSource for network cameras streaming MJPEG over HTTP ("mjpeg").

The stream of most IP and industrial cameras (``multipart/x-mixed-replace``, one JPEG per part)
is read by the agent's own client (aiohttp + ``drivers.cameras.mjpeg.codec``), not by OpenCV
(the "videocapture" type can read the same URL through FFmpeg), for three reasons:

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
  (``reconnects`` attempts in a row, backing off as ``edge_agent.supervisor`` does); units
  passing meanwhile get no frame and are rejected. Without ``trigger_header`` frames are counted
  from ``first_trigger``; a reconnect would lose the count, so a dropped stream then ends with
  DeviceConnectionError.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any, Literal, Self

import aiohttp
import cv2
import numpy as np
import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.cameras.images import to_gray
from drivers.cameras.mjpeg.codec import Malformed, MultipartParser, Part, boundary_from_content_type
from edge_agent.contracts import Frame
from edge_agent.errors import DeviceConnectionError, ProtocolError
from edge_agent.redaction import redact_url
from edge_agent.supervisor import Supervisor

log = structlog.get_logger(__name__)

RECONNECT_FIRST_S = 0.25  # longest first wait before re-opening a dropped stream
RECONNECT_MAX_S = 2.0


class MjpegConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["mjpeg"] = Field(description="Driver selector: MJPEG stream over HTTP.")
    source: str = Field(
        min_length=8,
        max_length=2048,
        description="http:// or https:// URL of the camera's MJPEG stream.",
    )
    first_trigger: int = Field(
        1,
        ge=0,
        le=2**32,
        description="Without trigger_header: trigger count of the first frame after connecting.",
    )
    trigger_header: str | None = Field(
        "X-Trigger",
        min_length=1,
        max_length=64,
        description="Part header carrying the camera's trigger/frame count; omit to count frames "
        "from first_trigger instead (then a dropped stream stops the line).",
    )
    connect_timeout_s: float = Field(5.0, gt=0, le=120, description="Connect timeout.")
    reconnects: int = Field(
        3,
        ge=0,
        le=100,
        description="With trigger_header: reconnect attempts in a row after the stream drops "
        "before the camera counts as gone.",
    )
    keepalive_s: float = Field(
        10.0, ge=1, le=3600, description="TCP keepalive idle time (dead-peer detection)."
    )
    max_frame_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, le=2**31, description="Largest JPEG part accepted."
    )

    @field_validator("source")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("an MJPEG camera needs an http:// or https:// source URL")
        return value


class MjpegSource:
    """A camera streaming MJPEG over HTTP; implements ``edge_agent.contracts.FrameSource``."""

    Config = MjpegConfig

    def __init__(self, name: str, config: MjpegConfig) -> None:
        self.name = name
        self.config = config
        self.frames_received = 0
        self.malformed_count = 0
        self.frames_missed = 0  # trigger numbers skipped by the camera's counter
        self.repeats_discarded = 0  # frames whose number was not above the last one
        self._counted = 0  # frames counted from first_trigger (without trigger_header)
        self._http: _MjpegHttp | None = None
        self._last_trigger: int | None = None
        self._link = Supervisor(
            name,
            first_s=RECONNECT_FIRST_S,
            max_s=RECONNECT_MAX_S,
            lost_event="camera stream lost",
            back_event="camera stream back",
            logger=log,
        )

    async def __aenter__(self) -> Self:
        http = _MjpegHttp(self.name, self.config)
        try:
            await http.connect()
        except BaseException:
            await http.close()
            raise
        self._http = http
        return self

    async def __aexit__(self, *exc: object) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    async def frames(self) -> AsyncIterator[Frame]:
        http = self._http
        if http is None:
            raise DeviceConnectionError(self.name, "not open (use 'async with')")
        cfg = self.config
        while True:
            parser = MultipartParser(http.boundary, cfg.max_frame_bytes)
            try:
                async for data in http.chunks():
                    for item in parser.feed(data):
                        frame = await self._part_frame(item)
                        if frame is not None:
                            self._link.recovered()  # a frame: the stream works (again)
                            yield frame
            except DeviceConnectionError as exc:
                await self._reopen(http, exc)

    async def _reopen(self, http: _MjpegHttp, error: DeviceConnectionError) -> None:
        """Re-open the stream (trigger numbers in the headers only) or raise the last error.
        At most ``reconnects`` attempts until a frame comes again, backing off in between."""
        cfg = self.config
        if cfg.trigger_header is None:  # counted frames: a reconnect would lose the count
            raise error
        self._link.lost(error, reconnects=cfg.reconnects)
        while self._link.failures < cfg.reconnects:
            await self._link.pause()
            try:
                await http.connect()
            except DeviceConnectionError as again:
                self._link.lost(again)
                error = again
                continue
            return
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
        gray = to_gray(image) if image is not None else None
        if gray is None:
            self._malformed("undecodable JPEG", trigger, skipped=len(item.body))
            return None
        self.frames_received += 1
        return Frame(trigger, gray, received_at=time.monotonic(), source=self.name)

    def _part_trigger(self, part: Part) -> int | None:
        """The unit of a part, or None (logged) when it must not be filed under any unit."""
        header = self.config.trigger_header
        if header is None:
            self._counted += 1  # counted even if the JPEG turns out bad: no shift
            return self.config.first_trigger + self._counted - 1
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

    def __init__(self, name: str, config: MjpegConfig) -> None:
        self.name = name
        self.config = config
        self.url = config.source
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


def _set_keepalive(response: aiohttp.ClientResponse, idle_s: float) -> None:
    """TCP keepalive: a camera that is idle between units cannot be told from a dead one by
    silence, but a dead peer does not answer keepalive probes."""
    connection = response.connection
    transport: Any = connection.transport if connection is not None else None
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", idle_s), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), max(1, int(value)))
