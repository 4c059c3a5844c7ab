"""Helpers of the PLC tests: units on the simulated line, the agent's heartbeat, free ports."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

from edge_agent.contracts import PlcLink
from edge_agent.errors import DeviceConnectionError, DeviceTimeout
from simulators.line import SimLine, SimUnit

BEAT_PERIOD_S = 0.03


async def send_unit(line: SimLine) -> int:
    """Put one unit on the line; returns its trigger count once it reached the camera."""
    line.unit_printed(SimUnit("SN", "09506000134352", "LOT", "301231", time.monotonic()))
    await line.drain()
    return line.trigger_count


@contextlib.asynccontextmanager
async def beating(plc: PlcLink, period: float = BEAT_PERIOD_S) -> AsyncIterator[list[float]]:
    """Beat in the background, as the agent does; yields the times of the beats sent."""
    sent: list[float] = []

    async def loop() -> None:
        while True:
            with contextlib.suppress(DeviceConnectionError, DeviceTimeout):
                sent.append(time.monotonic())
                await plc.beat()
            await asyncio.sleep(period)

    task = asyncio.create_task(loop())
    try:
        yield sent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
