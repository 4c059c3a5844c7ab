"""Simulated network camera streaming MJPEG over HTTP (``multipart/x-mixed-replace``).

What many IP and industrial cameras serve at ``http://camera/stream.mjpg``: one HTTP response
that never ends, one JPEG per part. The camera is hardware-triggered: one part per unit the
``SimLine`` brings to it, nothing in between. Each part carries ``X-Trigger: <n>`` (the camera's
trigger counter) and ``X-Timestamp`` headers. Production (defects, rendering, strict trigger
order, dropping frames while no client is connected) is the frame camera's
(``simulators.cameras.tcp``).

``repeat_every_s`` makes it re-send the last part while idle, as cameras with a keep-alive do;
the driver must recognise and discard those repeats. ``drop_clients()`` cuts every connection.

Standalone: ``python -m simulators.cameras.stream --port 8080``, then open
``http://127.0.0.1:8080/stream.mjpg`` in a browser, VLC or ``cv2.VideoCapture``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import socket
import time
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import structlog

from drivers.cameras.mjpeg import encode_part
from simulators.cameras.tcp import TcpCameraSim, _free_run, _Look
from simulators.line import SimLine
from simulators.standalone import run_until_signal

log = structlog.get_logger(__name__)

PATH = "/stream.mjpg"
BOUNDARY = b"frame"
_REQUEST_TIMEOUT_S = 5.0
_JPEG_QUALITY = 95  # high: JPEG blocking must not turn a good code into a contrast defect


class MjpegCameraSim(TcpCameraSim):
    def __init__(
        self, line: SimLine, *, repeat_every_s: float | None = None, **options: Any
    ) -> None:
        super().__init__(line, **options)
        self.repeat_every_s = repeat_every_s
        self.repeats_sent = 0
        self.requests = 0
        self._last_part: bytes | None = None
        self._last_sent_at = 0.0
        self._repeater: asyncio.Task[None] | None = None

    @classmethod
    def from_section(cls, line: SimLine, section: Any) -> MjpegCameraSim:
        return cls(
            line,
            defect_rate=section.defect_rate,
            seed=section.seed,
            width=section.width,
            height=section.height,
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{PATH}"

    def driver_config(self, **overrides: Any) -> dict[str, Any]:
        """A ``[camera]`` section for the "mjpeg" driver reading this stream."""
        return {"type": "mjpeg", "source": self.url, "trigger_header": "X-Trigger"} | overrides

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        await super().start(host, port)
        if self.repeat_every_s is not None:
            self._repeater = asyncio.get_running_loop().create_task(self._repeat_loop())

    async def stop(self) -> None:
        if self._repeater is not None:
            self._repeater.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._repeater
            self._repeater = None
        await super().stop()

    async def drop_clients(self) -> None:
        """Cut every connection, as a camera rebooting or a switch port flapping does."""
        for writer in list(self._clients):
            await self._close_client(writer)

    # --- production -------------------------------------------------------------------------

    def _produce(self, trigger: int, look: _Look, rng: np.random.Generator) -> bytes:
        """Worker thread: one multipart part (headers + JPEG) of one unit."""
        image = self._render(trigger, look, rng)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        assert ok
        headers = {"X-Trigger": str(trigger), "X-Timestamp": f"{time.time():.6f}"}
        return encode_part(jpeg.tobytes(), BOUNDARY, headers)

    async def _deliver(self, data: bytes) -> None:
        self._last_part, self._last_sent_at = data, time.monotonic()
        await super()._deliver(data)

    async def _repeat_loop(self) -> None:
        assert self.repeat_every_s is not None
        while True:
            await asyncio.sleep(self.repeat_every_s / 2)
            idle = time.monotonic() - self._last_sent_at >= self.repeat_every_s
            if idle and self._last_part is not None and self._clients:
                self.repeats_sent += 1
                await super()._deliver(self._last_part)
                self.frames_sent -= 1  # a repeat is not a unit's frame
                self._last_sent_at = time.monotonic()

    # --- HTTP -------------------------------------------------------------------------------

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            path = await asyncio.wait_for(_read_request(reader), _REQUEST_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            log.warning("bad camera HTTP request", error=repr(exc))
            await self._close_client(writer)
            return
        self.requests += 1
        if path != PATH:
            writer.write(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            with contextlib.suppress(OSError):
                await writer.drain()
            await self._close_client(writer)
            return
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.write(
            b"HTTP/1.1 200 OK\r\n"
            b"Content-Type: multipart/x-mixed-replace; boundary=" + BOUNDARY + b"\r\n"
            b"Cache-Control: no-cache, no-store\r\nPragma: no-cache\r\nConnection: close\r\n\r\n"
        )
        self._clients.add(writer)
        self._client_joined.set()
        log.info("camera stream client connected", peer=writer.get_extra_info("peername"))
        try:
            while await reader.read(4096):
                pass  # nothing more to read; notice when the client goes away
        except OSError:
            pass
        finally:
            await self._close_client(writer)


async def _read_request(reader: asyncio.StreamReader) -> str:
    """The path of a GET request; its headers are read and ignored."""
    request_line = (await reader.readuntil(b"\n")).decode("latin-1").split()
    if len(request_line) != 3 or request_line[0] != "GET":
        raise ValueError(f"not a GET request: {request_line[:3]}")
    while (await reader.readuntil(b"\n")).strip():
        pass
    return request_line[1].split("?", 1)[0]


async def _main(args: argparse.Namespace) -> None:
    line = SimLine(units_per_min=args.rate)
    camera = MjpegCameraSim(line, defect_rate=args.defect_rate, seed=args.seed)
    await camera.start(args.host, args.port)
    print(f"MJPEG camera simulator on {camera.url}, {args.rate} units/min", flush=True)
    feeder = asyncio.get_running_loop().create_task(_free_run(line, random.Random(args.seed)))
    try:
        await asyncio.Event().wait()
    finally:
        feeder.cancel()
        await camera.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Simulated MJPEG-over-HTTP network camera")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--rate", type=float, default=300.0, help="units per minute")
    parser.add_argument("--defect-rate", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    run_until_signal(_main(args))


if __name__ == "__main__":
    main()
