"""`edge-agent demo --aggregate`: the line end of the demo, cases and pallets.

Units the unit gate passes go into a simulated case packer; the case station (case camera, case
PLC over Modbus TCP, ZPL label printer and label camera) and the pallet station (TCP scanner,
pallet label printer and camera) are simulators on loopback, driven by the daemon's own
stations (``[aggregation]``: ``Agent.stations``, following the order on the line) as with
``edge-agent run``. The case packer injects case-level defects drawn by the seed (missing unit,
foreign code, duplicate, unreadable code, unreadable label, a unit removed after the read).
With ``--bundle N`` a bundler (``BundleStationSim``: bundle camera, bundle PLC, bundle label
printer and camera) shrink-wraps every N units into a bundle before the case packer, driven by
the daemon's bundle station (``[aggregation.bundle_station]``); its bundles, defects injected the
same way, go into the cases (bundle -> case -> pallet).

Orders do not start by themselves (``[orders] auto_start = false``): as at a real line end, the
next order starts after the line clearance of the previous one. When the unit line has made an
order's quantity, the demo finishes its line end as the people at it would, through the REST
API: the last, partial case is announced to the case station and packed, the partial last
pallet is closed, the units that fell out of rejected cases (never read in any case) are
recorded loose for rework; then the order is closed and the next one started.

The report compares the ledger's hierarchy with the simulators' physical truth: every defective
case rejected, every accepted case holding exactly the units physically in it, every pallet
holding exactly the cases on it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from edge_agent.aggregation.hierarchy import ContainerState, Hierarchy, LooseReason
from edge_agent.aggregation.runner import StationRunner
from edge_agent.errors import AggregationRefused, EdgeAgentError
from edge_agent.gs1.check import gtin_check_digit
from edge_agent.ledger import Ledger
from edge_agent.orders import audit
from simulators.aggregation.label import label_code
from simulators.aggregation.station import (
    BundleStationSim,
    CaseStationSim,
    PalletStationSim,
    SimBundle,
)
from simulators.demo.orders import PRODUCTS
from simulators.line import SimUnit

log = structlog.get_logger(__name__)

CASE_GATE_S = 8.0  # case camera to case gate: both reads, the label printed and read back
CASES_PER_MIN = 30.0  # the slowest conveyor pace: one case every 2 s reaches the case camera
# the fastest: one case every 0.5 s, 5x the time a station takes for a case on a quiet 2-core
# machine (0.1 s), so a loaded one keeps up and no verdict comes late at the gate
FAST_CASES_PER_MIN = 120.0
SMALL_FRAME = (1280, 960)  # case frames of up to 12 codes; larger cases get the 5 MP frame
STEP_S = 90.0  # the longest the finish waits for one thing (a loaded 2-core machine)
OPERATOR = audit.Actor("demo-operator", "demo")


@dataclass(frozen=True)
class AggregateOptions:
    case_size: int = 4
    cases_per_pallet: int = 2
    case_defect_rate: float = 0.3
    case_identifier: str = "sscc"  # or "gtin_serial": the case's own GTIN with a serial
    bundle_size: int | None = None  # units per bundle: bundle -> case -> pallet (cases of bundles)

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
        bundle: list[dict[str, Any]] = []
        if self.bundle_size is not None:
            bundle = [{"level": "bundle", "capacity": self.bundle_size, "partial": "allowed"}]
        return {
            "levels": [
                *bundle,
                case,
                {
                    "level": "pallet",
                    "capacity": self.cases_per_pallet,
                    "partial": "allowed",
                    "extension_digit": 1,
                },
            ]
        }


def conveyor_pace(units_per_min: float | None, units_per_container: int) -> float:
    """Containers per minute on a conveyor after the packer: half again as fast as the unit line
    fills them, so the packer never backs up, within CASES_PER_MIN..FAST_CASES_PER_MIN."""
    if units_per_min is None:
        return FAST_CASES_PER_MIN
    filled = units_per_min / units_per_container
    return min(FAST_CASES_PER_MIN, max(CASES_PER_MIN, 1.5 * filled))


class Api:
    """What the line end asks the daemon's REST API (the demo's ``ApiClient``)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return await asyncio.to_thread(self.client.post, path, body or {})

    async def get(self, path: str) -> Any:
        return await asyncio.to_thread(self.client.get, path)


