"""Orders are checked on arrival, as precisely as config errors: every problem at once, each with
its key path, what is wrong and what to do. Nothing is stored when any check fails."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from pydantic import ValidationError

from edge_agent import gs1
from edge_agent.errors import OrderInvalid
from edge_agent.orders.model import WorkOrder


@dataclass(frozen=True)
class OrderRules:
    """What this line accepts, from the ``[orders]`` config section."""

    expiry_warn_days: int = 30
    l3_link: bool = False  # serials.source = "l3" needs an L3 link


def parse_order(data: Mapping[str, Any], source: str) -> WorkOrder:
    """Validate the order's own content; raises OrderInvalid with every problem found."""
    order_id = data.get("id") if isinstance(data.get("id"), str) else None
    try:
        return WorkOrder.model_validate(data)
    except ValidationError as exc:
        raise OrderInvalid(order_id, source, _problems(exc)) from None


def check_order(
    order: WorkOrder,
    conn: sqlite3.Connection,
    source: str,
    rules: OrderRules,
    today: date | None = None,
) -> list[str]:
    """Checks that need the line's state: the order id is new, the expiry is ahead, the serials
    were never used, the serial source is available. Returns warnings; raises OrderInvalid."""
    today = today or date.today()
    problems = order.rule_problems()
    warnings: list[str] = []
    row = conn.execute("SELECT state FROM orders WHERE id = ?", (order.id,)).fetchone()
    if row is not None:
        problems.append(("id", f"order {order.id} exists already ({row[0]}); use a new order id"))
    elif conn.execute("SELECT 1 FROM batches WHERE id = ?", (order.id,)).fetchone() is not None:
        problems.append(
            ("id", f"a batch {order.id} was run on this line before; use a new order id")
        )
    expires = gs1.expiry_date(order.expiry, today)
    days_left = (expires - today).days
    if days_left < 0:
        problems.append(
            ("expiry", f"{order.expiry} ({expires}) is in the past; packs must not be made expired")
        )
    elif days_left < rules.expiry_warn_days:
        warnings.append(
            f"expiry {order.expiry} ({expires}) is {days_left} days ahead, less than "
            f"[orders] expiry_warn_days = {rules.expiry_warn_days}"
        )
    if order.serials.source == "l3" and not rules.l3_link:
        problems.append(
            (
                "serials.source",
                "'l3' needs an L3 link, and this line has no [l3] section: configure one, or "
                "send the serials in the order (source = 'list')",
            )
        )
    for index, level in enumerate(order.aggregation.levels if order.aggregation else []):
        if level.source == "l3" and not rules.l3_link:
            problems.append(
                (
                    f"aggregation.levels.{index}.source",
                    f"'l3' needs an L3 link, and this line has no [l3] section: configure one, "
                    f"or allocate the {level.level} identifiers on this line (source = 'local')",
                )
            )
    if order.serials.serials:
        used = _known_serials(conn, order.product.gtin, order.serials.serials)
        if used:
            shown = ", ".join(used[:5]) + (" ..." if len(used) > 5 else "")
            problems.append(
                (
                    "serials.serials",
                    f"{len(used)} serials were handed out before for GTIN {order.product.gtin} "
                    f"({shown}); a serial is never used twice: ask L3 for new serials",
                )
            )
    if problems:
        raise OrderInvalid(order.id, source, problems)
    return warnings


def _known_serials(conn: sqlite3.Connection, gtin: str, serials: list[str]) -> list[str]:
    found: list[str] = []
    for start in range(0, len(serials), 500):
        chunk = serials[start : start + 500]
        marks = ",".join("?" * len(chunk))
        found += [
            r[0]
            for r in conn.execute(
                f"SELECT serial FROM serials WHERE gtin = ? AND serial IN ({marks})", (gtin, *chunk)
            )
        ]
    return found


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        key = ".".join(str(part) for part in error["loc"]) or "(order)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key; check the spelling against the order format in README"
        problems.append((key, message))
    return problems
