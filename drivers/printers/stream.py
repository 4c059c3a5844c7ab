"""The one printer base: a driver on one byte stream (TCP or serial) whose replies come in order.

Like python-can's ``BusABC``, the base owns the lifecycle and a protocol adds private hooks. The
base owns the link (``drivers.transport``, connect attempts through ``edge_agent.supervisor``),
the reader task, the FIFO of commands waiting for their reply, the queue of print-complete and
fault events that ``confirmations()`` drains, the count of malformed input, and connection-scoped
tasks. A protocol writes a codec (bytes <-> messages, no I/O) and these hooks:

- ``_decoder()`` (required): a fresh decoder for a new connection, ``feed(bytes) -> messages``;
- ``_dispatch(message)`` (required): route one decoded message: a reply to ``_on_reply``, a
  print-complete to ``_print_complete``, a fault to ``_fault``, garbage to ``count_malformed``;
- ``_refusal(cmd, reply)``: the error a refusing reply means (``_busy`` for a full buffer,
  ``_faulted`` for a printer fault), or None for a reply that is a success;
- ``_on_connect()``: runs once the link is up (enable notifications, read a baseline, start a
  poll task with ``_spawn``);
- ``_answered(entry, reply)``: sees every reply with the command it answers, a late one to an
  abandoned command included, before the waiting caller does (a polled protocol counts there).

Replies come in command order on every protocol built on it, so a reply resolves the oldest
command it fits; a command that timed out stays in the FIFO as abandoned so its late reply still
lines up. Every error leaves as an ``edge_agent.errors`` exception naming the printer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Self

import structlog

from drivers.transport import SerialTransport, TcpTransport, open_stream
from edge_agent.contracts import PrintConfirmation
from edge_agent.errors import (
    DeviceConnectionError,
    DeviceError,
    DeviceFault,
    DeviceTimeout,
    PrinterBusy,
    ProtocolError,
)
from edge_agent.supervisor import Supervisor

log = structlog.get_logger(__name__)

_READ_CHUNK = 65536
NOT_CONNECTED = "not connected"
CLOSED = "closed by the agent"
MAX_MALFORMED_IN_A_ROW = 32
CONNECT_FIRST_S = 0.2  # longest first wait between connect attempts; doubles up to the cap
CONNECT_MAX_S = 5.0


class Decoder(Protocol):
    def feed(self, data: bytes) -> list[Any]: ...


@dataclass
class Pending:
    """A command written to the printer and waiting for its reply."""

    cmd: str
    fits: Callable[[Any], bool]  # does this reply answer this command?
    future: asyncio.Future[Any] = field(repr=False)
    sent_at: float = 0.0
    context: Any = None  # what the protocol noted when it wrote the command (``_answered``)


class _LinkDown:
    """Queued after the last event of a connection, so consumers learn of the loss."""


LINK_DOWN = _LinkDown()
_Event = PrintConfirmation | DeviceError | _LinkDown


class StreamPrinter:
    """Base of every printer driver; see the module docstring. Implements the lifecycle and
    ``confirmations()`` of ``edge_agent.contracts.Printer``; a protocol adds the rest."""

    encode_error: ClassVar[type[Exception]] = ValueError  # the codec's "cannot put on the wire"
    no_reply: ClassVar[str] = "no reply to"  # how a command timeout is worded

    def __init__(
        self,
        name: str,
        transport: TcpTransport | SerialTransport,
        *,
        reply_timeout_s: float,
        buffer_depth: int,
        connect_attempts: int = 1,
    ) -> None:
        self.name = name
        self.transport = transport
        self.reply_timeout_s = reply_timeout_s
        self.buffer_depth = buffer_depth  # sent-but-unprinted records the agent keeps queued
        self.connect_attempts = connect_attempts
        self.malformed_count = 0  # input from the printer that did not fit the protocol
        self._malformed_run = 0  # malformed messages since the last good one
        self.fault_code: str | None = None  # the printer's fault as last reported, if any
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []  # connection-scoped, see ``_spawn``
        self._pending: deque[Pending] = deque()
        self._lock = asyncio.Lock()
        self._events: asyncio.Queue[_Event] = asyncio.Queue()
        self._down: str | None = NOT_CONNECTED
        self._link = Supervisor(
            name,
            first_s=CONNECT_FIRST_S,
            max_s=CONNECT_MAX_S,
            lost_event="printer link down",
            still_event="printer link still down",
            back_event="printer link back",
            logger=log,
        )

    # --- protocol hooks --------------------------------------------------------------------

    def _decoder(self) -> Decoder:
        raise NotImplementedError

    def _dispatch(self, message: Any) -> None:
        raise NotImplementedError

    def _refusal(self, cmd: str, reply: Any) -> DeviceError | None:
        """The error a refusing ``reply`` to ``cmd`` means; None: the reply is a success."""
        return None

    async def _on_connect(self) -> None:
        """Runs once the link is up (e.g. enable notifications)."""

    def _answered(self, entry: Pending, reply: Any) -> None:
        """Sees every reply with its command, before the caller waiting for it."""

    # --- connection ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        reader, writer = await self._open()
        self._writer = writer
        self._pending = deque()
        self._events = asyncio.Queue()
        self._down = None
        self._malformed_run = 0
        self._reader_task = asyncio.create_task(self._read_loop(reader), name=f"{self.name}-rx")
        log.info("printer connected", device=self.name, link=self.transport.describe())
        try:
            await self._on_connect()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        tasks = [self._reader_task, *self._tasks] if self._reader_task else list(self._tasks)
        writer = self._writer
        self._reader_task, self._tasks, self._writer = None, [], None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)  # unlike awaiting them, never swallows our cancellation
        self._link_down(CLOSED)
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open the link, up to ``connect_attempts`` times (a printer rebooting, a cable
        re-plugged), backing off in between as every device link does."""
        return await self._link.connect(
            lambda: open_stream(self.name, self.transport),
            attempts=self.connect_attempts,
            retry_on=(DeviceError,),
        )

    def _spawn(self, work: Coroutine[Any, Any, None], what: str) -> None:
        """A task that lives as long as this connection (``__aexit__`` ends it)."""
        self._tasks.append(asyncio.create_task(work, name=f"{self.name}-{what}"))

    # --- reader ----------------------------------------------------------------------------

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        decoder = self._decoder()
        why = "connection closed by the printer"
        try:
            while data := await reader.read(_READ_CHUNK):
                for message in decoder.feed(data):
                    before = self.malformed_count
                    self._dispatch(message)
                    if self.malformed_count == before:
                        self._malformed_run = 0
        except OSError as exc:
            why = f"connection lost: {exc!r}"
        except Exception as exc:  # a driver bug must not leave callers waiting forever
            log.exception("printer reader failed", device=self.name)
            why = f"driver reader failed: {exc!r}"
        self._link_down(why)

    def _on_reply(self, reply: Any) -> None:
        # An abandoned command still unanswered long after its timeout was lost on the way (a
        # serial line drops bytes): its reply is not coming, so it must not take this one
        stale = time.monotonic() - 5 * self.reply_timeout_s
        while self._pending and self._pending[0].future.done() and self._pending[0].sent_at < stale:
            self._pending.popleft()
        index = next((i for i, p in enumerate(self._pending) if p.fits(reply)), None)
        if index is None:
            self.count_malformed("reply to no pending command", reply=repr(reply)[:120])
            return
        # Entries ahead of the match were abandoned (timed out) or skipped by the printer
        for _ in range(index):
            skipped = self._pending.popleft()
            if not skipped.future.done():
                msg = f"printer skipped the reply to {skipped.cmd} and answered {reply!r}"
                skipped.future.set_exception(ProtocolError(self.name, msg))
        entry = self._pending.popleft()
        self._answered(entry, reply)
        if not entry.future.done():
            entry.future.set_result(reply)

    def count_malformed(self, why: str, **detail: object) -> None:
        self.malformed_count += 1
        self._malformed_run += 1
        log.warning("malformed input from printer", device=self.name, why=why, **detail)
        if self._malformed_run == MAX_MALFORMED_IN_A_ROW:
            # Noise on the line, wrong baud rate or wrong protocol: nothing from this printer
            # can be trusted, so the consumer of confirmations hears of it as an alarm
            why = f"{self._malformed_run} malformed messages in a row"
            self._raise_later(ProtocolError(self.name, why))

    def _print_complete(self, seq: int, serial: str) -> None:
        self._events.put_nowait(PrintConfirmation(seq, serial))

    def _fault(self, code: str, text: str) -> None:
        self.fault_code = code
        log.warning("printer fault", device=self.name, code=code, text=text)
        self._raise_later(DeviceFault(self.name, code, text))

    def _raise_later(self, error: DeviceError) -> None:
        """``confirmations()`` raises ``error`` after the confirmations queued before it."""
        self._events.put_nowait(error)

    def _link_down(self, why: str) -> None:
        if self._down is not None:
            return
        self._down = why
        while self._pending:
            entry = self._pending.popleft()
            if not entry.future.done():
                entry.future.set_exception(DeviceConnectionError(self.name, why))
        self._events.put_nowait(LINK_DOWN)
        if why == CLOSED:
            log.info("printer disconnected", device=self.name)
        else:
            self._link.lost(why)  # logged once per outage; the next connect logs it back

    # --- commands --------------------------------------------------------------------------

    def _encode(self, build: Callable[[], bytes]) -> bytes:
        """``build()``'s bytes; a value the codec cannot put on the wire is a ProtocolError."""
        try:
            return build()
        except self.encode_error as exc:
            raise ProtocolError(self.name, f"cannot put on the wire: {exc}") from exc

    def _busy(self, text: str) -> PrinterBusy:
        """The printer refused a record for a full buffer: not taken, it may be sent again."""
        return PrinterBusy(self.name, text)

    def _faulted(self, code: str, text: str) -> DeviceFault:
        """The printer refused because it is in a fault: named by its own code if known."""
        return DeviceFault(self.name, self.fault_code or code, text)

    async def _command(
        self,
        data: bytes,
        cmd: str,
        fits: Callable[[Any], bool],
        *,
        context: Callable[[], Any] | None = None,
    ) -> Any:
        """``request`` and raise what a refusing reply means (``_refusal``)."""
        reply = await self.request(data, cmd, fits, context=context)
        error = self._refusal(cmd, reply)
        if error is not None:
            raise error
        return reply

    async def request(
        self,
        data: bytes,
        cmd: str,
        fits: Callable[[Any], bool],
        *,
        context: Callable[[], Any] | None = None,
    ) -> Any:
        """Write one command and wait for the reply that ``fits`` it. ``context()`` is called
        on the wire's turn, just before the write, and travels with the command."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        entry = Pending(cmd, fits, future)
        timeout = self.reply_timeout_s
        try:
            async with asyncio.timeout(timeout):
                async with self._wire():
                    entry.context = context() if context is not None else None
                    entry.sent_at = time.monotonic()
                    self._pending.append(entry)
                    await self._write(data)
                return await future
        except TimeoutError as exc:
            raise DeviceTimeout(self.name, f"{self.no_reply} {cmd} within {timeout} s") from exc
        finally:
            future.cancel()  # leaves the entry in the FIFO as abandoned

    def _check_link(self) -> None:
        """DeviceConnectionError unless the link is up (entered and not lost)."""
        if self._down is not None or self._writer is None:
            raise DeviceConnectionError(self.name, self._down or NOT_CONNECTED)

    @contextlib.asynccontextmanager
    async def _wire(self) -> AsyncIterator[None]:
        """The wire, alone: what is written inside reaches the printer in this order, and the
        order of the FIFO is the order on the wire."""
        async with self._lock:
            self._check_link()
            yield

    async def _write(self, data: bytes) -> None:
        """Write inside ``_wire()``."""
        assert self._writer is not None
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError as exc:
            raise DeviceConnectionError(self.name, f"write failed: {exc!r}") from exc

    # --- notifications ---------------------------------------------------------------------

    async def confirmations(self) -> AsyncGenerator[PrintConfirmation, None]:
        while True:
            if self._down is not None and self._events.empty():
                raise DeviceConnectionError(self.name, self._down)
            match await self._events.get():
                case PrintConfirmation() as confirmation:
                    yield confirmation
                case DeviceError() as error:
                    raise error
                case _LinkDown():
                    raise DeviceConnectionError(self.name, self._down or NOT_CONNECTED)
