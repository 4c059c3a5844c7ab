"""The automatic case station and the pallet station.

Case station, per case (the case camera sends two frames with the case's trigger: the read of the
open case, then the closing read as the flaps close)::

    read ─ exact match? ─ closing read the same? ─ identifier reserved (persisted) ─ label
    printed ─ label read back the same? ─ case committed (units packed, case closed: one
    transaction) ─ PASS to the case PLC

The case identifier is the plan's: an SSCC (a logistic label: AI 00 with 02, 37, 10, 17) or
the case's own GTIN with a serial (a homogeneous case: AI 01, 21, 10, 17), allocated the same
way (a local range persisted before use, or L3 pages) and commissioned as an SSCC or an SGTIN
in the commit's transaction, before its units are packed.

Anything else rejects the case through the case station's PLC (the PLC contract's verdict ring,
the case count as trigger: no verdict in time is a reject too), its units stay unpacked, and an
identifier already reserved is scrapped, never used again. After the PASS the station follows the case
to its gate: a case the gate rejected anyway (the verdict came too late) is disaggregated, so the
ledger matches what left the line.

Pallet station: every case label the pallet scanner reads is checked (a closed case of this
order, on no pallet) and recorded, persisted, as on the pallet being built; when it holds the
plan's count (or the operator closes a partial one) the pallet's SSCC is reserved, its label
printed and read back, and only then are the cases packed onto it, closed, in one transaction.

Crash safety: everything a restart needs is in the state database (``station_cases`` and
``pallet_scans``). ``recover()`` at the start scraps every SSCC reserved and not committed, and
sends PASS again for committed cases whose gate outcome is not known yet (a committed case is
aggregated with a verified label: passing it is right), then follows them to the gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from edge_agent import gs1
from edge_agent.aggregation.hierarchy import Container, ContainerState, Hierarchy, LooseReason
from edge_agent.aggregation.matching import (
    CaseMatch,
    CaseReason,
    UnitRef,
    check_label,
    match_case,
    refusal_reason,
    same_case,
)
from edge_agent.aggregation.plan import IdentifierKind, Level, PartialPolicy
from edge_agent.alarms import AlarmBoard, AlarmKind
from edge_agent.asyncio_support import raise_if_cancel_lost
from edge_agent.contracts import (
    CodeReader,
    Frame,
    FrameSource,
    LabelPrinter,
    LogisticLabel,
    PlcLink,
    Scanner,
    Verdict,
)
from edge_agent.crashpoints import crash_point
from edge_agent.db import write
from edge_agent.errors import AggregationRefused, EdgeAgentError
from edge_agent.ledger import SerialState
from edge_agent.orders.store import OrderStore

log = structlog.get_logger(__name__)

# Gate outcome of a committed case in ``station_cases.gate``
PENDING, PASSED, REJECTED, SCRAPPED = "pending", "passed", "rejected", "scrapped"


@dataclass(frozen=True)
class StationTimings:
    closing_read_s: float = 3.0  # the closing frame after the read
    label_confirm_s: float = 5.0  # the printer's confirmation of a label
    label_read_s: float = 3.0  # the label camera's frame after the confirmation
    heartbeat_s: float = 0.1  # the agent heartbeat the case PLC watches
    follow_s: float = 0.05  # how often pending cases are followed to their gate


@dataclass
class StationStats:
    cases_read: int = 0
    cases_accepted: int = 0
    cases_rejected: dict[str, int] = field(default_factory=dict)
    labels_scrapped: int = 0
    rejected_at_gate: int = 0  # committed, then rejected at the gate anyway: disaggregated
    pallets: int = 0
    scans_refused: dict[str, int] = field(default_factory=dict)

    def rejected(self, reason: CaseReason) -> None:
        self.cases_rejected[reason] = self.cases_rejected.get(reason, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "cases_read": self.cases_read,
            "cases_accepted": self.cases_accepted,
            "cases_rejected": dict(self.cases_rejected),
            "labels_scrapped": self.labels_scrapped,
            "rejected_at_gate": self.rejected_at_gate,
            "pallets": self.pallets,
            "scans_refused": dict(self.scans_refused),
        }


class _Reads:
    """Frames of one camera, by trigger, as they arrive (a collector task fills it)."""

    def __init__(self) -> None:
        self.by_trigger: dict[int, list[Frame]] = {}
        self.arrivals: asyncio.Queue[int] = asyncio.Queue()
        self.changed = asyncio.Condition()
        self._decided: deque[int] = deque(maxlen=1024)  # a late closing frame is no new case

    async def add(self, frame: Frame) -> None:
        if frame.trigger in self._decided:
            return
        frames = self.by_trigger.setdefault(frame.trigger, [])
        frames.append(frame)
        if len(frames) == 1:
            self.arrivals.put_nowait(frame.trigger)
        async with self.changed:
            self.changed.notify_all()

    async def second(self, trigger: int, within: float) -> Frame | None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within), self.changed:
                await self.changed.wait_for(lambda: len(self.by_trigger.get(trigger, ())) >= 2)
        frames = self.by_trigger.get(trigger, [])
        return frames[1] if len(frames) >= 2 else None

    def forget(self, trigger: int) -> None:
        self.by_trigger.pop(trigger, None)
        self._decided.append(trigger)


class LabelPath:
    """A label printer and the label camera that reads back what it prints."""

    def __init__(
        self,
        printer: LabelPrinter,
        camera: FrameSource,
        reader: CodeReader,
        timings: StationTimings,
    ) -> None:
        self.printer = printer
        self.camera = camera
        self.reader = reader
        self.timings = timings
        self._seq = itertools.count(1)
        self._confirmed: dict[int, asyncio.Event] = {}
        self._frames: asyncio.Queue[Frame] = asyncio.Queue()

    async def collect(self) -> None:
        """Run for the life of the station: confirmations and label frames."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._confirmations())
            tasks.create_task(self._camera())

    async def _confirmations(self) -> None:
        async for confirmation in self.printer.confirmations():
            raise_if_cancel_lost()
            self._confirmed.setdefault(confirmation.seq, asyncio.Event()).set()

    async def _camera(self) -> None:
        async for frame in self.camera.frames():
            raise_if_cancel_lost()
            self._frames.put_nowait(frame)

    async def print_and_verify(
        self,
        sscc: str,
        *,
        gtin: str,
        count: int,
        lot: str,
        expiry: str,
        serial: str | None = None,
    ) -> tuple[CaseReason, str]:
        """Print the label, wait for its print, read it back: ACCEPTED only when the label
        camera read exactly this label. With ``serial``: a case's own GTIN + serial label
        (``sscc`` empty, ``gtin`` the case GTIN)."""
        label = LogisticLabel(next(self._seq), sscc, gtin, count, lot, expiry, serial)
        while not self._frames.empty():  # frames of labels before this one are not its read
            self._frames.get_nowait()
        done = self._confirmed.setdefault(label.seq, asyncio.Event())
        try:
            await self.printer.print_label(label)
            raise_if_cancel_lost()
            async with asyncio.timeout(self.timings.label_confirm_s):
                await done.wait()
        except TimeoutError:
            return CaseReason.NO_LABEL, f"no print confirmation in {self.timings.label_confirm_s} s"
        except EdgeAgentError as exc:
            return CaseReason.NO_LABEL, str(exc)
        finally:
            self._confirmed.pop(label.seq, None)
        crash_point("label_printed")
        try:
            async with asyncio.timeout(self.timings.label_read_s):
                frame = await self._frames.get()
        except TimeoutError:
            return CaseReason.LABEL_UNREADABLE, "no label frame"
        reads = await asyncio.to_thread(self.reader.read, frame.image)
        return check_label(label, reads)


