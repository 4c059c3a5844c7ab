"""The simulated case and pallet stations, wired like a real line end.

Case station: the case packer fills cases (``case_packer.py``) onto the case conveyor, where the
case station's PLC (a ``ModbusPlcSim``: the PLC contract with the case number as trigger) counts
each case at the case camera and, ``gate_delay_s`` later, lets it through only on a pass verdict;
anything else diverts it (fail-safe, like the unit gate). Between camera and gate the case passes
the labeller: the label printer's next label goes onto the case standing there, and the label
camera reads it back. A case whose defect is ``unreadable_label`` gets an unreadable label.

Pallet station: cases that passed the case gate reach the palletiser, where the pallet scanner
reads each case's label (the SSCC's GS1-128, or the DataMatrix of a case's GTIN + serial) as it
goes onto the pallet; the pallet label printer's next label closes the pallet being built and a
new one starts.

Bundles (``BundleStationSim``): the bundler is a case station one level down (bundle camera,
bundle PLC, labeller); ``feed(case_station)`` sends every bundle its gate passes, its label on
top, to the case packer, whose case camera then sees the bundle labels (``SimBundle``).

``ground_truth()`` is what physically happened: which units each case holds, which label is on it,
what the gate did; which cases each pallet holds and its label.

Standalone: ``python -m simulators.aggregation.station [--case-size 12] [--defect-rate 0.1]``
prints the ``[aggregation.*]`` device tables as one JSON line and packs units with random serials
(fed at ``--units-per-min``) until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import string
import time
from dataclasses import dataclass, field
from typing import Any

from edge_agent import gs1
from simulators.aggregation.case_packer import ALL_CASE_DEFECTS, CaseDefect, CasePackerSim, SimCase
from simulators.aggregation.label import LabelStationSim, label_code
from simulators.aggregation.scanner import ScannerSim
from simulators.line import SimLine, SimUnit
from simulators.plc.modbus import ModbusPlcSim
from simulators.standalone import run_until_signal

CASE_GATE_DELAY_S = 3.0  # case camera to case gate: read, closing read, label, read back


class CaseStationSim:
    def __init__(
        self,
        *,
        case_size: int = 12,
        defect_rate: float = 0.0,
        defect_kinds: tuple[CaseDefect, ...] = ALL_CASE_DEFECTS,
        seed: int = 1,
        gate_delay_s: float = CASE_GATE_DELAY_S,
        closing_after_s: float = 0.3,
        heartbeat_timeout_s: float = 1.0,
        size: tuple[int, int] | None = None,
        cases_per_min: float | None = None,
    ) -> None:
        self.line = SimLine(units_per_min=cases_per_min)
        self.plc = ModbusPlcSim(
            self.line,
            gate_delay_s=gate_delay_s,
            heartbeat_timeout_s=heartbeat_timeout_s,
            ring_size=64,
        )
        kwargs: dict[str, Any] = {} if size is None else {"size": size}
        self.packer = CasePackerSim(
            self.line,
            case_size=case_size,
            defect_rate=defect_rate,
            defect_kinds=defect_kinds,
            seed=seed,
            closing_after_s=closing_after_s,
            **kwargs,
        )
        self.packer.attach_case_gate(self.plc)
        self.labels = LabelStationSim(seed=seed)
        self.labels.printer.apply_to = self._label_case
        self._at_labeller: list[SimCase] = []
        self._indexer: asyncio.Task[None] | None = None
        self.stray_labels: list[str] = []  # printed with no case at the labeller
        self.line.on_trigger(self._case_arrived)
        self.packer.case_listeners.append(self._case_left)

    async def start(self, host: str = "127.0.0.1") -> None:
        await self.plc.start(host, 0)
        await self.packer.start(host, 0)
        await self.labels.start(host)
        self._indexer = asyncio.get_running_loop().create_task(self._index_labeller())

    async def stop(self) -> None:
        if self._indexer is not None:
            self._indexer.cancel()
            await asyncio.gather(self._indexer, return_exceptions=True)
            self._indexer = None
        await self.labels.stop()
        await self.packer.stop()
        await self.plc.stop()

    async def __aenter__(self) -> CaseStationSim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def driver_configs(self) -> dict[str, dict[str, Any]]:
        """The case station's device sections: case camera, case PLC, label printer/camera."""
        return {
            "camera": self.packer.driver_config(),
            "plc": self.plc.driver_config(),
            **self.labels.driver_configs(),
        }

    def _case_arrived(self, trigger: int, unit: Any) -> None:
        case = self.packer.by_trigger.get(trigger)
        if case is not None:
            self._at_labeller.append(case)

    def _case_left(self, case: SimCase) -> None:
        if case in self._at_labeller:
            self._at_labeller.remove(case)

    async def _index_labeller(self) -> None:
        """The labeller holds each case until the station has decided it (its verdict is
        written) or its gate time comes."""
        while True:
            await asyncio.sleep(0.005)
            for case in list(self._at_labeller):
                if await self.plc.verdict_for(case.trigger) is not None:
                    self._case_left(case)

    def _label_case(self, data: str, unreadable: bool) -> bool:
        """A label was printed: it goes onto the oldest case at the labeller that the station
        has seen (a case whose frames reached no station is passed by, undecided)."""
        case = next((c for c in self._at_labeller if c.closing_seen), None)
        if case is None:
            self.stray_labels.append(data)
            return False
        case.labels.append(data)
        return case.defect is CaseDefect.UNREADABLE_LABEL

    def ground_truth(self) -> dict[str, Any]:
        truth = self.packer.ground_truth()
        defective = [c for c in self.packer.cases if c.defect is not None]
        truth["case_defects_rejected"] = sum(1 for c in defective if c.verdict is False)
        truth["case_defects_passed"] = [c.number for c in defective if c.verdict]
        truth["stray_labels"] = list(self.stray_labels)
        truth["unreadable_labels"] = sorted(self.labels.printer.unreadable)
        return truth


