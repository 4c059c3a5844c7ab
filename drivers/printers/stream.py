"""Shared machinery of printer drivers on one byte stream (TCP or serial) with ordered replies.

A subclass provides a decoder (bytes -> messages, never raising) and ``_dispatch``; this base
owns the link (``drivers.transport``), the reader task, the FIFO of commands waiting for their
reply, and the queue of print-complete / fault events that ``confirmations()`` drains. Replies
come in command order on every protocol built on it, so a reply resolves the oldest command it
fits; a command that timed out stays in the FIFO as abandoned so its late reply still lines up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, Self

import structlog

from drivers.transport import SerialTransport, TcpTransport, open_stream
from edge_agent.contracts import PrintConfirmation
from edge_agent.errors import (
    DeviceConnectionError,
    DeviceError,
    DeviceFault,
    DeviceTimeout,
    ProtocolError,
)

log = structlog.get_logger(__name__)

_READ_CHUNK = 65536
NOT_CONNECTED = "not connected"
CLOSED = "closed by the agent"
MAX_MALFORMED_IN_A_ROW = 32


class Decoder(Protocol):
    def feed(self, data: bytes) -> list[Any]: ...


@dataclass
class Pending:
    """A command written to the printer and waiting for its reply."""

    cmd: str
    fits: Callable[[Any], bool]  # does this reply answer this command?
    future: asyncio.Future[Any] = field(repr=False)
    sent_at: float = 0.0


@dataclass(frozen=True)
class Fault:
    """A printer fault event for ``confirmations()``."""

    code: str
    text: str


@dataclass(frozen=True)
class Garbled:
    """So much malformed input in a row that the link is unusable."""

    why: str


class _LinkDown:
    """Queued after the last event of a connection, so consumers learn of the loss."""


LINK_DOWN = _LinkDown()


class StreamPrinter:
    """Base of the stream printer drivers; see the module docstring."""

    name: str
    transport: TcpTransport | SerialTransport
    reply_timeout_s: float
    connect_attempts: int = 1

    def __init__(self, name: str) -> None:
        self.name = name
        self.malformed_count = 0  # input from the printer that did not fit the protocol
        self._malformed_run = 0  # malformed messages since the last good one
        self.fault_code: str | None = None  # the printer's fault as last reported, if any
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: deque[Pending] = deque()
        self._lock = asyncio.Lock()
        self._events: asyncio.Queue[PrintConfirmation | Fault | Garbled | _LinkDown] = (
            asyncio.Queue()
        )
        self._down: str | None = NOT_CONNECTED

    # --- subclass hooks --------------------------------------------------------------------

    def _decoder(self) -> Decoder:
        raise NotImplementedError

    def _dispatch(self, message: Any) -> None:
        raise NotImplementedError

    async def _on_connect(self) -> None:
        """Runs once the link is up (e.g. enable notifications)."""

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
        task, writer = self._reader_task, self._writer
        self._reader_task, self._writer = None, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # unlike awaiting it, never swallows our own cancellation
        self._link_down(CLOSED)
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open the link, retrying with exponential backoff (a printer rebooting, a cable
        re-plugged) up to ``connect_attempts`` times."""
        delay = 0.2
        for attempt in range(1, self.connect_attempts + 1):
            try:
                return await open_stream(self.name, self.transport)
            except DeviceError as exc:
                if attempt == self.connect_attempts:
                    raise
                log.warning(
                    "printer connect failed", device=self.name, error=str(exc), retry_s=delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

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
        if not entry.future.done():
            entry.future.set_result(reply)

    def count_malformed(self, why: str, **detail: object) -> None:
        self.malformed_count += 1
        self._malformed_run += 1
        log.warning("malformed input from printer", device=self.name, why=why, **detail)
        if self._malformed_run == MAX_MALFORMED_IN_A_ROW:
            # Noise on the line, wrong baud rate or wrong protocol: nothing from this printer
            # can be trusted, so the consumer of confirmations hears of it as an alarm
            self._events.put_nowait(Garbled(f"{self._malformed_run} malformed messages in a row"))

    def _print_complete(self, seq: int, serial: str) -> None:
        self._events.put_nowait(PrintConfirmation(seq, serial))

    def _fault(self, code: str, text: str) -> None:
        self.fault_code = code
        log.warning("printer fault", device=self.name, code=code, text=text)
        self._events.put_nowait(Fault(code, text))

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
            log.warning("printer link down", device=self.name, why=why)

    # --- commands --------------------------------------------------------------------------

    async def request(self, data: bytes, cmd: str, fits: Callable[[Any], bool]) -> Any:
        """Write one command and wait for the reply that ``fits`` it."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        entry = Pending(cmd, fits, future)
        timeout = self.reply_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await self._write(entry, data)
                return await future
        except TimeoutError as exc:
            raise DeviceTimeout(self.name, f"no reply to {cmd} within {timeout} s") from exc
        finally:
            future.cancel()  # leaves the entry in the FIFO as abandoned

    async def _write(self, entry: Pending, data: bytes) -> None:
        # The lock keeps the order on the wire equal to the order of the FIFO
        async with self._lock:
            if self._down is not None or self._writer is None:
                raise DeviceConnectionError(self.name, self._down or NOT_CONNECTED)
            entry.sent_at = time.monotonic()
            self._pending.append(entry)
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
                case Fault(code=code, text=text):
                    raise DeviceFault(self.name, code, text)
                case Garbled(why=why):
                    raise ProtocolError(self.name, why)
                case _LinkDown():
                    raise DeviceConnectionError(self.name, self._down or NOT_CONNECTED)