@dataclass
class LineEnd:
    """The case and pallet station simulators, fed with the units of the order whose line end
    the daemon's stations work on."""

    options: AggregateOptions
    seed: int
    queue: list[str] = field(default_factory=list)  # the orders, in the order they run
    units_per_min: float | None = None  # the unit line's speed; None: as fast as it goes
    cases: CaseStationSim = field(init=False)
    bundles: BundleStationSim | None = field(init=False, default=None)
    pallets: PalletStationSim = field(init=False)
    stations: StationRunner | None = None  # the daemon's, once it serves
    order_id: str | None = None  # the order whose units go into the case packer
    finished: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    _seen: dict[int, SimUnit] = field(default_factory=dict)  # at the unit camera, not gated yet
    _waiting: list[SimUnit] = field(default_factory=list)  # passed before the stations ran
    _passed: int = 0  # units of this order into the case packer
    _first_case: int = 0  # the packer's cases before this order's
    _first_bundle: int = 0  # the bundler's bundles before this order's

    def __post_init__(self) -> None:
        size = SMALL_FRAME if self.options.case_size <= 12 else None
        bundle_size = self.options.bundle_size
        units_per_case = self.options.case_size * (bundle_size or 1)
        self.cases = CaseStationSim(
            case_size=self.options.case_size,
            defect_rate=self.options.case_defect_rate,
            seed=self.seed,
            gate_delay_s=CASE_GATE_S,
            cases_per_min=conveyor_pace(self.units_per_min, units_per_case),
            size=size,
        )
        self.pallets = PalletStationSim(seed=self.seed + 1)
        self.pallets.attach(self.cases)
        if bundle_size is not None:
            self.bundles = BundleStationSim(
                case_size=bundle_size,
                defect_rate=self.options.case_defect_rate,
                seed=self.seed + 2,
                gate_delay_s=CASE_GATE_S,
                cases_per_min=conveyor_pace(self.units_per_min, bundle_size),
                size=SMALL_FRAME if bundle_size <= 12 else None,
            )
            self.bundles.feed(self.cases)

    # --- wiring -----------------------------------------------------------------------------

    async def start(self, unit_line: Any, unit_gate: Any) -> None:
        """Start the simulators; take every unit the unit gate passes (held back until the
        stations are connected, as a packer waits for its line end)."""
        unit_line.on_trigger(lambda trigger, unit: self._seen.__setitem__(trigger, unit))
        unit_gate.gate_listeners.append(self._left_unit_gate)
        await self.cases.start()
        await self.pallets.start()
        if self.bundles is not None:
            await self.bundles.start()

    async def stop(self) -> None:
        if self.bundles is not None:
            await self.bundles.stop()
        await self.pallets.stop()
        await self.cases.stop()

    def config_section(self) -> dict[str, Any]:
        """``[aggregation]`` of the demo config: the stations' device tables."""
        configs = self.cases.driver_configs()
        # a loaded machine answers late at times: the case gate is seconds away
        configs["plc"]["timeout_s"] = 3.0
        timings = {"closing_read_s": 3.0, "label_confirm_s": 5.0, "label_read_s": 3.0}
        section: dict[str, Any] = {
            "case_station": {**configs, **timings},
            "pallet_station": self.pallets.driver_configs(),
        }
        if self.bundles is not None:
            bundler = self.bundles.driver_configs()
            bundler["plc"]["timeout_s"] = 3.0
            section["bundle_station"] = {**bundler, **timings}
        return section

    @property
    def _packer(self) -> Any:
        """Where the units the unit gate passes go: the bundler, else the case packer."""
        return (self.bundles or self.cases).packer

    def _left_unit_gate(self, trigger: int, passed: bool) -> None:
        unit = self._seen.pop(trigger, None)
        if not passed or unit is None:
            return
        if self.order_id is None:
            self._waiting.append(unit)
        else:
            self._passed += 1
            self._packer.put([unit])

    # --- the order on the line ----------------------------------------------------------------

    def watch(self, orders: list[dict[str, Any]]) -> None:
        """Called with every poll of the orders: once the daemon's stations work on the order
        that runs (connected to their devices), its units go into the case packer."""
        if self.order_id is not None or self.stations is None:
            return
        for order in orders:
            # completed too: a fast order may end between two polls; its units wait
            running = order["state"] in ("running", "held", "completed")
            if running and order["id"] not in self.finished and self._stations_on(order["id"]):
                self._accept(order["id"])

    def _stations_on(self, order_id: str) -> bool:
        runner = self.stations
        if runner is None:
            return False
        bundles = runner.bundle_station
        if self.bundles is not None and (bundles is None or bundles.order_id != order_id):
            return False
        return (
            runner.case_station is not None
            and runner.case_station.order_id == order_id
            and runner.pallet_station is not None
            and runner.pallet_station.order_id == order_id
        )

    def _accept(self, order_id: str) -> None:
        log.info("line_end_accepts", order=order_id)
        self.order_id = order_id
        self._passed = 0
        self._first_case = len(self.cases.packer.cases)
        self._first_bundle = len(self.bundles.packer.cases) if self.bundles is not None else 0
        waiting, self._waiting = self._waiting, []
        self._passed += len(waiting)
        self._packer.put(waiting)

    async def finish(self, order_id: str, api: Api) -> None:
        """The order's quantity is made: pack the partial last case, close the partial last
        pallet, record the units that fell out of cases loose (the next order's units wait)."""
        if self.order_id != order_id:
            self.finished.add(order_id)
            if self.order_id is None:
                self.errors.append(f"order {order_id}: the stations never worked on it")
            return
        try:
            await self._until(lambda: not self._seen, "every unit through the unit gate")
            if self.bundles is not None:
                await self._finish_bundles(api)
            await self._until(self._cases_decided, "every case decided at its gate")
            remainder = self._into_cases() % self.options.case_size
            station = self.stations.case_station if self.stations is not None else None
            if remainder and station is not None and not station.partial_allowed:
                assert self.stations is not None
                self._leave_partial_loose(self.stations.hierarchy, order_id)
            elif remainder:
                await api.post("/aggregation/stations/case/last", {"count": remainder})
                self.cases.packer.flush()
                await self._until(self._cases_decided, "the partial last case decided")
            await self._until(self._cases_scanned, "every passed case scanned onto a pallet")
            await self._close_last_pallet(api)
            assert self.stations is not None
            self._record_loose(self.stations.hierarchy, order_id)
        except EdgeAgentError as exc:
            self.errors.append(f"order {order_id}: {exc}")
        finally:
            self.order_id = None
            self.finished.add(order_id)

    async def _finish_bundles(self, api: Api) -> None:
        """The bundler's last, partial bundle, announced through the REST API and wrapped."""
        size = self.options.bundle_size
        assert size is not None and self.bundles is not None
        await self._until(self._bundles_decided, "every bundle decided at its gate")
        if remainder := self._passed % size:
            await api.post("/aggregation/stations/bundle/last", {"count": remainder})
            self.bundles.packer.flush()
            await self._until(self._bundles_decided, "the partial last bundle decided")

    def _bundles(self) -> list[Any]:
        return self.bundles.packer.cases[self._first_bundle :] if self.bundles is not None else []

    def _bundles_decided(self) -> bool:
        station = self.stations.bundle_station if self.stations is not None else None
        bundles = self._bundles()
        assert self.options.bundle_size is not None
        return (
            len(bundles) >= self._passed // self.options.bundle_size
            and all(b.verdict is not None for b in bundles)
            and (station is None or not station._pending)
        )

    def _into_cases(self) -> int:
        """What the case packer got for this order: units, or the bundles the bundler passed
        (with a label: the ones ``BundleStationSim.feed`` sends on)."""
        if self.bundles is None:
            return self._passed
        return sum(
            1
            for b in self._bundles()
            if b.verdict and b.inside and b.labels and label_code(b.labels[-1]) is not None
        )

    async def _close_last_pallet(self, api: Api) -> None:
        """The partial last pallet, closed through the REST API (a 202: still printing its
        label, or the station holds on failed labels: waited for)."""
        answer = await api.post("/aggregation/stations/pallet/close")
        if answer.get("closed") is None and "still closing" in answer.get("detail", ""):
            await self._until(lambda: not self._scanned_now(), "the last pallet closed")

    def _scanned_now(self) -> list[str]:
        pallet = self.stations.pallet_station if self.stations is not None else None
        return pallet.scanned() if pallet is not None else []

    def _cases(self) -> list[Any]:
        return self.cases.packer.cases[self._first_case :]

    def _leave_partial_loose(self, hierarchy: Hierarchy, order_id: str) -> None:
        """The plan refuses a partial case: the units left in the packer are recorded loose."""
        left = [_epc_of(hierarchy, u) for u in self.cases.packer.filling]
        if left:
            hierarchy.leave_loose(
                order_id, left, reason=LooseReason.PARTIAL_REFUSED, actor=OPERATOR
            )

    def _cases_decided(self) -> bool:
        station = self.stations.case_station if self.stations is not None else None
        cases = self._cases()
        formed = self._into_cases() // self.options.case_size
        return (
            len(cases) >= formed
            and all(c.verdict is not None for c in cases)
            and (station is None or not station._pending)
        )

    def _cases_scanned(self) -> bool:
        runner = self.stations
        if runner is None or runner.pallet_station is None:
            return True
        passed = sum(1 for c in self._cases() if c.verdict)
        h = runner.hierarchy
        assert self.order_id is not None
        closed = h.containers(self.order_id, level="pallet", states=[ContainerState.CLOSED])
        on_pallets = sum(p.children for p in closed)
        return on_pallets + len(runner.pallet_station.scanned()) >= passed

    def _record_loose(self, hierarchy: Hierarchy, order_id: str) -> None:
        """The units of rejected cases go to rework, as the operator records them: the station
        recorded those it read; this adds those no case frame showed (a slot left empty, an
        unreadable code, a foreign or duplicate code in their place). With bundles: the units
        of rejected bundles, and the bundles of rejected cases."""
        known = hierarchy.loose(order_id)
        epcs: list[str] = []
        for case in self._bundles() + self._cases():
            units = case.loose + ([] if case.verdict else case.inside)
            for unit in units:
                epc = _epc_of(hierarchy, unit)
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

    async def _until(self, condition: Any, what: str) -> None:
        """Wait for ``condition``; bounded by STEP_S without progress (a case decided, a case
        scanned), however long the cases still on the conveyor take."""
        deadline = time.monotonic() + STEP_S
        progress = self._progress()
        while not condition():
            if (now := self._progress()) != progress:
                progress, deadline = now, time.monotonic() + STEP_S
            if time.monotonic() > deadline:
                raise EdgeAgentError(f"not {what} after {STEP_S:.0f} s without progress")
            await asyncio.sleep(0.05)

    def _progress(self) -> tuple[int, int]:
        boxes = self._bundles() + self._cases()
        return sum(1 for c in boxes if c.verdict is not None), len(self._scanned_now())

    def truth(self) -> dict[str, Any]:
        truth = self.cases.ground_truth()
        truth["pallets"] = self.pallets.ground_truth()["pallets"]
        if self.bundles is not None:
            truth["bundles"] = self.bundles.ground_truth()
        return truth