@dataclass(frozen=True)
class SimBundle(SimUnit):
    """A bundle leaving the bundler's gate, as the case packer handles it: ``serial`` is its
    code (as the ledger holds it), its label on top is what the case camera reads."""

    label: str = ""  # the element string of the label on it
    units: tuple[SimUnit, ...] = ()  # the units physically in it

    def hri(self) -> str:
        return gs1.parse(self.label, check_requisites=False).bracketed


class BundleStationSim(CaseStationSim):
    """The bundler (units shrink-wrapped into bundles) with its bundle camera, bundle PLC and
    labeller: a case station one level down, the same devices and defects (a missing or
    foreign unit, a duplicate, an unreadable code or label, a unit removed after the read).
    ``feed(cases)``: every bundle its gate passes goes on to the case packer, whose case
    camera then sees the bundles' labels."""

    def feed(self, cases: CaseStationSim) -> None:
        self.packer.case_listeners.append(lambda bundle: self._passed(bundle, cases))

    def _passed(self, bundle: SimCase, cases: CaseStationSim) -> None:
        label = bundle.labels[-1] if bundle.labels else ""
        code = label_code(label)
        if not bundle.verdict or code is None or not bundle.inside:
            return
        first = bundle.inside[0]
        cases.packer.put(
            [SimBundle(code, first.gtin, first.lot, first.expiry, time.monotonic(), label,
                       tuple(bundle.inside))]
        )  # fmt: skip


@dataclass
class SimPallet:
    number: int
    cases: list[SimCase] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


class PalletStationSim:
    """Cases that pass the case gate are scanned onto the pallet being built."""

    def __init__(self, *, seed: int = 2, transport: str = "tcp", aim: bool = True) -> None:
        self.scanner = ScannerSim(transport=transport, aim=aim)
        self.labels = LabelStationSim(seed=seed)
        self.labels.printer.apply_to = self._label_pallet
        self.pallets: list[SimPallet] = [SimPallet(1)]

    def attach(self, case_station: CaseStationSim) -> None:
        case_station.packer.case_listeners.append(self._case_left_gate)

    async def start(self, host: str = "127.0.0.1") -> None:
        await self.scanner.start(host, 0)
        await self.labels.start(host)

    async def stop(self) -> None:
        await self.labels.stop()
        await self.scanner.stop()

    def driver_configs(self) -> dict[str, dict[str, Any]]:
        """The pallet station's device tables (``[aggregation.pallet_station]``)."""
        return {"scanner": self.scanner.driver_config(), **self.labels.driver_configs()}

    def _case_left_gate(self, case: SimCase) -> None:
        if case.verdict:
            self.put(case)

    def put(self, case: SimCase) -> None:
        """A case goes onto the pallet; the scanner reads its (last) label: the SSCC's GS1-128
        (``]C1``), or a case GTIN + serial label's GS1 DataMatrix (``]d2``, all its content)."""
        self.pallets[-1].cases.append(case)
        data = case.labels[-1] if case.labels else ""
        sscc = _sscc(data)
        if sscc is not None:
            self.scanner.scan("00" + sscc)
        elif label_code(data) is not None:
            self.scanner.scan(data, symbology="]d2")

    def _label_pallet(self, data: str, unreadable: bool) -> bool:
        """The label goes onto the pallet being built; a readable one sends it away (wrapped
        and labelled), and the next cases start a new pallet."""
        pallet = self.pallets[-1]
        pallet.labels.append(data)
        if not unreadable:
            self.pallets.append(SimPallet(pallet.number + 1))
        return False

    def ground_truth(self) -> dict[str, Any]:
        return {
            "pallets": [
                {
                    "number": p.number,
                    "cases": [c.number for c in p.cases],
                    "labels": list(p.labels),
                }
                for p in self.pallets
                if p.cases or p.labels
            ]
        }


def _sscc(data: str) -> str | None:
    try:
        return gs1.parse(data, check_requisites=False).get("00")
    except gs1.Gs1Error:
        return None


async def _main(args: argparse.Namespace) -> None:
    cases = CaseStationSim(case_size=args.case_size, defect_rate=args.defect_rate, seed=args.seed)
    pallets = PalletStationSim()
    pallets.attach(cases)
    await cases.start(args.host)
    await pallets.start(args.host)
    tables = {"case_station": cases.driver_configs(), "pallet_station": pallets.driver_configs()}
    print(json.dumps({"aggregation": tables}), flush=True)
    rng = random.Random(args.seed)
    try:
        while True:
            await asyncio.sleep(60.0 / args.units_per_min)
            serial = "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(12))
            cases.packer.put([SimUnit(serial, "09506000134352", "SIMLOT", "301231", 0.0)])
    finally:
        await pallets.stop()
        await cases.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.aggregation.station",
        description="Simulated case station (case packer, case camera, case PLC, label printer "
        "and camera) and pallet station (scanner, pallet label printer and camera).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--case-size", type=int, default=12)
    parser.add_argument("--defect-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--units-per-min", type=float, default=300.0)
    run_until_signal(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