def resolve_unit(hierarchy: Hierarchy, raw: str) -> UnitRef | None:
    """The ledger's unit for a code read in a case frame; None when it is no unit it knows."""
    try:
        item = hierarchy.item(raw)
    except AggregationRefused:
        return None
    if not item.is_unit:
        return None
    packed = hierarchy.parent_of(item.epc) is not None
    commissioned = item.state == SerialState.COMMISSIONED
    return UnitRef(item.epc, item.order_id, commissioned, packed)


def resolve_child(hierarchy: Hierarchy, raw: str, level: Level) -> UnitRef | None:
    """The ledger's child of ``level`` for a code read in a frame: a unit, or a bundle by its
    label (packable once closed); None when it is nothing of that level the ledger knows."""
    if level == Level.UNIT:
        return resolve_unit(hierarchy, raw)
    try:
        item = hierarchy.item(raw)
    except AggregationRefused:
        return None
    if item.level != level:
        return None
    packed = hierarchy.parent_of(item.epc) is not None
    return UnitRef(item.epc, item.order_id, item.state == ContainerState.CLOSED, packed)


class _Station:
    """What both stations share: the ledger's hierarchy, the order and its batch."""

    level: Level

    def __init__(self, hierarchy: Hierarchy, order_id: str) -> None:
        self.hierarchy = hierarchy
        self.conn: sqlite3.Connection = hierarchy.conn
        self.order_id = order_id
        order = OrderStore(self.conn).get(order_id).order
        if order.aggregation is None or not order.aggregation.has(self.level):
            raise EdgeAgentError(
                f"order {order_id} has no {self.level} level in its aggregation plan; the "
                f"{self.level} station needs one"
            )
        self.plan = order.aggregation
        self.plan_level = order.aggregation.level(self.level)
        # an SSCC or (bundles, cases) the level's own GTIN + serial: _label_of prints either
        self.capacity = self.plan_level.capacity
        self.partial_allowed = self.plan_level.partial_policy == PartialPolicy.ALLOWED
        batch = hierarchy.ledger.batch(order_id)
        if batch is None:
            raise EdgeAgentError(f"order {order_id} has no serial batch yet; start it first")
        self.batch = batch
        self.stats = StationStats()

    def _reserve(self, trigger: int | None) -> Container:
        """The container's identifier, persisted with the station's note before any print."""
        with write(self.conn):
            box = self.hierarchy.open_container(self.order_id, self.level)
            self.conn.execute(
                "INSERT INTO station_cases (container, station, order_id, trigger, gate, at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (box.epc, str(self.level), self.order_id, trigger, PENDING, time.time()),
            )
        crash_point(f"{self.level}_reserved")
        return box

    def _scrap(self, box: Container, why: str) -> None:
        with write(self.conn):
            self.hierarchy.scrap(box.epc, reason=why)
            self._set_gate(box.epc, SCRAPPED)
        self.stats.labels_scrapped += 1

    def _set_gate(self, epc: str, gate: str) -> None:
        with write(self.conn):
            self.conn.execute("UPDATE station_cases SET gate = ? WHERE container = ?", (gate, epc))

    def _label_values(self, count: int) -> dict[str, Any]:
        b = self.batch
        return {"gtin": b.gtin, "count": count, "lot": b.lot, "expiry": b.expiry}

    def _label_of(self, box: Container, children: Sequence[str]) -> dict[str, Any]:
        """What ``print_and_verify`` prints for ``box`` holding ``children``: an SSCC's
        logistic label (AI 02 + 37: the trade items inside and how many), or the container's own
        GTIN + serial (a homogeneous case or bundle, itself a serialised trade item)."""
        gtin, count = self._content(children)
        values = {**self._label_values(count), "gtin": gtin}
        if box.kind == IdentifierKind.GTIN_SERIAL:
            assert box.gtin is not None and box.serial is not None
            return {"sscc": "", **values, "gtin": box.gtin, "serial": box.serial}
        return {"sscc": box.code, **values}

    def _content(self, children: Sequence[str]) -> tuple[str, int]:
        """The trade items ``children`` are or hold, as AI 02 + 37 count them: a unit, or a
        bundle or case of its own GTIN, is one trade item; an SSCC container counts by what it
        holds. The plan's levels make the content homogeneous: one GTIN."""
        if self.plan.child_level(self.level) == Level.UNIT:
            return self.batch.gtin, len(children)
        found: dict[str, int] = {}
        todo = list(children)
        while todo:
            item = self.hierarchy.item(todo.pop())
            if item.is_unit or item.gtin is not None:  # a trade item: counts as one
                key = item.gtin or self.batch.gtin
                found[key] = found.get(key, 0) + 1
            elif self.plan.child_level(item.level) == Level.UNIT:  # an SSCC box of units
                held = self.hierarchy.container(item.epc).children
                found[self.batch.gtin] = found.get(self.batch.gtin, 0) + held
            else:
                todo.extend(self.hierarchy.children(item.epc))
        if len(found) != 1:
            raise EdgeAgentError(
                f"order {self.order_id}: the {self.level}'s content is not one GTIN "
                f"({', '.join(sorted(found)) or 'empty'}); it cannot be labelled"
            )
        ((gtin, count),) = found.items()
        return gtin, count

    def recover_reserved(self) -> list[Container]:
        """SSCCs reserved and never committed (a label may be on a case): scrapped."""
        with write(self.conn):
            scrapped = [
                box
                for box in self.hierarchy.recover_reserved(self.order_id)
                if box.level == self.level
            ]
            for box in scrapped:
                self._set_gate(box.epc, SCRAPPED)
        for box in scrapped:
            log.warning(
                "identifier_scrapped_at_restart",
                order=self.order_id,
                level=str(self.level),
                sscc=box.code,
            )
        return scrapped


