"""The resident daemon (``Agent.serve``): orders one after another in one process, a line stop
that holds the order while the daemon stays up, a resume through the command path that runs the
order again to its close, commands refused in the wrong state, and a stop on SIGTERM's path that
settles the units in flight and leaves the order to resume.

Everything runs over the real protocols against the simulators: orders arrive through the inbox
folder, commands go through the same ``CommandPath`` the REST API and CLI use.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.plc.modbus import registers as reg
from edge_agent.app import Agent, UntilIdle
from edge_agent.errors import CommandRefused, LineStopped
from edge_agent.line.stats import LineStats
from edge_agent.orders import audit
from edge_agent.orders.model import OrderCommand, OrderState
from edge_agent.reconcile import reconcile
from edge_agent.stops import StopReason
from simulators.pytest_plugin import drop_order, order_for
from simulators.runner import SimulatorSet
from tests.helpers.line import (
    check_gate_matches_ledger,
    check_nothing_sent_twice,
    column,
    gates_settled,
    make_config,
    simulators,
    state_db,
)
from tests.helpers.margins import VERDICT_DEADLINE_MS
from tests.helpers.waiting import until

pytestmark = pytest.mark.slow

OPERATOR = audit.Actor("olga", "api")
STEP_S = 30.0  # generous: a loaded 2-core machine


@contextlib.asynccontextmanager
async def daemon(config: Any, stats: LineStats | None = None) -> AsyncIterator[Agent]:
    """The daemon in the test's loop, up (READY) before the block runs; stopped as a signal
    stops it (units in flight settled) when the block ends."""
    agent = Agent(config, stats=stats)
    ready = asyncio.Event()
    task = asyncio.create_task(agent.serve(ready))
    await until(lambda: ready.is_set() or task.done(), "the daemon to be ready", within=STEP_S)
    if task.done():
        task.result()  # raises why it ended
    try:
        yield agent
    finally:
        agent.request_stop(LineStopped(StopReason.SHUTDOWN, "test over"))
        served = await asyncio.wait_for(task, STEP_S)
        assert served.ended == "signal"


def state_of(agent: Agent, order_id: str) -> OrderState | None:
    assert agent.commands is not None
    record = agent.commands.store.find(order_id)
    return None if record is None else record.state


async def plc_stop_code(sims: SimulatorSet) -> int:
    return int((await sims.plc._get(3, reg.HR_STOP_REASON, 1))[0])


async def plc_stop_requested(sims: SimulatorSet) -> bool:
    return bool(await sims.plc._read_stop_request())


async def test_two_orders_run_one_after_another_in_one_process(agent_config_factory: Any) -> None:
    async with SimulatorSet(simulators(defect_rate=0.05, seed=7)) as sims:
        config = make_config(agent_config_factory, sims, 40)
        drop_order(config.model.orders.inbox, order_for(id="ORD-B", lot="LOT-B", quantity=30))
        agent = Agent(config)
        served = await asyncio.wait_for(agent.serve(until_idle=UntilIdle(0)), 120)
        assert served.ended == "idle", served
        await gates_settled(sims)
        with state_db(config) as conn:
            first = reconcile(conn, "DEMO-BATCH-0001")
            second = reconcile(conn, "ORD-B")
            rows = conn.execute(
                "SELECT id, state, started_at, completed_at FROM orders ORDER BY started_at"
            ).fetchall()
            check_gate_matches_ledger(conn, sims)
            check_nothing_sent_twice(conn, sims)
    assert [(r[0], r[1]) for r in rows] == [("DEMO-BATCH-0001", "closed"), ("ORD-B", "closed")]
    assert rows[1][2] >= rows[0][3], "the second order started before the first completed"
    for report, units in ((first, 40), (second, 30)):
        assert report["balanced"], report["problems"]
        assert report["batch_state"] == "closed" and report["units"] == units
    assert len(sims.printer.printed) == 70 == sims.line.trigger_count


async def test_a_line_stop_holds_the_order_and_a_resume_completes_it(
    agent_config_factory: Any,
) -> None:
    units = 60
    async with SimulatorSet(simulators(defect_rate=1.0, seed=2)) as sims:
        config = make_config(agent_config_factory, sims, units, max_consecutive_rejects=5)
        order_id = "DEMO-BATCH-0001"
        async with daemon(config) as agent:
            assert agent.commands is not None
            await until(
                lambda: state_of(agent, order_id) == OrderState.HELD,
                "the order to be held",
                within=STEP_S,
            )
            # Held with its alarm; the PLC line-stop request stays set with the stop's code.
            [alarm] = [a for a in agent.commands.alarms.for_order(order_id) if a.active]
            assert alarm.kind == StopReason.REPEATED_REJECTS and alarm.raised_at > 0
            assert await plc_stop_requested(sims)
            assert await plc_stop_code(sims) == StopReason.REPEATED_REJECTS.code
            hold = agent.commands.store.open_hold(order_id)
            assert hold is not None and hold.reason == StopReason.REPEATED_REJECTS
            await gates_settled(sims)
            printed_at_hold = len(sims.printer.printed)
            await asyncio.sleep(0.5)  # held: nothing more is printed
            assert len(sims.printer.printed) == printed_at_hold

            # Resume is refused until the alarm is acknowledged; then the line runs again.
            with pytest.raises(CommandRefused, match="acknowledge the alarms"):
                await agent.commands.command(order_id, OrderCommand.RESUME, OPERATOR)
            agent.commands.alarms.acknowledge(alarm.id, "olga")
            sims.camera.defect_rate = 0.0
            await agent.commands.command(order_id, OrderCommand.RESUME, OPERATOR)
            await until(
                lambda: state_of(agent, order_id) == OrderState.CLOSED,
                "the resumed order to close",
                within=STEP_S * 2,
            )
            assert not await plc_stop_requested(sims)
            cleared = agent.commands.alarms.get(alarm.id)
            assert cleared is not None and cleared.cleared_at is not None
            assert agent.controller is not None and agent.controller.segments == 2
        await gates_settled(sims)
        with state_db(config) as conn:
            report = reconcile(conn, order_id)
            check_gate_matches_ledger(conn, sims)
            check_nothing_sent_twice(conn, sims)
            on_units = column(conn, "SELECT serial FROM serials WHERE state != 'unused'")
    assert report["balanced"], report["problems"]
    # Every serial printed once; units printed but undecided at the hold were settled by the
    # resume's recovery (rejected: the PLC rejected them for lack of a verdict). Records the
    # hold kept from the printer are unused, and made up for: the order has all its units.
    assert len(sims.printer.printed) == units
    assert sorted(on_units) == sorted(sims.printer.printed)
    assert report["serials_commissioned"] + report["serials_rejected"] == units


async def test_commands_in_the_wrong_state_are_refused(agent_config_factory: Any) -> None:
    async with SimulatorSet(simulators()) as sims:
        config = make_config(agent_config_factory, sims, 20, order=None)
        async with daemon(config) as agent:
            commands = agent.commands
            assert commands is not None
            # Not auto-started: the line must not take it while the test looks at it.
            data = order_for(id="ORD-Q", quantity=20)
            commands.auto_close = True
            assert agent.controller is not None
            agent.controller.auto_start = False
            await commands.submit(data, source="test", actor=OPERATOR)
            for command in (OrderCommand.RESUME, OrderCommand.STOP, OrderCommand.CLOSE):
                with pytest.raises(CommandRefused, match="is ready"):
                    await commands.command("ORD-Q", command, OPERATOR, reason="test")
            with pytest.raises(CommandRefused, match="is ready"):
                await commands.command("ORD-Q", OrderCommand.HOLD, OPERATOR, reason="test")
            assert state_of(agent, "ORD-Q") == OrderState.READY
            await commands.command("ORD-Q", OrderCommand.START, OPERATOR)
            with pytest.raises(CommandRefused, match="is running"):
                await commands.command("ORD-Q", OrderCommand.START, OPERATOR)
            with pytest.raises(CommandRefused, match="needs a reason"):
                await commands.command("ORD-Q", OrderCommand.HOLD, OPERATOR)
            await commands.command("ORD-Q", OrderCommand.HOLD, OPERATOR, reason="film change")
            assert state_of(agent, "ORD-Q") == OrderState.HELD
            assert await plc_stop_code(sims) == StopReason.OPERATOR_HOLD.code
            with pytest.raises(CommandRefused, match="is held"):
                await commands.command("ORD-Q", OrderCommand.CLOSE, OPERATOR)
            await commands.command("ORD-Q", OrderCommand.ABORT, OPERATOR, reason="film torn")
            assert state_of(agent, "ORD-Q") == OrderState.ABORTED
            with pytest.raises(CommandRefused, match="is aborted"):
                await commands.command("ORD-Q", OrderCommand.RESUME, OPERATOR)
        await gates_settled(sims)
        with state_db(config) as conn:
            report = reconcile(conn, "ORD-Q")
            check_gate_matches_ledger(conn, sims)
    assert report["balanced"], report["problems"]
    assert report["serials_in_flight"] == 0 and report["batch_state"] == "closed"


async def test_a_shutdown_while_running_settles_units_in_flight_and_the_order_resumes(
    agent_config_factory: Any,
) -> None:
    units = 150
    async with SimulatorSet(simulators(defect_rate=0.0)) as sims:
        config = make_config(agent_config_factory, sims, units)
        stats = LineStats()
        async with daemon(config, stats):
            await until(lambda: stats.units >= 40, "40 verdicts", within=STEP_S)
        # The signal's path: the runtime stopped the line (shutdown code) and settled what was
        # already decided; the order stays Running, to resume at the next start.
        assert await plc_stop_code(sims) == StopReason.SHUTDOWN.code
        await gates_settled(sims)
        with state_db(config) as conn:
            state = conn.execute("SELECT state FROM orders").fetchone()[0]
            unwritten = conn.execute(
                "SELECT count(*) FROM units WHERE verdict = 'pass' AND verdict_written = 0"
            ).fetchone()[0]
            check_gate_matches_ledger(conn, sims)
        assert state == "running" and unwritten == 0
        assert stats.units < units

        served = await asyncio.wait_for(Agent(config).serve(until_idle=UntilIdle(0)), 120)
        assert served.ended == "idle", served
        await gates_settled(sims)
        with state_db(config) as conn:
            report = reconcile(conn)
            check_gate_matches_ledger(conn, sims)
            check_nothing_sent_twice(conn, sims)
    assert report["balanced"], report["problems"]
    assert report["batch_state"] == "closed" and report["serials_in_flight"] == 0


async def test_an_l3_order_gets_its_serials_in_pages_and_closes_with_its_return(
    agent_config_factory: Any, l3_sim: Any
) -> None:
    """The order comes from L3 with no serials; the daemon asks for pages at the low-water mark
    while it prints, closes the order balanced, and L3 receives the return and the close report
    once each."""
    from tests.helpers.l3 import FAST, l3_order

    units = 25
    l3_sim.add_order(l3_order("ORD-L3", quantity=units, expiry="281231", lot="LOT-L3"))
    async with SimulatorSet(simulators(defect_rate=0.0)) as sims:
        config = agent_config_factory(
            simulators=sims,
            order=None,
            line={"verdict_deadline_ms": VERDICT_DEADLINE_MS},
            l3={**l3_sim.driver_config(), **FAST},
        )
        async with daemon(config) as agent:
            await until(
                lambda: state_of(agent, "ORD-L3") == OrderState.CLOSED,
                "the L3 order to close",
                within=STEP_S * 2,
            )
            await until(
                lambda: of_order(l3_sim.reports) and of_order(l3_sim.returns),
                "the close report and the return at L3",
                within=STEP_S,
            )
        await gates_settled(sims)
        with state_db(config) as conn:
            report = reconcile(conn, "ORD-L3")
            check_gate_matches_ledger(conn, sims)
            check_nothing_sent_twice(conn, sims)
    assert report["balanced"], report["problems"]
    assert report["units"] == units == len(sims.printer.printed)
    assert len(l3_sim.site.pages) >= 3  # 25 units in pages of 10
    [only_return] = of_order(l3_sim.returns)
    returned = only_return["payload"]["serials"]
    assert len(returned) == report["serials_unused"] and l3_sim.duplicates == 0
    assert not set(returned) & set(sims.printer.printed)


def of_order(messages: dict[str, dict[str, Any]], order_id: str = "ORD-L3") -> list[Any]:
    return [m for m in messages.values() if m.get("order_id") == order_id]
