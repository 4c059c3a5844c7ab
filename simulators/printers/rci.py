"""A simulated printer on the "rci" binary protocol (drivers/printers/rci/README.md).

Serves over a pty by default (the driver opens the slave as its serial port), or TCP.
Standalone: ``python -m simulators.printers.rci`` (prints the serial device to open) or
``--tcp --port 3003``.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from drivers.printers.rci import codec
from simulators.line import SimLine
from simulators.printers.stream_sim import StreamPrinterSim
from simulators.printers.traits import PrinterSimTraits
from simulators.standalone import run_until_signal


class RciPrinterSim(StreamPrinterSim):
    protocol = "rci"
    traits = PrinterSimTraits(
        garbage=b"\x00\xff\x1b\x02\x05garbage\x99\x1b\x03\xfe",  # noise, a bad checksum
        silence_alarm="no reply to",
        fast={"reply_timeout_s": 0.5},
        lost_link_transport="tcp",
    )
    max_buffer = 32  # remote-field buffers
    default_transport = "serial"

    def __init__(self, line: SimLine, *, buffer_size: int = 16, transport: str = "serial") -> None:
        super().__init__(line, buffer_size=buffer_size, transport=transport)
        self.printing = False  # START_PRINT / STOP_PRINT
        self.bad_frames = 0

    def driver_config(self, **overrides: Any) -> dict[str, Any]:
        depth = max(1, min(8, self.buffer_size))
        config = {"type": "rci", "link": self.link_config(), "buffer_depth": depth}
        return config | overrides

    @property
    def state(self) -> str:
        if self.fault is not None:
            return "fault"
        if self.job is None:
            return "idle"
        return "printing" if self._buffer else "ready"

    def _can_print(self) -> bool:
        return self.printing and super()._can_print()

    # --- protocol --------------------------------------------------------------------------

    def _command_decoder(self) -> codec.CommandDecoder:
        return codec.CommandDecoder()

    def _show(self, data: bytes) -> str:
        return data.hex(" ")

    def _encode_print_complete(self, seq: int, serial: str) -> bytes:
        return codec.encode_print_end(seq, serial)

    def _encode_fault(self, code: str, text: str) -> bytes:
        return codec.encode_fault(code, text)

    def _encode_fault_cleared(self, code: str) -> bytes:
        return codec.encode_fault_cleared(code)

    def _job_fields(self) -> tuple[str, str, str]:
        job = self.job
        assert isinstance(job, codec.JobCommand)
        return job.gtin, job.lot, job.expiry

    def _execute(self, command: codec.Command | codec.Malformed) -> bytes:
        match command:
            case codec.Malformed(why=why):
                self.bad_frames += 1
                return codec.encode_refusal(codec.BAD_FRAME, "BAD_FRAME", why)
            case codec.JobCommand():
                if not codec.is_job(command):
                    return codec.encode_refusal(codec.SELECT_JOB, "BAD_DATA", "bad job fields")
                self.job = command
                self._wake.set()
                return codec.encode_ok(codec.SELECT_JOB)
            case codec.RecordCommand():
                return self._load(command)
            case codec.SimpleCommand(cmd=codec.STATUS):
                fault = self.fault[0] if self.fault else ""
                counts = (len(self._buffer), self.buffer_size, len(self.printed))
                return codec.encode_status_reply(self.state, *counts, fault)
            case codec.SimpleCommand(cmd=codec.CLEAR_BUFFERS):
                return codec.encode_cleared(codec.CLEAR_BUFFERS, self._take_queue())
            case codec.SimpleCommand(cmd=codec.START_PRINT):
                if self.job is None:
                    return codec.encode_refusal(codec.START_PRINT, "NO_JOB", "no job selected")
                self.printing = True
                self._wake.set()
                return codec.encode_ok(codec.START_PRINT)
            case codec.SimpleCommand(cmd=codec.STOP_PRINT):
                self.printing = False
                return codec.encode_cleared(codec.STOP_PRINT, self._take_queue())
        raise AssertionError(f"unhandled command {command!r}")

    def _take_queue(self) -> list[tuple[int, str]]:
        """Empty the buffers; what they held, oldest first."""
        records = list(self._buffer)
        self._clear_queue()
        return records

    def _load(self, record: codec.RecordCommand) -> bytes:
        cmd = codec.LOAD_RECORD
        if self.fault is not None:
            return codec.encode_refusal(cmd, "FAULT", f"{self.fault[0]}: {self.fault[1]}")
        if self.job is None:
            return codec.encode_refusal(cmd, "NO_JOB", "no job selected")
        if not codec.is_serial(record.serial):
            return codec.encode_refusal(cmd, "BAD_DATA", "serial is not 1..20 chars of GS1 set 82")
        if len(self._buffer) >= self.buffer_size:
            return codec.encode_refusal(cmd, "BUFFER_FULL", f"{self.buffer_size} buffers full")
        self._queue(record.seq, record.serial.decode("ascii"))
        return codec.encode_ok(cmd, record.seq.to_bytes(8, "big"))


# --- standalone ----------------------------------------------------------------------------


async def _run(args: argparse.Namespace) -> None:
    line = SimLine(units_per_min=args.units_per_min or None)
    sim = RciPrinterSim(
        line, buffer_size=args.buffer_size, transport="tcp" if args.tcp else "serial"
    )
    if args.verbose:
        sim.on_transcript = lambda direction, text: print(f"{direction:>4} {text}", flush=True)
    await sim.start(args.host, args.port)
    print(f"rci printer simulator on {sim.url} (Ctrl-C stops)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulators.printers.rci")
    parser.add_argument("--tcp", action="store_true", help="serve TCP instead of a pty")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3003)
    parser.add_argument("--buffer-size", type=int, default=16, help="remote-field buffers, 1..32")
    parser.add_argument("--units-per-min", type=float, default=300.0, help="0 prints unpaced")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every frame")
    args = parser.parse_args(argv)
    run_until_signal(_run(args))


if __name__ == "__main__":
    main()
