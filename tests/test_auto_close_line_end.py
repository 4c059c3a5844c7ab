"""Auto-close of an aggregated order (issue 12): at quantity the line end is still finishing its
last, partial case and pallet, so the hierarchy does not balance yet. The auto-close waits
silently and closes the order once it balances; only a line end that has not finished after
``[orders] line_end_wait_s`` raises an alarm (and the order still closes once it balances). An
order without a plan closes at quantity as before."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_agent.alarms import AlarmBoard, AlarmKind
from edge_agent.orders.closing import OrderSettlement
from edge_agent.orders.commands import CommandPath
from edge_agent.orders.lifecycle import LineEvent
from edge_agent.orders.model import OrderState
from edge_agent.orders.validation import OrderRules
from tests.helpers.aggregation import AggSetup, aggregation_db, order_spec, plan
from tests.helpers.waiting import bounded, until

pytestmark = pytest.mark.usefixtures("no_leaks")

CASE, UNITS = 2, 4


@dataclass
class Rig:
    setup: AggSetup
    path: CommandPath
    order_id: str
    units: list[str]

    def state(self) -> OrderState:
        return self.path.store.get(self.order_id).state

    def alarms(self) -> list[str]:
        board = AlarmBoard(self.setup.conn)
        return [a.message for a in board.active() if a.kind == AlarmKind.CLOSE_UNBALANCED]

    def finish_line_end(self) -> None:
        """The last cases and the pallet, as the stations close them."""
        h = self.setup.hierarchy
        cases = []
        for n in range(0, UNITS, CASE):
            case = h.open_container(self.order_id, "case")
            cases.append(h.pack(case.epc, self.units[n : n + CASE], close=True).epc)
        pallet = h.open_container(self.order_id, "pallet")
        h.pack(pallet.epc, cases, close=True)


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, *, wait_s: float, aggregate: bool = True) -> AsyncIterator[Rig]:
    with aggregation_db(tmp_path / "state") as setup:
        aggregation = plan(case=CASE, pallet=UNITS // CASE) if aggregate else None
        spec = order_spec(quantity=UNITS, aggregation=aggregation)
        if not aggregate:
            del spec["aggregation"]
        batch = setup.add_order(spec)
        units = setup.units(batch, UNITS)
        settlement = OrderSettlement(setup.conn, setup.ledger, tmp_path / "reports", l3_link=False)
        path = CommandPath(
            setup.conn,
            setup.ledger,
            AlarmBoard(setup.conn),
            settlement,
            OrderRules(),
            auto_close=True,
            line_end_wait_s=wait_s,
        )
        task = asyncio.create_task(path.finish_line_ends(poll_s=0.05))
        try:
            yield Rig(setup, path, batch.id, units)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@bounded(60)
async def test_the_auto_close_waits_silently_for_the_line_end_then_closes(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, wait_s=600.0) as r:
        record = await r.path.line_event(r.order_id, LineEvent.QUANTITY_REACHED)
        assert record.state == OrderState.COMPLETED  # its units are in no case yet
        await asyncio.sleep(0.5)  # several polls: still waiting, no alarm
        assert r.state() == OrderState.COMPLETED and r.alarms() == []
        r.finish_line_end()
        await until(lambda: r.state() == OrderState.CLOSED, "the order closed by itself")
        assert r.alarms() == []
        closed_by = r.setup.conn.execute(
            "SELECT actor FROM audit WHERE order_id = ? AND action = 'close'", (r.order_id,)
        ).fetchall()
        assert closed_by and "auto-close" in closed_by[-1][0]


@bounded(60)
async def test_a_line_end_not_finished_in_time_raises_one_alarm_and_still_closes(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, wait_s=0.3) as r:
        await r.path.line_event(r.order_id, LineEvent.QUANTITY_REACHED)
        await until(lambda: r.alarms(), "the line-end alarm")
        (message,) = r.alarms()
        assert r.order_id in message and "line end has not finished" in message
        assert "close-pallet" in message and "supervisor" in message
        await asyncio.sleep(0.3)
        assert len(r.alarms()) == 1 and r.state() == OrderState.COMPLETED
        r.finish_line_end()
        await until(lambda: r.state() == OrderState.CLOSED, "the order closed once balanced")
        assert r.alarms() == []  # cleared with the close


@bounded(60)
async def test_an_order_without_a_plan_closes_at_quantity_as_before(tmp_path: Path) -> None:
    async with rig(tmp_path, wait_s=600.0, aggregate=False) as r:
        record = await r.path.line_event(r.order_id, LineEvent.QUANTITY_REACHED)
        assert record.state == OrderState.CLOSED and r.alarms() == []
