"""Driver for Zebra label printers speaking ZPL II (see README.md next to this file).

ZPL has no per-label acknowledgement. A poller asks ``~HS`` and the printer's label counter on
the same stream; the counter confirms records, oldest first, and ``~HS`` checks that every format
written before the question is accounted for (printed or queued), so a format lost on the way is
an alarm, never a confirmation shifted onto the wrong serial.

ZPL cannot list or name the formats a printer queues: ``~HS`` counts them, the label counter
counts what printed. So ``clear()`` names only records this driver object wrote and can place
from those counts (on this connection, or carried over a reconnect); formats queued before it
knew the printer (after an agent restart) are cancelled unnamed, and the reconcile then settles
none of the unconfirmed serials unused (they are rejected: safe, never a guess).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.printers.stream import Pending, StreamPrinter
from drivers.transport import SerialTransport, TcpTransport, TransportConfig
from edge_agent.contracts import (
    ClearResult,
    LogisticLabel,
    PrinterStatus,
    PrintJob,
    PrintRecord,
)
from edge_agent.errors import DeviceConnectionError, DeviceFault, DeviceTimeout, ProtocolError

from . import codec

log = structlog.get_logger(__name__)


@dataclass
class _Question:
    """What the driver had written when it asked one ~HS + counter question."""

    written: int  # formats written before it
    baseline: bool = False


def _any_answer(reply: Any) -> bool:
    return True  # answers come in question order: the oldest question takes the next answer


@dataclass(frozen=True)
class _Carried:
    """Records still unconfirmed when a connection ended, with the counts that place them."""

    records: tuple[PrintRecord, ...]
    odometer_base: int
    foreign: int
    written: int
    printed: int


def account(
    base: int, foreign: int, odometer: int, pending: int, written: int
) -> tuple[int, int, int]:
    """Pure: where the formats written since the counter stood at ``base`` are, ``foreign``
    labels having been queued ahead of them then: (printed, still queued, lost on the way).
    The printer prints in order, so foreign labels print first."""
    total = odometer - base
    foreign_printed = min(foreign, max(0, total))
    printed = total - foreign_printed
    queued = pending - (foreign - foreign_printed)
    return printed, queued, written - printed - queued


class ZplPrinter(StreamPrinter):
    """A Zebra (or ZPL-compatible) label printer; implements ``edge_agent.contracts.Printer``."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        type: Literal["zpl"] = Field(description='Driver selector; always "zpl".')
        link: TransportConfig = Field(
            default_factory=lambda: TcpTransport(port=9100),
            description="How to reach the printer: raw TCP (port 9100 on Zebras) or serial.",
        )
        connect_attempts: int = Field(
            3, ge=1, le=100, description="Connection attempts (exponential backoff) per connect."
        )
        status_timeout_s: float = Field(
            1.0,
            gt=0,
            le=60,
            allow_inf_nan=False,
            description="A ~HS without answer after this is missed.",
        )
        max_missed_status: int = Field(
            3, ge=1, le=100, description="Missed ~HS answers in a row that raise DeviceTimeout."
        )
        poll_interval_s: float = Field(
            0.01,
            ge=0.001,
            le=5,
            allow_inf_nan=False,
            description="~HS polling period while labels are unconfirmed (confirmation latency).",
        )
        idle_poll_interval_s: float = Field(
            0.25, ge=0.01, le=30, allow_inf_nan=False, description="~HS period with nothing queued."
        )
        buffer_depth: int = Field(
            4, ge=1, le=64, description="How many sent-but-unprinted labels the agent keeps queued."
        )
        template: str = Field(
            codec.DEFAULT_TEMPLATE,
            min_length=8,
            max_length=codec.MAX_FORMAT,
            description="ZPL label format with {gtin} {lot} {expiry} {serial} placeholders.",
        )

        @field_validator("template")
        @classmethod
        def _template(cls, value: str) -> str:
            try:
                return codec.check_template(value)
            except codec.TemplateError as exc:
                raise ValueError(f"label template {exc}") from exc

    no_reply: ClassVar[str] = "no answer to"

    def __init__(self, name: str, config: ZplPrinter.Config) -> None:
        link: TcpTransport | SerialTransport = config.link
        super().__init__(
            name,
            link,
            reply_timeout_s=config.status_timeout_s,
            buffer_depth=config.buffer_depth,
            connect_attempts=config.connect_attempts,
        )
        self.config = config
        self.last_status: codec.HostStatus | None = None
        self._job: PrintJob | None = None
        self._unconfirmed: deque[PrintRecord] = deque()
        self._written = 0  # formats written on this connection
        self._printed = 0  # of those, printed according to the printer's counts
        self._odometer_base = 0  # printer's label counter when our count was zero
        self._foreign = 0  # labels queued before this connection, ahead of ours
        self._self_paused = False
        self._clearing = False  # between ~JA and the new count base: counts are in flux
        self.last_odometer = 0
        self._sent = asyncio.Event()
        self._based = False  # this connection's baseline answer came
        self._carried: _Carried | None = None  # from the last connection, placed at the baseline

    # --- protocol hooks --------------------------------------------------------------------

    def _decoder(self) -> codec.AnswerDecoder:
        return codec.AnswerDecoder()

    def _dispatch(self, message: codec.Answer | codec.Malformed) -> None:
        match message:
            case codec.Answer():
                self._on_reply(message)
            case codec.Malformed(raw=raw, why=why):
                self.count_malformed(why, detail=repr(raw[:80]))

    async def _on_connect(self) -> None:
        self._carried, self._based = self._carry(), False
        self._unconfirmed = deque()
        self._written = self._printed = 0
        # Before anything is sent: the counter to count from, and what is queued already
        status = await self._ask_until_answered(baseline=True)
        log.info("printer status", device=self.name, queued=status.pending)
        self._spawn(self._poll_loop(), "poll")

    def _answered(self, entry: Pending, reply: Any) -> None:
        """Every answer counts, a late one to an abandoned question too (in question order)."""
        question, answer = entry.context, reply
        assert isinstance(question, _Question) and isinstance(answer, codec.Answer)
        hs, odometer = answer.status, answer.odometer
        self.last_status, self.last_odometer = hs, odometer
        if question.baseline:
            self._baseline(hs, odometer)
        else:
            self._count(question, hs, odometer)

    # --- counting --------------------------------------------------------------------------

    def _carry(self) -> _Carried | None:
        """What the last connection leaves to place on the next one."""
        if not self._based:  # it never counted: what it carried is still to place
            return self._carried
        if not self._unconfirmed:
            return None
        return _Carried(
            tuple(self._unconfirmed),
            self._odometer_base,
            self._foreign,
            self._written,
            self._printed,
        )

    def _baseline(self, hs: codec.HostStatus, odometer: int) -> None:
        """Count from here. Records of the last connection that the printer still queues stay
        ours (so ``clear()`` can name them), if the counts place them beyond doubt. The first
        baseline answer counts: a late one to a question asked again is the same state, since
        nothing is written before the baseline, and must not count the placed records again."""
        if self._based:
            return
        carried, self._carried, self._based = self._carried, None, True
        self._odometer_base, self._foreign = odometer, hs.pending
        if carried is None:
            return
        queued = self._place(carried, hs, odometer)
        if queued is None:
            log.warning(
                "printer queue from before the reconnect cannot be identified",
                device=self.name,
                records=len(carried.records),
                queued=hs.pending,
            )
            return
        self._unconfirmed = deque(queued)
        self._written, self._foreign = len(queued), hs.pending - len(queued)

    def _place(
        self, carried: _Carried, hs: codec.HostStatus, odometer: int
    ) -> list[PrintRecord] | None:
        """Which carried records the printer still queues, or None when the counts cannot
        tell. Over TCP the printer received a prefix of what was written (a stream delivers
        in order; only its end can be lost with the connection), and it prints in order: the
        carried records are printed ones, then queued ones, then lost ones. A serial line can
        drop bytes anywhere, and a half-received format (``~HS`` partial format) is neither."""
        if not isinstance(self.config.link, TcpTransport) or hs.partial_format:
            return None
        c = carried
        printed, queued, lost = account(c.odometer_base, c.foreign, odometer, hs.pending, c.written)
        printed_meanwhile = printed - c.printed
        if min(printed_meanwhile, queued, lost) < 0 or c.written - c.printed != len(c.records):
            return None
        if printed_meanwhile or lost:
            log.warning(
                "printer worked on records while the link was down",
                device=self.name,
                printed=printed_meanwhile,
                lost=lost,
            )
        return list(c.records[printed_meanwhile : printed_meanwhile + queued])

    def _count(self, question: _Question, hs: codec.HostStatus, odometer: int) -> None:
        """Confirm what the printer's own counter says it printed, once ~HS agrees that every
        format written before the question is accounted for; alarm if some never reached it
        (a lost format would otherwise shift every later confirmation onto the wrong serial)."""
        printed, _, lost = account(
            self._odometer_base, self._foreign, odometer, hs.pending, question.written
        )
        if lost > 0 and not self._clearing:
            why = f"{lost} label format(s) sent never reached the printer"
            log.error("printer lost formats", device=self.name, lost=lost)
            self._raise_later(ProtocolError(self.name, why))
            return
        if lost < 0 or printed < self._printed:
            # More accounted for than written, or a counter going back: an answer matched to
            # the wrong question (after a lost one) or not the printer's. Confirm nothing on it.
            self.count_malformed(
                "answer inconsistent with what was sent", detail=repr((odometer, hs.pending))
            )
            return
        while self._printed < printed and self._unconfirmed:
            record = self._unconfirmed.popleft()
            self._printed += 1
            self._print_complete(record.seq, record.serial)

    async def _ask(self, *, baseline: bool = False) -> codec.HostStatus:
        """One ~HS + counter round trip; DeviceTimeout if the answer does not come in time.
        The question notes what was written when it goes on the wire."""
        answer: codec.Answer = await self.request(
            codec.HOST_STATUS + codec.ODOMETER,
            "~HS",
            _any_answer,
            context=lambda: _Question(self._written, baseline),
        )
        return answer.status

    async def _ask_until_answered(self, *, baseline: bool = False) -> codec.HostStatus:
        """~HS, a missed answer asked again: a printer or host busy for one timeout is not a
        lost link. DeviceTimeout after ``max_missed_status`` misses in a row."""
        missed = 0
        while True:
            try:
                return await self._ask(baseline=baseline)
            except DeviceTimeout:
                missed += 1
                log.warning("printer status missed", device=self.name, in_a_row=missed)
                if missed >= self.config.max_missed_status:
                    raise
                await self._resync()

    async def _poll_loop(self) -> None:
        cfg = self.config
        try:
            while self._down is None:
                try:
                    status = await self._ask_until_answered()
                except DeviceTimeout as exc:
                    self._raise_later(exc)
                    return
                self._check_faults(status)
                await asyncio.sleep(cfg.poll_interval_s)
                if not (self._unconfirmed or status.pending):
                    # Idle: ask rarely, but at once when a label goes out
                    self._sent.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(cfg.idle_poll_interval_s):
                            await self._sent.wait()
        except DeviceConnectionError:
            return  # the reader reports the loss

    async def _resync(self) -> None:
        """After a missed answer: give late answers time to land on their own questions, then
        forget the questions still open, so the next answer is matched to the next question.
        (An answer later than that would be matched to a newer question; README: limits.)"""
        await asyncio.sleep(self.config.status_timeout_s)
        self._pending = deque(p for p in self._pending if not p.future.done())

    def _check_faults(self, status: codec.HostStatus) -> None:
        flags = status.flags(codec.STOPPING_FLAGS)
        if self._self_paused and "pause" in flags:
            flags.remove("pause")
        code = ",".join(flags).upper() or None
        if code != self.fault_code:
            self.fault_code = code
            if code is not None:
                self._fault(code, "reported by ~HS")
            else:
                log.info("printer fault cleared", device=self.name)
        for warning in status.flags(codec.WARNING_FLAGS):
            log.warning("printer warning", device=self.name, flag=warning.upper())

    # --- commands --------------------------------------------------------------------------

    async def select_job(self, job: PrintJob) -> None:
        b = job
        try:  # fail at job selection, not on the first unit, when a value cannot be printed
            codec.render_label(
                self.config.template, gtin=b.gtin, lot=b.lot, expiry=b.expiry, serial="0"
            )
        except codec.TemplateError as exc:
            raise ProtocolError(self.name, f"cannot print batch data: {exc}") from exc
        self._job = job
        log.info("printer job selected", device=self.name, job=job.name)

    async def send(self, record: PrintRecord) -> None:
        self._check_link()  # not connected is the first thing wrong, whatever else is
        job = self._job
        if job is None:
            raise ProtocolError(self.name, "send() before select_job()")
        if self.fault_code is not None:
            raise DeviceFault(self.name, self.fault_code, "printer reports a fault; not sent")
        try:
            data = codec.render_label(
                self.config.template,
                gtin=job.gtin,
                lot=job.lot,
                expiry=job.expiry,
                serial=record.serial,
            )
        except codec.TemplateError as exc:
            raise ProtocolError(self.name, f"cannot put on the wire: {exc}") from exc
        await self._send_format(record, data)

    async def _send_format(self, record: PrintRecord, data: bytes) -> None:
        """Write one label format whose print confirms ``record``."""
        async with self._wire():
            # Counted before the write: an answer to a later ~HS must see this format as sent
            self._unconfirmed.append(record)
            self._written += 1
            await self._write(data)
        self._sent.set()

    async def status(self) -> PrinterStatus:
        hs = await self._ask()
        fault = ",".join(hs.flags(codec.STOPPING_FLAGS)).upper() or None
        state = "fault" if fault else ("printing" if hs.pending else "ready")
        return PrinterStatus(state, hs.pending, self._printed, fault)

    async def clear(self) -> ClearResult:
        """Pause, count what is queued, cancel it all (~JA), resume. Names the records of ours
        it cancelled when the counts account for every one of them; formats queued before
        this driver knew the printer are cancelled unnamed (ZPL cannot name them)."""
        self._self_paused = self._clearing = True
        try:
            async with self._wire():
                await self._write(codec.PAUSE)
            queued = await self._settled_pending()
            _, ours, lost = account(
                self._odometer_base, self._foreign, self.last_odometer, queued, self._written
            )
            async with self._wire():
                await self._write(codec.CANCEL_ALL + codec.RESUME)
                # Paused and settled, our unconfirmed records are our queued ones (behind any
                # formats from before this connection), unless one got lost on the way: then
                # which ones are queued is not known, and none is named
                whole = lost == 0 and ours == len(self._unconfirmed) <= queued
                named = tuple(self._unconfirmed) if whole else ()
                # Cancelled or lost, none of them will print now
                gone = len(self._unconfirmed)
                self._written -= gone
                # Open questions were asked before ~JA; their answers must not count the
                # cancelled formats as printed, whichever answer ends up matched to them
                for entry in self._pending:
                    entry.context.written -= gone
                self._unconfirmed.clear()
            # Also lets every answer given while paused arrive before the pause stops being ours
            left = (await self._ask()).pending
            if left:
                raise ProtocolError(self.name, f"{left} labels still queued after ~JA")
            # Count on from here: the queue is empty, every label printed since is ours
            self._odometer_base, self._foreign = self.last_odometer - self._printed, 0
        finally:
            self._self_paused = self._clearing = False
        if not whole:
            log.warning("printer queue cancelled unidentified", device=self.name, lost=lost)
        return ClearResult(named, queued - len(named))

    async def _settled_pending(self) -> int:
        """Queued labels once the paused printer has finished the label under its head: two
        answers in a row that agree, so a label completing right now is counted as printed."""
        previous = (await self._ask()).pending
        for _ in range(20):
            await asyncio.sleep(0.05)
            current = (await self._ask()).pending
            if current == previous:
                return current
            previous = current
        raise DeviceTimeout(self.name, "queued label count did not settle after ~PP")


