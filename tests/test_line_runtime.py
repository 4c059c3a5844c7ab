"""The line runtime end to end: Agent + LineRuntime against the printer, camera and PLC simulators.

Every test runs a small batch on loopback simulators sharing one simulated conveyor, then checks
the outcome three ways: the agent's ledger (reconciliation, serials, units, outbox), what the
simulated line physically did (printed serials, gate decisions, line stops) and the two against
each other. The central invariant is the README's "a unit passes only after its commissioning is
committed": the triggers the PLC let through are exactly the commissioned serials' triggers.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from drivers.plc.modbus.registers import StopCause
from edge_agent.app import Agent
from edge_agent.config.models import CameraSim, PlcSim, PrinterSim, SimulatorsSection
from edge_agent.db import open_reader
from edge_agent.errors import LineStopped
from edge_agent.ledger import Ledger
from edge_agent.line.stats import LineStats
from edge_agent.reconcile import reconcile
from simulators.runner import SimulatorSet

pytestmark = pytest.mark.slow

DEFECT_REASON = {
    "unreadable": "no_read",
    "wrong_serial": "serial_mismatch",
    "duplicate_serial": "duplicate_serial",
    "wrong_gtin": "wrong_gtin",
    "wrong_lot": "wrong_lot",
    "wrong_expiry": "wrong_expiry",
    "low_contrast": "low_contrast",
}


# --- helpers ----------------------------------------------------------------------------------


def simulators(*, defect_rate: float = 0.0, seed: int = 1) -> SimulatorsSection:
    """Fast (unpaced) line, any free ports, the demo's gate delay and verdict ring."""
    return SimulatorsSection(
        units_per_min=None,
        printer=PrinterSim(port=0, buffer_size=16),
        camera=CameraSim(port=0, defect_rate=defect_rate, seed=seed),
        plc=PlcSim(port=0, gate_delay_s=0.6, heartbeat_timeout_s=1.0, ring_size=512),
    )


def make_config(factory: Any, sims: SimulatorSet, units: int, **line: Any) -> Any:
    return factory(
        sims.ports(),
        batch={"target_quantity": units},
        plc={"ring_size": 512},
        line=line,
    )


async def until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.01)


async def gates_settled(sims: SimulatorSet) -> None:
    """Every unit that reached the camera has also been decided at the reject gate."""
    plc, line = sims.plc, sims.line
    await line.drain()
    await until(
        lambda: len(plc.passed_triggers) + len(plc.rejected_triggers) >= line.trigger_count,
        within=3.0,
        what="the PLC to gate every triggered unit",
    )


async def run_agent(config: Any, stats: LineStats | None = None) -> LineStopped | None:
    """Run the batch; returns the LineStopped it ended with, or None when it completed."""
    try:
        await Agent(config, stats=stats).run()
    except LineStopped as exc:
        return exc
    return None


@contextlib.contextmanager
def reader(config: Any) -> Any:
    with contextlib.closing(open_reader(Path(config.model.agent.state_dir))) as conn:
        yield conn


def column(conn: sqlite3.Connection, sql: str, *args: Any) -> list[Any]:
    return [row[0] for row in conn.execute(sql, args)]


def commissioned_triggers(conn: sqlite3.Connection) -> list[int]:
    return column(conn, "SELECT trigger FROM serials WHERE state = 'commissioned'")


def assert_never_passed_uncommissioned(conn: sqlite3.Connection, sims: SimulatorSet) -> None:
    """The PLC let a unit through only if its serial is commissioned, and vice versa."""
    passed = sims.plc.passed_triggers
    assert len(passed) == len(set(passed))
    assert sorted(passed) == sorted(commissioned_triggers(conn))


def assert_nothing_sent_twice(conn: sqlite3.Connection, sims: SimulatorSet) -> None:
    printed = sims.printer.printed
    assert len(printed) == len(set(printed)), "a serial was printed twice"
    seqs = column(conn, "SELECT seq FROM serials WHERE seq IS NOT NULL")
    assert len(seqs) == len(set(seqs)), "a record number was used twice"


