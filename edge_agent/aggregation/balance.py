"""The hierarchy's part of a batch reconciliation, from the state database alone.

Balanced means: no container of the order is still open or reserved; every commissioned unit
is in exactly one parent of the level above it, or listed loose with a reason; every closed
bundle or case is in a parent of the level above it (when the plan has one) or listed loose;
no parent holds a unit that is not commissioned, a child of the wrong level or of another
order, or more children than its capacity; no closed parent is empty.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from edge_agent.aggregation.plan import AggregationPlan
from edge_agent.orders.model import WorkOrder


def hierarchy_report(conn: sqlite3.Connection, order_id: str) -> dict[str, Any]:
    """The hierarchy figures of an order, with ``hierarchy_balanced`` and
    ``hierarchy_problems``. An order without a plan balances trivially: nothing to aggregate."""
    row = conn.execute("SELECT spec FROM orders WHERE id = ?", (order_id,)).fetchone()
    plan = WorkOrder.model_validate_json(row[0]).aggregation if row else None
    if plan is None:
        return {"aggregation": None, "hierarchy_balanced": True, "hierarchy_problems": []}
    containers: dict[str, dict[str, int]] = {}
    for level, state, count in conn.execute(
        "SELECT level, state, count(*) FROM containers WHERE order_id = ? GROUP BY level, state",
        (order_id,),
    ):
        containers.setdefault(level, {})[state] = count
    (packed,) = conn.execute(
        "SELECT count(*) FROM packed WHERE order_id = ? AND level = 'unit'", (order_id,)
    ).fetchone()
    loose = dict(
        conn.execute(
            "SELECT reason, count(*) FROM loose WHERE order_id = ? AND level = 'unit' "
            "GROUP BY reason ORDER BY count(*) DESC",
            (order_id,),
        ).fetchall()
    )
    unaccounted = _unaccounted_units(conn, order_id)
    problems = _problems(conn, order_id, plan, containers)
    if unaccounted:
        problems.append(
            f"{unaccounted} commissioned units are in no {plan.levels[0].level} and not listed "
            "loose with a reason"
        )
    return {
        "aggregation": {
            "containers": containers,
            "units_packed": packed,
            "units_loose": sum(loose.values()),
            "units_loose_by_reason": loose,
            "units_unaccounted": unaccounted,
        },
        "hierarchy_problems": problems,
        "hierarchy_balanced": not problems,
    }


def open_containers(conn: sqlite3.Connection, order_id: str) -> list[tuple[str, str, str]]:
    """(level, code, state) of the order's containers still open or reserved."""
    return conn.execute(
        "SELECT level, code, state FROM containers WHERE order_id = ? AND state IN "
        "('open', 'reserved') ORDER BY rowid",
        (order_id,),
    ).fetchall()


def _unaccounted_units(conn: sqlite3.Connection, order_id: str) -> int:
    (count,) = conn.execute(
        "SELECT count(*) FROM serials s WHERE s.batch_id = ? AND s.state = 'commissioned' "
        "AND NOT EXISTS (SELECT 1 FROM packed p WHERE p.gtin = s.gtin AND p.serial = s.serial "
        "AND p.level = 'unit') "
        "AND NOT EXISTS (SELECT 1 FROM loose l WHERE l.gtin = s.gtin AND l.serial = s.serial "
        "AND l.level = 'unit')",
        (order_id,),
    ).fetchone()
    return int(count)


def _problems(
    conn: sqlite3.Connection,
    order_id: str,
    plan: AggregationPlan,
    containers: dict[str, dict[str, int]],
) -> list[str]:
    problems = []
    for level, states in containers.items():
        for state in ("open", "reserved"):
            if states.get(state):
                problems.append(f"{states[state]} {level}s still {state}")
    (not_commissioned,) = conn.execute(
        "SELECT count(*) FROM packed p JOIN serials s ON s.gtin = p.gtin AND s.serial = p.serial "
        "WHERE p.order_id = ? AND p.level = 'unit' AND s.state != 'commissioned'",
        (order_id,),
    ).fetchone()
    if not_commissioned:
        problems.append(f"{not_commissioned} packed units are not commissioned")
    for parent_level, child_level, count in conn.execute(
        "SELECT c.level, p.level, count(*) FROM packed p JOIN containers c ON c.epc = p.parent "
        "WHERE p.order_id = ? GROUP BY c.level, p.level",
        (order_id,),
    ):
        if not plan.has(parent_level) or plan.child_level(parent_level) != child_level:
            problems.append(f"{count} {child_level}s are in a {parent_level}")
    (foreign,) = conn.execute(
        "SELECT count(*) FROM packed p JOIN containers c ON c.epc = p.parent "
        "WHERE p.order_id = ? AND c.order_id != p.order_id",
        (order_id,),
    ).fetchone()
    if foreign:
        problems.append(f"{foreign} children are in a parent of another order")
    for entry in plan.levels:
        (over,) = conn.execute(
            "SELECT count(*) FROM (SELECT p.parent FROM packed p JOIN containers c "
            "ON c.epc = p.parent WHERE c.order_id = ? AND c.level = ? GROUP BY p.parent "
            "HAVING count(*) > ?)",
            (order_id, entry.level, entry.capacity),
        ).fetchone()
        if over:
            problems.append(f"{over} {entry.level}s hold more than {entry.capacity}")
    (empty,) = conn.execute(
        "SELECT count(*) FROM containers c WHERE c.order_id = ? AND c.state = 'closed' "
        "AND NOT EXISTS (SELECT 1 FROM packed p WHERE p.parent = c.epc)",
        (order_id,),
    ).fetchone()
    if empty:
        problems.append(f"{empty} closed containers are empty: disaggregate them")
    for entry in plan.levels:
        if plan.parent_level(entry.level) is None:
            continue
        (stray,) = conn.execute(
            "SELECT count(*) FROM containers c WHERE c.order_id = ? AND c.level = ? "
            "AND c.state = 'closed' AND NOT EXISTS (SELECT 1 FROM packed p WHERE p.child = c.epc) "
            "AND NOT EXISTS (SELECT 1 FROM loose l WHERE l.child = c.epc)",
            (order_id, entry.level),
        ).fetchone()
        if stray:
            above = plan.parent_level(entry.level)
            problems.append(
                f"{stray} closed {entry.level}s are in no {above} and not listed loose with a "
                "reason"
            )
    return problems
