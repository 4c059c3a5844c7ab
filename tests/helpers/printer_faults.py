"""The whole agent with a printer broken on purpose, for every printer of the catalog.

How each printer breaks is its simulator's (``simulators.printers.traits``): the fault API and
the traits, so the fault matrix covers a new printer protocol as soon as its simulator is in the
catalog. ``check_invariants`` holds the ledger's promises, whatever the fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from edge_agent.config import parse_config
from edge_agent.config.models import CameraSim, PrinterSim, SimulatorsSection
from edge_agent.db import open_reader
from edge_agent.errors import LineStopped
from edge_agent.reconcile import reconcile
from edge_agent.registry import driver_class
from simulators.catalog import SIMULATOR_TYPES
from simulators.demo.line import demo_config_text
from simulators.printers.traits import PrinterSimTraits
from simulators.pytest_plugin import inbox_with
from simulators.runner import SimulatorSet, simulator_class
from tests.helpers.line import run_agent as run_until_done_or_held
from tests.helpers.margins import PLC_RING_SIZE, VERDICT_DEADLINE_MS, plc_sim
from tests.helpers.waiting import until

UNITS = 30
FAULT_AFTER = 8  # printed units before the fault is injected
# Reasons the reconcile at a restart settles serials with: seen, the old queue is cancelled
SETTLED = "('cleared_from_printer', 'not_received_by_printer', 'in_flight_at_restart')"


# --- how each printer breaks: its simulator says (simulators/printers/traits.py) -------------


def printer_types() -> list[str]:
    """Every printer of the simulator catalog: a new protocol is in the matrix by itself."""
    return sorted(SIMULATOR_TYPES["printer"])


def traits(printer_type: str) -> PrinterSimTraits:
    sim_class = simulator_class("printer", printer_type)
    found = getattr(sim_class, "traits", None)
    assert isinstance(found, PrinterSimTraits), f"{sim_class.__name__} declares no traits"
    return found


KITS: dict[str, PrinterSimTraits] = {name: traits(name) for name in printer_types()}


# --- running a line ----------------------------------------------------------------------------


def simulators(printer_type: str, transport: str | None = None) -> SimulatorsSection:
    return SimulatorsSection(
        units_per_min=None,
        transit_s=traits(printer_type).transit_s,
        printer=PrinterSim(type=printer_type, port=0, buffer_size=16, transport=transport),
        camera=CameraSim(port=0, defect_rate=0.0, seed=1),
        plc=plc_sim(),
    )


def agent_config(sims: SimulatorSet, state: Path, printer_type: str, **line: Any) -> Any:
    sections = sims.device_configs()
    sections["printer"] = sections["printer"] | traits(printer_type).fast
    overrides = {
        "agent": {"state_dir": str(state)},
        "orders": inbox_with(state.parent / "inbox", quantity=UNITS),
        "line": {"verdict_deadline_ms": VERDICT_DEADLINE_MS, **line},
        "plc": {"ring_size": PLC_RING_SIZE},
    }
    return parse_config(demo_config_text(), "demo.toml", overrides, sections=sections)


async def run_agent(config: Any) -> LineStopped | None:
    async with asyncio.timeout(30):
        return await run_until_done_or_held(config)


@contextlib.asynccontextmanager
async def injecting(
    sims: SimulatorSet, inject: Callable[[], Awaitable[None] | None]
) -> AsyncIterator[None]:
    """Inject the fault once FAULT_AFTER units are printed, while the agent runs."""

    async def job() -> None:
        await until(lambda: len(sims.printer.printed) >= FAULT_AFTER, "printed units", within=15)
        result = inject()
        if result is not None:
            await result

    task = asyncio.create_task(job())
    try:
        yield
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def operator_reset(sims: SimulatorSet) -> None:
    """What the operator does after a line stop: clear the agent's stop request, acknowledge."""
    plc_config = sims.plc.driver_config()
    cls = driver_class("plc", plc_config["type"])
    async with cls("plc", cls.Config(**plc_config)) as plc:
        await plc.clear_line_stop()
    sims.plc.acknowledge()


class Conveyor:
    """A run permit on the simulated line, as a stopped conveyor: nothing is printed meanwhile."""

    def __init__(self, line: Any) -> None:
        self._line = line
        self._running = True
        line.add_run_permit(lambda: self._running)

    def halt(self) -> None:
        self._running = False
        self._line.notify_run_state()

    def run(self) -> None:
        self._running = True
        self._line.notify_run_state()


def column(conn: sqlite3.Connection, sql: str, *args: Any) -> list[Any]:
    return [row[0] for row in conn.execute(sql, args)]


def check_invariants(state: Path, sims: SimulatorSet) -> dict[str, Any]:
    """The ledger's promises, whatever the fault; returns the reconciliation report."""
    printed = sims.printer.printed
    with contextlib.closing(open_reader(state)) as conn:
        report = reconcile(conn)
        sent = column(conn, "SELECT serial FROM serials WHERE seq IS NOT NULL")
        seqs = column(conn, "SELECT seq FROM serials WHERE seq IS NOT NULL")
        commissioned = column(conn, "SELECT serial FROM serials WHERE state = 'commissioned'")
        confirmed = set(
            column(
                conn,
                "SELECT serial FROM transitions WHERE to_state = 'printed' "
                "AND reason = 'print_confirmed'",
            )
        )
        triggers = column(conn, "SELECT trigger FROM serials WHERE state = 'commissioned'")
    assert len(printed) == len(set(printed)), "a serial was printed twice"
    assert len(seqs) == len(set(seqs)), "a record number was used twice"
    assert set(printed) <= set(sent), "the printer printed a serial the ledger never sent"
    assert set(commissioned) <= confirmed, "a serial was commissioned without confirmation"
    assert set(commissioned) <= set(printed), "a commissioned serial was never printed"
    assert sorted(sims.plc.passed_triggers) == sorted(triggers), "gate and ledger differ"
    assert report["duplicates"] == 0 and report["passed"] == report["serials_commissioned"]
    return report
