"""Byte-stream transports for device drivers: TCP and RS-232, chosen by config.

A driver embeds ``TransportConfig`` (a pydantic union discriminated on ``kind``) and calls
``open_stream(device_name, config)``; it gets an ``asyncio`` reader/writer pair whichever link it
is, and only ``edge_agent.errors`` exceptions. The serial side uses pyserial through
pyserial-asyncio-fast, so tests run the real serial code path over a pseudo-terminal
(``PtyPair``), as the printer simulators do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from typing import Annotated, Any, Literal, Self

import serial
import serial_asyncio_fast
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge_agent.errors import DeviceConnectionError, DeviceTimeout

_PARITY = {
    "none": serial.PARITY_NONE,
    "even": serial.PARITY_EVEN,
    "odd": serial.PARITY_ODD,
    "mark": serial.PARITY_MARK,
    "space": serial.PARITY_SPACE,
}
_STOPBITS: dict[float, float] = {
    1: serial.STOPBITS_ONE,
    1.5: serial.STOPBITS_ONE_POINT_FIVE,
    2: serial.STOPBITS_TWO,
}


class TcpTransport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["tcp"] = Field("tcp", description='Link type; "tcp" for a network printer.')
    host: str = Field(
        "127.0.0.1", min_length=1, max_length=253, description="Device host name or address."
    )
    port: int = Field(ge=1, le=65535, description="Device TCP port.")
    connect_timeout_s: float = Field(
        3.0, gt=0, le=60, allow_inf_nan=False, description="Give up connecting after this."
    )

    def describe(self) -> str:
        return f"tcp://{self.host}:{self.port}"


class SerialTransport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["serial"] = Field(description='Link type; "serial" for RS-232/RS-485.')
    device: str = Field(
        min_length=1, max_length=255, description="Serial device path, e.g. /dev/ttyUSB0."
    )
    baudrate: int = Field(
        9600, ge=50, le=4_000_000, description="Line speed in bit/s (as set on the printer)."
    )
    bytesize: Literal[5, 6, 7, 8] = Field(8, description="Data bits per character.")
    parity: Literal["none", "even", "odd", "mark", "space"] = Field(
        "none", description="Parity bit."
    )
    stopbits: float = Field(1, description="Stop bits: 1, 1.5 or 2.")
    rtscts: bool = Field(False, description="Hardware flow control (RTS/CTS).")
    xonxoff: bool = Field(
        False, description="Software flow control (XON/XOFF); only for text protocols."
    )
    connect_timeout_s: float = Field(
        3.0, gt=0, le=60, allow_inf_nan=False, description="Give up opening the port after this."
    )

    @field_validator("stopbits")
    @classmethod
    def _stopbits(cls, value: float) -> float:
        if value not in _STOPBITS:
            raise ValueError("stop bits must be 1, 1.5 or 2")
        return value

    def describe(self) -> str:
        return f"serial://{self.device}@{self.baudrate}"

    def serial_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``serial.Serial`` for this configuration."""
        return {
            "url": self.device,
            "baudrate": self.baudrate,
            "bytesize": self.bytesize,
            "parity": _PARITY[self.parity],
            "stopbits": _STOPBITS[self.stopbits],
            "rtscts": self.rtscts,
            "xonxoff": self.xonxoff,
        }


TransportConfig = Annotated[TcpTransport | SerialTransport, Field(discriminator="kind")]


async def open_stream(
    device: str, config: TcpTransport | SerialTransport
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open the link; raises ``DeviceTimeout`` or ``DeviceConnectionError`` naming ``device``."""
    where = config.describe()
    try:
        async with asyncio.timeout(config.connect_timeout_s):
            if isinstance(config, TcpTransport):
                return await asyncio.open_connection(config.host, config.port)
            return await serial_asyncio_fast.open_serial_connection(**config.serial_kwargs())
    except TimeoutError as exc:  # before OSError: TimeoutError is one
        msg = f"no connection to {where} within {config.connect_timeout_s} s"
        raise DeviceTimeout(device, msg) from exc
    except (OSError, serial.SerialException, ValueError) as exc:
        raise DeviceConnectionError(device, f"cannot open {where}: {exc}") from exc


# --- pseudo-terminals (simulators and tests) ---------------------------------------------------


class PtyPair:
    """A pseudo-terminal pair standing in for a serial cable.

    The device side (a simulator) holds the master and talks through ``open()``; the driver opens
    ``slave_path`` with pyserial like any serial port. The pair keeps its own slave descriptor
    open, so the master never sees a hang-up while the driver is disconnected (a real printer's
    port does not vanish when the host closes its end either).
    """

    def __init__(self) -> None:
        self.master_fd, self._slave_fd = os.openpty()
        tty.setraw(self._slave_fd)  # no echo, no CR/LF translation: a binary-clean line
        self.slave_path = os.ttyname(self._slave_fd)
        self._transports: list[asyncio.BaseTransport] = []

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Asyncio streams on the master side (call once)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        # Each pipe transport closes its file on close: give each its own descriptor
        rfile = os.fdopen(os.dup(self.master_fd), "rb", buffering=0)
        wfile = os.fdopen(os.dup(self.master_fd), "wb", buffering=0)
        rtransport, _ = await loop.connect_read_pipe(lambda: protocol, rfile)
        # A StreamReaderProtocol gives the writer flow control (drain) for free
        wprotocol = asyncio.StreamReaderProtocol(asyncio.StreamReader())
        wtransport, _ = await loop.connect_write_pipe(lambda: wprotocol, wfile)
        self._transports += [rtransport, wtransport]
        writer = asyncio.StreamWriter(wtransport, wprotocol, reader, loop)
        return reader, writer

    def close(self) -> None:
        for transport in self._transports:
            transport.close()
        self._transports.clear()
        for fd in (self.master_fd, self._slave_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.master_fd = self._slave_fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
