"""Every wait on a device is bounded: a device silent while work waits for it stops the line.

A printer that acknowledges every record and never prints, or a camera that stays connected and
sends nothing, used to stall the line silently (no log, no alarm, no stop). While the PLC reports
the line running, that silence is an alarm at half the limit and a line stop (``device_error``)
naming the device at the limit. Real simulators: ASCII printer over TCP, camera over TCP,
Modbus TCP PLC.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edge_agent.line.stats import LineStats
from edge_agent.reconcile import reconcile
from simulators.runner import SimulatorSet
from tests.helpers.line import (
    alongside,
    check_gate_matches_ledger,
    check_nothing_sent_twice,
    gates_settled,
    make_config,
    run_agent,
    simulators,
    state_db,
)
from tests.helpers.waiting import until

pytestmark = pytest.mark.slow

UNITS, FAULT_AFTER = 400, 30


async def test_a_printer_that_acknowledges_but_never_prints_stops_the_line(
    agent_config_factory: Any,
) -> None:
    async with SimulatorSet(simulators()) as sims:
        config = make_config(agent_config_factory, sims, UNITS, print_confirm_timeout_s=2.0)
        stats = LineStats()

        async def jam() -> None:
            await until(lambda: len(sims.printer.printed) >= FAULT_AFTER, "printed units")
            sims.printer.faults.stall_printing()

        async with alongside(jam()):
            stopped = await asyncio.wait_for(run_agent(config, stats), 30)
        await gates_settled(sims)
        with state_db(config) as conn:
            report = reconcile(conn)
            check_gate_matches_ledger(conn, sims)
            check_nothing_sent_twice(conn, sims)
        acknowledged = sims.printer.buffered

    assert stopped is not None and stopped.reason == "device_error", stopped
    assert "printer: no print confirmations" in str(stopped)
    assert any(a.startswith("device_silent: printer") for a in stats.alarms), stats.alarms
    assert acknowledged > 0  # records were taken and acknowledged, never printed
    assert FAULT_AFTER <= len(sims.printer.printed) < UNITS
    assert report["batch_state"] == "open"
    assert report["passed"] == report["serials_commissioned"] > 0


async def test_a_camera_that_sends_nothing_stops_the_line(agent_config_factory: Any) -> None:
    async with SimulatorSet(simulators()) as sims:
        config = make_config(agent_config_factory, sims, UNITS, no_frame_timeout_s=2.0)
        stats = LineStats()

        async def mute() -> None:
            await until(lambda: sims.camera.frames_sent >= FAULT_AFTER, "frames")
            sims.camera.mute = True

        async with alongside(mute()):
            stopped = await asyncio.wait_for(run_agent(config, stats), 30)
        await gates_settled(sims)
        with state_db(config) as conn:
            report = reconcile(conn)
            check_gate_matches_ledger(conn, sims)
            check_nothing_sent_twice(conn, sims)

    assert stopped is not None and stopped.reason == "device_error", stopped
    assert "camera: no frames for printed units" in str(stopped)
    assert any(a.startswith("device_silent: camera") for a in stats.alarms), stats.alarms
    assert len(sims.printer.printed) < UNITS
    assert report["batch_state"] == "open"
