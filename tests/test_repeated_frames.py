"""A camera that sends a frame twice (same trigger count) never changes a decided unit.

Each unit gets one verdict, written once to its slot. A second frame for a trigger already decided
(or in decision) is logged, counted and archived, and changes neither the ledger nor the PLC: the
ledger keeps agreeing with what the gate did. Real simulators over TCP and Modbus TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from edge_agent.app import Agent
from edge_agent.line.stats import LineStats
from edge_agent.reconcile import reconcile
from simulators.runner import SimulatorSet
from tests.helpers.line import (
    check_gate_matches_ledger,
    check_nothing_sent_twice,
    column,
    gates_settled,
    run_agent,
    run_order,
    simulators,
    state_db,
    units_by_trigger,
)
from tests.helpers.waiting import until

pytestmark = pytest.mark.slow


def config_for(factory: Any, sims: SimulatorSet, units: int, **vision: Any) -> Any:
    return factory(
        simulators=sims,
        order={"quantity": units},
        line={"verdict_deadline_ms": 500},
        vision=vision,
    )


async def test_a_repeated_frame_never_changes_a_decided_unit(
    agent_config_factory: Any, tmp_path: Path
) -> None:
    units, every = 120, 10
    archive = tmp_path / "failed-frames"
    async with SimulatorSet(simulators()) as sims:
        sims.camera.repeat_every = every  # frame n re-sent 50 ms later, for every 10th unit
        config = config_for(agent_config_factory, sims, units, archive_dir=str(archive))
        stats = LineStats()
        assert await run_agent(config, stats) is None
        await gates_settled(sims)
        with state_db(config) as conn:
            report = reconcile(conn)
            decided = units_by_trigger(conn)  # fails when a trigger got a second verdict
            check_gate_matches_ledger(conn, sims)
            check_nothing_sent_twice(conn, sims)

    repeated = sims.camera.repeated
    assert repeated == list(range(every, units + 1, every))
    assert report["balanced"], report["problems"]
    assert report["batch_state"] == "closed"
    # No defects were injected: a repeat must not turn any unit into a reject.
    assert sorted(sims.plc.passed_triggers) == list(range(1, units + 1))
    assert set(decided.values()) == {("pass", "ok")}
    assert report["passed"] == units
    assert stats.repeated_frames == len(repeated)
    archived = sorted(p.name for p in archive.glob("*repeated_frame*.json"))
    assert len(archived) == len(repeated), archived


async def test_a_frame_repeated_after_a_restart_keeps_its_first_verdict(
    agent_config_factory: Any,
) -> None:
    """A camera re-sending an image the agent decided before it restarted (cameras often resend
    their last frame when a client reconnects) is a repeat too."""
    units = 100
    async with SimulatorSet(simulators()) as sims:
        frames: dict[int, bytes] = {}
        produce = sims.camera._produce

        def keep(trigger: int, look: Any, rng: Any) -> bytes:
            frames[trigger] = data = produce(trigger, look, rng)
            return data

        sims.camera._produce = keep
        config = config_for(agent_config_factory, sims, units)
        stats = LineStats()
        first = asyncio.create_task(Agent(config, stats=stats).serve())
        await until(lambda: stats.units >= 30 or first.done(), "30 verdicts")
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        with state_db(config) as conn:
            passed_before = column(conn, "SELECT trigger FROM units WHERE verdict = 'pass'")
        old = passed_before[len(passed_before) // 2]

        again = LineStats()
        second = asyncio.create_task(run_order(config, again))
        await until(lambda: again.units >= 5 or second.done(), "verdicts after the restart")
        await sims.camera._deliver(frames[old])  # the old image again, over the camera's TCP
        await asyncio.wait_for(second, 60)
        await gates_settled(sims)
        with state_db(config) as conn:
            report = reconcile(conn)
            decided = units_by_trigger(conn)
            check_gate_matches_ledger(conn, sims)

    assert again.repeated_frames == 1
    assert decided[old] == ("pass", "ok")
    assert report["balanced"], report["problems"]
    assert report["batch_state"] == "closed"
