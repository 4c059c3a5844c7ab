"""Identifiers of packaging levels from L3, on the path of unit serials: the same serial
request and page documents, with the request's ``gtin`` naming what the serials are for.

- a ``gtin_serial`` level asks for serials of its own GTIN (exactly as units do); each serial
  becomes the identifier ``01<gtin>21<serial>``;
- an ``sscc`` level asks with ``gtin`` = ``sscc:<extension digit><company prefix>``; the page's
  serials are whole 18-digit SSCCs of that extension digit and prefix.

A page is stored in ``identifier_pool`` before any of it is used (``sscc.add_to_pool``), in the
transaction that finishes its request; an identifier used before refuses the whole page.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence

from edge_agent.aggregation import sscc
from edge_agent.aggregation.plan import AggregationLevel, IdentifierKind
from edge_agent.orders.model import WorkOrder

SSCC_KEY = "sscc:"


def l3_levels(order: WorkOrder) -> list[AggregationLevel]:
    """The order's levels whose identifiers come from L3."""
    plan = order.aggregation
    return [] if plan is None else [level for level in plan.levels if level.source == "l3"]


def page_key(order: WorkOrder, level: AggregationLevel, company_prefix_length: int) -> str:
    """What a request for this level's identifiers names in its ``gtin`` field."""
    if level.kind == IdentifierKind.GTIN_SERIAL:
        assert level.gtin is not None
        return level.gtin
    prefix = level.sscc_prefix(order.product.gtin, company_prefix_length)
    return f"{SSCC_KEY}{level.extension_digit}{prefix}"


def level_of(order: WorkOrder, key: str, company_prefix_length: int) -> AggregationLevel | None:
    """The level a request key (a page's ``gtin``) is for; None: the units' own serials."""
    for level in l3_levels(order):
        if page_key(order, level, company_prefix_length) == key:
            return level
    return None


def shortfall(
    conn: sqlite3.Connection,
    order: WorkOrder,
    level: AggregationLevel,
    *,
    low_water: int,
    page_size: int,
) -> int:
    """Identifiers to ask for now: 0 while the free ones cover ``low_water`` (or what the order
    still needs), else up to a page of what it still needs. The need is the parents the
    quantity fills, plus a spare for labels scrapped on the way (each scrap is used up)."""
    plan = order.aggregation
    assert plan is not None
    units_per_parent = 1
    for entry in plan.levels:
        units_per_parent *= entry.capacity
        if entry.level == level.level:
            break
    need = math.ceil(order.quantity / units_per_parent)
    need += max(1, need // 20)
    free, used = _pool(conn, order.id, level.level)
    remaining = max(0, need - used)
    if free >= min(low_water, remaining) and (free or not remaining):
        return 0
    return min(page_size, max(1, remaining - free))


def codes(level: AggregationLevel, serials: Sequence[str]) -> list[str]:
    """The identifiers a page's serials give for ``level``."""
    if level.kind == IdentifierKind.GTIN_SERIAL:
        return [f"01{level.gtin}21{serial}" for serial in serials]
    return list(serials)


def store_page(
    conn: sqlite3.Connection,
    order: WorkOrder,
    level: AggregationLevel,
    serials: Sequence[str],
    company_prefix_length: int,
) -> int:
    """Store a page's identifiers (inside the caller's write transaction). AggregationRefused
    when one is malformed, of another prefix, or was used before: none is stored then."""
    prefix = (
        f"{level.extension_digit}{level.sscc_prefix(order.product.gtin, company_prefix_length)}"
        if level.kind == IdentifierKind.SSCC
        else None
    )
    return sscc.add_to_pool(
        conn, order.id, level, codes(level, serials), company_prefix_length, prefix=prefix
    )


def unused(conn: sqlite3.Connection, order_id: str, level: str) -> list[str]:
    """Identifiers of the order's level L3 sent that were never used (to go back at the end)."""
    rows = conn.execute(
        "SELECT code FROM identifier_pool WHERE order_id = ? AND level = ? AND taken = 0 "
        "ORDER BY rowid",
        (order_id, level),
    ).fetchall()
    return [code for (code,) in rows]


def _pool(conn: sqlite3.Connection, order_id: str, level: str) -> tuple[int, int]:
    counts = dict(
        conn.execute(
            "SELECT taken, count(*) FROM identifier_pool WHERE order_id = ? AND level = ? "
            "GROUP BY taken",
            (order_id, level),
        ).fetchall()
    )
    return int(counts.get(0, 0)), sum(int(n) for taken, n in counts.items() if taken)
