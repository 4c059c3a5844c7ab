"""The case and pallet stations against the simulated line end, over the real protocols: case
camera (tcp-frames), case PLC (Modbus TCP), label printer (ZPL) and label camera, pallet scanner
(lines over TCP). Physical truth comes from the simulators, the decisions from the ledger."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_agent import gs1
from edge_agent.aggregation.hierarchy import ContainerState
from edge_agent.aggregation.matching import CaseReason
from edge_agent.aggregation.runner import case_reader, device, label_reader
from edge_agent.aggregation.station import CaseStation, LabelPath, PalletStation, StationTimings
from edge_agent.config.models import VisionSection
from simulators.aggregation.case_packer import CaseDefect
from simulators.aggregation.label import label_code
from simulators.aggregation.station import CaseStationSim, PalletStationSim
from simulators.line import SimUnit
from tests.helpers.aggregation import CASE_GTIN, AggSetup, aggregation_db, order_spec, plan
from tests.helpers.waiting import bounded, until

pytestmark = pytest.mark.usefixtures("no_leaks")

CASE = 6
SIZE = (1280, 960)
TIMINGS = StationTimings(closing_read_s=3.0, label_confirm_s=5.0, label_read_s=3.0)


@dataclass
class Rig:
    setup: AggSetup
    order_id: str
    units: list[SimUnit]
    sim: CaseStationSim
    station: CaseStation


def sim_units(setup: AggSetup, epcs: list[str], lot: str, expiry: str) -> list[SimUnit]:
    out = []
    for epc in epcs:
        item = setup.hierarchy.item(epc)
        assert item.serial is not None and item.gtin is not None
        out.append(SimUnit(item.serial, item.gtin, lot, expiry, 0.0))
    return out


@contextlib.asynccontextmanager
async def case_rig(
    tmp_path: Path, units: int, *, case_identifier: str = "sscc", **sim: Any
) -> AsyncIterator[Rig]:
    with aggregation_db(tmp_path / "state") as setup:
        aggregation = plan(case=CASE, pallet=2, case_identifier=case_identifier)
        spec = order_spec(quantity=units, aggregation=aggregation)
        batch = setup.add_order(spec)
        epcs = setup.units(batch, units)
        sim_line_end = CaseStationSim(
            case_size=CASE, size=SIZE, gate_delay_s=4.0, closing_after_s=0.1, **sim
        )
        await sim_line_end.start()
        try:
            configs = sim_line_end.driver_configs()
            async with contextlib.AsyncExitStack() as stack:
                camera = await stack.enter_async_context(device("camera", configs["camera"], "c"))
                plc = await stack.enter_async_context(device("plc", configs["plc"], "p"))
                printer = await stack.enter_async_context(
                    device("label_printer", configs["label_printer"], "lp")
                )
                label_camera = await stack.enter_async_context(
                    device("camera", configs["label_camera"], "lc")
                )
                vision = VisionSection()
                labels = LabelPath(printer, label_camera, label_reader(vision), TIMINGS)
                station = CaseStation(
                    setup.hierarchy,
                    batch.id,
                    camera=camera,
                    plc=plc,
                    labels=labels,
                    reader=case_reader(vision),
                    timings=TIMINGS,
                )
                yield Rig(
                    setup,
                    batch.id,
                    sim_units(setup, epcs, batch.lot, batch.expiry),
                    sim_line_end,
                    station,
                )
        finally:
            await sim_line_end.stop()


@contextlib.asynccontextmanager
async def running(station: Any) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(station.run())
    try:
        yield task
    finally:
        await stop_task(task)


async def stop_task(task: asyncio.Task[None]) -> None:
    """Cancel until it ends (Python 3.11's wait_for, inside pymodbus, can lose a cancellation),
    bounded: a station that does not stop fails the test instead of hanging it."""
    for _ in range(20):
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=1.0)
        if done:
            return
    for other in asyncio.all_tasks():
        other.print_stack(file=sys.stderr)
    raise AssertionError("the station did not stop on cancel")


def sscc_of(label: str) -> str | None:
    """The container code on a label: its SSCC, or ``01<gtin>21<serial>``."""
    return label_code(label)


def check_against_truth(rig: Rig) -> None:
    """Every case that passed its gate is in the ledger, closed, with the units physically in it
    and the SSCC of the label on it; every other case left no aggregation."""
    h = rig.setup.hierarchy
    codes = [c.code for c in h.containers(rig.order_id, level="case")]
    assert len(codes) == len(set(codes)), "an SSCC was reserved twice"
    printed = rig.sim.labels.printer.printed
    assert len(printed) == len(set(printed)), "an SSCC was printed twice"
    closed = {
        c.code: c for c in h.containers(rig.order_id, level="case", states=[ContainerState.CLOSED])
    }
    passed_ssccs = set()
    for case in rig.sim.packer.cases:
        assert case.verdict is not None, f"case {case.number} never reached its gate"
        if not case.verdict:
            for unit in case.inside:
                if not unit.serial.startswith("FOREIGN"):
                    assert h.parent_of(rig.setup.ledger.epc(unit.gtin, unit.serial)) is None
            continue
        assert case.labels, f"case {case.number} passed without a label"
        sscc = sscc_of(case.labels[-1])
        assert sscc in closed, f"case {case.number} passed, its SSCC {sscc} is not a closed case"
        held = {h.item(epc).serial for epc in h.children(closed[sscc].epc)}
        assert held == case.serials(), f"case {case.number}: ledger and physical content differ"
        passed_ssccs.add(sscc)
    assert passed_ssccs == set(closed), "a closed case that no passed case carries"


@bounded(120)
async def test_good_cases_are_aggregated_and_every_case_defect_is_rejected(
    tmp_path: Path,
) -> None:
    defects = list(CaseDefect)
    async with case_rig(tmp_path, CASE * (len(defects) + 2), cases_per_min=90) as rig:
        rig.sim.packer.force(None, *defects)
        cases = rig.sim.packer.cases
        async with running(rig.station):
            rig.sim.packer.put(rig.units)
            await until(
                lambda: (
                    len(cases) == len(defects) + 2 and all(c.verdict is not None for c in cases)
                ),
                "every case reached its gate",
                within=60,
            )
            await until(lambda: not rig.station._pending, "gate outcomes followed", within=10)
        stats = rig.station.stats
        by_defect = {c.defect: c.verdict for c in cases}
        assert by_defect[None] is True
        assert all(by_defect[d] is False for d in defects), by_defect
        assert stats.cases_accepted == 2 and sum(stats.cases_rejected.values()) == len(defects)
        assert set(stats.cases_rejected) == {
            CaseReason.COUNT,
            CaseReason.FOREIGN,
            CaseReason.DUPLICATE,
            CaseReason.CHANGED,
            CaseReason.LABEL_UNREADABLE,
        }
        check_against_truth(rig)
        scrapped = rig.setup.hierarchy.containers(rig.order_id, states=[ContainerState.SCRAPPED])
        assert len(scrapped) == 1  # the SSCC of the unreadable label, never used again
        # the units read in a rejected case are loose, with why, until they are packed again
        loose = rig.setup.hierarchy.loose(rig.order_id)
        for case in cases:
            if case.verdict:
                continue
            smeared = {slot.content for slot in case.read_slots if slot.unreadable}
            for unit in case.inside:
                if unit.serial.startswith("FOREIGN") or unit.hri() in smeared:
                    continue
                assert loose.get(rig.setup.ledger.epc(unit.gtin, unit.serial)) == "case_rejected"


@bounded(120)
async def test_a_case_whose_pass_comes_too_late_is_disaggregated(tmp_path: Path) -> None:
    async with case_rig(tmp_path, CASE) as rig:
        rig.sim.plc.gate_delay_s = 0.05  # the gate fires before any verdict can be written
        cases = rig.sim.packer.cases
        async with running(rig.station):
            rig.sim.packer.put(rig.units)
            await until(lambda: cases and cases[0].verdict is not None, "the case at its gate")
            await until(lambda: rig.station.stats.rejected_at_gate, "the late case undone")
        assert cases[0].verdict is False
        boxes = rig.setup.hierarchy.containers(rig.order_id, level="case")
        assert [b.state for b in boxes] == [ContainerState.DISAGGREGATED]
        for unit in rig.units:
            epc = rig.setup.ledger.epc(unit.gtin, unit.serial)
            assert rig.setup.hierarchy.parent_of(epc) is None


@bounded(120)
async def test_the_pallet_station_scans_cases_onto_a_verified_pallet(tmp_path: Path) -> None:
    async with case_rig(tmp_path, CASE * 4, cases_per_min=90) as rig:
        pallets = PalletStationSim()
        pallets.attach(rig.sim)
        await pallets.start()
        try:
            configs = pallets.driver_configs()
            async with contextlib.AsyncExitStack() as stack:
                scanner = await stack.enter_async_context(
                    device("scanner", configs["scanner"], "s")
                )
                printer = await stack.enter_async_context(
                    device("label_printer", configs["label_printer"], "plp")
                )
                camera = await stack.enter_async_context(
                    device("camera", configs["label_camera"], "plc")
                )
                await until(lambda: pallets.scanner.clients, "scanner connected")
                labels = LabelPath(printer, camera, label_reader(VisionSection()), TIMINGS)
                station = PalletStation(
                    rig.setup.hierarchy, rig.order_id, scanner=scanner, labels=labels
                )
                pallets.labels.printer.unreadable_next()  # the first pallet label fails
                async with running(rig.station), running(station):
                    rig.sim.packer.put(rig.units)
                    await until(lambda: station.stats.pallets == 2, "two pallets closed", within=60)
        finally:
            await pallets.stop()
        h = rig.setup.hierarchy
        closed = h.containers(rig.order_id, level="pallet", states=[ContainerState.CLOSED])
        assert len(closed) == 2 and station.stats.labels_scrapped == 1
        truth = pallets.ground_truth()["pallets"]
        assert len(truth) == 2
        for pallet, sim_pallet in zip(closed, truth, strict=True):
            assert sscc_of(sim_pallet["labels"][-1]) == pallet.code
            on_it = {h.container(epc).code for epc in h.children(pallet.epc)}
            cases = [rig.sim.packer.cases[n - 1] for n in sim_pallet["cases"]]
            assert on_it == {sscc_of(case.labels[-1]) for case in cases} and len(on_it) == 2


@bounded(120)
async def test_a_pallet_interrupted_after_its_sscc_was_reserved_closes_with_a_new_one(
    tmp_path: Path,
) -> None:
    """The pallet station stopped while its label prints (the label camera silent): its scans are
    kept, the reserved SSCC is scrapped at the next start, and the pallet closes with a new one."""
    async with case_rig(tmp_path, CASE * 2, cases_per_min=90) as rig:
        pallets = PalletStationSim()
        pallets.attach(rig.sim)
        await pallets.start()
        try:
            configs = pallets.driver_configs()

            async def pallet_station() -> tuple[PalletStation, contextlib.AsyncExitStack]:
                stack = contextlib.AsyncExitStack()
                scanner = await stack.enter_async_context(
                    device("scanner", configs["scanner"], "s")
                )
                printer = await stack.enter_async_context(
                    device("label_printer", configs["label_printer"], "plp")
                )
                camera = await stack.enter_async_context(
                    device("camera", configs["label_camera"], "plc")
                )
                labels = LabelPath(printer, camera, label_reader(VisionSection()), TIMINGS)
                station = PalletStation(
                    rig.setup.hierarchy, rig.order_id, scanner=scanner, labels=labels
                )
                return station, stack

            first, stack = await pallet_station()
            await until(lambda: pallets.scanner.clients, "scanner connected")
            pallets.labels.camera.mute = True  # the first pallet label is never read back
            async with running(rig.station), running(first):
                rig.sim.packer.put(rig.units)
                await until(lambda: len(first.scanned()) == 2, "both cases scanned", within=30)
                await until(lambda: pallets.labels.printer.printed, "the pallet label printed")
            await stack.aclose()
            reserved = rig.setup.hierarchy.containers(rig.order_id, level="pallet")
            assert [b.state for b in reserved] == [ContainerState.RESERVED]
            pallets.labels.camera.mute = False
            second, stack = await pallet_station()
            async with stack, running(second):
                await until(lambda: second.stats.pallets == 1, "the pallet closed", within=30)
            boxes = rig.setup.hierarchy.containers(rig.order_id, level="pallet")
            assert [b.state for b in boxes] == [ContainerState.SCRAPPED, ContainerState.CLOSED]
            assert boxes[0].code != boxes[1].code and second.scanned() == []
            assert pallets.labels.printer.printed == [boxes[0].code, boxes[1].code]
            assert boxes[1].children == 2
        finally:
            await pallets.stop()


@bounded(150)
async def test_cases_identified_by_gtin_and_serial_are_labelled_verified_and_palletised(
    tmp_path: Path,
) -> None:
    """A homogeneous case carries its own GTIN with a serial (AI 01 + 21, lot, expiry; no SSCC
    content): the station allocates the serial, prints and reads back that label, commissions the
    case as an SGTIN before packing, and the pallet scanner reads the case labels onto a pallet.
    An unreadable label scraps its serial, never used again."""
    async with case_rig(tmp_path, CASE * 3, case_identifier="gtin_serial", cases_per_min=90) as rig:
        rig.sim.packer.force(None, CaseDefect.UNREADABLE_LABEL, CaseDefect.FOREIGN_CODE)
        pallets = PalletStationSim()
        pallets.attach(rig.sim)
        await pallets.start()
        try:
            configs = pallets.driver_configs()
            async with contextlib.AsyncExitStack() as stack:
                scanner = await stack.enter_async_context(
                    device("scanner", configs["scanner"], "s")
                )
                printer = await stack.enter_async_context(
                    device("label_printer", configs["label_printer"], "plp")
                )
                camera = await stack.enter_async_context(
                    device("camera", configs["label_camera"], "plc")
                )
                await until(lambda: pallets.scanner.clients, "scanner connected")
                labels = LabelPath(printer, camera, label_reader(VisionSection()), TIMINGS)
                station = PalletStation(
                    rig.setup.hierarchy, rig.order_id, scanner=scanner, labels=labels
                )
                cases = rig.sim.packer.cases
                async with running(rig.station), running(station):
                    rig.sim.packer.put(rig.units)
                    await until(
                        lambda: len(cases) == 3 and all(c.verdict is not None for c in cases),
                        "every case reached its gate",
                        within=60,
                    )
                    await until(lambda: len(station.scanned()) == 1, "the good case scanned")
                    pallet = await station.close_pallet(partial=True)
        finally:
            await pallets.stop()
        assert [c.verdict for c in cases] == [True, False, False]
        check_against_truth(rig)
        h = rig.setup.hierarchy
        boxes = h.containers(rig.order_id, level="case")
        assert [b.state for b in boxes] == [ContainerState.CLOSED, ContainerState.SCRAPPED]
        good, scrapped = boxes
        assert good.code.startswith("01" + CASE_GTIN + "21") and good.epc.startswith(
            "urn:epc:id:sgtin:9506000.1"
        )
        assert scrapped.serial != good.serial
        label = gs1.parse(cases[0].labels[-1], check_requisites=False)
        assert dict(label.ais) == {
            "01": CASE_GTIN, "21": good.serial, "10": "LOT1", "17": "491231"
        }  # fmt: skip
        assert pallet is not None and h.children(pallet.epc) == [good.epc]
        events = [
            (kind, json.loads(payload))
            for kind, payload in rig.setup.conn.execute(
                "SELECT kind, payload FROM outbox WHERE kind IN "
                "('container_commissioning', 'packing') ORDER BY seq"
            )
        ]
        case_events = [
            kind
            for kind, e in events
            if good.epc in [*e.get("epcList", []), *e.get("childEPCs", []), e.get("parentID")]
        ]
        # commissioned before its units are packed, then packed onto the pallet
        assert case_events == ["container_commissioning", "packing", "packing"]
        assert not any(scrapped.epc in json.dumps(e) for _, e in events)
