"""What the REST API (and later the operator screen) shows of the line: its state, the active
order, the counters and the device links.

``LineStatus`` is the read-only view the line controller offers; until the resident runtime
implements it, ``DbLineStatus`` derives the view from the state database alone (the order on the
line and its unit counts; device links are not known there).
"""

from __future__ import annotations

import enum
import sqlite3
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from edge_agent.orders.model import OrderState
from edge_agent.orders.store import OrderStore


class LineMode(enum.StrEnum):
    IDLE = "idle"  # no order on the line
    RUNNING = "running"
    HELD = "held"  # stopped with an alarm or by an operator; resumes after recovery checks
    STOPPING = "stopping"  # units in flight are being settled


class Snapshot(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Counters(Snapshot):
    order_id: str | None = Field(description="Order the counts belong to; null when idle")
    quantity: int = Field(0, ge=0, description="Units the order asks for")
    units: int = Field(0, ge=0, description="Units decided (pass + reject)")
    passed: int = Field(0, ge=0)
    rejected: int = Field(0, ge=0)
    rejected_by_reason: dict[str, int] = Field(default_factory=dict)
    remaining: int = Field(0, ge=0, description="Passes still needed to reach the quantity")


class DeviceLink(Snapshot):
    name: str = Field(description="Device as the config names it (printer, camera, plc, ...)")
    kind: str = Field(description="printer, camera, plc, forwarder or l3")
    state: Literal["up", "down", "connecting", "unknown"]
    since: float | None = Field(None, description="When it entered this state (Unix time)")
    detail: str = ""
    reconnects: int = Field(0, ge=0, description="Times the link came back after it was lost")


class LineSnapshot(Snapshot):
    state: LineMode
    order_id: str | None = Field(description="The order on the line (running or held)")
    counters: Counters
    devices: list[DeviceLink] = Field(default_factory=list)


class LineStatus(Protocol):
    """Read-only view of the line; cheap to call (no I/O to devices)."""

    def snapshot(self) -> LineSnapshot: ...


class DbLineStatus:
    """The line as the state database records it: the active order and its unit counts."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.store = OrderStore(conn)

    def snapshot(self) -> LineSnapshot:
        active = self.store.active()
        if active is None:
            return LineSnapshot(
                state=LineMode.IDLE, order_id=None, counters=Counters(order_id=None)
            )
        state = LineMode.RUNNING if active.state == OrderState.RUNNING else LineMode.HELD
        return LineSnapshot(
            state=state,
            order_id=active.id,
            counters=order_counters(self.conn, active.id, active.order.quantity),
        )


def order_counters(conn: sqlite3.Connection, order_id: str, quantity: int) -> Counters:
    verdicts = dict(
        conn.execute(
            "SELECT verdict, count(*) FROM units WHERE batch_id = ? GROUP BY verdict", (order_id,)
        ).fetchall()
    )
    reasons = dict(
        conn.execute(
            "SELECT reason, count(*) FROM units WHERE batch_id = ? AND verdict = 'reject' "
            "GROUP BY reason ORDER BY count(*) DESC",
            (order_id,),
        ).fetchall()
    )
    passed, rejected = verdicts.get("pass", 0), verdicts.get("reject", 0)
    return Counters(
        order_id=order_id,
        quantity=quantity,
        units=passed + rejected,
        passed=passed,
        rejected=rejected,
        rejected_by_reason=reasons,
        remaining=max(quantity - passed, 0),
    )