@contextlib.asynccontextmanager
async def background(job: Awaitable[None]) -> AsyncIterator[asyncio.Task[None]]:
    """Run a fault injector next to the agent; it must have finished without error at the end."""
    task = asyncio.ensure_future(job)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- scenarios --------------------------------------------------------------------------------


async def test_clean_batch_rejects_exactly_the_defects(agent_config_factory: Any) -> None:
    units = 120
    async with SimulatorSet(simulators(defect_rate=0.1, seed=7)) as sims:
        config = make_config(agent_config_factory, sims, units)
        assert await run_agent(config) is None
        await gates_settled(sims)
        injected = dict(sims.camera.injected)
        with reader(config) as conn:
            report = reconcile(conn)
            rows = conn.execute("SELECT trigger, verdict, reason FROM units").fetchall()
            commissioned = commissioned_triggers(conn)
            commissioning_events = column(
                conn, "SELECT payload FROM outbox WHERE kind = 'commissioning'"
            )
            assert_never_passed_uncommissioned(conn, sims)
            assert_nothing_sent_twice(conn, sims)

    assert report["balanced"], report["problems"]
    assert report["batch_state"] == "closed"
    assert report["units"] == units == sims.line.trigger_count
    assert len(sims.printer.printed) == units
    assert injected, "the seed must inject some defects"
    gate_rejected = set(sims.plc.rejected_triggers)
    assert set(injected) <= gate_rejected, "a defect passed the gate"
    assert gate_rejected == set(injected), "a good unit was rejected"
    units_by_trigger = {trigger: (verdict, reason) for trigger, verdict, reason in rows}
    assert len(units_by_trigger) == len(rows), "a unit was decided twice"
    for trigger, kind in injected.items():
        assert units_by_trigger[trigger] == ("reject", DEFECT_REASON[kind]), (trigger, kind)
    # One commissioning event per commissioned serial, each naming that serial.
    assert len(commissioning_events) == len(commissioned) == units - len(injected)
    assert report["events_commissioning"] == report["serials_commissioned"]


async def test_repeated_doubt_stops_the_line(agent_config_factory: Any) -> None:
    async with SimulatorSet(simulators(defect_rate=1.0)) as sims:
        sims.camera.defect_kinds = ("wrong_gtin",)
        config = make_config(agent_config_factory, sims, 60, max_consecutive_rejects=4)
        stopped = await run_agent(config)
        await gates_settled(sims)
        with reader(config) as conn:
            report = reconcile(conn)
            reasons = column(conn, "SELECT reason FROM units")
            assert_never_passed_uncommissioned(conn, sims)
            assert_nothing_sent_twice(conn, sims)

    assert stopped is not None and stopped.reason == "repeated_rejects"
    assert int(StopCause.AGENT_REQUEST) in [cause for _, cause in sims.plc.stops]
    assert sims.plc.passed_triggers == []
    assert report["passed"] == report["serials_commissioned"] == 0
    assert len(reasons) >= 4 and set(reasons) == {"wrong_gtin"}
    assert report["batch_state"] == "open"


async def test_printer_fault_stops_the_line(agent_config_factory: Any) -> None:
    async with SimulatorSet(simulators()) as sims:
        config = make_config(agent_config_factory, sims, 120)

        async def ink_out_after(printed: int) -> None:
            await until(lambda: len(sims.printer.printed) >= printed, 10.0, "printed units")
            sims.printer.faults.ink_out()

        async with background(ink_out_after(30)) as injector:
            stopped = await run_agent(config)
        assert injector.done() and injector.exception() is None
        await gates_settled(sims)
        with reader(config) as conn:
            print("DBG units", conn.execute("SELECT trigger, verdict, reason, verdict_written, confirmed FROM units WHERE trigger > 22").fetchall())
            print("DBG plc", sims.plc.passed_triggers[-5:], sims.plc.rejected_triggers, sims.line.trigger_count)
            report = reconcile(conn)
            assert_never_passed_uncommissioned(conn, sims)
            assert_nothing_sent_twice(conn, sims)

    assert stopped is not None
    assert stopped.reason == "device_error"
    assert "INK_OUT" in str(stopped)
    assert 30 <= len(sims.printer.printed) < 120
    assert report["duplicates"] == 0
    assert report["passed"] == report["serials_commissioned"] > 0
