"""A simulated Zebra label printer on raw TCP 9100 (drivers/printers/zpl/README.md).

It reads ZPL like the real one: ``~`` commands (``~HS``, ``~JA``, ``~PP``, ``~PS``) run as soon as
they are read; ``^XA..^XZ`` formats queue in the receive buffer and print one label per ``^PQ``
copy at line speed onto the ``SimLine``. What goes on the unit is what the format's GS1
DataMatrix says (``_1`` = FNC1), so a wrong template prints a wrong code. Buffer and counters
survive disconnects and printing goes on without a host. ``faults`` breaks it on purpose.

Standalone: ``python -m simulators.printers.zpl --port 9100``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import deque
from typing import Any, ClassVar, Self

from drivers.printers.zpl import codec
from drivers.transport import PtyPair
from edge_agent import gs1
from simulators.line import SimLine, SimUnit
from simulators.printers.traits import FaultKind, PrinterSimTraits
from simulators.standalone import run_until_signal

FLAGS = ("paper_out", "ribbon_out", "head_up", "pause", "over_temp", "corrupt_ram")


class ZplFaults:
    """Fault injection for ``ZplPrinterSim`` (with the uniform ``PrinterSimFaults`` API)."""

    # A label printer's equivalents: ribbon out, print head up (open), media (paper) out
    FLAGS_BY_KIND: ClassVar[dict[FaultKind, str]] = {
        "ink_out": "ribbon_out",
        "head_fault": "head_up",
        "buffer_underrun": "paper_out",
    }

    def __init__(self, sim: ZplPrinterSim) -> None:
        self._sim = sim
        self.reply_delay_s = 0.0  # wait this long before answering each ~HS
        self.lost_status = 0  # how many upcoming ~HS get no answer at all
        self.partial_status = 0  # how many upcoming ~HS answers are cut after the first string
        self.deaf_s = 1.0  # how long a "dropped" serial link ignores input and stays silent
        self.print_stalled = False  # labels are taken and queued, never printed; ~HS looks fine

    def set_flag(self, flag: str, on: bool = True) -> None:
        """Raise or clear a ~HS condition: paper_out, ribbon_out, head_up, pause, over_temp..."""
        if flag not in FLAGS:
            raise ValueError(f"unknown flag {flag!r}; known: {FLAGS}")
        self._sim.flags[flag] = on
        self._sim._wake.set()

    def ribbon_out(self) -> None:
        self.set_flag("ribbon_out")

    def paper_out(self) -> None:
        self.set_flag("paper_out")

    def head_open(self) -> None:
        self.set_flag("head_up")

    def clear_faults(self) -> None:
        for flag in FLAGS:
            self._sim.flags[flag] = False
        self._sim._wake.set()

    def inject(self, kind: FaultKind) -> None:
        self.set_flag(self.FLAGS_BY_KIND[kind])

    def fault_code(self, kind: FaultKind) -> str:
        return self.FLAGS_BY_KIND[kind].upper()  # the driver names a fault by its ~HS flag

    def clear_fault(self) -> None:
        self.clear_faults()

    def lose_confirmations(self, n: int) -> None:
        self.lose_status_answers(n)

    def delay_replies(self, seconds: float) -> None:
        self.reply_delay_s = seconds

    def silence(self) -> None:
        self.lose_status_answers(10**6)

    def drop_connection(self) -> None:
        """TCP: abort the socket. Serial (nothing to drop): deaf and mute for ``deaf_s``."""
        self._sim._drop_client()

    def send_garbage(self, data: bytes) -> None:
        self._sim._write(data)

    def lose_status_answers(self, n: int) -> None:
        self.lost_status += n

    def stall_printing(self) -> None:
        """Keep taking labels, and never print them (a printer waiting for a sensor forever)."""
        self.print_stalled = True

    def resume_printing(self) -> None:
        self.print_stalled = False
        self._sim._wake.set()


class ZplPrinterSim:
    traits = PrinterSimTraits(
        garbage=b"\x02\xff\xfe030,1\x03\r\n garbage \x00\x03",
        silence_alarm="no answer to ~HS",
        fast={"status_timeout_s": 0.3, "max_missed_status": 3},
        lost_confirmations_rejected=False,  # the printer's counter has it at the next poll
        refuses_when_full=False,  # ZPL queues what it receives; nothing is refused
        names_queue_after_restart=False,  # ZPL only counts its queue
        transit_s=1.0,
    )

    def __init__(self, line: SimLine, *, buffer_size: int = 16, transport: str = "tcp") -> None:
        self.line = line
        self.buffer_size = buffer_size
        self.transport = transport
        self.host, self.port = "127.0.0.1", 0
        self.device = ""  # pty slave path when transport == "serial"
        self._pty: PtyPair | None = None
        self._deaf_until = 0.0
        self.odometer = 1000  # labels this printer has printed, ever
        self._mute_next_counter = False
        self.printed: list[str] = []  # serials in print order
        self.labels: list[str] = []  # element strings printed, GS as separator
        self.bad_formats = 0
        self.flags: dict[str, bool] = dict.fromkeys(FLAGS, False)
        self.faults = ZplFaults(self)
        self._queue: deque[codec.Format] = deque()
        self._current: tuple[codec.Format, int] | None = None  # printing: format, copies left
        self._wake = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._client: asyncio.StreamWriter | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._print_task: asyncio.Task[None] | None = None

    @classmethod
    def from_section(cls, line: SimLine, section: Any) -> ZplPrinterSim:
        return cls(line, buffer_size=section.buffer_size, transport=section.transport or "tcp")

    def driver_config(self, **overrides: Any) -> dict[str, Any]:
        depth = max(1, min(4, self.buffer_size))
        link: dict[str, Any] = {"kind": "tcp", "host": self.host, "port": self.port}
        if self.transport == "serial":
            link = {"kind": "serial", "device": self.device, "baudrate": 115200}
        return {"type": "zpl", "link": link, "buffer_depth": depth} | overrides

    @property
    def connected(self) -> bool:
        return self._client is not None

    @property
    def buffered(self) -> int:
        """Labels accepted and not printed yet."""
        return len(self._queue) + (self._current[1] if self._current else 0)

    @property
    def queued(self) -> list[str]:
        """Serials of the labels accepted and not printed yet, in print order."""
        formats = [self._current[0]] * self._current[1] if self._current else []
        units = [_unit(codec.label_data(fmt)) for fmt in [*formats, *self._queue]]
        return [unit.serial if unit else "?" for unit in units]

    def status(self) -> codec.HostStatus:
        f = self.flags
        return codec.HostStatus(
            paper_out=f["paper_out"],
            pause=f["pause"],
            formats_in_buffer=len(self._queue),
            buffer_full=len(self._queue) >= self.buffer_size,
            partial_format=False,
            corrupt_ram=f["corrupt_ram"],
            under_temp=False,
            over_temp=f["over_temp"],
            head_up=f["head_up"],
            ribbon_out=f["ribbon_out"],
            labels_remaining=self._current[1] if self._current else 0,
        )

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self.transport == "serial":
            self._pty = PtyPair()
            self.device = self._pty.slave_path
            reader, writer = await self._pty.open()
            self._client = writer
            task = asyncio.create_task(self._converse(reader, writer), name="zpl-sim-pty")
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        else:
            self._server = await asyncio.start_server(self._serve, host, port)
            self.host, self.port = self._server.sockets[0].getsockname()[:2]
        self._print_task = asyncio.create_task(self._print_loop(), name="zpl-printer-sim")

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
        if self._pty is not None:
            self._pty.close()
        self._server, self._print_task, self._pty = None, None, None

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
        self._drop_client()
        self._client = writer
        try:
            await self._converse(reader, writer)
        finally:
            if self._client is writer:
                self._client = None
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            splitter = codec.FormatSplitter()
            while data := await reader.read(65536):
                if time.monotonic() < self._deaf_until:
                    continue  # the cable is out: what was sent never arrives
                for item in splitter.feed(data):
                    await self._execute(item, writer)
        except (OSError, asyncio.CancelledError):
            pass  # see simulators/printers/ascii.py: a handler must end normally

    def _drop_client(self) -> None:
        if self.transport == "serial":
            self._deaf_until = time.monotonic() + self.faults.deaf_s
            return
        if self._client is not None:
            self._client.transport.abort()
            self._client = None

    def _write(self, data: bytes) -> None:
        client = self._client
        if client is not None and not client.is_closing():
            client.write(data)

    async def _execute(
        self,
        item: codec.Format | codec.Tilde | codec.Sgd | codec.Malformed,
        writer: asyncio.StreamWriter,
    ) -> None:
        match item:
            case codec.Format():
                self._queue.append(item)
                self._wake.set()
            case codec.Tilde(name="HS"):
                await self._answer_status(writer)
            case codec.Sgd(command='getvar "odometer.total_label_count"'):
                if self._mute_next_counter:
                    self._mute_next_counter = False
                elif self._client is writer and time.monotonic() >= self._deaf_until:
                    self._write(f'"{self.odometer}"'.encode("ascii"))
            case codec.Tilde(name="JA"):
                self._queue.clear()
                self._current = None
            case codec.Tilde(name="PP"):
                self.flags["pause"] = True
            case codec.Tilde(name="PS"):
                self.flags["pause"] = False
                self._wake.set()
            case _:
                self.bad_formats += 1  # a printer ignores what it does not understand

    async def _answer_status(self, writer: asyncio.StreamWriter) -> None:
        faults = self.faults
        if faults.reply_delay_s > 0:
            await asyncio.sleep(faults.reply_delay_s)
        if time.monotonic() < self._deaf_until:
            return
        if faults.lost_status > 0:
            faults.lost_status -= 1
            self._mute_next_counter = True  # the whole answer is lost
            return
        answer = codec.encode_host_status(self.status())
        if faults.partial_status > 0:
            faults.partial_status -= 1
            answer = answer[: answer.index(b"\n") + 1]
        if self._client is writer:
            self._write(answer)

    # --- print head ------------------------------------------------------------------------

    def _can_print(self) -> bool:
        ready = not any(self.flags.values()) and not self.faults.print_stalled
        return ready and (self._current is not None or bool(self._queue))

    async def _print_loop(self) -> None:
        while True:
            while not self._can_print():
                self._wake.clear()
                await self._wake.wait()
            if self._current is None:
                fmt = self._queue.popleft()
                self._current = (fmt, codec.label_quantity(fmt))
            await self.line.next_slot()
            # ~JA, a pause or a fault may have come while the label was on its way
            if self._can_print() and self._current is not None:
                self._print_one()

    def _print_one(self) -> None:
        assert self._current is not None
        fmt, left = self._current
        self._current = (fmt, left - 1) if left > 1 else None
        data = codec.label_data(fmt)
        self.labels.append(data or "")
        self.odometer += 1
        self._apply(data)

    def _apply(self, data: str | None) -> None:
        """The label just printed goes on what passes the print head (here: a unit)."""
        unit = _unit(data)
        if unit is None:
            self.bad_formats += 1
            unit = SimUnit("?", "00000000000000", "?", "000000", time.monotonic())
        self.printed.append(unit.serial)
        self.line.unit_printed(unit)


def _unit(data: str | None) -> SimUnit | None:
    if data is None:
        return None
    try:
        es = gs1.parse(data, check_requisites=False)
    except gs1.Gs1Error:
        return None
    gtin, lot, expiry, serial = (es.get(ai) for ai in ("01", "10", "17", "21"))
    if gtin is None or lot is None or expiry is None or serial is None:
        return None
    return SimUnit(serial, gtin, lot, expiry, time.monotonic())


# --- standalone ----------------------------------------------------------------------------


async def _run(args: argparse.Namespace) -> None:
    line = SimLine(units_per_min=args.units_per_min or None)
    sim = ZplPrinterSim(line, buffer_size=args.buffer_size, transport=args.transport)
    await sim.start(args.host, args.port)
    where = f"serial {sim.device}" if args.transport == "serial" else f"tcp://{sim.host}:{sim.port}"
    print(f"zpl printer simulator on {where} (Ctrl-C stops)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.printers.zpl", description="Simulated Zebra ZPL printer."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--buffer-size", type=int, default=16)
    parser.add_argument(
        "--transport", choices=("tcp", "serial"), default="tcp", help="serial: serve a pty"
    )
    parser.add_argument("--units-per-min", type=float, default=300.0, help="0 prints unpaced")
    args = parser.parse_args(argv)
    run_until_signal(_run(args))


if __name__ == "__main__":
    main()
