"""Orders in the state database: their spec, lifecycle state, holds, and queue order.

Every state change goes through ``transition``, which checks the lifecycle table and appends the
audit row in the same transaction: an order's state and the record of who changed it, and why,
can never disagree.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from edge_agent.db import write
from edge_agent.errors import CommandRefused, OrderError
from edge_agent.orders import audit
from edge_agent.orders.lifecycle import Trigger, next_state
from edge_agent.orders.model import ACTIVE_STATES, OrderCommand, OrderState, WorkOrder

_TIMESTAMP = {
    OrderState.RUNNING: "started_at = coalesce(started_at, ?)",
    OrderState.COMPLETED: "completed_at = ?",
    OrderState.CLOSED: "ended_at = ?",
    OrderState.ABORTED: "ended_at = ?",
    OrderState.CANCELLED: "ended_at = ?",
}


@dataclass(frozen=True)
class OrderRecord:
    order: WorkOrder
    state: OrderState
    source: str
    received_at: float
    started_at: float | None
    completed_at: float | None
    ended_at: float | None
    queue: int

    @property
    def id(self) -> str:
        return self.order.id

    def summary(self) -> dict[str, Any]:
        o = self.order
        return {
            "id": o.id,
            "state": str(self.state),
            "gtin": o.product.gtin,
            "lot": o.lot,
            "expiry": o.expiry,
            "quantity": o.quantity,
            "market": o.market,
            "source": self.source,
            "received_at": self.received_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "ended_at": self.ended_at,
        }


@dataclass(frozen=True)
class Hold:
    id: int
    order_id: str
    reason: str
    detail: str
    held_at: float
    resumed_at: float | None
    resumed_by: str | None


class OrderStore:
    """Reads and writes orders on the agent's writer connection (event-loop thread only)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    # --- reads ------------------------------------------------------------------------------

    def get(self, order_id: str) -> OrderRecord:
        row = self.conn.execute(_SELECT + " WHERE id = ?", (order_id,)).fetchone()
        if row is None:
            raise OrderError(f"no order {order_id!r}; `edge-agent order list` shows the orders")
        return _record(row)

    def find(self, order_id: str) -> OrderRecord | None:
        row = self.conn.execute(_SELECT + " WHERE id = ?", (order_id,)).fetchone()
        return _record(row) if row else None

    def all(self, states: frozenset[OrderState] | None = None) -> list[OrderRecord]:
        records = [_record(r) for r in self.conn.execute(_SELECT + " ORDER BY queue")]
        return [r for r in records if states is None or r.state in states]

    def active(self) -> OrderRecord | None:
        """The order the line is running or holding (at most one)."""
        found = self.all(ACTIVE_STATES)
        return found[0] if found else None

    def next_ready(self) -> OrderRecord | None:
        row = self.conn.execute(
            _SELECT + " WHERE state = ? ORDER BY queue LIMIT 1", (OrderState.READY,)
        ).fetchone()
        return _record(row) if row else None

    def holds(self, order_id: str) -> list[Hold]:
        cur = self.conn.execute(
            "SELECT id, order_id, reason, detail, held_at, resumed_at, resumed_by "
            "FROM order_holds WHERE order_id = ? ORDER BY id",
            (order_id,),
        )
        return [Hold(*row) for row in cur]

    def open_hold(self, order_id: str) -> Hold | None:
        holds = [h for h in self.holds(order_id) if h.resumed_at is None]
        return holds[-1] if holds else None

    # --- writes -----------------------------------------------------------------------------

    def store(self, order: WorkOrder, source: str, actor: audit.Actor, state: OrderState) -> None:
        now = time.time()
        with write(self.conn):
            if self.find(order.id) is not None:
                raise CommandRefused(
                    f"order {order.id} exists already; give the new order a new id",
                    order_id=order.id,
                )
            self.conn.execute(
                "INSERT INTO orders (id, state, spec, source, received_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (order.id, state, order.model_dump_json(), source, now, now),
            )
            audit.append(
                self.conn,
                actor,
                OrderCommand.STORE,
                order_id=order.id,
                detail={"state": str(state), "source": source, "spec": _audited_spec(order)},
            )

    def transition(
        self,
        order_id: str,
        trigger: Trigger,
        actor: audit.Actor,
        *,
        reason: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> OrderRecord:
        """Move the order by ``trigger`` (checked against the lifecycle) and audit it, in one
        transaction. Raises CommandRefused when the lifecycle does not allow it."""
        now = time.time()
        with write(self.conn):
            record = self.get(order_id)
            to = next_state(order_id, record.state, trigger)
            if to in ACTIVE_STATES and record.state not in ACTIVE_STATES:
                other = self.active()
                if other is not None and other.id != order_id:
                    raise CommandRefused(
                        f"order {other.id} is {other.state} on the line; one order runs at a "
                        f"time: stop, abort or close {other.id} first",
                        order_id=order_id,
                        state=record.state,
                    )
            stamp = _TIMESTAMP.get(to)
            sets = "state = ?, updated_at = ?" + (f", {stamp}" if stamp else "")
            args: list[Any] = [to, now] + ([now] if stamp else [])
            self.conn.execute(f"UPDATE orders SET {sets} WHERE id = ?", (*args, order_id))
            self._track_hold(order_id, record.state, to, reason, detail, actor, now)
            audit.append(
                self.conn,
                actor,
                str(trigger),
                order_id=order_id,
                reason=reason,
                detail={"from": str(record.state), "to": str(to), **(detail or {})},
            )
        return self.get(order_id)

    def refused(
        self, order_id: str | None, action: str, actor: audit.Actor, why: str, reason: str | None
    ) -> None:
        """Record a refused command: the audit trail keeps attempts, not only changes."""
        with write(self.conn):
            audit.append(
                self.conn,
                actor,
                action,
                order_id=order_id,
                reason=reason,
                outcome="refused",
                detail={"why": why},
            )

    def _track_hold(
        self,
        order_id: str,
        before: OrderState,
        to: OrderState,
        reason: str | None,
        detail: dict[str, Any] | None,
        actor: audit.Actor,
        now: float,
    ) -> None:
        if to == OrderState.HELD and before != OrderState.HELD:
            self.conn.execute(
                "INSERT INTO order_holds (order_id, reason, detail, held_at) VALUES (?, ?, ?, ?)",
                (order_id, reason or "unspecified", json.dumps(detail or {}), now),
            )
        elif before == OrderState.HELD and to != OrderState.HELD:
            self.conn.execute(
                "UPDATE order_holds SET resumed_at = ?, resumed_by = ? "
                "WHERE order_id = ? AND resumed_at IS NULL",
                (now, str(actor), order_id),
            )


_SELECT = (
    "SELECT spec, state, source, received_at, started_at, completed_at, ended_at, queue FROM orders"
)


def _record(row: tuple[Any, ...]) -> OrderRecord:
    spec, state, *rest = row
    return OrderRecord(WorkOrder.model_validate_json(spec), OrderState(state), *rest)


def _audited_spec(order: WorkOrder) -> dict[str, Any]:
    """The spec as the audit keeps it: an inline serial list by its size, not its content."""
    spec = order.model_dump(exclude={"serials": {"serials"}})
    if order.serials.serials is not None:
        spec["serials"]["count"] = len(order.serials.serials)
    return spec
