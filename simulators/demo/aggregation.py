"""`edge-agent demo --aggregate`: the line end of the demo, cases and pallets.

Units the unit gate passes go into a simulated case packer; the case station (case camera, case
PLC over Modbus TCP, ZPL label printer and label camera) and the pallet station (TCP scanner,
pallet label printer and camera) are simulators on loopback, driven by the agent's own
``StationRunner`` in the demo process, beside the daemon, on the same state database. The case
packer injects case-level defects drawn by the seed (missing unit, foreign code, duplicate,
unreadable code, unreadable label, a unit removed after the read).

When the unit line has made the order's quantity, the demo finishes the line end as the people
at it would: the last, partial case is announced to the case station and packed, the partial
last pallet is closed, the units that fell out of rejected cases (never read in any case) are
recorded loose for rework, the stations stop and the order is closed through the REST API.

The report compares the ledger's hierarchy with the simulators' physical truth: every defective
case rejected, every accepted case holding exactly the units physically in it, every pallet
holding exactly the cases on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from edge_agent.aggregation.hierarchy import ContainerState, Hierarchy, LooseReason
from edge_agent.aggregation.runner import StationRunner
from edge_agent.config.models import AgentConfig
from edge_agent.errors import AggregationRefused, EdgeAgentError
from edge_agent.gs1.check import gtin_check_digit
from edge_agent.ledger import Ledger
from edge_agent.orders import audit
from simulators.aggregation.label import label_code
from simulators.aggregation.station import CaseStationSim, PalletStationSim
from simulators.demo.orders import PRODUCTS
from simulators.line import SimUnit

log = structlog.get_logger(__name__)

CASE_GATE_S = 8.0  # case camera to case gate: both reads, the label printed and read back
CASES_PER_MIN = 30.0  # case conveyor pace: one case every 2 s reaches the case camera
SMALL_FRAME = (1280, 960)  # case frames of up to 12 codes; larger cases get the 5 MP frame
STEP_S = 90.0  # the longest the finish waits for one thing (a loaded 2-core machine)
OPERATOR = audit.Actor("demo-operator", "demo")


@dataclass(frozen=True)
class AggregateOptions:
    case_size: int = 4
    cases_per_pallet: int = 2
    case_defect_rate: float = 0.3
    case_identifier: str = "sscc"  # or "gtin_serial": the case's own GTIN with a serial

    def plan(self, product_gtin: str | None = None) -> dict[str, Any]:
        """The order's aggregation plan: SSCC cases (partial last one allowed) or cases of
        their own GTIN + serial (partial refused: the GTIN fixes the count), SSCC pallets."""
        case: dict[str, Any] = {"level": "case", "capacity": self.case_size, "partial": "allowed"}
        if self.case_identifier == "gtin_serial":
            # a fixed-measure case GTIN fixes the count: the partial last case is refused, its
            # units stay loose (partial_refused)
            gtin = product_gtin or PRODUCTS[0][0]  # --aggregate runs the first demo product
            case = {"level": "case", "capacity": self.case_size, "partial": "refused",
                    "identifier": "gtin_serial", "gtin": case_gtin(gtin)}  # fmt: skip
        return {
            "levels": [
                case,
                {
                    "level": "pallet",
                    "capacity": self.cases_per_pallet,
                    "partial": "allowed",
                    "extension_digit": 1,
                },
            ]
        }


@dataclass
class LineEnd:
    """The case and pallet station simulators and the station runner of the order on the line."""

    options: AggregateOptions
    seed: int
    cases: CaseStationSim = field(init=False)
    pallets: PalletStationSim = field(init=False)
    runner: StationRunner | None = None
    order_id: str | None = None
    finished: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _seen: dict[int, SimUnit] = field(default_factory=dict)  # at the unit camera, not gated yet
    _waiting: list[SimUnit] = field(default_factory=list)  # passed before the stations ran
    _passed: int = 0

    def __post_init__(self) -> None:
        size = SMALL_FRAME if self.options.case_size <= 12 else None
        self.cases = CaseStationSim(
            case_size=self.options.case_size,
            defect_rate=self.options.case_defect_rate,
            seed=self.seed,
            gate_delay_s=CASE_GATE_S,
            cases_per_min=CASES_PER_MIN,
            size=size,
        )
        self.pallets = PalletStationSim(seed=self.seed + 1)
        self.pallets.attach(self.cases)

    # --- wiring -----------------------------------------------------------------------------

    async def start(self, unit_line: Any, unit_gate: Any) -> None:
        """Start the simulators; take every unit the unit gate passes (held back until the
        stations are connected, as a packer waits for its line end)."""
        unit_line.on_trigger(lambda trigger, unit: self._seen.__setitem__(trigger, unit))
        unit_gate.gate_listeners.append(self._left_unit_gate)
        await self.cases.start()
        await self.pallets.start()

    async def stop(self) -> None:
        await self._stop_runner()
        await self.pallets.stop()
        await self.cases.stop()

    def config_section(self) -> dict[str, Any]:
        """``[aggregation]`` of the demo config: the stations' device tables."""
        return {
            "case_station": {
                **self.cases.driver_configs(),
                "closing_read_s": 3.0,
                "label_confirm_s": 5.0,
                "label_read_s": 3.0,
            },
            "pallet_station": self.pallets.driver_configs(),
        }

    def _left_unit_gate(self, trigger: int, passed: bool) -> None:
        unit = self._seen.pop(trigger, None)
        if not passed or unit is None:
            return
        self._passed += 1
        if self._task is None:
            self._waiting.append(unit)
        else:
            self.cases.packer.put([unit])

    # --- the order on the line ----------------------------------------------------------------

    async def watch(self, model: AgentConfig, orders: list[dict[str, Any]]) -> list[str]:
        """Called with every poll of the orders: start the stations for the order that runs,
        finish the line end of one that completed. Returns the orders whose line end is done."""
        for order in orders:
            # completed too: a fast order may end between two polls; its units wait in the packer
            running = order["state"] in ("running", "held", "completed")
            if running and self._task is None and order["id"] not in self.finished:
                await self._start_runner(model, order["id"])
        return sorted(self.finished)

    async def _start_runner(self, model: AgentConfig, order_id: str) -> None:
        self.runner = StationRunner(model, order_id)
        self.order_id = order_id
        self._task = asyncio.create_task(self.runner.run(), name="stations")
        await self._until(
            lambda: all(
                sim.clients
                for sim in (
                    self.cases.packer,
                    self.cases.labels.camera,
                    self.pallets.scanner,
                    self.pallets.labels.camera,
                )
            ),
            "the stations connected to their devices",
        )
        waiting, self._waiting = self._waiting, []
        self.cases.packer.put(waiting)

    async def finish(self, order_id: str) -> None:
        """The order's quantity is made: pack the partial last case, close the partial last
        pallet, record the units that fell out of cases loose, stop the stations."""
        runner = self.runner
        if runner is None or self.order_id != order_id:
            self.finished.add(order_id)
            return
        try:
            await self._until(lambda: not self._seen, "every unit through the unit gate")
            await self._until(self._cases_decided, "every case decided at its gate")
            remainder = self._passed % self.options.case_size
            station = runner.case_station
            if remainder and station is not None and not station.partial_allowed:
                self._leave_partial_loose(runner.hierarchy, order_id)
            elif remainder:
                assert station is not None
                station.expect(remainder)
                self.cases.packer.flush()
                await self._until(self._cases_decided, "the partial last case decided")
            await self._until(self._cases_scanned, "every passed case scanned onto a pallet")
            pallet = runner.pallet_station
            if pallet is not None:  # a full pallet is its station's to close: not twice
                full = pallet.capacity
                await self._until(lambda: len(pallet.scanned()) < full, "the full pallet closed")
            if pallet is not None and pallet.scanned():
                await pallet.close_pallet(partial=True)
            self._record_loose(runner.hierarchy, order_id)
        except EdgeAgentError as exc:
            self.errors.append(f"order {order_id}: {exc}")
        finally:
            await self._stop_runner()
            self.finished.add(order_id)

    def _leave_partial_loose(self, hierarchy: Hierarchy, order_id: str) -> None:
        """The plan refuses a partial case: the units left in the packer are recorded loose."""
        ledger: Ledger = hierarchy.ledger
        left = [ledger.epc(u.gtin, u.serial) for u in self.cases.packer.filling]
        if left:
            hierarchy.leave_loose(
                order_id, left, reason=LooseReason.PARTIAL_REFUSED, actor=OPERATOR
            )

    def _cases_decided(self) -> bool:
        station = self.runner.case_station if self.runner is not None else None
        cases = self.cases.packer.cases
        formed = self._passed // self.options.case_size
        return (
            len(cases) >= formed
            and all(c.verdict is not None for c in cases)
            and (station is None or not station._pending)
        )

    def _cases_scanned(self) -> bool:
        runner = self.runner
        if runner is None or runner.pallet_station is None:
            return True
        passed = sum(1 for c in self.cases.packer.cases if c.verdict)
        h = runner.hierarchy
        assert self.order_id is not None
        closed = h.containers(self.order_id, level="pallet", states=[ContainerState.CLOSED])
        on_pallets = sum(p.children for p in closed)
        return on_pallets + len(runner.pallet_station.scanned()) >= passed

    def _record_loose(self, hierarchy: Hierarchy, order_id: str) -> None:
        """The units of rejected cases go to rework, as the operator records them: the station
        recorded those it read; this adds those no case frame showed (a slot left empty, an
        unreadable code, a foreign or duplicate code in their place)."""
        ledger: Ledger = hierarchy.ledger
        known = hierarchy.loose(order_id)
        epcs: list[str] = []
        for case in self.cases.packer.cases:
            units = case.loose + ([] if case.verdict else case.inside)
            for unit in units:
                epc = ledger.epc(unit.gtin, unit.serial)
                if not _of_order(hierarchy, epc, order_id):
                    continue  # a foreign unit goes back where it came from
                if epc not in known and epc not in epcs and hierarchy.parent_of(epc) is None:
                    epcs.append(epc)
        if epcs:
            try:
                hierarchy.leave_loose(
                    order_id, epcs, reason=LooseReason.CASE_REJECTED, actor=OPERATOR
                )
            except AggregationRefused as exc:
                self.errors.append(f"order {order_id}: loose units not recorded: {exc}")

    async def _stop_runner(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            # Cancel until it ends: Python 3.11's wait_for (inside pymodbus) can lose one
            while not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=1.0)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()
        if self.runner is not None:
            self.runner.close()
            self.runner = None

    async def _until(self, condition: Any, what: str) -> None:
        """Wait for ``condition``; bounded by ``STEP_S`` without progress (a case decided or
        scanned): in fast mode the unit line outruns the case conveyor by far, and the cases
        it filled take their time, one after the other."""
        deadline, seen = time.monotonic() + STEP_S, self._progress()
        while not condition():
            if self._task is not None and self._task.done():
                raise EdgeAgentError(f"the stations stopped before {what}")
            if (now := self._progress()) != seen:
                deadline, seen = time.monotonic() + STEP_S, now
            if time.monotonic() > deadline:
                raise EdgeAgentError(f"not {what} after {STEP_S:.0f} s without progress")
            await asyncio.sleep(0.05)

    def _progress(self) -> tuple[int, int]:
        decided = sum(1 for c in self.cases.packer.cases if c.verdict is not None)
        return decided, len(self.pallets.scanner.scanned)

    def truth(self) -> dict[str, Any]:
        truth = self.cases.ground_truth()
        truth["pallets"] = self.pallets.ground_truth()["pallets"]
        return truth