def _epc_of(hierarchy: Hierarchy, item: SimUnit) -> str:
    """The ledger's EPC of what the packer handled: a unit, or a bundle by its code."""
    if isinstance(item, SimBundle):
        try:
            return hierarchy.container(item.serial).epc
        except AggregationRefused:
            return item.serial  # not the ledger's: refused as such where it is used
    ledger: Ledger = hierarchy.ledger
    return ledger.epc(item.gtin, item.serial)


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
        sscc = _passed_and_closed("case", case, closed["case"], problems)
        if sscc is None:
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
        physical = {_sscc(cases[n]["labels"][-1]) if cases[n]["labels"] else None
                    for n in pallet["cases"]}  # fmt: skip
        if closed["pallet"][sscc] != physical:
            problems.append(f"pallet {pallet['number']} (SSCC {sscc}): ledger and pallet differ")
    if len(pallets) != len(closed["pallet"]):
        problems.append(f"{len(pallets)} pallets built, {len(closed['pallet'])} closed")
    bundles = _bundle_figures(conn, order_ids, truth.get("bundles"), problems)
    return {
        **bundles,
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
        "units_packed": _units_packed(conn, order_ids),
        "units_loose": loose,
        "labels_scrapped": _scrapped(conn, order_ids),
        "aggregation_problems": problems,
    }


