"""A state database with an order that has an aggregation plan and commissioned units, for
the hierarchy tests (and the stations' tests)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.aggregation.hierarchy import Hierarchy
from edge_agent.db import open_db, write
from edge_agent.ledger import BatchInfo, Ledger, UnitOutcome
from edge_agent.orders import audit
from edge_agent.orders.model import OrderState, WorkOrder
from edge_agent.orders.store import OrderStore

GTIN = "09506000134352"
CASE_GTIN = "19506000134359"
READ_POINT = "urn:epc:id:sgln:0950600.01340.L1"
PREFIX_LENGTH = 7
TESTER = audit.Actor("tester", "test")


def plan(
    case: int = 4,
    pallet: int | None = 2,
    bundle: int | None = None,
    *,
    case_identifier: str = "sscc",
    partial: str | None = None,
) -> dict[str, Any]:
    """None: the plan's default (allowed; refused for a fixed-measure case GTIN)."""
    levels: list[dict[str, Any]] = []
    if bundle is not None:
        levels.append({"level": "bundle", "capacity": bundle})
    case_level: dict[str, Any] = {"level": "case", "capacity": case}
    if partial is not None:
        case_level["partial"] = partial
    if case_identifier == "gtin_serial":
        case_level |= {"identifier": "gtin_serial", "gtin": CASE_GTIN}
    levels.append(case_level)
    if pallet is not None:
        levels.append({"level": "pallet", "capacity": pallet, "extension_digit": 1})
    return {"levels": levels}


def order_spec(
    order_id: str = "WO-AGG-1", quantity: int = 100, aggregation: Any = None, lot: str = "LOT1"
) -> dict[str, Any]:
    return {
        "id": order_id,
        "product": {"gtin": GTIN},
        "lot": lot,
        "expiry": "491231",
        "quantity": quantity,
        "serials": {"source": "generate", "length": 12},
        "market": "DE",
        "aggregation": plan() if aggregation is None else aggregation,
    }


@dataclass
class AggSetup:
    conn: sqlite3.Connection
    ledger: Ledger
    hierarchy: Hierarchy
    orders: OrderStore

    def add_order(self, spec: dict[str, Any], state: OrderState = OrderState.RUNNING) -> BatchInfo:
        order = WorkOrder.model_validate(spec)
        self.orders.store(order, "test", TESTER, state)
        return self.ledger.open_batch(
            order.id, order.product.gtin, order.lot, order.expiry, order.quantity
        )

    def units(self, batch: BatchInfo, count: int, *, passed: bool = True) -> list[str]:
        """``count`` units through the unit station's ledger path: printed, then passed
        (commissioned) or rejected. Returns their SGTIN EPCs."""
        with write(self.conn):  # one transaction: the rule tests make thousands of units
            return self._units(batch, count, passed)

    def _units(self, batch: BatchInfo, count: int, passed: bool) -> list[str]:
        self.ledger.ensure_allocated(batch, count, length=12, alphabet="0123456789ABCDEF")
        epcs, outcomes = [], []
        for _ in range(count):
            taken = self.ledger.take_for_print(batch)
            assert taken is not None
            seq, serial = taken
            self.ledger.mark_printed(batch, serial)
            outcomes.append(UnitOutcome(seq, passed, "verified" if passed else "no_read", serial))
            epcs.append(self.ledger.epc(batch.gtin, serial))
        self.ledger.commit_outcomes(batch, outcomes)
        return epcs


@contextlib.contextmanager
def aggregation_db(state_dir: Path, *, fast: bool = False) -> Iterator[AggSetup]:
    """``fast``: synchronous=OFF, for tests that run many thousand transactions and test the
    rules, not durability (a crash of the test process loses nothing that matters)."""
    conn = open_db(state_dir, check=False)
    if fast:
        conn.execute("PRAGMA synchronous=OFF")
    ledger = Ledger(conn, read_point=READ_POINT, company_prefix_length=PREFIX_LENGTH)
    try:
        yield AggSetup(conn, ledger, Hierarchy(ledger), OrderStore(conn))
    finally:
        conn.close()
