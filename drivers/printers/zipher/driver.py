"""Driver for printers on the Zipher-style text protocol (see README.md next to this file).

Records go in with JDI (job data with allocation: the printer queues them); print-complete (PRC)
and error-status (ERS) notifications are enabled with SNO on every connect. Replies arrive in
command order; notifications are told apart by their name.
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

# ERR codes that describe the printer's condition rather than a bad request from the agent
_QUEUE_FULL = "QUEUE_FULL"


def _is(*types: type) -> Callable[[Any], bool]:
    return lambda reply: isinstance(reply, (codec.Err, *types))


class ZipherPrinter(StreamPrinter):
    """A printer on the Zipher-style text protocol; implements ``edge_agent.contracts.Printer``."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        type: Literal["zipher"] = Field(description='Driver selector; always "zipher".')
        link: TransportConfig = Field(description="How to reach the printer: TCP or serial.")
        reply_timeout_s: float = Field(
            2.0, gt=0, le=60, allow_inf_nan=False, description="Reply wait before DeviceTimeout."
        )
        connect_attempts: int = Field(
            3, ge=1, le=100, description="Connection attempts (exponential backoff) per connect."
        )
        buffer_depth: int = Field(
            8, ge=1, le=64, description="Sent-but-unprinted records the agent keeps queued."
        )
        job_name: str = Field(
            "SERIAL",
            pattern=r"^[!-{}~]{1,64}$",
            description="Job (message) selected on the printer; its fields are named below.",
        )
        gtin_field: str = Field(
            "GTIN", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$", description="Job field of the GTIN."
        )
        lot_field: str = Field(
            "LOT", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$", description="Job field of the lot."
        )
        expiry_field: str = Field(
            "EXP", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$", description="Job field of the expiry."
        )

    encode_error: ClassVar[type[Exception]] = codec.EncodeError

    def __init__(self, name: str, config: ZipherPrinter.Config) -> None:
        link: TcpTransport | SerialTransport = config.link
        super().__init__(
            name,
            link,
            reply_timeout_s=config.reply_timeout_s,
            buffer_depth=config.buffer_depth,
            connect_attempts=config.connect_attempts,
        )
        self.config = config
        self._discards: list[PrintRecord] | None = None  # CQD lines while a CQI is pending

    def _decoder(self) -> codec.ReplyDecoder:
        return codec.ReplyDecoder()

    async def _on_connect(self) -> None:
        for notification in ("PRC", "ERS"):
            await self._command(codec.encode_sno(notification, True), "SNO", _is(codec.Ack))

    def _dispatch(self, message: codec.Message) -> None:
        match message:
            case codec.PrintComplete(seq=seq, serial=serial):
                self._print_complete(seq, serial)
            case codec.PrintStart():
                pass  # the record left the queue; only PRC proves it is on the unit
            case codec.Discarded(seq=seq, serial=serial) if self._discards is not None:
                self._discards.append(PrintRecord(seq, serial))
            case codec.Discarded():
                self.count_malformed("CQD without a CQI", seq=message.seq)
            case codec.ErrorStatus(error=codec.FAULTED, code=code, text=text):
                self._fault(code, text)
            case codec.ErrorStatus(error=codec.NO_ERROR):
                log.info("printer fault cleared", device=self.name, code=self.fault_code)
                self.fault_code = None
            case codec.ErrorStatus(code=code, text=text):
                log.warning("printer warning", device=self.name, code=code, text=text)
            case codec.Malformed(raw=raw, why=why):
                self.count_malformed(why, raw=raw[:120])
            case _:
                self._on_reply(message)

    # --- commands --------------------------------------------------------------------------

    def _refusal(self, cmd: str, reply: Any) -> DeviceError | None:
        if not isinstance(reply, codec.Err):
            return None
        if reply.code == _QUEUE_FULL:
            return self._busy(f"{reply.code}: {reply.text}")
        if reply.code == "FAULT":
            return self._faulted(reply.code, reply.text)
        return ProtocolError(self.name, f"printer refused {cmd}: {reply.code} {reply.text}")

    async def select_job(self, job: PrintJob) -> None:
        cfg = self.config
        values = {cfg.gtin_field: job.gtin, cfg.lot_field: job.lot, cfg.expiry_field: job.expiry}
        data = self._encode(lambda: codec.encode_sla(self.config.job_name, values))
        await self._command(data, "SLA", _is(codec.Ack))
        log.info("printer job selected", device=self.name, template=self.config.job_name)

    async def update_fields(self, values: dict[str, str]) -> None:
        """JDA: change named fields of the selected job."""
        data = self._encode(lambda: codec.encode_jda(values))
        await self._command(data, "JDA", _is(codec.Ack))

    async def send(self, record: PrintRecord) -> None:
        data = self._encode(lambda: codec.encode_jdi(record.seq, record.serial))
        await self._command(data, "JDI", _is(codec.Ack))

    async def queue_size(self) -> codec.QueueSize:
        reply: codec.QueueSize = await self._command(
            codec.encode_simple("QSZ"), "QSZ", _is(codec.QueueSize)
        )
        return reply

    async def faults(self) -> list[tuple[str, str]]:
        """GFT: the printer's current faults as (code, text)."""
        reply = await self._command(codec.encode_simple("GFT"), "GFT", _is(codec.Faults))
        return list(reply.items)

    async def warnings(self) -> list[tuple[str, str]]:
        reply = await self._command(codec.encode_simple("GWN"), "GWN", _is(codec.Faults))
        return list(reply.items)

    async def clear_faults(self) -> None:
        """CAF: clear all faults (those whose cause is gone)."""
        await self._command(codec.encode_simple("CAF"), "CAF", _is(codec.Ack))

    async def set_state(self, state: int) -> None:
        """SST: e.g. ``codec.RUNNING`` or ``codec.OFFLINE``."""
        await self._command(codec.encode_sst(state), "SST", _is(codec.Ack))

    async def status(self) -> PrinterStatus:
        st: codec.State = await self._command(codec.encode_simple("GST"), "GST", _is(codec.State))
        queue = await self.queue_size()
        fault: str | None = None
        if st.error == codec.FAULTED:
            current = await self.faults()
            fault = current[0][0] if current else "FAULT"
        self.fault_code = fault  # also learns a fault whose ERS we never saw
        if fault is not None:
            state = "fault"
        elif st.state != codec.RUNNING or not st.job:
            state = "idle"
        else:
            state = "printing" if queue.queued else "ready"
        return PrinterStatus(state, queue.queued, st.total_count, fault)

    async def clear(self) -> ClearResult:
        """CQI|ALL|: the printer names each record it discards (``CQD``) before the reply,
        which counts them. A printer that only counts, or a line lost to noise, leaves the
        records unnamed: the reconcile then marks none of them unused on a guess."""
        named: list[PrintRecord] = []
        self._discards = named
        try:
            reply = await self._command(codec.encode_cqi_all(), "CQI", _is(codec.QueueCleared))
        finally:
            self._discards = None
        if len(named) == reply.discarded:
            return ClearResult(tuple(named))
        log.warning(
            "printer did not name what it cleared",
            device=self.name,
            discarded=reply.discarded,
            named=len(named),
        )
        return ClearResult(unnamed=reply.discarded)
