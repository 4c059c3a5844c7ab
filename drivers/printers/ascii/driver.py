"""Driver for printers speaking the "ascii" line protocol (see README.md next to this file).

One TCP connection, one reader task. Commands are pipelined: each ``send()`` writes its line under
a lock and appends a future to a FIFO; the reader resolves the futures in reply order and routes
``!`` notifications to a queue that ``confirmations()`` drains.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Literal, Self

import structlog
from pydantic import BaseModel, ConfigDict, Field

from edge_agent.contracts import (
    ClearResult,
    PrintConfirmation,
    PrinterStatus,
    PrintJob,
    PrintRecord,
)
from edge_agent.errors import DeviceConnectionError, DeviceFault, DeviceTimeout, ProtocolError

from . import codec

log = structlog.get_logger(__name__)

_READ_CHUNK = 65536
_NOT_CONNECTED = "not connected"
_CLOSED = "closed by the agent"

# NAK codes that describe the printer's condition rather than a bad request from the agent
_CONDITION_CODES = frozenset({"FAULT", "BUFFER_FULL"})

Reply = codec.Ack | codec.Nak


@dataclass
class _Pending:
    """A command written to the printer and waiting for its reply line."""

    cmd: str
    key: str | None  # what the ACK must echo (job name, record seq); None: the command is enough
    future: asyncio.Future[Reply] = field(repr=False)

    def matches(self, reply: Reply) -> bool:
        if reply.cmd != self.cmd:
            return False
        # A NAK carries no seq; the printer answers in order, so the oldest REC is the one
        if isinstance(reply, codec.Nak) or self.key is None:
            return True
        return reply.args[0] == self.key


class _LinkDown:
    """Queued after the last notification of a connection, so consumers learn of the loss."""


_LINK_DOWN = _LinkDown()
_Event = codec.PrintComplete | codec.FaultNotice | _LinkDown


class AsciiPrinter:
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

    def __init__(self, name: str, config: AsciiPrinter.Config) -> None:
        self.name = name
        self.config = config
        self.buffer_depth = config.buffer_depth
        self.malformed_count = 0  # lines from the printer that did not fit the protocol
        self.fault_code: str | None = None  # the printer's fault as last reported, if any
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: deque[_Pending] = deque()
        self._lock = asyncio.Lock()
        self._events: asyncio.Queue[_Event] = asyncio.Queue()
        self._down: str | None = _NOT_CONNECTED  # why the link is unusable; None while it is up
        self._discards: list[PrintRecord] | None = None  # !DIS notices while a CLR is pending

    # --- connection ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        reader, writer = await self._connect()
        self._writer = writer
        self._pending = deque()
        self._events = asyncio.Queue()
        self._down = None
        self._reader_task = asyncio.create_task(self._read_loop(reader), name=f"{self.name}-rx")
        log.info("printer connected", device=self.name, port=self.config.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        task, writer = self._reader_task, self._writer
        self._reader_task, self._writer = None, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # unlike awaiting it, never swallows our own cancellation
        self._link_down(_CLOSED)
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        cfg = self.config
        where = f"{cfg.host}:{cfg.port}"
        try:
            async with asyncio.timeout(cfg.connect_timeout_s):
                return await asyncio.open_connection(cfg.host, cfg.port)
        except TimeoutError as exc:  # before OSError: TimeoutError is one
            msg = f"no connection to {where} within {cfg.connect_timeout_s} s"
            raise DeviceTimeout(self.name, msg) from exc
        except OSError as exc:
            raise DeviceConnectionError(self.name, f"cannot connect to {where}: {exc}") from exc

    # --- reader ----------------------------------------------------------------------------

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        decoder = codec.LineDecoder()
        why = "connection closed by the printer"
        try:
            while data := await reader.read(_READ_CHUNK):
                for message in decoder.feed(data):
                    self._dispatch(message)
        except OSError as exc:
            why = f"connection lost: {exc!r}"
        except Exception as exc:  # a driver bug must not leave callers waiting forever
            log.exception("printer reader failed", device=self.name)
            why = f"driver reader failed: {exc!r}"
        self._link_down(why)

    def _dispatch(self, message: codec.Message) -> None:
        match message:
            case codec.Ack() | codec.Nak():
                self._on_reply(message)
            case codec.PrintComplete():
                self._events.put_nowait(message)
            case codec.Discarded(seq=seq, serial=serial) if self._discards is not None:
                self._discards.append(PrintRecord(seq, serial))
            case codec.Discarded():
                self._count_malformed("discard notice without a CLR", seq=message.seq)
            case codec.FaultNotice(code=code, text=text):
                self.fault_code = code
                log.warning("printer fault", device=self.name, code=code, text=text)
                self._events.put_nowait(message)
            case codec.FaultCleared(code=code):
                self.fault_code = None
                log.info("printer fault cleared", device=self.name, code=code)
            case codec.Malformed(raw=raw, why=why):
                self._count_malformed(why, raw=raw[:120])  # enough to recognise, not to flood

    def _on_reply(self, reply: Reply) -> None:
        index = next((i for i, p in enumerate(self._pending) if p.matches(reply)), None)
        if index is None:
            self._count_malformed("reply to no pending command", reply=repr(reply))
            return
        # Entries ahead of the match are either abandoned (timed out, their reply came late or
        # not at all) or were skipped by the printer, which is a protocol violation
        for _ in range(index):
            skipped = self._pending.popleft()
            if not skipped.future.done():
                msg = f"printer skipped the reply to {skipped.cmd} and answered {reply}"
                skipped.future.set_exception(ProtocolError(self.name, msg))
        entry = self._pending.popleft()
        if not entry.future.done():
            entry.future.set_result(reply)

    def _count_malformed(self, why: str, **detail: object) -> None:
        self.malformed_count += 1
        log.warning("malformed input from printer", device=self.name, why=why, **detail)

    def _link_down(self, why: str) -> None:
        if self._down is not None:
            return
        self._down = why
        while self._pending:
            entry = self._pending.popleft()
            if not entry.future.done():
                entry.future.set_exception(DeviceConnectionError(self.name, why))
        self._events.put_nowait(_LINK_DOWN)
        if why == _CLOSED:
            log.info("printer disconnected", device=self.name)
        else:
            log.warning("printer link down", device=self.name, why=why)

    # --- commands --------------------------------------------------------------------------

    async def _request(self, line: bytes, cmd: str, key: str | None = None) -> codec.Ack:
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        entry = _Pending(cmd, key, future)
        timeout = self.config.reply_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await self._write(entry, line)
                reply = await future
        except TimeoutError as exc:
            raise DeviceTimeout(self.name, f"no reply to {cmd} within {timeout} s") from exc
        finally:
            # Leaves the entry in the FIFO as abandoned, so a late reply still lines up
            future.cancel()
        if isinstance(reply, codec.Nak):
            raise self._refusal(reply)
        return reply

    async def _write(self, entry: _Pending, line: bytes) -> None:
        # The lock keeps the order of lines on the wire equal to the order of the FIFO
        async with self._lock:
            if self._down is not None or self._writer is None:
                raise DeviceConnectionError(self.name, self._down or _NOT_CONNECTED)
            self._pending.append(entry)
            try:
                self._writer.write(line)
                await self._writer.drain()
            except OSError as exc:
                raise DeviceConnectionError(self.name, f"write failed: {exc!r}") from exc

    def _refusal(self, nak: codec.Nak) -> DeviceFault | ProtocolError:
        if nak.code == "FAULT":
            return DeviceFault(self.name, self.fault_code or nak.code, nak.text)
        if nak.code in _CONDITION_CODES:
            return DeviceFault(self.name, nak.code, nak.text)
        return ProtocolError(self.name, f"printer refused {nak.cmd}: {nak.code} {nak.text}")

    @contextlib.contextmanager
    def _encoding(self) -> Iterator[None]:
        try:
            yield
        except codec.EncodeError as exc:
            raise ProtocolError(self.name, f"cannot put on the wire: {exc}") from exc

    async def select_job(self, job: PrintJob) -> None:
        template = self.config.job_name
        with self._encoding():
            line = codec.encode_job(template, job.gtin, job.lot, job.expiry)
        await self._request(line, "JOB", template)
        log.info("printer job selected", device=self.name, template=template, job=job.name)

    async def send(self, record: PrintRecord) -> None:
        with self._encoding():
            line = codec.encode_rec(record.seq, record.serial)
        await self._request(line, "REC", str(record.seq))

    async def status(self) -> PrinterStatus:
        ack = await self._request(codec.encode_sts(), "STS")
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
            ack = await self._request(codec.encode_clr(), "CLR")
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

    # --- notifications ---------------------------------------------------------------------

    async def confirmations(self) -> AsyncIterator[PrintConfirmation]:
        while True:
            if self._down is not None and self._events.empty():
                raise DeviceConnectionError(self.name, self._down)
            match await self._events.get():
                case codec.PrintComplete(seq=seq, serial=serial):
                    yield PrintConfirmation(seq, serial)
                case codec.FaultNotice(code=code, text=text):
                    raise DeviceFault(self.name, code, text)
                case _LinkDown():
                    raise DeviceConnectionError(self.name, self._down or _NOT_CONNECTED)