class CaseStation(_Station):
    level = Level.CASE

    def __init__(
        self,
        hierarchy: Hierarchy,
        order_id: str,
        *,
        camera: FrameSource,
        plc: PlcLink,
        labels: LabelPath,
        reader: CodeReader,
        timings: StationTimings | None = None,
    ) -> None:
        super().__init__(hierarchy, order_id)
        self.camera = camera
        self.plc = plc
        self.labels = labels
        self.reader = reader
        self.timings = timings or StationTimings()
        self.expected_next: int | None = None  # a partial last case announced by the operator
        self._reads = _Reads()
        self._pending: dict[int, str] = {}  # trigger -> case EPC, PASS written, gate unknown
        self._read_units: tuple[str, ...] = ()  # packable units read in the case being decided
        # what the frame shows: units, or the labels of the bundles a case of bundles holds
        self.child_level = self.plan.child_level(self.level)

    def expect(self, count: int) -> None:
        """The next case holds ``count`` units (the last, partial case of the order); a bundle
        station's next bundle, a case of bundles' next case, ``count`` of its children."""
        if not 1 <= count <= self.capacity:
            raise ValueError(
                f"a {self.level} holds 1..{self.capacity} {self.child_level}s, not {count}"
            )
        if count < self.capacity and not self.partial_allowed:
            raise EdgeAgentError(f"order {self.order_id}: the plan refuses partial {self.level}s")
        self.expected_next = count

    # --- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Decide cases until cancelled; device errors leave as ``EdgeAgentError``."""
        await self.recover()
        raise_if_cancel_lost()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._beat())
            tasks.create_task(self._collect())
            tasks.create_task(self.labels.collect())
            tasks.create_task(self._follow())
            while True:
                trigger = await self._reads.arrivals.get()
                await self._case(trigger)
                raise_if_cancel_lost()  # every loop here checks after its device calls

    async def _beat(self) -> None:
        while True:
            await self.plc.beat()
            raise_if_cancel_lost()
            await asyncio.sleep(self.timings.heartbeat_s)

    async def _collect(self) -> None:
        async for frame in self.camera.frames():
            raise_if_cancel_lost()
            await self._reads.add(frame)

    async def recover(self) -> None:
        """At the start: scrap what was reserved and not committed; committed cases whose gate
        outcome is unknown get their PASS again and are followed to the gate."""
        reserved = self.conn.execute(
            "SELECT s.trigger FROM station_cases s JOIN containers c ON c.epc = s.container "
            "WHERE s.station = ? AND s.order_id = ? AND c.state = 'reserved'",
            (str(self.level), self.order_id),
        ).fetchall()
        self.recover_reserved()
        for (trigger,) in reserved:  # the gate diverts them anyway; say so now
            await self.plc.write_verdict(int(trigger), Verdict.REJECT)
        rows = self.conn.execute(
            "SELECT s.trigger, s.container FROM station_cases s JOIN containers c "
            "ON c.epc = s.container WHERE s.station = ? AND s.order_id = ? AND "
            "s.gate = ? AND c.state = 'closed' ORDER BY s.rowid",
            (str(self.level), self.order_id, PENDING),
        ).fetchall()
        for trigger, epc in rows:
            await self.plc.write_verdict(int(trigger), Verdict.PASS)
            self._pending[int(trigger)] = str(epc)
            log.info("case_pass_rewritten_at_restart", order=self.order_id, trigger=trigger)

    async def _case(self, trigger: int) -> None:
        frame = self._reads.by_trigger[trigger][0]
        self.stats.cases_read += 1
        self._read_units = ()
        try:
            reason, detail, sscc = await self._decide(trigger, frame)
        except EdgeAgentError as exc:
            reason, detail, sscc = CaseReason.STATION_ERROR, str(exc), None
            log.exception("case_station_error", order=self.order_id, trigger=trigger)
        finally:
            self._reads.forget(trigger)
        if reason is CaseReason.ACCEPTED:
            self.stats.cases_accepted += 1
            log.info(f"{self.level}_accepted", order=self.order_id, trigger=trigger, sscc=sscc)
            return
        self.stats.rejected(reason)
        log.warning(
            f"{self.level}_rejected",
            order=self.order_id,
            trigger=trigger,
            reason=str(reason),
            detail=detail,
            sscc=sscc,
        )
        with contextlib.suppress(EdgeAgentError):  # no verdict is a reject as well
            await self.plc.write_verdict(trigger, Verdict.REJECT)
        self._leave_loose(self._read_units)

    def _leave_loose(self, units: Sequence[str]) -> None:
        """The units read in a rejected case go to rework: loose, with why (the reconciliation
        lists them until they are packed)."""
        if not units:
            return
        try:
            self.hierarchy.leave_loose(self.order_id, list(units), reason=LooseReason.CASE_REJECTED)
        except (AggregationRefused, EdgeAgentError) as exc:
            log.warning("units_not_recorded_loose", order=self.order_id, detail=str(exc))

    async def _decide(self, trigger: int, frame: Frame) -> tuple[CaseReason, str, str | None]:
        expected = self.expected_next or self.capacity
        reads = await asyncio.to_thread(self.reader.read, frame.image)
        found = match_case(reads, expected=expected, order_id=self.order_id, resolve=self._unit)
        self._read_units = found.packable
        if not found.accepted:
            return found.reason, found.detail, None
        closing = await self._reads.second(trigger, self.timings.closing_read_s)
        if closing is None:
            return CaseReason.NO_CLOSING_READ, "", None
        if not same_case(found, await asyncio.to_thread(self.reader.read, closing.image)):
            return CaseReason.CHANGED, "the case changed between read and closing read", None
        box = self._reserve(trigger)
        reason, detail = await self.labels.print_and_verify(**self._label_of(box, found.units))
        if reason is not CaseReason.ACCEPTED:
            self._scrap(box, str(reason))
            return reason, detail, box.code
        reason, detail = self._commit(box, found)
        if reason is not CaseReason.ACCEPTED:
            return reason, detail, box.code
        crash_point(f"{self.level}_committed")
        self.expected_next = None
        await self.plc.write_verdict(trigger, Verdict.PASS)
        self._pending[trigger] = box.epc
        return reason, "", box.code

    def _commit(self, box: Container, found: CaseMatch) -> tuple[CaseReason, str]:
        try:
            self.hierarchy.pack(box.epc, list(found.units), close=True)
        except AggregationRefused as exc:
            self._scrap(box, f"refused: {exc.reason}")
            return refusal_reason(exc), str(exc)
        return CaseReason.ACCEPTED, ""

    def _unit(self, raw: str) -> UnitRef | None:
        return resolve_child(self.hierarchy, raw, self.child_level)

    # --- following cases to the gate ----------------------------------------------------------

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.timings.follow_s)
            if self._pending:
                await self.follow_once()
                raise_if_cancel_lost()

    async def follow_once(self) -> None:
        """Settle the pending cases whose gate has fired: passed, or rejected (then the case
        is disaggregated: it left the line diverted, its units loose)."""
        state = await self.plc.read_state()
        if state.reject_confirms < state.rejected:
            return  # a reject not confirmed yet: the log is not complete
        decided = state.passed + state.rejected
        due = [t for t in self._pending if t <= decided]
        if not due:
            return
        rejects = set(await self.plc.recent_rejects())
        for trigger in sorted(due):
            epc = self._pending.pop(trigger)
            if trigger in rejects:
                with write(self.conn):
                    self.hierarchy.disaggregate(epc, reason="case_rejected_at_gate")
                    self._set_gate(epc, REJECTED)
                self.stats.rejected_at_gate += 1
                log.error("case_rejected_at_gate", order=self.order_id, trigger=trigger, case=epc)
            else:
                self._set_gate(epc, PASSED)


