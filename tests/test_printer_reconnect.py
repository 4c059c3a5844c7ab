"""In-process recovery of a lost printer link (``[line] printer_reconnect = "auto"``).

The whole agent runs against the simulated line; the printer's connection is dropped mid-batch
with the simulator's own fault API. The batch must complete in the same run, balanced, with the
ledger's promises intact (``check_invariants``: nothing printed or sent twice, nothing
commissioned without the printer's confirmation, gate and ledger agree); the records the printer
still held are settled unused and never print; the alarm names the lost link; the PLC was asked
to halt the line meanwhile. A printer that stays away longer than ``printer_max_outage_s`` stops
the line for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path
from typing import Any

import pytest

from drivers.plc.modbus.registers import StopCause
from edge_agent.db import open_reader
from edge_agent.errors import LineStopped
from edge_agent.line.printer_link import MAX_DELAY_S, next_delay
from edge_agent.line.stats import LineStats
from simulators.runner import SimulatorSet
from tests.helpers.line import run_agent as run_until_done_or_held
from tests.helpers.printer_faults import (
    FAULT_AFTER,
    KITS,
    UNITS,
    Conveyor,
    agent_config,
    check_invariants,
    column,
    injecting,
    printer_types,
    simulators,
)
from tests.helpers.waiting import until

pytestmark = pytest.mark.slow


async def run_agent(config: Any, stats: LineStats) -> LineStopped | None:
    async with asyncio.timeout(30):
        return await run_until_done_or_held(config, stats)


def reasons(state: Path, reason: str) -> list[str]:
    with contextlib.closing(open_reader(state)) as conn:
        return column(conn, "SELECT serial FROM serials WHERE reason = ?", reason)


@pytest.mark.parametrize("printer_type", printer_types())
async def test_lost_link_reconnects_and_the_batch_completes_in_the_same_run(
    printer_type: str, tmp_path: Path
) -> None:
    transport = KITS[printer_type].lost_link_transport
    async with SimulatorSet(simulators(printer_type, transport)) as sims:
        config = agent_config(
            sims, tmp_path, printer_type, printer_reconnect="auto", printer_max_outage_s=20.0
        )
        printer, line, stats = sims.printer, sims.line, LineStats()
        conveyor = Conveyor(line)
        at_drop: dict[str, Any] = {}

        async def pull_the_cable() -> None:
            conveyor.halt()  # records stay queued in the printer across the outage
            await until(lambda: printer.buffered > 0, "records queued in the printer")
            printer.faults.drop_connection()
            at_drop.update(queued=list(printer.queued), printed=list(printer.printed))
            # The conveyor runs again only once the queue is settled, so none of it can print
            await until(lambda: bool(reasons(tmp_path, "cleared_from_printer")), "the reconcile")
            conveyor.run()

        async with injecting(sims, pull_the_cable):
            stopped = await run_agent(config, stats)
        await until(lambda: line.trigger_count == len(printer.printed), "units to clear")
        await line.drain()
        report = check_invariants(tmp_path, sims)
        cleared = reasons(tmp_path, "cleared_from_printer")
    assert stopped is None, f"the line stopped: {stopped}"
    assert report["balanced"], report["problems"]
    assert report["batch_state"] == "closed"
    assert at_drop["queued"], "nothing was queued in the printer when the link dropped"
    # By identity: the driver knows what it wrote, so even ZPL (which only counts) names them
    assert sorted(cleared) == sorted(at_drop["queued"]), "the cancelled records are not unused"
    assert not set(cleared) & set(printer.printed), "a cancelled record was printed"
    assert printer.printed[: len(at_drop["printed"])] == at_drop["printed"]
    assert len(printer.printed) > len(at_drop["printed"]), "nothing printed after the reconnect"
    alarms = [a for a in stats.alarms if "printer_link_lost" in a]
    assert len(alarms) == 1 and len(stats.alarms) == 1, stats.alarms
    causes = [cause for _, cause in sims.plc.stops]
    assert StopCause.AGENT_REQUEST in causes, "the PLC was not asked to halt the line"


@pytest.mark.parametrize("printer_type", ["ascii", "zipher"])
async def test_link_dropped_while_units_flow_settles_them_from_evidence(
    printer_type: str, tmp_path: Path
) -> None:
    """No halt before the drop: units printed while the link is down reach the camera without
    a confirmation and are rejected; the rest of the batch passes."""
    async with SimulatorSet(simulators(printer_type)) as sims:
        config = agent_config(sims, tmp_path, printer_type, printer_max_outage_s=20.0)
        printer, stats = sims.printer, LineStats()
        async with injecting(sims, printer.faults.drop_connection):
            stopped = await run_agent(config, stats)
        await until(lambda: sims.line.trigger_count == len(printer.printed), "units to clear")
        await sims.line.drain()
        report = check_invariants(tmp_path, sims)
    assert stopped is None, f"the line stopped: {stopped}"
    assert report["balanced"], report["problems"]
    assert report["batch_state"] == "closed"
    assert any("printer_link_lost" in a for a in stats.alarms), stats.alarms
    # At most the records queued or in flight at the drop are lost to the batch
    assert report["passed"] >= UNITS - 2 * 8, report


async def test_outage_longer_than_the_maximum_stops_the_line(tmp_path: Path) -> None:
    async with SimulatorSet(simulators("ascii")) as sims:
        config = agent_config(sims, tmp_path, "ascii", printer_max_outage_s=1.5)
        stats = LineStats()
        # The printer is switched off: every reconnect is refused
        async with injecting(sims, sims.printer.stop):
            stopped = await run_agent(config, stats)
        await sims.line.drain()
        report = check_invariants(tmp_path, sims)
    assert stopped is not None and stopped.reason == "printer_link_lost", stopped
    assert "printer" in str(stopped) and "no link for 1.5 s" in str(stopped), stopped
    assert report["batch_state"] == "open"
    assert FAULT_AFTER <= len(sims.printer.printed) < UNITS


def test_reconnect_backoff_is_exponential_capped_and_jittered() -> None:
    rng = random.Random(7)
    for attempt in range(40):
        ceiling = min(MAX_DELAY_S, 0.2 * 2**attempt)
        delays = {next_delay(attempt, rng) for _ in range(20)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, delays)
        assert len(delays) > 1, "no jitter"
    assert next_delay(3, random.Random(1)) > next_delay(0, random.Random(1))
