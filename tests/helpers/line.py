"""Running the whole agent against the simulators, and checking the ledger against the line.

The invariant behind these checks is the README's "a unit passes only after its commissioning
is committed": the triggers the PLC let through are exactly the triggers of the commissioned
serials, whatever went wrong on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

from edge_agent.alarms import AlarmBoard
from edge_agent.app import Agent, Served, UntilIdle
from edge_agent.config.models import CameraSim, PrinterSim, SimulatorsSection
from edge_agent.db import open_reader
from edge_agent.errors import CommandRefused, LineStopped
from edge_agent.line.stats import LineStats
from edge_agent.orders import audit
from edge_agent.orders.model import TERMINAL_STATES, OrderCommand, OrderState
from edge_agent.reconcile import reconcile
from edge_agent.stops import StopReason
from simulators.runner import SimulatorSet
from tests.helpers.margins import VERDICT_DEADLINE_MS, plc_sim
from tests.helpers.waiting import until


def simulators(*, defect_rate: float = 0.0, seed: int = 1) -> SimulatorsSection:
    """An unpaced line on free ports, with the test margins and a verdict ring for a batch."""
    return SimulatorsSection(
        units_per_min=None,
        printer=PrinterSim(port=0, buffer_size=16),
        camera=CameraSim(port=0, defect_rate=defect_rate, seed=seed),
        plc=plc_sim(),
    )


def make_config(
    factory: Any, sims: SimulatorSet, units: int, *, order: Any = (), **line: Any
) -> Any:
    """A config on ``sims`` whose inbox holds the default order for ``units`` (``order=None``:
    no order; a dict: changes to it)."""
    # A verdict deadline under the gate delay with room for a stalled loop (helpers/margins.py).
    line = {"verdict_deadline_ms": VERDICT_DEADLINE_MS, **line}
    if order is None:
        return factory(simulators=sims, order=None, line=line)
    return factory(simulators=sims, order={"quantity": units, **dict(order)}, line=line)


async def gates_settled(sims: SimulatorSet) -> None:
    """Wait until every unit that reached the camera has also been decided at the reject gate."""
    plc, line = sims.plc, sims.line
    await line.drain()
    await until(
        lambda: len(plc.passed_triggers) + len(plc.rejected_triggers) >= line.trigger_count,
        "the PLC to gate every triggered unit",
        within=3.0,
    )


async def run_agent(config: Any, stats: LineStats | None = None) -> LineStopped | None:
    """Run the daemon until its orders are done (None) or one is held by a line stop: then the
    stop it was held with (``.reason``), checked to be on the alarm board, raised, not cleared."""
    try:
        served = await Agent(config, stats=stats).serve(until_idle=UntilIdle(hold_timeout_s=0))
    except LineStopped as stop:  # before the daemon could open its state database (disk full)
        return stop
    return held_stop(config, served)


async def run_order(config: Any, stats: LineStats | None = None, on_tick: Any = None) -> None:
    """Run the daemon until its orders are done; a hold fails the test with its stop."""
    served = await Agent(config, stats=stats, on_tick=on_tick).serve(
        until_idle=UntilIdle(hold_timeout_s=0)
    )
    stopped = held_stop(config, served)
    assert stopped is None, f"the order was held: {stopped}"


OPERATOR = audit.Actor("operator", "test")


async def resume_agent(
    config: Any, stats: LineStats | None = None, *, within: float = 120.0
) -> LineStopped | None:
    """Start the daemon again on its held order and resume it as an operator does (its alarms
    acknowledged, then resume through the command path): the restart's path, then the
    resume's. Returns as ``run_agent`` does once the order is done or held again."""
    agent = Agent(config, stats=stats)
    ready = asyncio.Event()
    task = asyncio.create_task(agent.serve(ready), name="daemon")
    try:
        await until(lambda: ready.is_set() or task.done(), "the daemon to be up", within=30.0)
        if task.done():
            task.result()
        commands = agent.commands
        assert commands is not None
        held = commands.store.active()
        assert held is not None and held.state == OrderState.HELD, held
        for alarm in commands.alarms.for_order(held.id):
            if alarm.acknowledged_at is None:
                commands.alarms.acknowledge(alarm.id, OPERATOR.name)
        await _resume(commands, held.id)
        await until(
            lambda: _done_or_held_again(agent, held.id, len(commands.store.holds(held.id))),
            "the resumed order to end or to be held again",
            within=within,
        )
        hold = commands.store.open_hold(held.id)
        record = commands.store.get(held.id)
    finally:
        agent.request_stop(LineStopped(StopReason.SHUTDOWN, "test over"))
        await asyncio.wait_for(task, 60.0)
    if hold is None:
        return None
    return held_stop(config, Served("held", record, hold, hold.reason))