def _bundle_figures(
    conn: sqlite3.Connection,
    order_ids: list[str],
    truth: dict[str, Any] | None,
    problems: list[str],
) -> dict[str, Any]:
    """With a bundler: every defective bundle rejected, every bundle that passed its gate closed
    in the ledger with exactly the units physically in it, each unit in one bundle only."""
    if truth is None:
        return {}
    marks = ",".join("?" * len(order_ids))
    closed = {
        code: _children(conn, epc, "bundle")
        for code, epc in conn.execute(
            f"SELECT code, epc FROM containers WHERE level = 'bundle' AND state = 'closed' "
            f"AND order_id IN ({marks})",
            order_ids,
        )
    }
    seen: dict[str, str] = {}
    for bundle in truth["cases"]:
        code = _passed_and_closed("bundle", bundle, closed, problems)
        if code is not None and closed[code] != set(bundle["serials"]):
            problems.append(
                f"bundle {bundle['number']} ({code}): the ledger's units differ from those "
                "physically in it"
            )
    for code, units in closed.items():
        for serial in units:
            if serial in seen:
                problems.append(f"unit {serial} is in bundles {seen[serial]} and {code}")
            seen[serial] = code
    return {
        "bundles": len(closed),
        "bundle_defects_injected": truth["case_defects_injected"],
        "bundle_defects_rejected": truth["case_defects_rejected"],
        "bundle_defects_by_kind": _by_kind(truth["cases"]),
        "bundles_rejected": sum(1 for b in truth["cases"] if b["passed"] is False),
    }


