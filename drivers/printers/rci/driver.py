"""Driver for printers on the buffered remote-field binary protocol ("rci", see README.md).

Usually on RS-232 (``link.kind = "serial"``), also on TCP. Every command gets one reply frame
with the same command byte, in order; PRINT_END / FAULT / FAULT_CLEARED frames come unsolicited.
Frames that fail to decode (garbage, partial frame, checksum error) are counted and skipped; the
decoder resynchronises on the next frame start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field

from drivers.printers.stream import StreamPrinter
from drivers.transport import SerialTransport, TcpTransport, TransportConfig
from edge_agent.contracts import ClearResult, PrinterStatus, PrintJob, PrintRecord
from edge_agent.errors import DeviceError, ProtocolError

from . import codec

log = structlog.get_logger(__name__)

MAX_BUFFERS = 32  # remote-field buffers a controller of this family holds


def _answers(cmd: int, key: bytes = b"") -> Callable[[Any], bool]:
    """A reply to ``cmd``; an OK reply must start with ``key`` (LOAD_RECORD echoes the seq)."""

    def fits(reply: codec.Reply) -> bool:
        if reply.cmd == codec.BAD_FRAME:
            return True
        return reply.cmd == cmd and (reply.status != codec.OK or reply.data.startswith(key))

    return fits


class RciPrinter(StreamPrinter):
    """A printer on the "rci" binary protocol; implements ``edge_agent.contracts.Printer``."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        type: Literal["rci"] = Field(description='Driver selector; always "rci".')
        link: TransportConfig = Field(description="How to reach the printer: serial or TCP.")
        reply_timeout_s: float = Field(
            2.0, gt=0, le=60, allow_inf_nan=False, description="Reply wait before DeviceTimeout."
        )
        connect_attempts: int = Field(
            3, ge=1, le=100, description="Connection attempts (exponential backoff) per connect."
        )
        buffer_depth: int = Field(
            8,
            ge=1,
            le=MAX_BUFFERS,
            description="Remote-field buffers the agent keeps filled (the printer has 1..32).",
        )
        job_name: str = Field(
            "SERIAL",
            pattern=r"^[!-~]{1,64}$",
            description="Job (message) selected on the printer (printable ASCII, no space).",
        )

    encode_error: ClassVar[type[Exception]] = codec.EncodeError

    def __init__(self, name: str, config: RciPrinter.Config) -> None:
        link: TcpTransport | SerialTransport = config.link
        super().__init__(
            name,
            link,
            reply_timeout_s=config.reply_timeout_s,
            buffer_depth=config.buffer_depth,
            connect_attempts=config.connect_attempts,
        )
        self.config = config
        self._decoder_in_use: codec.MessageDecoder | None = None

    @property
    def frame_errors(self) -> int:
        """Checksum errors, partial frames and garbage runs seen on this connection."""
        return self._decoder_in_use.frames.errors if self._decoder_in_use else 0

    def _decoder(self) -> codec.MessageDecoder:
        self._decoder_in_use = codec.MessageDecoder()
        return self._decoder_in_use

    def _dispatch(self, message: codec.Message) -> None:
        match message:
            case codec.PrintEnd(seq=seq, serial=serial):
                self._print_complete(seq, serial)
            case codec.FaultNotice(code=code, text=text):
                self._fault(code, text)
            case codec.FaultCleared(code=code):
                self.fault_code = None
                log.info("printer fault cleared", device=self.name, code=code)
            case codec.Malformed(raw=raw, why=why):
                self.count_malformed(why, raw=raw.hex())
            case codec.Reply():
                self._on_reply(message)

    # --- commands --------------------------------------------------------------------------

    async def _rci(self, data: bytes, cmd: int, key: bytes = b"") -> codec.Reply:
        reply: codec.Reply = await self._command(data, f"0x{cmd:02x}", _answers(cmd, key))
        return reply

    def _refusal(self, cmd: str, reply: Any) -> DeviceError | None:
        if reply.status == codec.OK and reply.cmd != codec.BAD_FRAME:
            return None
        name = reply.status_name
        text = reply.data.decode("ascii", "replace")
        if name == "BUFFER_FULL":
            return self._busy(text)
        if name == "FAULT":
            return self._faulted(name, text)
        return ProtocolError(self.name, f"printer refused 0x{reply.cmd:02x}: {name} {text}")

    async def select_job(self, job: PrintJob) -> None:
        cfg = self.config
        data = self._encode(
            lambda: codec.encode_select_job(cfg.job_name, job.gtin, job.lot, job.expiry)
        )
        await self._rci(data, codec.SELECT_JOB)
        await self._rci(codec.encode_frame(codec.START_PRINT), codec.START_PRINT)
        log.info("printer job selected", device=self.name, template=self.config.job_name)

    async def send(self, record: PrintRecord) -> None:
        data = self._encode(lambda: codec.encode_record(record.seq, record.serial))
        await self._rci(data, codec.LOAD_RECORD, record.seq.to_bytes(8, "big"))

    async def status(self) -> PrinterStatus:
        reply = await self._rci(codec.encode_frame(codec.STATUS), codec.STATUS)
        info = codec.parse_status(reply)
        if info is None:
            raise ProtocolError(self.name, f"bad STATUS reply {reply.data.hex()}")
        self.fault_code = info.fault or None  # also learns a fault whose frame we never saw
        return PrinterStatus(info.state, info.buffered, info.printed, info.fault or None)

    async def clear(self) -> ClearResult:
        """CLEAR_BUFFERS: the reply names every record discarded. A printer whose reply only
        counts them leaves them unnamed: the reconcile then marks none of them unused."""
        return await self._clearing(codec.CLEAR_BUFFERS)

    async def stop_printing(self) -> ClearResult:
        """STOP_PRINT: the printer stops and clears its buffers; returns what it discarded."""
        return await self._clearing(codec.STOP_PRINT)

    async def _clearing(self, cmd: int) -> ClearResult:
        reply = await self._rci(codec.encode_frame(cmd), cmd)
        cleared = codec.parse_cleared(reply)
        if cleared is None:
            raise ProtocolError(self.name, f"bad 0x{cmd:02x} reply {reply.data.hex()}")
        if cleared.records is None:
            return ClearResult(unnamed=cleared.discarded)
        return ClearResult(tuple(PrintRecord(seq, serial) for seq, serial in cleared.records))