async def _resume(commands: Any, order_id: str, within: float = 20.0) -> None:
    """Resume as an operator does: a resume refused because a device is not back yet is tried
    again (a link just restored may take a moment to answer), anything else fails the test."""
    deadline = time.monotonic() + within
    while True:
        try:
            await commands.command(order_id, OrderCommand.RESUME, OPERATOR)
            return
        except CommandRefused as exc:
            if "cannot resume yet" not in str(exc) or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.5)


def _done_or_held_again(agent: Agent, order_id: str, holds_before: int) -> bool:
    assert agent.commands is not None and agent.controller is not None
    if agent.controller.running is not None:
        return False
    record = agent.commands.store.get(order_id)
    if record.state in TERMINAL_STATES or record.state == OrderState.COMPLETED:
        return True
    return (
        record.state == OrderState.HELD and len(agent.commands.store.holds(order_id)) > holds_before
    )


def held_stop(config: Any, served: Served) -> LineStopped | None:
    """The stop a ``serve`` that ended held was held with, its alarm checked; None when idle."""
    if served.ended == "idle":
        return None
    assert served.ended == "held" and served.waiting is not None, served
    if served.hold is None:  # the state database could not record the hold (it is full)
        assert served.waiting.state == "running" and served.reason is not None, served
        return LineStopped(StopReason(served.reason), "the hold could not be recorded")
    reason = StopReason(served.hold.reason)
    with state_db(config) as conn:
        alarms = AlarmBoard(conn).for_order(served.waiting.id)
    assert any(a.kind == reason and a.active and a.raised_at for a in alarms), alarms
    return LineStopped(reason, served.hold.detail)


@contextlib.asynccontextmanager
async def alongside(job: Awaitable[None]) -> AsyncIterator[asyncio.Task[None]]:
    """Run a fault injector next to the agent; cancelled if it is still waiting at the end."""
    task = asyncio.ensure_future(job)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.contextmanager
def state_db(config: Any) -> Iterator[sqlite3.Connection]:
    with contextlib.closing(open_reader(Path(config.model.agent.state_dir))) as conn:
        yield conn


def column(conn: sqlite3.Connection, sql: str, *args: Any) -> list[Any]:
    return [row[0] for row in conn.execute(sql, args)]


def units_by_trigger(conn: sqlite3.Connection) -> dict[int, tuple[str, str]]:
    rows = conn.execute("SELECT trigger, verdict, reason FROM units ORDER BY id").fetchall()
    decided = {trigger: (verdict, reason) for trigger, verdict, reason in rows}
    assert len(decided) == len(rows), "a unit was decided twice"
    return decided


def check_gate_matches_ledger(conn: sqlite3.Connection, sims: SimulatorSet) -> None:
    """The PLC let a unit through if and only if its serial is commissioned."""
    passed = sims.plc.passed_triggers
    assert len(passed) == len(set(passed))
    commissioned = column(conn, "SELECT trigger FROM serials WHERE state = 'commissioned'")
    assert sorted(passed) == sorted(commissioned), "gate passes differ from commissioned serials"


def check_nothing_sent_twice(conn: sqlite3.Connection, sims: SimulatorSet) -> None:
    printed = sims.printer.printed
    assert len(printed) == len(set(printed)), "a serial was printed twice"
    seqs = column(conn, "SELECT seq FROM serials WHERE seq IS NOT NULL")
    assert len(seqs) == len(set(seqs)), "a record number was used twice"
    assert set(printed) <= set(column(conn, "SELECT serial FROM serials WHERE seq IS NOT NULL"))


async def run_balanced(factory: Any, sims_config: Any, units: int) -> None:
    """One order of ``units`` on ``sims_config``, run to its end: balanced, and the gate did
    what the ledger says."""
    async with SimulatorSet(sims_config) as sims:
        config = make_config(factory, sims, units)
        assert await run_agent(config) is None
        await gates_settled(sims)
        with state_db(config) as conn:
            report = reconcile(conn)
            check_gate_matches_ledger(conn, sims)
    assert report["balanced"], report["problems"]