def _children(conn: sqlite3.Connection, epc: str, level: str) -> set[str]:
    """A closed bundle's or case's unit serials (a case of bundles: their codes), or a closed
    pallet's case SSCCs."""
    rows = conn.execute(
        "SELECT coalesce(p.serial, c.code) FROM packed p LEFT JOIN containers c "
        "ON c.epc = p.child WHERE p.parent = ?",
        (epc,),
    )
    return {str(value) for (value,) in rows}


def _units_packed(conn: sqlite3.Connection, order_ids: list[str]) -> int:
    """Units in a closed container (a case, or a bundle in one)."""
    marks = ",".join("?" * len(order_ids))
    (n,) = conn.execute(
        f"SELECT count(*) FROM packed p JOIN containers c ON c.epc = p.parent WHERE "
        f"p.level = 'unit' AND c.state = 'closed' AND p.order_id IN ({marks})",
        order_ids,
    ).fetchone()
    return int(n)


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


def _passed_and_closed(
    kind: str, made: dict[str, Any], closed: Mapping[str, Any], problems: list[str]
) -> str | None:
    """The label code of a container the line made (``made``, physical truth) that passed its
    gate and is closed in the ledger under that label; None, with what is wrong in
    ``problems``, for one that never reached its gate, passed with a defect, or has no closed
    container for its label (a rejected one: None, nothing wrong)."""
    number = made["number"]
    if made["passed"] is None:
        problems.append(f"{kind} {number} never reached its gate")
    elif made["passed"] and made["defect"]:
        problems.append(f"{kind} {number} ({made['defect']}) passed its gate")
    if not made["passed"]:
        return None
    code = _sscc(made["labels"][-1]) if made["labels"] else None
    if code is None or code not in closed:
        problems.append(f"{kind} {number} passed without a closed {kind} for its label")
        return None
    return str(code)


def _sscc(data: str) -> str | None:
    """The code a label carries (an SSCC, or a case's ``01<gtin>21<serial>``)."""
    return label_code(data)


def case_gtin(product_gtin: str) -> str:
    """The case GTIN of the demo's homogeneous cases: the unit's GTIN with indicator digit 1
    (another packaging level of the same product), its check digit recomputed."""
    body = "1" + product_gtin[1:13]
    return body + str(gtin_check_digit(body))
