"""Simulated label printer (a Zebra on raw TCP 9100, ZPL) and the label camera that reads back
what it printed ("tcp-frames").

The printer is ``ZplPrinterSim`` with one difference: a label (an SSCC's logistic label, or a
case's own GTIN + serial) goes onto what stands at the labeller (``apply_to``: a case or a pallet)
instead of onto a unit. Every printed label then passes the label camera (one frame per label, its
trigger = the label's number), which renders the label's GS1 DataMatrix as printed; a label marked
unreadable (``unreadable_next`` or ``apply_to`` returning True) comes out smeared, as a label
printed without ribbon or torn would.

Standalone: ``python -m simulators.aggregation.label --printer-port 9101 --camera-port 9201``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edge_agent import gs1
from edge_agent.contracts import GrayImage
from simulators.cameras.render import render_frame
from simulators.cameras.tcp import TcpCameraSim, _Look
from simulators.line import SimLine, SimUnit
from simulators.printers.zpl import ZplPrinterSim
from simulators.standalone import run_until_signal

LABEL_MARK = "LABEL"

LabelTarget = Callable[[str, bool], bool]
"""Called with each printed label's element string and whether it is unreadable already;
returns True to make it unreadable (the label goes onto something that spoils it)."""


class LabelPrinterSim(ZplPrinterSim):
    def __init__(self, label_line: SimLine, *, buffer_size: int = 16, transport: str = "tcp"):
        super().__init__(label_line, buffer_size=buffer_size, transport=transport)
        self.apply_to: LabelTarget | None = None
        self.unreadable: set[int] = set()  # label numbers (1..) printed unreadable
        self._unreadable_next = 0

    def unreadable_next(self, n: int = 1) -> None:
        self._unreadable_next += n

    def _apply(self, data: str | None) -> None:
        number = len(self.labels)  # this label's number: it was just appended
        code = label_code(data)
        if code is None:
            self.bad_formats += 1
        self.printed.append(code or "?")
        smear = self._unreadable_next > 0
        self._unreadable_next = max(0, self._unreadable_next - 1)
        if self.apply_to is not None:
            smear = self.apply_to(data or "", smear) or smear
        if smear:
            self.unreadable.add(number)
        self.line.unit_printed(SimUnit(f"{LABEL_MARK}{number}", "", "", "", time.monotonic()))


class LabelCameraSim(TcpCameraSim):
    """Sees every label the printer prints, once: trigger n is the printer's n-th label."""

    def __init__(self, label_line: SimLine, printer: LabelPrinterSim, *, seed: int = 1) -> None:
        super().__init__(label_line, defect_rate=0.0, seed=seed, width=800, height=600)
        self.printer = printer

    def _render(self, trigger: int, look: _Look, rng: np.random.Generator) -> GrayImage:
        number = int(look.serial.removeprefix(LABEL_MARK))
        data = self.printer.labels[number - 1]
        try:
            content = gs1.parse(data, check_requisites=False).ais
        except gs1.Gs1Error:
            return np.full((self.height, self.width), 220, dtype=np.uint8)  # nothing to read
        return render_frame(
            content,
            width=self.width,
            height=self.height,
            module_px=6,
            rotation_deg=float(rng.uniform(-3, 3)),
            blur=0,
            smear=number in self.printer.unreadable,
            rng=rng,
        )


def label_code(data: str | None) -> str | None:
    """The container code a label's element string carries: the SSCC, or ``01<gtin>21<serial>``
    of a case identified by its own GTIN; None when it holds neither."""
    if not data:
        return None
    try:
        parsed = gs1.parse(data, check_requisites=False)
    except gs1.Gs1Error:
        return None
    sscc, gtin, serial = parsed.get("00"), parsed.get("01"), parsed.get("21")
    if sscc is not None:
        return sscc
    return f"01{gtin}21{serial}" if gtin and serial else None


class LabelStationSim:
    """A label printer and its label camera on one label path."""

    def __init__(self, *, seed: int = 1, transport: str = "tcp") -> None:
        self.line = SimLine(units_per_min=None)
        self.printer = LabelPrinterSim(self.line, transport=transport)
        self.camera = LabelCameraSim(self.line, self.printer, seed=seed)

    async def start(self, host: str = "127.0.0.1") -> None:
        await self.camera.start(host, 0)
        await self.printer.start(host, 0)

    async def stop(self) -> None:
        await self.printer.stop()
        await self.camera.stop()

    def driver_configs(self) -> dict[str, dict[str, Any]]:
        return {
            "label_printer": self.printer.driver_config(),
            "label_camera": self.camera.driver_config(),
        }


async def _main(args: argparse.Namespace) -> None:
    station = LabelStationSim()
    await station.camera.start(args.host, args.camera_port)
    await station.printer.start(args.host, args.printer_port)
    print(
        f"label printer on tcp://{args.host}:{station.printer.port}, "
        f"label camera on {station.camera.url}",
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await station.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.aggregation.label",
        description="Simulated ZPL label printer and the label camera reading what it prints.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--printer-port", type=int, default=9101)
    parser.add_argument("--camera-port", type=int, default=9201)
    run_until_signal(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