def _of_order(hierarchy: Hierarchy, epc: str, order_id: str) -> bool:
    try:
        return hierarchy.item(epc).order_id == order_id
    except AggregationRefused:
        return False


# --- the report ----------------------------------------------------------------------------


def aggregation_report(
    conn: sqlite3.Connection, order_ids: list[str], truth: dict[str, Any]
) -> dict[str, Any]:
    """The demo report's aggregation figures and the problems found comparing the ledger's
    hierarchy with what the simulators physically did."""
    cases = {c["number"]: c for c in truth["cases"]}
    problems: list[str] = []
    closed: dict[str, dict[str, set[str]]] = {"case": {}, "pallet": {}}  # code -> children
    loose = 0
    for order_id in order_ids:
        for level in ("case", "pallet"):
            for code, epc in conn.execute(
                "SELECT code, epc FROM containers WHERE order_id = ? AND level = ? AND "
                "state = 'closed'",
                (order_id, level),
            ):
                closed[level][code] = _children(conn, epc, level)
        (n,) = conn.execute(
            "SELECT count(*) FROM loose WHERE order_id = ? AND level = 'unit'", (order_id,)
        ).fetchone()
        loose += n
    by_sscc: dict[str, int] = {}
    for case in cases.values():
        if case["passed"] is None:
            problems.append(f"case {case['number']} never reached its gate")
        elif case["passed"] and case["defect"]:
            problems.append(f"case {case['number']} ({case['defect']}) passed its gate")
        if not case["passed"]:
            continue
        sscc = _sscc(case["labels"][-1]) if case["labels"] else None
        if sscc is None or sscc not in closed["case"]:
            problems.append(f"case {case['number']} passed without a closed case for its label")
            continue
        by_sscc[sscc] = case["number"]
        if closed["case"][sscc] != set(case["serials"]):
            problems.append(
                f"case {case['number']} (SSCC {sscc}): the ledger's units differ from those "
                "physically in it"
            )
    for sscc in set(closed["case"]) - set(by_sscc):
        problems.append(f"closed case {sscc} is on no case that passed its gate")
    pallets = [p for p in truth["pallets"] if p["cases"]]
    for pallet in pallets:
        sscc = _sscc(pallet["labels"][-1]) if pallet["labels"] else None
        if sscc is None or sscc not in closed["pallet"]:
            problems.append(f"pallet {pallet['number']} carries no closed pallet's label")
            continue
        physical = {_sscc(cases[n]["labels"][-1]) for n in pallet["cases"]}
        if closed["pallet"][sscc] != physical:
            problems.append(f"pallet {pallet['number']} (SSCC {sscc}): ledger and pallet differ")
    if len(pallets) != len(closed["pallet"]):
        problems.append(f"{len(pallets)} pallets built, {len(closed['pallet'])} closed")
    return {
        "cases": len(closed["case"]),
        "pallets": len(closed["pallet"]),
        "case_defects_injected": truth["case_defects_injected"],
        "case_defects_rejected": truth["case_defects_rejected"],
        "case_defects_by_kind": _by_kind(truth["cases"]),
        "cases_rejected": sum(1 for c in cases.values() if c["passed"] is False),
        # no defect, rejected all the same (its verdict late at the gate on a loaded machine)
        "good_cases_rejected": sum(
            1 for c in cases.values() if c["passed"] is False and not c["defect"]
        ),
        "units_packed": sum(len(u) for u in closed["case"].values()),
        "units_loose": loose,
        "labels_scrapped": _scrapped(conn, order_ids),
        "aggregation_problems": problems,
    }


