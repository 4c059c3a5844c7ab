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


class _Receiver(asyncio.BufferedProtocol):
    """The link's bytes go straight into the decoder's buffer (``recv_into``: a raw frame's
    payload lands in the image it becomes). One chunk is in hand at a time: reading pauses
    until ``frames()`` has framed it, and the kernel's socket buffer holds what comes meanwhile."""

    def __init__(self, decoder: FrameDecoder) -> None:
        self.decoder = decoder
        self.transport: asyncio.Transport | None = None
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._count = 0  # bytes received and not yet framed
        self._wake: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.decoder.receive_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        assert self.transport is not None
        self._count = nbytes
        self.transport.pause_reading()
        self._notify()

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            if exc is None:
                self.ended.set_result(None)
            else:
                self.ended.set_exception(exc)
        self._notify()

    async def chunk(self) -> int:
        """Bytes in the decoder's receive buffer to frame; 0 once the camera closed the link
        (OSError when it was lost)."""
        while not self._count:
            if self.ended.done():
                self.ended.result()
                return 0
            self._wake = asyncio.get_running_loop().create_future()
            await self._wake
        count, self._count = self._count, 0
        return count

    def resume(self) -> None:
        if self.transport is not None and not self.ended.done():
            self.transport.resume_reading()

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)


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
        self._receiver: _Receiver | None = None

    async def __aenter__(self) -> Self:
        cfg = self.config
        loop = asyncio.get_running_loop()
        receiver = _Receiver(FrameDecoder(cfg.max_frame_bytes))
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: receiver, cfg.host, cfg.port),
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
        self._receiver = receiver
        log.info("camera connected", device=self.name, host=cfg.host, port=cfg.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        receiver, self._receiver = self._receiver, None
        if receiver is None or receiver.transport is None:
            return
        receiver.transport.close()
        with contextlib.suppress(Exception):  # how the link ended was told to frames()
            await receiver.ended

    async def frames(self) -> AsyncIterator[Frame]:
        receiver = self._receiver
        if receiver is None:
            raise DeviceConnectionError(self.name, "not connected (use 'async with')")
        decoder = receiver.decoder
        while True:
            count = await self._chunk(receiver)
            if not count:
                self._count_malformed(decoder.close())
                raise DeviceConnectionError(self.name, "camera closed the connection")
            # PNG decoding can take tens of ms on big frames: keep it off the event loop. Raw
            # frames are framed here: a thread hop per chunk cost more than framing them.
            if decoder.may_decode_png_received(count):
                items = await asyncio.to_thread(decoder.received, count)
            else:
                items = decoder.received(count)
            receiver.resume()
            for item in items:
                if isinstance(item, Malformed):
                    self._count_malformed([item])
                else:
                    yield self._frame(item)

    async def _chunk(self, receiver: _Receiver) -> int:
        try:
            return await receiver.chunk()
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