class BundleStation(CaseStation):
    """The bundler's station (units shrink-wrapped into bundles, before the case packer): the
    case station's path one level down. Its camera frame shows every unit code of the bundle;
    an exact match (read and closing read), the bundle's identifier reserved, its label printed
    and read back, then the bundle committed (units packed, closed) and PASS to the bundle
    PLC. The case station behind it then reads the bundle labels in each case."""

    level = Level.BUNDLE


class PalletStation(_Station):
    """Cases scanned onto the pallet being built; closed with a verified label.

    After ``attempts`` pallet labels in a row failed (each SSCC scrapped), the station holds:
    an alarm names what failed and what to do, the scanned cases stay recorded, and no code
    is taken from the scanner until a person acknowledges the alarm (REST, CLI or operator
    screen) or calls ``release``; then it tries again with new SSCCs."""

    level = Level.PALLET

    def __init__(
        self,
        hierarchy: Hierarchy,
        order_id: str,
        *,
        scanner: Scanner,
        labels: LabelPath,
        attempts: int = 3,
        alarms: AlarmBoard | None = None,
        hold_poll_s: float = 0.5,
    ) -> None:
        super().__init__(hierarchy, order_id)
        self.scanner = scanner
        self.labels = labels
        self.attempts = attempts
        self.alarms = alarms or AlarmBoard(self.conn)
        self.hold_poll_s = hold_poll_s
        self.held: str | None = None  # the alarm's message while the station holds
        self._released = asyncio.Event()
        self._closing = asyncio.Lock()  # the scanner's full pallet and an operator's close

    async def run(self) -> None:
        self.recover_reserved()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.labels.collect())
            if len(self.scanned()) >= self.capacity:
                await self.close_pallet()
            async for code in self.scanner.codes():
                raise_if_cancel_lost()
                if self.on_scan(code.data) and len(self.scanned()) >= self.capacity:
                    await self.close_pallet()
                    raise_if_cancel_lost()

    def release(self) -> bool:
        """A person cleared the hold (the alarm's acknowledgement does the same); True when
        the station was holding."""
        self._released.set()
        return self.held is not None

    def scanned(self) -> list[str]:
        """Cases recorded on the pallet being built, in scan order."""
        rows = self.conn.execute(
            "SELECT case_epc FROM pallet_scans WHERE order_id = ? ORDER BY rowid",
            (self.order_id,),
        ).fetchall()
        return [str(epc) for (epc,) in rows]

    def on_scan(self, data: str) -> bool:
        """A case label scanned onto the pallet; True when it was recorded."""
        why, case = self._check_scan(data)
        if case is None:
            self.stats.scans_refused[why] = self.stats.scans_refused.get(why, 0) + 1
            log.warning("pallet_scan_refused", order=self.order_id, code=data, reason=why)
            return False
        with write(self.conn):
            self.conn.execute(
                "INSERT INTO pallet_scans (case_epc, order_id, at) VALUES (?, ?, ?)",
                (case.epc, self.order_id, time.time()),
            )
        return True

    def _check_scan(self, data: str) -> tuple[str, Container | None]:
        try:
            parsed = gs1.parse_scanned(data, check_requisites=False)
        except gs1.Gs1Error:
            return "not_gs1", None
        sscc, gtin, serial = parsed.get("00"), parsed.get("01"), parsed.get("21")
        ref = sscc or (f"01{gtin}21{serial}" if gtin and serial else None)  # a case: SSCC or SGTIN
        if ref is None:
            return "no_sscc", None
        try:
            case = self.hierarchy.container(ref)
        except AggregationRefused:
            return "unknown_case", None
        if case.level != Level.CASE or case.order_id != self.order_id:
            return "foreign_case", None
        if case.state != ContainerState.CLOSED:
            return f"case_{case.state}", None
        if case.parent is not None:
            return "already_on_a_pallet", None
        if case.epc in self.scanned():
            return "scanned_twice", None
        return "", case

    async def close_pallet(self, *, partial: bool = False) -> Container | None:
        """Complete (or, ``partial``, the last) pallet: label verified, then committed. Holds
        (see the class) while its labels fail; returns once the pallet is closed."""
        async with self._closing:
            cases = self.scanned()  # again under the lock: the other closer may have closed it
            if not cases:
                return None
            if len(cases) != self.capacity and not (partial and self.partial_allowed):
                raise EdgeAgentError(
                    f"pallet holds {len(cases)} of {self.capacity} cases; it closes only full"
                    + (" (the plan refuses partial pallets)" if partial else "")
                )
            while True:
                failed = await self._label_attempts(cases)
                raise_if_cancel_lost()
                if isinstance(failed, Container):
                    return self._commit(failed, cases)
                await self._hold(len(cases), failed)

    async def _label_attempts(self, cases: Sequence[str]) -> Container | str:
        """Up to ``attempts`` labels, each on a new SSCC: the verified one's container, or
        what went wrong with the last."""
        failed = ""
        for attempt in range(1, self.attempts + 1):
            box = self._reserve(None)
            reason, detail = await self.labels.print_and_verify(**self._label_of(box, cases))
            if reason is CaseReason.ACCEPTED:
                crash_point("pallet_label_verified")
                return box
            self._scrap(box, str(reason))
            log.warning(
                "pallet_label_failed",
                order=self.order_id,
                sscc=box.code,
                reason=str(reason),
                detail=detail,
                attempt=attempt,
            )
            failed = f"{reason}" + (f" ({detail})" if detail else "") + f", SSCC {box.code}"
        return failed

    async def _hold(self, cases: int, failed: str) -> None:
        """Alarm, then wait (bounded polls, for as long as it takes) for a person."""
        kind = AlarmKind.PALLET_LABEL_FAILED
        self.alarms.clear(kind, order_id=self.order_id)  # a former hold's, acknowledged
        message = (
            f"pallet station holds: {self.attempts} pallet labels in a row failed for order "
            f"{self.order_id} (last: {failed}; every SSCC printed is scrapped). The {cases} "
            "scanned cases stay on the pallet. Check the pallet label printer (media, ribbon, "
            "link) and the label camera (aim, light), then acknowledge this alarm to print a "
            "label with a new SSCC."
        )
        alarm = self.alarms.raise_(kind, message, order_id=self.order_id)
        self.held = message
        self._released.clear()
        log.error("pallet_station_held", order=self.order_id, alarm=alarm.id, last=failed)
        try:
            while not self._released.is_set():
                now = self.alarms.get(alarm.id)
                if now is None or now.acknowledged_at is not None or not now.active:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.hold_poll_s):
                        await self._released.wait()
        finally:
            self.held = None
        self.alarms.clear(kind, order_id=self.order_id)
        log.info("pallet_station_released", order=self.order_id, alarm=alarm.id)

    def _commit(self, box: Container, cases: Sequence[str]) -> Container:
        with write(self.conn):
            done = self.hierarchy.pack(box.epc, list(cases), close=True)
            self.conn.execute("DELETE FROM pallet_scans WHERE order_id = ?", (self.order_id,))
            self._set_gate(box.epc, PASSED)
        crash_point("pallet_committed")
        self.stats.pallets += 1
        log.info("pallet_closed", order=self.order_id, sscc=box.code, cases=len(cases))
        return done
