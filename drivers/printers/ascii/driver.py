"""Driver for printers speaking the "ascii" line protocol (see README.md next to this file).

One TCP connection on the printer base (``drivers.printers.stream``): commands are pipelined,
each written under the base's lock with its reply awaited in the base's FIFO; ``!`` notifications
(print complete, fault, discard) are routed by ``_dispatch``. An ACK must echo what its command
names (the job name, the record seq); a NAK carries no seq, and the printer answers in order, so
it answers the oldest command of its name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field

from drivers.printers.stream import StreamPrinter
from drivers.transport import TcpTransport
from edge_agent.contracts import ClearResult, PrinterStatus, PrintJob, PrintRecord
from edge_agent.errors import DeviceError, ProtocolError

from . import codec

log = structlog.get_logger(__name__)


def _answers(cmd: str, key: str | None = None) -> Callable[[Any], bool]:
    """An ACK or NAK of ``cmd``; an ACK must echo ``key`` (job name, record seq) if given."""

    def fits(reply: Any) -> bool:
        if not isinstance(reply, codec.Ack | codec.Nak) or reply.cmd != cmd:
            return False
        return isinstance(reply, codec.Nak) or key is None or reply.args[0] == key

    return fits


class AsciiPrinter(StreamPrinter):
    """A printer on the "ascii" protocol; implements ``edge_agent.contracts.Printer``."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        type: Literal["ascii"] = Field(description='Driver selector; always "ascii".')
        host: str = Field(
            "127.0.0.1", min_length=1, max_length=253, description="Printer host name or address."
        )
        port: int = Field(ge=1, le=65535, description="Printer TCP port.")
        connect_timeout_s: float = Field(
            3.0, gt=0, le=60, allow_inf_nan=False, description="Give up connecting after this."
        )
        reply_timeout_s: float = Field(
            2.0,
            gt=0,
            le=60,
            allow_inf_nan=False,
            description="A command without a reply after this raises DeviceTimeout.",
        )
        buffer_depth: int = Field(
            8,
            ge=1,
            le=64,
            description="How many sent-but-unprinted records the agent keeps in the printer.",
        )
        job_name: str = Field(
            "SERIAL",
            pattern=f"^{codec.TOKEN_PATTERN}$",
            description="Job template selected on the printer (printable ASCII, no space or |).",
        )

    encode_error: ClassVar[type[Exception]] = codec.EncodeError

    def __init__(self, name: str, config: AsciiPrinter.Config) -> None:
        link = TcpTransport(
            host=config.host, port=config.port, connect_timeout_s=config.connect_timeout_s
        )
        super().__init__(
            name, link, reply_timeout_s=config.reply_timeout_s, buffer_depth=config.buffer_depth
        )
        self.config = config
        self._discards: list[PrintRecord] | None = None  # !DIS notices while a CLR is pending

    # --- protocol hooks --------------------------------------------------------------------

    def _decoder(self) -> codec.LineDecoder:
        return codec.LineDecoder()

    def _dispatch(self, message: codec.Message) -> None:
        match message:
            case codec.Ack() | codec.Nak():
                self._on_reply(message)
            case codec.PrintComplete(seq=seq, serial=serial):
                self._print_complete(seq, serial)
            case codec.Discarded(seq=seq, serial=serial) if self._discards is not None:
                self._discards.append(PrintRecord(seq, serial))
            case codec.Discarded():
                self.count_malformed("discard notice without a CLR", seq=message.seq)
            case codec.FaultNotice(code=code, text=text):
                self._fault(code, text)
            case codec.FaultCleared(code=code):
                self.fault_code = None
                log.info("printer fault cleared", device=self.name, code=code)
            case codec.Malformed(raw=raw, why=why):
                self.count_malformed(why, raw=raw[:120])  # enough to recognise, not to flood

    def _refusal(self, cmd: str, reply: Any) -> DeviceError | None:
        if not isinstance(reply, codec.Nak):
            return None
        if reply.code == "FAULT":
            return self._faulted(reply.code, reply.text)
        if reply.code == "BUFFER_FULL":
            return self._busy(reply.text)
        return ProtocolError(self.name, f"printer refused {reply.cmd}: {reply.code} {reply.text}")

    # --- Printer ---------------------------------------------------------------------------

    async def select_job(self, job: PrintJob) -> None:
        template = self.config.job_name
        line = self._encode(lambda: codec.encode_job(template, job.gtin, job.lot, job.expiry))
        await self._command(line, "JOB", _answers("JOB", template))
        log.info("printer job selected", device=self.name, template=template, job=job.name)

    async def send(self, record: PrintRecord) -> None:
        line = self._encode(lambda: codec.encode_rec(record.seq, record.serial))
        await self._command(line, "REC", _answers("REC", str(record.seq)))

    async def status(self) -> PrinterStatus:
        ack = await self._command(codec.encode_sts(), "STS", _answers("STS"))
        state, buffered, printed, fault = ack.args
        self.fault_code = fault or None  # also learns a fault whose !FLT we never saw
        return PrinterStatus(state, int(buffered), int(printed), fault or None)

    async def clear(self) -> ClearResult:
        """CLR: the printer names each record it discards (``!DIS``) before its ACK, which
        counts them. A printer that only counts, or a notice lost to noise, leaves the records
        unnamed: the reconcile then marks none of them unused on a guess."""
        named: list[PrintRecord] = []
        self._discards = named
        try:
            ack = await self._command(codec.encode_clr(), "CLR", _answers("CLR"))
        finally:
            self._discards = None
        discarded = int(ack.args[0])
        if len(named) == discarded:
            return ClearResult(tuple(named))
        log.warning(
            "printer did not name what it cleared",
            device=self.name,
            discarded=discarded,
            named=len(named),
        )
        return ClearResult(unnamed=discarded)
