"""A simulated printer speaking the "ascii" protocol (drivers/printers/ascii/README.md).

It behaves like a real thermal-inkjet controller: one client at a time, a record buffer and a
print counter that survive disconnects, and a print head that keeps printing buffered records
onto the ``SimLine`` while nobody is connected (the notifications are then lost). ``faults`` lets
tests break it on purpose.

Standalone: ``python -m simulators.printers.ascii --port 9100``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import deque
from typing import Any, Self

from drivers.printers.ascii import codec
from simulators.line import SimLine, SimUnit
from simulators.printers.stream_sim import PrinterFaults, TranscriptHook
from simulators.printers.traits import PrinterSimTraits
from simulators.standalone import run_until_signal


class AsciiPrinterSim:
    traits = PrinterSimTraits(
        garbage=b"\x00\xff\xfeGARBAGE|||\r\nACK|NOPE\r\n!PRC|x|\r\n",
        silence_alarm="no reply to REC",
        fast={"reply_timeout_s": 0.5},
    )

    def __init__(self, line: SimLine, *, buffer_size: int = 16) -> None:
        self.line = line
        self.buffer_size = buffer_size
        self.host = "127.0.0.1"
        self.port = 0
        self.printed: list[str] = []  # serials in print order
        self.transcript: list[tuple[str, str]] = []  # ("rx" | "tx" | "lost", line without CR LF)
        self.on_transcript: TranscriptHook | None = None
        self.faults = PrinterFaults(self)
        self.job: codec.JobCommand | None = None
        self.fault: tuple[str, str] | None = None  # (code, text)
        self._buffer: deque[codec.RecCommand] = deque()
        self._wake = asyncio.Event()  # something that may let the print loop go on changed
        self._server: asyncio.Server | None = None
        self._client: asyncio.StreamWriter | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._print_task: asyncio.Task[None] | None = None

    @classmethod
    def from_section(cls, line: SimLine, section: Any) -> AsciiPrinterSim:
        return cls(line, buffer_size=section.buffer_size)

    def driver_config(self, **overrides: Any) -> dict[str, Any]:
        """A ``[printer]`` config section for AsciiPrinter pointing at this simulator."""
        depth = max(1, min(8, self.buffer_size))
        return {"type": "ascii", "host": self.host, "port": self.port, "buffer_depth": depth} | (
            overrides
        )

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._client is not None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def queued(self) -> list[str]:
        """Serials queued and not printed yet, in print order."""
        return [record.serial for record in self._buffer]

    @property
    def state(self) -> str:
        if self.fault is not None:
            return "fault"
        if self.job is None:
            return "idle"
        return "printing" if self._buffer else "ready"

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, host, port)
        self.host, self.port = self._server.sockets[0].getsockname()[:2]
        self._print_task = asyncio.create_task(self._print_loop(), name="ascii-printer-sim")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._drop_client()
        tasks = [*self._handlers, *([self._print_task] if self._print_task else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self._server is not None:
            await self._server.wait_closed()
        self._server, self._print_task = None, None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- connection ------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        self._drop_client()  # one client at a time: the newest wins, like most printers
        self._client = writer
        try:
            await self._converse(reader, writer)
        except OSError:
            pass  # the client went away; the printer does not care
        except asyncio.CancelledError:
            # Only stop() cancels us. Ending normally matters: on 3.11 asyncio's streams callback
            # calls task.exception() on this task, which raises for a cancelled task.
            pass
        finally:
            if self._client is writer:
                self._client = None
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        splitter = codec.LineSplitter()
        while data := await reader.read(4096):
            for item in splitter.feed(data):
                self._record("rx", item if isinstance(item, str) else _show(item.raw))
                command = item if isinstance(item, codec.Malformed) else codec.parse_command(item)
                if self.faults.reply_delay_s > 0:
                    await asyncio.sleep(self.faults.reply_delay_s)
                reply = self._execute(command)
                if self._client is writer:  # a replaced client gets no more answers
                    self._write(reply)

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.transport.abort()
            self._client = None

    def _write(self, data: bytes) -> None:
        """Send to the current client; a notice without a client is lost, as on a real printer."""
        client = self._client
        lost = client is None or client.is_closing()
        if client is not None and not lost:
            client.write(data)
        # One transcript entry per line; raw bytes (injected garbage) as they are
        lines = (
            data.removesuffix(codec.EOL).split(codec.EOL) if data.endswith(codec.EOL) else [data]
        )
        for line in lines:
            self._record("lost" if lost else "tx", line.decode("ascii", "backslashreplace"))

    def _record(self, direction: str, line: str) -> None:
        self.transcript.append((direction, line))
        if self.on_transcript is not None:
            self.on_transcript(direction, line)

    # --- commands --------------------------------------------------------------------------

    def _execute(self, command: codec.Command | codec.Malformed) -> bytes:
        match command:
            case codec.JobCommand():
                self.job = command
                self._wake.set()
                return codec.encode_ack("JOB", command.name)
            case codec.RecCommand():
                return self._store(command)
            case codec.StsCommand():
                fault = self.fault[0] if self.fault else ""
                counts = (str(len(self._buffer)), str(len(self.printed)))
                return codec.encode_ack("STS", self.state, *counts, fault)
            case codec.ClrCommand():
                # Names every record it discards, oldest first, then counts them in the ACK
                notices = b"".join(codec.encode_discarded(r.seq, r.serial) for r in self._buffer)
                discarded = len(self._buffer)
                self._buffer.clear()
                return notices + codec.encode_ack("CLR", str(discarded))
            case codec.Malformed(raw=raw, why=why):
                return codec.encode_nak(codec.command_of(raw), "BAD_COMMAND", why)
        raise AssertionError(f"unhandled command {command!r}")

    def _store(self, record: codec.RecCommand) -> bytes:
        if self.fault is not None:
            return codec.encode_nak("REC", "FAULT", f"{self.fault[0]}: {self.fault[1]}")
        if self.job is None:
            return codec.encode_nak("REC", "NO_JOB", "no job selected")
        if not codec.is_serial(record.serial):
            return codec.encode_nak("REC", "BAD_RECORD", "serial is not 1..20 chars of GS1 set 82")
        if len(self._buffer) >= self.buffer_size:
            return codec.encode_nak("REC", "BUFFER_FULL", f"{self.buffer_size} records buffered")
        self._buffer.append(record)
        self._wake.set()
        return codec.encode_ack("REC", str(record.seq))

    # --- faults ----------------------------------------------------------------------------

    def _set_fault(self, fault: tuple[str, str] | None) -> None:
        previous, self.fault = self.fault, fault
        if fault is not None:
            self._write(codec.encode_fault(*fault))
        elif previous is not None:
            self._write(codec.encode_fault_cleared(previous[0]))
            self._wake.set()

    # --- print head ------------------------------------------------------------------------

    def _can_print(self) -> bool:
        ready = self.job is not None and self.fault is None and not self.faults.print_stalled
        return ready and bool(self._buffer)

    async def _print_loop(self) -> None:
        while True:
            while not self._can_print():
                self._wake.clear()
                await self._wake.wait()
            await self.line.next_slot()
            # CLR or a fault may have come while the unit was on its way
            if self._can_print():
                self._print_one()

    def _print_one(self) -> None:
        record = self._buffer.popleft()
        job = self.job
        assert job is not None
        self.printed.append(record.serial)
        notice = codec.encode_print_complete(record.seq, record.serial)
        if self.faults.lost_confirmations > 0:
            self.faults.lost_confirmations -= 1
            self._record("lost", _show(notice))
        else:
            self._write(notice)
        unit = SimUnit(record.serial, job.gtin, job.lot, job.expiry, time.monotonic())
        self.line.unit_printed(unit)


def _show(data: bytes) -> str:
    return data.removesuffix(codec.EOL).decode("ascii", "backslashreplace")


# --- standalone ----------------------------------------------------------------------------


async def _run(args: argparse.Namespace) -> None:
    line = SimLine(units_per_min=args.units_per_min or None)
    sim = AsciiPrinterSim(line, buffer_size=args.buffer_size)
    if args.verbose:
        sim.on_transcript = lambda direction, text: print(f"{direction:>4} {text}", flush=True)
    await sim.start(args.host, args.port)
    print(f"ascii printer simulator listening on {sim.url} (Ctrl-C stops)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.printers.ascii", description="Simulated 'ascii' printer."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--buffer-size", type=int, default=16)
    parser.add_argument(
        "--units-per-min", type=float, default=300.0, help="line speed; 0 prints unpaced"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print every line")
    args = parser.parse_args(argv)
    run_until_signal(_run(args))


if __name__ == "__main__":
    main()
