"""Shared set-up of the L3 tests: the agent's side (state database, ledger, alarms, the command
path, the L3 service on a real link) around a simulated site server."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent import registry
from edge_agent.alarms import AlarmBoard
from edge_agent.db import open_db
from edge_agent.l3.service import L3Service
from edge_agent.ledger import Ledger, SerialState
from edge_agent.orders.closing import OrderSettlement
from edge_agent.orders.commands import CommandPath
from edge_agent.orders.validation import OrderRules
from tests.helpers.waiting import until as _until

STEP_S = 20.0  # the longest a test waits for one thing to happen (a loaded 2-core machine)

# Fast loops for tests; production defaults are seconds.
FAST = {
    "page_size": 10,
    "low_water": 4,
    "request_timeout_s": 2.0,
    "poll_interval_s": 0.05,
    "check_interval_s": 0.05,
    "backoff_initial_s": 0.05,
    "backoff_max_s": 0.3,
}

GTIN = "09506000134352"


def l3_order(order_id: str = "ORD-1", quantity: int = 25, **changes: Any) -> dict[str, Any]:
    order: dict[str, Any] = {
        "id": order_id,
        "product": {"gtin": GTIN, "description": "Tablets 20 mg"},
        "lot": "LOT-A1",
        "expiry": "301231",
        "quantity": quantity,
        "serials": {"source": "l3"},
        "market": "DE",
    }
    order.update(changes)
    return order


@dataclass
class Agent:
    """The agent's side of the link, on one state database."""

    conn: sqlite3.Connection
    commands: CommandPath
    state_dir: Path

    @property
    def ledger(self) -> Ledger:
        return self.commands.ledger

    @property
    def alarms(self) -> AlarmBoard:
        return self.commands.alarms

    def serials(self, order_id: str, state: SerialState | None = None) -> list[str]:
        if state is not None:
            return self.ledger.serials_in(order_id, state)
        rows = self.conn.execute(
            "SELECT serial FROM serials WHERE batch_id = ? ORDER BY rowid", (order_id,)
        )
        return [r[0] for r in rows]

    def state(self, order_id: str) -> str | None:
        record = self.commands.store.find(order_id)
        return None if record is None else record.state

    def alarms_of(self, kind: str) -> list[Any]:
        rows = self.conn.execute("SELECT id FROM alarms WHERE kind = ? ORDER BY id", (kind,))
        return [self.alarms.get(r[0]) for r in rows]


def make_agent(state_dir: Path) -> Agent:
    conn = open_db(state_dir)
    ledger = Ledger(conn, read_point="urn:epc:id:sgln:0950600.01340.L1", company_prefix_length=7)
    settlement = OrderSettlement(conn, ledger, state_dir / "reports", l3_link=True)
    commands = CommandPath(
        conn, ledger, AlarmBoard(conn), settlement, OrderRules(l3_link=True), auto_close=False
    )
    return Agent(conn, commands, state_dir)


def make_link(section: dict[str, Any], **kwargs: Any) -> Any:
    """The driver the section's type selects, with its validated config (as the agent does)."""
    cls = registry.driver_class("l3", section["type"])
    return cls(cls.Config.model_validate(section), **kwargs)


@contextlib.asynccontextmanager
async def running(agent: Agent, section: dict[str, Any], **kwargs: Any) -> AsyncIterator[L3Service]:
    link = make_link({**FAST, **section}, **kwargs)
    service = L3Service(agent.commands, link, agent.conn, settings=link.config)
    task = asyncio.create_task(service.run(), name="l3-service")
    try:
        yield service
    finally:
        service.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(condition: Callable[[], Any], what: str, within: float = STEP_S) -> None:
    """Wait for a condition of the system under test (``helpers.waiting.until``)."""
    await _until(condition, what, within=within, every=0.02)