class ZplLabelPrinter(ZplPrinter):
    """A Zebra printing GS1 logistic labels (cases, pallets); implements
    ``edge_agent.contracts.LabelPrinter``. Same link, status polling and counting as the unit
    printer: a label's print is confirmed by the printer's own label counter, as (seq, SSCC)."""

    class Config(ZplPrinter.Config):
        template: str = Field(
            codec.DEFAULT_LOGISTIC_TEMPLATE,
            min_length=8,
            max_length=codec.MAX_FORMAT,
            description="ZPL label format with {sscc} {gtin} {count} {lot} {expiry} placeholders.",
        )

        @field_validator("template")
        @classmethod
        def _template(cls, value: str) -> str:
            try:
                return codec.check_label_template(value)
            except codec.TemplateError as exc:
                raise ValueError(f"label template {exc}") from exc

        case_template: str = Field(
            codec.DEFAULT_CASE_TEMPLATE,
            min_length=8,
            max_length=codec.MAX_FORMAT,
            description="ZPL format of a case identified by GTIN + serial (plan identifier "
            "gtin_serial): {gtin} {serial} {lot} {expiry} {count} placeholders.",
        )

        @field_validator("case_template")
        @classmethod
        def _case_template(cls, value: str) -> str:
            try:
                return codec.check_case_template(value)
            except codec.TemplateError as exc:
                raise ValueError(f"case label template {exc}") from exc

    config: ZplLabelPrinter.Config  # the label printer's own, with its templates

    def __init__(self, name: str, config: ZplLabelPrinter.Config) -> None:
        super().__init__(name, config)

    async def print_label(self, label: LogisticLabel) -> None:
        self._check_link()
        if self.fault_code is not None:
            raise DeviceFault(self.name, self.fault_code, "printer reports a fault; not sent")
        try:
            data = self._render(label)
        except codec.TemplateError as exc:
            raise ProtocolError(self.name, f"cannot print label {label.code}: {exc}") from exc
        await self._send_format(PrintRecord(label.seq, label.code), data)

    def _render(self, label: LogisticLabel) -> bytes:
        if label.serial is not None:
            return codec.render_case_label(
                self.config.case_template,
                gtin=label.gtin,
                serial=label.serial,
                lot=label.lot,
                expiry=label.expiry,
                count=label.count,
            )
        return codec.render_logistic_label(
            self.config.template,
            sscc=label.sscc,
            gtin=label.gtin,
            count=label.count,
            lot=label.lot,
            expiry=label.expiry,
        )
