"""FrameSource for smart code readers that decode on the device ("smart-reader").

The reader (Cognex DataMan style) listens on a TCP port and sends one result line per trigger;
the agent connects as a client. Each result becomes a ``Frame`` whose ``reads`` already hold the
decoded code, so the runtime does not decode it again; the frame's image is empty (0x0) because
the reader keeps its images. A no-read becomes a frame with no reads (the runtime rejects it as
``no_read``); malformed lines are logged and counted, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Literal, Self

import numpy as np
import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.cameras.smart_reader.codec import (
    DEFAULT_FORMAT,
    DEFAULT_MAX_LINE,
    DEFAULT_NO_READ,
    FormatError,
    Malformed,
    ReaderResult,
    ResultDecoder,
    ResultFormat,
    compile_template,
)
from edge_agent import gs1
from edge_agent.contracts import CodeRead, Frame
from edge_agent.errors import DeviceConnectionError, DeviceTimeout

log = structlog.get_logger(__name__)

_EMPTY = np.zeros((0, 0), dtype=np.uint8)
_EMPTY.flags.writeable = False


class SmartReaderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["smart-reader"] = Field(
        description="Driver selector: code reader that decodes on the device and sends results."
    )
    host: str = Field(
        "127.0.0.1", min_length=1, max_length=253, description="Reader host name or IP address."
    )
    port: int = Field(ge=1, le=65535, description="TCP port of the reader's result output.")
    format: str = Field(
        DEFAULT_FORMAT,
        min_length=8,
        max_length=200,
        description="Result line template with {trigger} and {code}, optionally {grade} and "
        "{symbology}; e.g. '{trigger};{grade};{code}'.",
    )
    terminator: str = Field(
        "\r\n", min_length=1, max_length=4, description="End of every result line."
    )
    no_read: str = Field(
        DEFAULT_NO_READ,
        min_length=1,
        max_length=40,
        description="Text the reader sends in place of the code when it read nothing.",
    )
    gs_substitute: str | None = Field(
        None,
        min_length=1,
        max_length=8,
        description="Text the reader sends for the GS1 separator (FNC1), if not GS (0x1D).",
    )
    default_symbology: str = Field(
        "",
        max_length=3,
        description="AIM identifier to assume when the reader does not send one (e.g. ']d2'); "
        "better: enable the symbology identifier in the reader's output.",
    )
    connect_timeout_s: float = Field(
        3.0, gt=0, le=60, description="Give up connecting after this many seconds."
    )
    max_line_bytes: int = Field(
        DEFAULT_MAX_LINE, ge=64, le=1024 * 1024, description="Longer lines are malformed."
    )

    @field_validator("format")
    @classmethod
    def _usable_format(cls, value: str) -> str:
        try:
            compile_template(value)
        except FormatError as exc:
            raise ValueError(str(exc)) from None
        return value


class SmartReaderSource:
    """Connects on ``async with``; ``frames()`` yields one frame per result until the link drops."""

    Config = SmartReaderConfig

    def __init__(self, name: str, config: SmartReaderConfig) -> None:
        self.name = name
        self.config = config
        self.format = ResultFormat(
            config.format, config.terminator, config.no_read, config.gs_substitute
        )
        self.malformed_count = 0
        self.frames_received = 0
        self.no_reads = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Self:
        cfg = self.config
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(cfg.host, cfg.port), cfg.connect_timeout_s
            )
        except TimeoutError as exc:
            raise DeviceTimeout(
                self.name, f"no connection to {cfg.host}:{cfg.port} in {cfg.connect_timeout_s} s"
            ) from exc
        except OSError as exc:
            raise DeviceConnectionError(
                self.name, f"cannot connect to {cfg.host}:{cfg.port}: {exc}"
            ) from exc
        log.info("code reader connected", device=self.name, host=cfg.host, port=cfg.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    async def frames(self) -> AsyncIterator[Frame]:
        reader = self._reader
        if reader is None:
            raise DeviceConnectionError(self.name, "not connected (use 'async with')")
        decoder = ResultDecoder(self.format, self.config.max_line_bytes)
        while True:
            try:
                data = await reader.read(65536)
            except OSError as exc:
                raise DeviceConnectionError(self.name, f"link lost: {exc}") from exc
            if not data:
                self._malformed(decoder.close())
                raise DeviceConnectionError(self.name, "reader closed the connection")
            for item in decoder.feed(data):
                if isinstance(item, Malformed):
                    self._malformed([item])
                else:
                    yield self._frame(item)

    def _frame(self, result: ReaderResult) -> Frame:
        self.frames_received += 1
        reads: tuple[CodeRead, ...] = ()
        if result.code is None:
            self.no_reads += 1
        else:
            reads = (to_code_read(result, self.config.default_symbology),)
        return Frame(
            result.trigger, _EMPTY, received_at=time.monotonic(), source=self.name, reads=reads
        )

    def _malformed(self, items: list[Malformed]) -> None:
        for item in items:
            self.malformed_count += 1
            log.warning(
                "malformed reader result", device=self.name, reason=item.reason, line=item.line
            )


def to_code_read(result: ReaderResult, default_symbology: str = "") -> CodeRead:
    """The reader's result in the core's terms; ``text`` is the bracketed GS1 form if it parses."""
    assert result.code is not None
    symbology = result.symbology or default_symbology
    try:
        text = gs1.parse_scanned(result.code).hri
    except Exception:  # not GS1 (or not valid): the content check will say why
        text = result.code
    return CodeRead(text, result.code, symbology, (), grade=result.grade)
