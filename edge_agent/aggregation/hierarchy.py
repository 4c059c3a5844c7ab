"""The packaging hierarchy in the ledger: which unit is in which bundle or case, which case on
which pallet, with the rules of the order's aggregation plan enforced.

Rules (every one checked inside the operation's write transaction; a refused operation raises
``AggregationRefused`` naming the rule, and changes nothing):

- a child is in at most one parent;
- only a commissioned unit can be packed: never a rejected, sampled, destroyed, decommissioned,
  unused or still unverified one; a bundle or case only once it is closed;
- the child is of the level the plan puts below the parent, of the order's GTIN and lot, and of
  the parent's own order;
- a parent never holds more children than its level's capacity; a partial parent closes only
  when the plan allows it;
- an ended order's hierarchy is settled: nothing changes any more.

Container life (``ContainerState``)::

    reserved ─► open ─► closed ─► open (rework: opened again by scanning its label) ...
       │          └───────┴────► disaggregated (children out, identifier decommissioned)
       └─► scrapped (identifier allocated, perhaps printed, never committed: never reused)

Identifiers are allocated when a container is opened (``open_container``), persisted before a
label is printed. The container is commissioned (ObjectEvent ADD of its SSCC or SGTIN) in the
transaction of its first pack, before the AggregationEvent ADD of its children, so L3 can apply
the events in outbox order: children commissioned (by the unit station, earlier), parent
commissioned, children packed. A station commits a verified case in one call,
``pack(case, units, close=True)``: after a crash the case is either fully aggregated or still
reserved, and ``recover_reserved`` scraps it at the restart.

Children and parents are named by their EPC URI in the ledger; operations take any reference
people and scanners give: an EPC URI, the 18 SSCC digits, or a GS1 element string (bracketed,
or as scanned) with AI 00, or AI 01 + 21. Each operation given an ``actor`` is audited
(``edge_agent.orders.audit``), refusals too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from edge_agent import epcis, gs1
from edge_agent.aggregation import sscc as ids
from edge_agent.aggregation.plan import (
    AggregationLevel,
    AggregationPlan,
    IdentifierKind,
    Level,
    PartialPolicy,
)
from edge_agent.aggregation.records import (
    CONTAINER_COLUMNS,
    LIVE,
    Container,
    ContainerState,
    Item,
    LooseReason,
    container_of,
)
from edge_agent.aggregation.references import References
from edge_agent.db import write
from edge_agent.errors import AggregationRefused, RefusalReason
from edge_agent.ledger import BatchInfo, Ledger, SerialState, moment
from edge_agent.orders import audit
from edge_agent.orders.model import TERMINAL_STATES, OrderState, WorkOrder

# the values the hierarchy hands out live in records.py; its users take them from here
__all__ = ["LIVE", "Container", "ContainerState", "Hierarchy", "Item", "LooseReason"]
R = RefusalReason
T = TypeVar("T")


class Hierarchy:
    """The hierarchy over the ledger's writer connection (event-loop thread only, like the
    ledger). Every change runs in one write transaction with its events and audit row."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.conn = ledger.conn
        self.references = References(ledger.conn, ledger.company_prefix_length)
        self._orders: dict[str, WorkOrder] = {}

    # --- containers ---------------------------------------------------------------------------

    def open_container(
        self, order_id: str, level: Level | str, *, actor: audit.Actor | None = None
    ) -> Container:
        """A new container of ``level`` for the order, its identifier allocated and persisted
        (state ``reserved``): print its label with ``identifier``, then ``pack``."""

        def run() -> Container:
            order = self._active_order(order_id)
            plan_level = self._plan_level(order, level)
            found = ids.allocate(
                self.conn,
                order_id,
                plan_level,
                product_gtin=order.product.gtin,
                company_prefix_length=self.ledger.company_prefix_length,
            )
            now = time.time()
            self.conn.execute(
                "INSERT INTO containers (epc, code, order_id, level, kind, gtin, serial, state, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'reserved', ?, ?)",
                (
                    found.epc,
                    found.code,
                    order_id,
                    plan_level.level,
                    found.kind,
                    found.gtin,
                    found.serial,
                    now,
                    now,
                ),
            )
            return self.references.container_by_epc(found.epc)

        return self._run("container_open", actor, order_id, run, detail={"level": str(level)})

    def pack(
        self,
        parent: str,
        children: Sequence[str],
        *,
        close: bool = False,
        actor: audit.Actor | None = None,
    ) -> Container:
        """Put ``children`` into ``parent``, all or none. ``close``: close it in the same
        transaction (a station's verified case: fully aggregated or not at all)."""

        def run() -> Container:
            box = self._live_parent(parent, allow_reserved=True)
            self._pack(box, children)
            if close:
                self._close(self.references.container_by_epc(box.epc))
            return self.references.container_by_epc(box.epc)

        return self._run("container_pack", actor, None, run, parent, children=children)

    def unpack(
        self,
        parent: str,
        children: Sequence[str],
        *,
        reason: str,
        actor: audit.Actor | None = None,
    ) -> Container:
        """Take ``children`` out of an open ``parent``; they stay commissioned, loose with
        ``reason`` until packed again."""

        def run() -> Container:
            why = _reason(reason)
            box = self._live_parent(parent)
            self._unpack(box, children, why)
            return self.references.container_by_epc(box.epc)

        return self._run("container_unpack", actor, None, run, parent, children, reason)

    def replace(
        self,
        parent: str,
        old: str,
        new: str,
        *,
        reason: str,
        actor: audit.Actor | None = None,
    ) -> Container:
        """Swap one child for another in an open parent (rework), in one transaction."""

        def run() -> Container:
            why = _reason(reason)
            box = self._live_parent(parent)
            self._unpack(box, [old], why)
            self._pack(self.references.container_by_epc(box.epc), [new])
            return self.references.container_by_epc(box.epc)

        return self._run("container_replace", actor, None, run, parent, [old, new], reason)

    def close_container(self, parent: str, *, actor: audit.Actor | None = None) -> Container:
        """Close an open parent: not empty, and full unless the plan allows a partial one."""

        def run() -> Container:
            box = self._live_parent(parent)
            self._close(box)
            return self.references.container_by_epc(box.epc)

        return self._run("container_close", actor, None, run, parent)

    def reopen(self, parent: str, *, actor: audit.Actor | None = None) -> Container:
        """Open a closed parent again for rework (its label scanned)."""

        def run() -> Container:
            box = self._live_parent(parent, want=(ContainerState.CLOSED,))
            self._set_state(box, ContainerState.OPEN, None)
            return self.references.container_by_epc(box.epc)

        return self._run("container_reopen", actor, None, run, parent)

    def disaggregate(
        self, parent: str, *, reason: str, actor: audit.Actor | None = None
    ) -> Container:
        """Empty a parent for good: its children loose with ``reason``, it leaves its own
        parent, and its identifier is decommissioned. A reserved one is scrapped."""

        def run() -> Container:
            why = _reason(reason)
            box = self._live_parent(parent, allow_reserved=True, want=LIVE)
            if box.state == ContainerState.RESERVED:
                self._set_state(box, ContainerState.SCRAPPED, why)
                return self.references.container_by_epc(box.epc)
            batch = self._batch(box.order_id)
            now = self.ledger.event_now(batch.id)
            self.ledger.leave_parent(batch, box.epc, why, now)
            held = self._children_of(box.epc)
            if held:
                self._unpack(box, held, why)
            self._decommission(box, batch, why)
            self._set_state(box, ContainerState.DISAGGREGATED, why)
            return self.references.container_by_epc(box.epc)

        return self._run("container_disaggregate", actor, None, run, parent, reason=reason)

    def scrap(self, parent: str, *, reason: str, actor: audit.Actor | None = None) -> Container:
        """A reserved container whose label was bad or never committed: scrapped, its
        identifier never used again."""

        def run() -> Container:
            box = self._live_parent(parent, allow_reserved=True, want=())
            self._set_state(box, ContainerState.SCRAPPED, _reason(reason))
            return self.references.container_by_epc(box.epc)

        return self._run("container_scrap", actor, None, run, parent, reason=reason)

    def relabel(self, parent: str, *, reason: str, actor: audit.Actor | None = None) -> Container:
        """A new identifier for a live parent (its label damaged): a new container of the same
        level takes its children and its place in its own parent; the old identifier is
        decommissioned. Returns the new container; print its label."""

        def run() -> Container:
            why = _reason(reason)
            old = self._live_parent(parent, want=LIVE)
            order = self._active_order(old.order_id)
            plan_level = self._plan_level(order, old.level)
            found = ids.allocate(
                self.conn,
                old.order_id,
                plan_level,
                product_gtin=order.product.gtin,
                company_prefix_length=self.ledger.company_prefix_length,
            )
            now = time.time()
            self.conn.execute(
                "INSERT INTO containers (epc, code, order_id, level, kind, gtin, serial, state, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'reserved', ?, ?)",
                (found.epc, found.code, old.order_id, old.level, found.kind, found.gtin,
                 found.serial, now, now),
            )  # fmt: skip
            batch = self._batch(old.order_id)
            grand = old.parent
            self.ledger.leave_parent(batch, old.epc, why, self.ledger.event_now(batch.id))
            held = self._children_of(old.epc)
            new = self.references.container_by_epc(found.epc)
            if held:
                self._unpack(old, held, why)
                self._pack(new, held)
            self._decommission(old, batch, why)
            self._set_state(old, ContainerState.DISAGGREGATED, f"relabelled: {why}")
            self._set_state(self.references.container_by_epc(new.epc), old.state, None)
            if grand is not None:  # the new one takes the old one's place, whatever its state
                self._pack(self.references.container_by_epc(grand), [new.epc], rework=True)
            return self.references.container_by_epc(new.epc)

        return self._run("container_relabel", actor, None, run, parent, reason=reason)

    def recover_reserved(
        self, order_id: str | None = None, *, reason: str = "not_committed_at_restart"
    ) -> list[Container]:
        """At a restart: containers still reserved were never committed (a label may have been
        printed): scrap them, so their identifiers are never used again."""
        with write(self.conn):
            where, args = "state = 'reserved'", list[Any]()
            if order_id is not None:
                where += " AND order_id = ?"
                args.append(order_id)
            epcs = [
                r[0] for r in self.conn.execute(f"SELECT epc FROM containers WHERE {where}", args)
            ]
            for epc in epcs:
                self._set_state(
                    self.references.container_by_epc(epc), ContainerState.SCRAPPED, reason
                )
        return [self.references.container_by_epc(epc) for epc in epcs]

    # --- units --------------------------------------------------------------------------------

    def sample(
        self, unit: str, *, reason: str = "qa_sample", actor: audit.Actor | None = None
    ) -> Item:
        """A unit taken for QA samples: out of its parent, ends ``sampled`` (CBV sampling, then
        decommissioning); it can never be packed again."""
        return self._end_unit(unit, SerialState.SAMPLED, reason, actor, "unit_sample")

    def destroy(self, unit: str, *, reason: str, actor: audit.Actor | None = None) -> Item:
        """A commissioned unit destroyed: out of its parent, ends ``destroyed``."""
        return self._end_unit(unit, SerialState.DESTROYED, reason, actor, "unit_destroy")

    def leave_loose(
        self,
        order_id: str,
        children: Sequence[str],
        *,
        reason: str,
        actor: audit.Actor | None = None,
    ) -> list[str]:
        """Record why these commissioned units (or closed containers) are in no parent."""

        def run() -> list[str]:
            why = _reason(reason)
            self._active_order(order_id)
            items = self._distinct_items(children)
            for item in items:
                if item.order_id != order_id:
                    raise AggregationRefused(
                        R.OTHER_ORDER, f"{item.epc} belongs to order {item.order_id}"
                    )
                self._check_packable(item)
                self._check_unpacked(item)
            self.conn.executemany(
                "INSERT OR REPLACE INTO loose (child, order_id, level, gtin, serial, reason, "
                "at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(i.epc, order_id, i.level, *_unit_key(i), why, time.time()) for i in items],
            )
            return [i.epc for i in items]

        return self._run(
            "aggregation_loose", actor, order_id, run, children=children, reason=reason
        )

    # --- queries ------------------------------------------------------------------------------

    def container(self, ref: str) -> Container:
        """The container ``ref`` names; AggregationRefused (unknown_code) when none."""
        epc = self.references.container_epc(ref)
        return self.references.container_by_epc(epc)

    def children(self, parent: str) -> list[str]:
        """EPCs of what ``parent`` holds, in packing order."""
        return self._children_of(self.references.container_epc(parent))

    def parent_of(self, child: str) -> str | None:
        """EPC of the container holding ``child``, None when it is in none."""
        row = self.conn.execute(
            "SELECT parent FROM packed WHERE child = ?", (self.item(child).epc,)
        ).fetchone()
        return str(row[0]) if row else None

    def containers(
        self,
        order_id: str,
        *,
        level: Level | str | None = None,
        states: Iterable[ContainerState] | None = None,
    ) -> list[Container]:
        where, args = "c.order_id = ?", list[Any]([order_id])
        if level is not None:
            where += " AND c.level = ?"
            args.append(str(level))
        if states is not None:
            wanted = [str(s) for s in states]
            where += f" AND c.state IN ({','.join('?' * len(wanted))})"
            args += wanted
        rows = self.conn.execute(
            f"SELECT {CONTAINER_COLUMNS} FROM containers c WHERE {where} ORDER BY c.rowid", args
        ).fetchall()
        return [container_of(r) for r in rows]

    def capacity(self, box: Container) -> int:
        """How many children a full ``box`` holds, by its order's plan."""
        return _plan(self._order(box.order_id), box.order_id).level(box.level).capacity

    def item(self, ref: str) -> Item:
        """The unit or container ``ref`` names; AggregationRefused (unknown_code) when none."""
        return self.references.item(ref)

    def loose(self, order_id: str) -> dict[str, str]:
        """EPC → reason of the order's children recorded as in no parent."""
        rows = self.conn.execute(
            "SELECT child, reason FROM loose WHERE order_id = ? ORDER BY rowid", (order_id,)
        ).fetchall()
        return {child: reason for child, reason in rows}

    # --- the rules ----------------------------------------------------------------------------

    def _pack(self, box: Container, refs: Sequence[str], *, rework: bool = False) -> None:
        """``rework``: a relabelled container takes its predecessor's place in ``box``, which
        may be closed, and may itself be open."""
        order = self._order(box.order_id)
        plan = _plan(order, box.order_id)
        child_level = plan.child_level(box.level)
        items = self._distinct_items(refs)
        if not items:
            raise AggregationRefused(R.EMPTY, f"nothing to pack into {box.level} {box.code}")
        for item in items:
            self._check_child(box, order, child_level, item, rework=rework)
        capacity = plan.level(box.level).capacity
        if box.children + len(items) > capacity:
            raise AggregationRefused(
                R.CAPACITY,
                f"{box.level} {box.code} holds {box.children} of {capacity}; {len(items)} more "
                f"would exceed its capacity",
                order_id=box.order_id,
            )
        batch = self._batch(box.order_id)
        now = self.ledger.event_now(batch.id)
        if box.state == ContainerState.RESERVED:
            self._commission(box, order, batch, now)
        elif box.state != ContainerState.OPEN and not rework:
            raise _state_refusal(box, "packed")
        self.conn.executemany(
            "INSERT INTO packed (child, parent, order_id, level, gtin, serial, packed_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(i.epc, box.epc, box.order_id, i.level, *_unit_key(i), now) for i in items],
        )  # fmt: skip
        self.conn.executemany("DELETE FROM loose WHERE child = ?", [(i.epc,) for i in items])
        event = epcis.aggregation(
            box.epc,
            [i.epc for i in items],
            self.ledger.read_point,
            biz_location=self.ledger.biz_location,
            when=moment(now),
        )
        self.ledger.emit(batch, "packing", event, now)

    def _check_child(
        self, box: Container, order: WorkOrder, child_level: Level, item: Item, *, rework: bool
    ) -> None:
        what = f"{item.level} {item.epc}"
        if item.level != child_level:
            raise AggregationRefused(
                R.WRONG_LEVEL,
                f"{what} cannot go into {box.level} {box.code}: the plan of order "
                f"{box.order_id} puts {child_level}s in a {box.level}",
                order_id=box.order_id,
            )
        if item.is_unit:
            if item.gtin != order.product.gtin:
                raise AggregationRefused(
                    R.WRONG_GTIN,
                    f"{what} is GTIN {item.gtin}; order {box.order_id} packs GTIN "
                    f"{order.product.gtin}",
                    order_id=box.order_id,
                )
            if item.lot != order.lot:
                raise AggregationRefused(
                    R.WRONG_LOT,
                    f"{what} is of lot {item.lot}; order {box.order_id} packs lot {order.lot}",
                    order_id=box.order_id,
                )
        if item.order_id != box.order_id:
            raise AggregationRefused(
                R.OTHER_ORDER,
                f"{what} belongs to order {item.order_id}, not to {box.order_id}",
                order_id=box.order_id,
            )
        if not rework:
            self._check_packable(item)
        self._check_unpacked(item)

    def _check_unpacked(self, item: Item) -> None:
        holder = self.conn.execute(
            "SELECT c.code FROM packed p JOIN containers c ON c.epc = p.parent WHERE p.child = ?",
            (item.epc,),
        ).fetchone()
        if holder is not None:
            raise AggregationRefused(
                R.ALREADY_PACKED,
                f"{item.level} {item.epc} is in {holder[0]} already; a child is in one parent "
                "at most (remove it from there first)",
                order_id=item.order_id,
            )

    def _check_packable(self, item: Item) -> None:
        if item.is_unit and item.state != SerialState.COMMISSIONED:
            raise AggregationRefused(
                R.NOT_COMMISSIONED,
                f"unit {item.epc} is {item.state}: only commissioned units can be packed",
                order_id=item.order_id,
            )
        if not item.is_unit and item.state != ContainerState.CLOSED:
            raise AggregationRefused(
                R.CHILD_NOT_CLOSED,
                f"{item.level} {item.epc} is {item.state}: close it before packing it",
                order_id=item.order_id,
            )

    def _unpack(self, box: Container, refs: Sequence[str], why: str) -> None:
        items = self._distinct_items(refs)
        if not items:
            raise AggregationRefused(R.EMPTY, f"nothing to take out of {box.level} {box.code}")
        for item in items:
            if self._parent_epc(item.epc) != box.epc:
                raise AggregationRefused(
                    R.NOT_IN_PARENT,
                    f"{item.level} {item.epc} is not in {box.level} {box.code}",
                    order_id=box.order_id,
                )
        batch = self._batch(box.order_id)
        now = self.ledger.event_now(batch.id)
        self.conn.executemany("DELETE FROM packed WHERE child = ?", [(i.epc,) for i in items])
        self.conn.executemany(
            "INSERT OR REPLACE INTO loose (child, order_id, level, gtin, serial, reason, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(i.epc, box.order_id, i.level, *_unit_key(i), why, now) for i in items],
        )
        event = epcis.aggregation(
            box.epc,
            [i.epc for i in items],
            self.ledger.read_point,
            action="DELETE",
            biz_step="unpacking",
            biz_location=self.ledger.biz_location,
            when=moment(now),
        )
        event["edge:reason"] = why
        self.ledger.emit(batch, "unpacking", event, now)

    def _close(self, box: Container) -> None:
        if box.state != ContainerState.OPEN:
            raise _state_refusal(box, "closed")
        plan_level = _plan(self._order(box.order_id), box.order_id).level(box.level)
        if box.children == 0:
            raise AggregationRefused(
                R.EMPTY,
                f"{box.level} {box.code} is empty; pack it or disaggregate it",
                order_id=box.order_id,
            )
        if (
            box.children < plan_level.capacity
            and plan_level.partial_policy == PartialPolicy.REFUSED
        ):
            raise AggregationRefused(
                R.PARTIAL_REFUSED,
                f"{box.level} {box.code} holds {box.children} of {plan_level.capacity}, and the "
                f"plan of order {box.order_id} refuses partial {box.level}s: fill it, or "
                "disaggregate it and leave its children loose",
                order_id=box.order_id,
            )
        self._set_state(box, ContainerState.CLOSED, None)

    def _end_unit(
        self, ref: str, to: SerialState, reason: str, actor: audit.Actor | None, action: str
    ) -> Item:
        def run() -> Item:
            why = _reason(reason)
            item = self.item(ref)
            if not item.is_unit:
                raise AggregationRefused(
                    R.WRONG_LEVEL, f"{item.level} {item.epc} is not a unit; only units end {to}"
                )
            self._active_order(item.order_id)
            if item.state != SerialState.COMMISSIONED:
                raise AggregationRefused(
                    R.NOT_COMMISSIONED,
                    f"unit {item.epc} is {item.state}: only a commissioned unit can end {to}",
                    order_id=item.order_id,
                )
            assert item.serial is not None
            self.ledger.end_commissioned(self._batch(item.order_id), item.serial, to, why)
            return self.item(item.epc)

        return self._run(action, actor, None, run, children=[ref], reason=reason)

    # --- events -------------------------------------------------------------------------------

    def _commission(self, box: Container, order: WorkOrder, batch: BatchInfo, now: float) -> None:
        extra = None
        if box.kind == IdentifierKind.GTIN_SERIAL:  # a homogeneous case: lot and expiry as ILMD
            expiry = gs1.expiry_date(order.expiry).isoformat()
            extra = {"ilmd": {"cbvmda:lotNumber": order.lot, "cbvmda:itemExpirationDate": expiry}}
        event = epcis.object_event(
            epcs=[box.epc],
            action="ADD",
            biz_step="commissioning",
            disposition="active",
            read_point=self.ledger.read_point,
            biz_location=self.ledger.biz_location,
            when=moment(now),
            extra=extra,
        )
        self.ledger.emit(batch, "container_commissioning", event, now)
        self.conn.execute(
            "UPDATE containers SET commissioned = 1, state = 'open', updated_at = ? WHERE epc = ?",
            (time.time(), box.epc),
        )

    def _decommission(self, box: Container, batch: BatchInfo, why: str) -> None:
        now = self.ledger.event_now(batch.id)
        event = epcis.decommissioning(
            box.epc, self.ledger.read_point, why, biz_location=self.ledger.biz_location,
            when=moment(now),
        )  # fmt: skip
        self.ledger.emit(batch, "container_decommissioning", event, now)

    # --- plumbing -----------------------------------------------------------------------------

    def _run(
        self,
        action: str,
        actor: audit.Actor | None,
        order_id: str | None,
        body: Callable[[], T],
        parent: str | None = None,
        children: Sequence[str] = (),
        reason: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> T:
        """One operation: its changes, events and audit row in one transaction; a refusal
        rolls all of it back and, with an actor, is audited as refused."""
        info = dict(detail or {})
        if parent is not None:
            info["parent"] = parent
        if children:
            info["children"] = list(children)
        try:
            with write(self.conn):
                result = body()
                if actor is not None:
                    info["result"] = _described(result)
                    audit.append(
                        self.conn, actor, action, order_id=order_id or _order_of(result),
                        reason=reason, detail=info,
                    )  # fmt: skip
        except AggregationRefused as exc:
            if actor is not None:
                info["refused"] = str(exc.reason)
                with write(self.conn):
                    audit.append(
                        self.conn, actor, action, order_id=order_id or exc.order_id,
                        reason=reason, outcome="refused", detail={**info, "message": str(exc)},
                    )  # fmt: skip
            raise
        return result

    def _order(self, order_id: str) -> WorkOrder:
        order = self._orders.get(order_id)
        if order is None:
            row = self.conn.execute("SELECT spec FROM orders WHERE id = ?", (order_id,)).fetchone()
            if row is None:
                raise AggregationRefused(
                    R.UNKNOWN_ORDER, f"no order {order_id!r} on this line", order_id=order_id
                )
            order = WorkOrder.model_validate_json(row[0])
            self._orders[order_id] = order
        return order

    def _active_order(self, order_id: str) -> WorkOrder:
        order = self._order(order_id)
        (state,) = self.conn.execute(
            "SELECT state FROM orders WHERE id = ?", (order_id,)
        ).fetchone()
        if OrderState(state) in TERMINAL_STATES:
            raise AggregationRefused(
                R.ORDER_STATE,
                f"order {order_id} is {state}: its hierarchy is settled and cannot change",
                order_id=order_id,
            )
        return order

    def _plan_level(self, order: WorkOrder, level: Level | str) -> AggregationLevel:
        plan = _plan(order, order.id)
        try:
            return plan.level(str(level))
        except KeyError:
            names = ", ".join(entry.level for entry in plan.levels)
            raise AggregationRefused(
                R.NO_PLAN,
                f"the plan of order {order.id} has no {level} level (it has {names})",
                order_id=order.id,
            ) from None

    def _batch(self, order_id: str) -> BatchInfo:
        batch = self.ledger.batch(order_id)
        if batch is None:
            raise AggregationRefused(
                R.UNKNOWN_ORDER, f"order {order_id} has no serial batch yet", order_id=order_id
            )
        return batch

    def _live_parent(
        self,
        ref: str,
        *,
        allow_reserved: bool = False,
        want: Sequence[ContainerState] = (ContainerState.OPEN,),
    ) -> Container:
        box = self.container(ref)
        self._active_order(box.order_id)
        allowed = (*want, ContainerState.RESERVED) if allow_reserved else tuple(want)
        if box.state not in allowed:
            raise _state_refusal(box, "changed")
        return box

    def _set_state(self, box: Container, state: ContainerState, reason: str | None) -> None:
        self.conn.execute(
            "UPDATE containers SET state = ?, reason = ?, updated_at = ? WHERE epc = ?",
            (state, reason, time.time(), box.epc),
        )

    def _distinct_items(self, refs: Sequence[str]) -> list[Item]:
        items, seen = [], set()
        for ref in refs:
            item = self.item(ref)
            if item.epc in seen:
                raise AggregationRefused(
                    R.DUPLICATE, f"{item.level} {item.epc} is given twice", order_id=item.order_id
                )
            seen.add(item.epc)
            items.append(item)
        return items

    def _children_of(self, parent_epc: str) -> list[str]:
        rows = self.conn.execute(
            "SELECT child FROM packed WHERE parent = ? ORDER BY rowid", (parent_epc,)
        ).fetchall()
        return [child for (child,) in rows]

    def _parent_epc(self, child_epc: str) -> str | None:
        row = self.conn.execute(
            "SELECT parent FROM packed WHERE child = ?", (child_epc,)
        ).fetchone()
        return str(row[0]) if row else None


def _plan(order: WorkOrder, order_id: str) -> AggregationPlan:
    if order.aggregation is None:
        raise AggregationRefused(
            R.NO_PLAN,
            f"order {order_id} has no aggregation plan; its units are not aggregated",
            order_id=order_id,
        )
    return order.aggregation


def _unit_key(item: Item) -> tuple[str | None, str | None]:
    """(gtin, serial) of a unit, to join with the serials table; (None, None) for a container."""
    return (item.gtin, item.serial) if item.is_unit else (None, None)


def _state_refusal(box: Container, verb: str) -> AggregationRefused:
    hint = {
        ContainerState.CLOSED: "open it again first (edge-agent case open)",
        ContainerState.RESERVED: "pack something into it first",
        ContainerState.SCRAPPED: "its identifier was scrapped; open a new one",
        ContainerState.DISAGGREGATED: "it was disaggregated; open a new one",
        ContainerState.OPEN: "close it first",
    }[box.state]
    return AggregationRefused(
        R.CONTAINER_STATE,
        f"{box.level} {box.code} is {box.state} and cannot be {verb} now: {hint}",
        order_id=box.order_id,
    )


def _reason(reason: str) -> str:
    text = (reason or "").strip()
    if not text:
        raise AggregationRefused(R.REASON_MISSING, "give a reason (it goes into the audit trail)")
    return text


def _described(result: object) -> Any:
    if isinstance(result, Container):
        return {"epc": result.epc, "code": result.code, "state": str(result.state)}
    if isinstance(result, Item):
        return {"epc": result.epc, "state": result.state}
    if isinstance(result, list):
        return [_described(r) for r in result]
    return str(result)


def _order_of(result: object) -> str | None:
    if isinstance(result, Container | Item):
        return result.order_id
    return None
