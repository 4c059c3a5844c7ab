"""A simulated printer on the Zipher-style text protocol (drivers/printers/zipher/README.md).

Standalone: ``python -m simulators.printers.zipher --port 3002``.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from drivers.printers.zipher import codec
from simulators.line import SimLine
from simulators.printers.stream_sim import StreamPrinterSim
from simulators.printers.traits import PrinterSimTraits
from simulators.standalone import run_until_signal


class ZipherPrinterSim(StreamPrinterSim):
    protocol = "zipher"
    traits = PrinterSimTraits(
        garbage=b"\x00\xff\xfeGARBAGE|||\r\nACK|NOPE|\r\nPRC|x|\r\n",
        silence_alarm="no reply to",
        fast={"reply_timeout_s": 0.5},
    )

    def __init__(self, line: SimLine, *, buffer_size: int = 16, transport: str = "tcp") -> None:
        super().__init__(line, buffer_size=buffer_size, transport=transport)
        self.job_name = ""
        self.fields: dict[str, str] = {}
        self.notifications: set[str] = set()
        self.machine_state = codec.RUNNING
        self.warnings: list[tuple[str, str]] = []

    def driver_config(self, **overrides: Any) -> dict[str, Any]:
        depth = max(1, min(8, self.buffer_size))
        config = {"type": "zipher", "link": self.link_config(), "buffer_depth": depth}
        return config | overrides

    @property
    def state(self) -> str:
        if self.fault is not None:
            return "fault"
        if self.job is None or self.machine_state != codec.RUNNING:
            return "idle"
        return "printing" if self._buffer else "ready"

    # --- protocol --------------------------------------------------------------------------

    def _command_decoder(self) -> codec.CommandDecoder:
        return codec.CommandDecoder()

    def _show(self, data: bytes) -> str:
        return data.removesuffix(codec.EOL).decode("ascii", "backslashreplace")

    def _show_command(self, command: Any) -> str:
        if isinstance(command, codec.Malformed):
            return command.raw.decode("ascii", "backslashreplace")
        named = [f"{k}={v}" for k, v in command.named]
        return "|".join([command.cmd, *command.fields, *named])

    def _encode_print_complete(self, seq: int, serial: str) -> bytes:
        return codec.encode_prc(seq, serial) if "PRC" in self.notifications else b""

    def _encode_fault(self, code: str, text: str) -> bytes:
        if "ERS" not in self.notifications:
            return b""
        return codec.encode_ers(codec.FAULTED, code, text)

    def _encode_fault_cleared(self, code: str) -> bytes:
        return codec.encode_ers(codec.NO_ERROR) if "ERS" in self.notifications else b""

    def _write(self, data: bytes) -> None:
        # A disabled notification is empty and simply not sent; whole lines are written (and
        # transcribed) one by one, raw bytes (injected garbage) as they are
        if not data.endswith(codec.EOL):
            if data:
                super()._write(data)
            return
        for line in data.removesuffix(codec.EOL).split(codec.EOL):
            super()._write(line + codec.EOL)

    def _on_print_start(self, seq: int) -> None:
        if "PRS" in self.notifications:
            self._write(codec.encode_prs(seq))

    def _job_fields(self) -> tuple[str, str, str]:
        f = self.fields
        return f.get("GTIN", ""), f.get("LOT", ""), f.get("EXP", "")

    def _execute(self, command: codec.Command | codec.Malformed) -> bytes:
        if isinstance(command, codec.Malformed):
            return codec.encode_err("BAD_COMMAND", command.why)
        handler = _HANDLERS.get(command.cmd)
        if handler is None:
            return codec.encode_err("BAD_COMMAND", f"unknown command {command.cmd[:16]}")
        return handler(self, command)

    def _sla(self, c: codec.Command) -> bytes:
        if not c.fields or not codec.is_token(c.fields[0]):
            return codec.encode_err("BAD_FIELD", "SLA needs a job name")
        self.job, self.job_name, self.fields = c, c.fields[0], dict(c.named)
        self._clear_queue()  # selecting a job empties the update queue, as on the controller
        self._wake.set()
        return codec.encode_ack()

    def _jda(self, c: codec.Command) -> bytes:
        if self.job is None:
            return codec.encode_err("NO_JOB", "no job selected")
        self.fields.update(c.named)
        return codec.encode_ack()

    def _jdi(self, c: codec.Command) -> bytes:
        values = dict(c.named)
        seq, serial = values.get("SEQ", ""), values.get("SN", "")
        if self.fault is not None:
            return codec.encode_err("FAULT", f"{self.fault[0]}: {self.fault[1]}")
        if self.job is None:
            return codec.encode_err("NO_JOB", "no job selected")
        if not seq.isdigit() or len(seq) > 19 or not codec.is_serial(serial):
            return codec.encode_err("BAD_FIELD", "JDI needs SEQ=<number> and SN=<GS1 serial>")
        if len(self._buffer) >= self.buffer_size:
            return codec.encode_err("QUEUE_FULL", f"{self.buffer_size} records queued")
        self._queue(int(seq), serial)
        return codec.encode_ack()

    def _gst(self, c: codec.Command) -> bytes:
        error = codec.FAULTED if self.fault else codec.WARNING if self.warnings else codec.NO_ERROR
        state = codec.State(
            self.machine_state, error, self.job_name, len(self.printed), len(self.printed)
        )
        return codec.encode_state(state)

    def _sst(self, c: codec.Command) -> bytes:
        if len(c.fields) != 1 or c.fields[0] not in ("3", "4"):
            return codec.encode_err("BAD_FIELD", "SST takes 3 (running) or 4 (offline)")
        self.machine_state = int(c.fields[0])
        self._wake.set()
        return codec.encode_ack()

    def _sno(self, c: codec.Command) -> bytes:
        if len(c.fields) != 2 or c.fields[0] not in codec.NOTIFICATIONS or c.fields[1] not in "01":
            return codec.encode_err("BAD_FIELD", "SNO|<PRS|PRC|STS|ERS|JOB>|<0|1>|")
        if c.fields[1] == "1":
            self.notifications.add(c.fields[0])
        else:
            self.notifications.discard(c.fields[0])
        return codec.encode_ack()

    def _qsz(self, c: codec.Command) -> bytes:
        return codec.encode_qsz(len(self._buffer), self.buffer_size)

    def _gft(self, c: codec.Command) -> bytes:
        return codec.encode_faults("GFT", [self.fault] if self.fault else [])

    def _gwn(self, c: codec.Command) -> bytes:
        return codec.encode_faults("GWN", self.warnings)

    def _caf(self, c: codec.Command) -> bytes:
        # Only a fault whose cause is gone clears; the simulator's faults have no lasting cause
        self._set_fault(None)
        return codec.encode_ack()

    def _cqi(self, c: codec.Command) -> bytes:
        if list(c.fields) != ["ALL"]:
            return codec.encode_err("BAD_FIELD", "this printer only clears the whole queue")
        # Names every record it discards, oldest first, then counts them in the reply
        notices = b"".join(codec.encode_cqd(seq, serial) for seq, serial in self._buffer)
        return notices + codec.encode_cqi_reply(self._clear_queue())


_HANDLERS = {
    "SLA": ZipherPrinterSim._sla,
    "JDA": ZipherPrinterSim._jda,
    "JDI": ZipherPrinterSim._jdi,
    "GST": ZipherPrinterSim._gst,
    "SST": ZipherPrinterSim._sst,
    "SNO": ZipherPrinterSim._sno,
    "QSZ": ZipherPrinterSim._qsz,
    "GFT": ZipherPrinterSim._gft,
    "GWN": ZipherPrinterSim._gwn,
    "CAF": ZipherPrinterSim._caf,
    "CQI": ZipherPrinterSim._cqi,
}


# --- standalone ----------------------------------------------------------------------------


async def _run(args: argparse.Namespace) -> None:
    line = SimLine(units_per_min=args.units_per_min or None)
    sim = ZipherPrinterSim(line, buffer_size=args.buffer_size)
    if args.verbose:
        sim.on_transcript = lambda direction, text: print(f"{direction:>4} {text}", flush=True)
    await sim.start(args.host, args.port)
    print(f"zipher printer simulator listening on {sim.url} (Ctrl-C stops)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulators.printers.zipher")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3002)
    parser.add_argument("--buffer-size", type=int, default=16)
    parser.add_argument("--units-per-min", type=float, default=300.0, help="0 prints unpaced")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every line")
    args = parser.parse_args(argv)
    run_until_signal(_run(args))


if __name__ == "__main__":
    main()
