"""Scanners that deliver one code per line, as industrial handhelds and fixed-mount scanners do
in their serial (RS-232, USB CDC) or TCP (socket server) mode: the code's data, optionally with
the AIM symbology identifier in front (``]C1`` GS1-128, ``]d2`` GS1 DataMatrix, ``]Q3`` GS1 QR),
then a configured suffix (CR LF by default). GS1 separators come as the byte 0x1D.

The driver cuts the stream at the suffix; a line longer than ``max_line`` bytes or not valid
text is counted as malformed and skipped, never raised mid-stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Literal, Self

import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.transport import SerialTransport, TcpTransport, TransportConfig, open_stream
from edge_agent.contracts import ScannedCode
from edge_agent.errors import DeviceConnectionError

log = structlog.get_logger(__name__)


class LineScannerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["lines"] = Field(description='Driver selector: "lines", one code per line.')
    link: TransportConfig = Field(
        description="serial (the scanner's RS-232/USB port) or tcp (its socket server)"
    )
    suffix: str = Field(
        "\r\n", min_length=1, max_length=4, description="What the scanner sends after each code"
    )
    max_line: int = Field(
        512, ge=16, le=65536, description="Longest code accepted, in bytes; longer is malformed"
    )

    @field_validator("suffix")
    @classmethod
    def _control_suffix(cls, value: str) -> str:
        if not value.isascii() or any(ch.isalnum() for ch in value):
            raise ValueError('the suffix is control characters or punctuation (e.g. "\\r\\n")')
        return value


class LineScanner:
    """Implements ``edge_agent.contracts.Scanner``."""

    Config = LineScannerConfig

    def __init__(self, name: str, config: LineScannerConfig) -> None:
        self.name = name
        self.config = config
        self.malformed_count = 0
        self.codes_received = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Self:
        link: TcpTransport | SerialTransport = self.config.link
        self._reader, self._writer = await open_stream(self.name, link)
        log.info("scanner connected", device=self.name, link=link.describe())
        return self

    async def __aexit__(self, *exc: object) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def codes(self) -> AsyncIterator[ScannedCode]:
        reader = self._reader
        if reader is None:
            raise DeviceConnectionError(self.name, "not connected (use 'async with')")
        suffix = self.config.suffix.encode("ascii")
        buffer = bytearray()
        while True:
            try:
                data = await reader.read(4096)
            except OSError as exc:
                raise DeviceConnectionError(self.name, f"link lost: {exc}") from exc
            if not data:
                raise DeviceConnectionError(self.name, "scanner closed the connection")
            buffer += data
            while (end := buffer.find(suffix)) >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + len(suffix)]
                code = self._code(line)
                if code is not None:
                    yield code
            if len(buffer) > self.config.max_line:
                self._malformed(bytes(buffer[:64]), "line longer than max_line")
                buffer.clear()

    def _code(self, line: bytes) -> ScannedCode | None:
        line = line.strip(b"\r\n")  # a scanner set to CR LF sometimes sends LF alone
        if not line:
            return None
        if len(line) > self.config.max_line:
            self._malformed(line[:64], "line longer than max_line")
            return None
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            self._malformed(line[:64], "not ASCII")
            return None
        if any(ch < " " and ch != "\x1d" for ch in text):
            self._malformed(line[:64], "control characters other than GS")
            return None
        self.codes_received += 1
        return ScannedCode(text, time.monotonic())

    def _malformed(self, raw: bytes, why: str) -> None:
        self.malformed_count += 1
        log.warning("malformed scanner input", device=self.name, why=why, raw=repr(raw))