def _children(conn: sqlite3.Connection, epc: str, level: str) -> set[str]:
    """A closed case's unit serials, or a closed pallet's case SSCCs."""
    if level == "case":
        rows = conn.execute("SELECT serial FROM packed WHERE parent = ?", (epc,))
    else:
        rows = conn.execute(
            "SELECT c.code FROM packed p JOIN containers c ON c.epc = p.child WHERE p.parent = ?",
            (epc,),
        )
    return {str(value) for (value,) in rows}


def _scrapped(conn: sqlite3.Connection, order_ids: list[str]) -> int:
    marks = ",".join("?" * len(order_ids))
    (n,) = conn.execute(
        f"SELECT count(*) FROM containers WHERE state = 'scrapped' AND order_id IN ({marks})",
        order_ids,
    ).fetchone()
    return int(n)


def _by_kind(cases: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for case in cases:
        if case["defect"]:
            counts[case["defect"]] = counts.get(case["defect"], 0) + 1
    return dict(sorted(counts.items()))


def _sscc(data: str) -> str | None:
    """The code a label carries (an SSCC, or a case's ``01<gtin>21<serial>``)."""
    return label_code(data)


def case_gtin(product_gtin: str) -> str:
    """The case GTIN of the demo's homogeneous cases: the unit's GTIN with indicator digit 1
    (another packaging level of the same product), its check digit recomputed."""
    body = "1" + product_gtin[1:13]
    return body + str(gtin_check_digit(body))
