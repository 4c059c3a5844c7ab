"""Shared body of the stream printer simulators (zipher over TCP, rci over a pty or TCP).

Like a real controller: one host at a time, a record queue and a print counter that survive
disconnects, and a print head that keeps printing queued records onto the ``SimLine`` while
nobody listens (notifications are then lost). A subclass supplies the protocol: a command decoder,
``_execute`` (command -> reply bytes) and encoders for the notifications.

Over a pty there is no connection to drop: ``drop_connection()`` then makes the printer deaf and
mute for ``deaf_s`` seconds (a pulled cable), after which it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, Self

from drivers.transport import PtyPair
from simulators.line import SimLine, SimUnit
from simulators.printers.traits import FaultKind, PrinterSimTraits

TranscriptHook = Callable[[str, str], None]


class _FaultableSim(Protocol):
    _wake: asyncio.Event

    def _set_fault(self, fault: tuple[str, str] | None) -> None: ...
    def _drop_client(self) -> None: ...
    def _write(self, data: bytes) -> None: ...


class PrinterFaults:
    """Fault injection, one API for the stream simulators and the ascii one (and the uniform
    ``simulators.printers.traits.PrinterSimFaults`` every printer simulator has)."""

    CODES: ClassVar[dict[FaultKind, str]] = {
        "ink_out": "INK_OUT",
        "head_fault": "HEAD_FAULT",
        "buffer_underrun": "BUFFER_UNDERRUN",
    }

    def __init__(self, sim: _FaultableSim) -> None:
        self._sim = sim
        self.reply_delay_s = 0.0  # the printer waits this long before answering each command
        self.lost_confirmations = 0  # how many upcoming print notices are printed but never sent
        self.deaf_s = 1.0  # how long a dropped serial link stays silent
        self.print_stalled = False  # records are acknowledged and queued, never printed

    def raise_fault(self, code: str, text: str) -> None:
        """Stop printing and report the fault; records are refused until it is cleared."""
        self._sim._set_fault((code, text))

    def ink_out(self) -> None:
        self.raise_fault("INK_OUT", "ink out")

    def inject(self, kind: FaultKind) -> None:
        code = self.fault_code(kind)
        self.raise_fault(code, f"{code} (injected)")

    def fault_code(self, kind: FaultKind) -> str:
        return self.CODES[kind]

    def lose_confirmations(self, n: int) -> None:
        self.lose_next_confirmations(n)

    def delay_replies(self, seconds: float) -> None:
        self.reply_delay_s = seconds

    def silence(self) -> None:
        self.reply_delay_s = 60.0

    def clear_fault(self) -> None:
        self._sim._set_fault(None)

    def drop_connection(self) -> None:
        """Abort the client socket (RST), as a pulled cable or a reboot would; a pty goes deaf."""
        self._sim._drop_client()

    def send_garbage(self, data: bytes) -> None:
        """Write raw bytes to the client, between whole messages."""
        self._sim._write(data)

    def lose_next_confirmations(self, n: int) -> None:
        self.lost_confirmations += n

    def stall_printing(self) -> None:
        """Keep acknowledging records, and never print them (a jammed head, no product sensor)."""
        self.print_stalled = True

    def resume_printing(self) -> None:
        self.print_stalled = False
        self._sim._wake.set()


class StreamPrinterSim:
    protocol = "?"
    max_buffer = 1024
    traits: PrinterSimTraits  # each protocol's simulator says how it behaves

    def __init__(self, line: SimLine, *, buffer_size: int = 16, transport: str = "tcp") -> None:
        self.line = line
        self.buffer_size = min(buffer_size, self.max_buffer)
        self.transport = transport
        self.host = "127.0.0.1"
        self.port = 0
        self.device = ""  # pty slave path when transport == "serial"
        self.printed: list[str] = []
        self.transcript: list[tuple[str, str]] = []
        self.on_transcript: TranscriptHook | None = None
        self.faults = PrinterFaults(self)
        self.job: Any = None
        self.fault: tuple[str, str] | None = None
        self._buffer: deque[tuple[int, str]] = deque()
        self._wake = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._pty: PtyPair | None = None
        self._client: asyncio.StreamWriter | None = None
        self._deaf_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._print_task: asyncio.Task[None] | None = None

    @classmethod
    def from_section(cls, line: SimLine, section: Any) -> Self:
        transport = getattr(section, "transport", None) or cls.default_transport
        return cls(line, buffer_size=section.buffer_size, transport=transport)

    default_transport = "tcp"

    def link_config(self) -> dict[str, Any]:
        if self.transport == "serial":
            return {"kind": "serial", "device": self.device, "baudrate": 115200}
        return {"kind": "tcp", "host": self.host, "port": self.port}

    @property
    def url(self) -> str:
        if self.transport == "serial":
            return f"serial://{self.device}"
        return f"tcp://{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._client is not None and not self._deaf()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def queued(self) -> list[str]:
        """Serials queued and not printed yet, in print order."""
        return [serial for _, serial in self._buffer]

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self.transport == "serial":
            self._pty = PtyPair()
            self.device = self._pty.slave_path
            reader, writer = await self._pty.open()
            self._spawn(self._serve_pty(reader, writer))
        else:
            self._server = await asyncio.start_server(self._serve_tcp, host, port)
            self.host, self.port = self._server.sockets[0].getsockname()[:2]
        self._print_task = asyncio.create_task(self._print_loop(), name=f"{self.protocol}-sim")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._client is not None and self.transport == "tcp":
            self._client.transport.abort()
        self._client = None
        tasks = [*self._tasks, *([self._print_task] if self._print_task else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self._server is not None:
            await self._server.wait_closed()
        if self._pty is not None:
            self._pty.close()
        self._server, self._print_task, self._pty = None, None, None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- connection ------------------------------------------------------------------------

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._drop_client()  # one client at a time: the newest wins
        self._client = writer
        try:
            await self._converse(reader, writer)
        except (OSError, asyncio.CancelledError):
            pass  # see simulators/printers/ascii.py: a cancelled handler must end normally
        finally:
            if self._client is writer:
                self._client = None
            writer.close()
            # A handler cancelled by stop() must still end normally (asyncio 3.11 streams)
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve_pty(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._client = writer
        try:
            await self._converse(reader, writer)
        except OSError:
            pass
        finally:
            self._client = None

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = self._command_decoder()
        while data := await reader.read(4096):
            if self._deaf():
                decoder = self._command_decoder()  # bytes sent into a pulled cable are gone
                continue
            for command in decoder.feed(data):
                self._record("rx", self._show_command(command))
                if self.faults.reply_delay_s > 0:
                    await asyncio.sleep(self.faults.reply_delay_s)
                reply = self._execute(command)
                if reply and self._client is writer:
                    self._write(reply)

    def _deaf(self) -> bool:
        return time.monotonic() < self._deaf_until

    def _drop_client(self) -> None:
        if self.transport == "serial":
            self._deaf_until = time.monotonic() + self.faults.deaf_s
            return
        if self._client is not None:
            self._client.transport.abort()
            self._client = None

    def _write(self, data: bytes) -> None:
        client = self._client
        if client is None or client.is_closing() or self._deaf():
            self._record("lost", self._show(data))
            return
        client.write(data)
        self._record("tx", self._show(data))

    def _record(self, direction: str, text: str) -> None:
        self.transcript.append((direction, text))
        if len(self.transcript) > 100_000:
            del self.transcript[:50_000]
        if self.on_transcript is not None:
            self.on_transcript(direction, text)

    # --- protocol hooks --------------------------------------------------------------------

    def _command_decoder(self) -> Any:
        raise NotImplementedError

    def _execute(self, command: Any) -> bytes:
        raise NotImplementedError

    def _encode_print_complete(self, seq: int, serial: str) -> bytes:
        raise NotImplementedError

    def _encode_fault(self, code: str, text: str) -> bytes:
        raise NotImplementedError

    def _encode_fault_cleared(self, code: str) -> bytes:
        raise NotImplementedError

    def _show(self, data: bytes) -> str:
        return data.decode("ascii", "backslashreplace")

    def _show_command(self, command: Any) -> str:
        return repr(command)

    # --- shared printer behaviour ----------------------------------------------------------

    def _job_fields(self) -> tuple[str, str, str]:
        """(gtin, lot, expiry) of the selected job."""
        raise NotImplementedError

    def _queue(self, seq: int, serial: str) -> None:
        self._buffer.append((seq, serial))
        self._wake.set()

    def _clear_queue(self) -> int:
        discarded = len(self._buffer)
        self._buffer.clear()
        return discarded

    def _set_fault(self, fault: tuple[str, str] | None) -> None:
        previous, self.fault = self.fault, fault
        if fault is not None:
            self._write(self._encode_fault(*fault))
        elif previous is not None:
            self._write(self._encode_fault_cleared(previous[0]))
            self._wake.set()

    def _can_print(self) -> bool:
        ready = self.job is not None and self.fault is None and not self.faults.print_stalled
        return ready and bool(self._buffer)

    async def _print_loop(self) -> None:
        while True:
            while not self._can_print():
                self._wake.clear()
                await self._wake.wait()
            await self.line.next_slot()
            if self._can_print():
                self._print_one()

    def _on_print_start(self, seq: int) -> None:
        """Hook: a record leaves the queue (zipher sends PRS)."""

    def _print_one(self) -> None:
        seq, serial = self._buffer.popleft()
        self._on_print_start(seq)
        gtin, lot, expiry = self._job_fields()
        self.printed.append(serial)
        notice = self._encode_print_complete(seq, serial)
        if self.faults.lost_confirmations > 0:
            self.faults.lost_confirmations -= 1
            self._record("lost", self._show(notice))
        else:
            self._write(notice)
        self.line.unit_printed(SimUnit(serial, gtin, lot, expiry, time.monotonic()))
