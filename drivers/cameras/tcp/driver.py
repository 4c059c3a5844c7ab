"""FrameSource for cameras that push frames over TCP ("tcp-frames"; the camera is the server)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Literal, Self

import structlog
from pydantic import BaseModel, ConfigDict, Field

from drivers.cameras.tcp.codec import DEFAULT_MAX_FRAME_BYTES, DecodedFrame, FrameDecoder, Malformed
from edge_agent.contracts import Frame
from edge_agent.errors import DeviceConnectionError, DeviceTimeout

log = structlog.get_logger(__name__)

_READ_CHUNK = 4 * 1024 * 1024  # StreamReader.read returns what is buffered, up to this
_STREAM_LIMIT = 4 * 1024 * 1024  # lets the transport buffer a few frames before pausing


class TcpFrameSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["tcp-frames"] = Field(
        description="Driver selector: camera pushing frames over TCP."
    )
    host: str = Field(
        "127.0.0.1", min_length=1, max_length=253, description="Camera host name or IP address."
    )
    port: int = Field(ge=1, le=65535, description="TCP port the camera listens on.")
    connect_timeout_s: float = Field(
        3.0, gt=0, le=60, description="Give up connecting after this many seconds."
    )
    max_frame_bytes: int = Field(
        DEFAULT_MAX_FRAME_BYTES,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Largest payload accepted; bigger frames are counted as malformed and skipped.",
    )


class TcpFrameSource:
    """Connects to the camera on ``async with``; ``frames()`` yields until the link drops."""

    Config = TcpFrameSourceConfig

    def __init__(self, name: str, config: TcpFrameSourceConfig) -> None:
        self.name = name
        self.config = config
        self.malformed_count = 0
        self.frames_received = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Self:
        cfg = self.config
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(cfg.host, cfg.port, limit=_STREAM_LIMIT),
                cfg.connect_timeout_s,
            )
        except TimeoutError as exc:
            raise DeviceTimeout(
                self.name, f"no connection to {cfg.host}:{cfg.port} in {cfg.connect_timeout_s} s"
            ) from exc
        except OSError as exc:
            raise DeviceConnectionError(
                self.name, f"cannot connect to {cfg.host}:{cfg.port}: {exc}"
            ) from exc
        log.info("camera connected", device=self.name, host=cfg.host, port=cfg.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        writer.close()
        with contextlib.suppress(OSError):  # the link is going away anyway
            await writer.wait_closed()

    async def frames(self) -> AsyncIterator[Frame]:
        reader = self._reader
        if reader is None:
            raise DeviceConnectionError(self.name, "not connected (use 'async with')")
        decoder = FrameDecoder(self.config.max_frame_bytes)
        while True:
            data = await self._read(reader)
            if not data:
                self._count_malformed(decoder.close())
                raise DeviceConnectionError(self.name, "camera closed the connection")
            # PNG decoding can take tens of ms on big frames: keep it off the event loop. Raw
            # frames are framed here: a thread hop per chunk cost more than the copy.
            if decoder.may_decode_png(data):
                items = await asyncio.to_thread(decoder.feed, data)
            else:
                items = decoder.feed(data)
            for item in items:
                if isinstance(item, Malformed):
                    self._count_malformed([item])
                else:
                    yield self._frame(item)

    async def _read(self, reader: asyncio.StreamReader) -> bytes:
        try:
            return await reader.read(_READ_CHUNK)
        except OSError as exc:
            raise DeviceConnectionError(self.name, f"link lost: {exc}") from exc

    def _frame(self, item: DecodedFrame) -> Frame:
        self.frames_received += 1
        return Frame(item.trigger, item.image, received_at=time.monotonic(), source=self.name)

    def _count_malformed(self, items: list[Malformed]) -> None:
        for item in items:
            self.malformed_count += 1
            log.warning(
                "malformed camera input",
                device=self.name,
                reason=item.reason,
                skipped_bytes=item.skipped,
                trigger=item.trigger,
            )
