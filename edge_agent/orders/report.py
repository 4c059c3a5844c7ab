"""The close report of an order: its reconciliation, rejects by reason, throughput and rejects
over time, holds and alarms with durations, yield against the order quantity, and the audit
head. Stored as JSON under the state directory, delivered to L3, and rendered as HTML."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from edge_agent.orders import audit
from edge_agent.orders.model import OrderState
from edge_agent.orders.store import OrderRecord, OrderStore
from edge_agent.reconcile import reconcile

REPORT_VERSION = 1
_BUCKET_S = 60.0


def close_report(
    conn: sqlite3.Connection,
    record: OrderRecord,
    final: OrderState,
    actor: audit.Actor,
    reason: str | None,
) -> dict[str, Any]:
    order = record.order
    reconciliation = reconcile(conn, order.id)
    commissioned = reconciliation["serials_commissioned"]
    chain = audit.verify(conn)
    store = OrderStore(conn)
    return {
        "report_version": REPORT_VERSION,
        "order_id": order.id,
        "state": str(final),
        "closed_at": time.time(),
        "closed_by": str(actor),
        "reason": reason,
        "order": order.model_dump(exclude={"serials": {"serials"}}),
        "received_at": record.received_at,
        "started_at": record.started_at,
        "completed_at": record.completed_at,
        "reconciliation": reconciliation,
        "balanced": reconciliation["balanced"],
        "problems": reconciliation["problems"],
        "yield": commissioned / order.quantity if order.quantity else 0.0,
        "timeline": _timeline(conn, order.id),
        "holds": [
            {
                **h.__dict__,
                "detail": json.loads(h.detail or "{}"),
                "duration_s": (h.resumed_at or time.time()) - h.held_at,
            }
            for h in store.holds(order.id)
        ],
        "alarms": [_alarm(row) for row in _alarms(conn, order.id)],
        "audit": {"rows": chain.rows, "head": chain.head, "chain_ok": chain.ok},
    }


def _timeline(conn: sqlite3.Connection, order_id: str) -> list[dict[str, Any]]:
    """Units, passes and rejects per minute of the order's run."""
    cur = conn.execute(
        "SELECT CAST(decided_at / ? AS INTEGER) AS bucket, count(*), "
        "sum(verdict = 'pass'), sum(verdict = 'reject') FROM units WHERE batch_id = ? "
        "GROUP BY bucket ORDER BY bucket",
        (_BUCKET_S, order_id),
    )
    return [
        {"minute_start": bucket * _BUCKET_S, "units": n, "passed": p, "rejected": r}
        for bucket, n, p, r in cur
    ]


def _alarms(conn: sqlite3.Connection, order_id: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT kind, message, raised_at, cleared_at, acknowledged_at, acknowledged_by, count "
        "FROM alarms WHERE order_id = ? ORDER BY id",
        (order_id,),
    ).fetchall()


def _alarm(row: tuple[Any, ...]) -> dict[str, Any]:
    kind, message, raised, cleared, acked_at, acked_by, count = row
    return {
        "kind": kind,
        "message": message,
        "raised_at": raised,
        "cleared_at": cleared,
        "acknowledged_at": acked_at,
        "acknowledged_by": acked_by,
        "count": count,
        "duration_s": (cleared or time.time()) - raised,
    }
