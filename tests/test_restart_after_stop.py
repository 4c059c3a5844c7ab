"""After a line stop, a resumed order runs the line again once the PLC is reset, also across a
restart of the daemon.

The agent's line-stop request is the agent's own: the PLC holds the line while it is set. A stop
holds the order with the request still set (the daemon stays up; with ``--exit-when-idle
--hold-timeout 0`` it exits 3 instead), so the resume must clear it (after its recovery) or no
PLC reset can ever let the line run again. A restarted daemon keeps the order held: only an
operator's resume runs it again.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from drivers.plc.modbus import registers as reg
from edge_agent.config.models import CameraSim, PrinterSim, SimulatorsSection
from edge_agent.db import open_reader
from edge_agent.reconcile import reconcile
from simulators.runner import SimulatorSet
from tests.helpers.agent_process import (
    API_ENV,
    AgentProcess,
    Operator,
    free_port,
    write_agent_config,
)
from tests.helpers.line import check_gate_matches_ledger, check_nothing_sent_twice, gates_settled
from tests.helpers.margins import plc_sim
from tests.helpers.waiting import until

pytestmark = pytest.mark.slow


async def test_a_held_order_resumed_after_a_restart_runs_the_line_again(tmp_path: Path) -> None:
    units = 60
    section = SimulatorsSection(
        units_per_min=1500,
        printer=PrinterSim(port=0, buffer_size=16),
        camera=CameraSim(port=0, defect_rate=1.0, seed=2),
        plc=plc_sim(),
    )
    async with SimulatorSet(section) as sims:
        sims.plc.auto_restart = False  # after any stop the line needs the operator's reset
        sims.camera.defect_kinds = ("wrong_gtin",)
        config = write_agent_config(
            tmp_path / "agent.toml",
            sims,
            tmp_path / "state",
            units=units,
            api_port=(port := free_port()),
            line={"max_consecutive_rejects": 3},
        )
        log = tmp_path / "agent.out"
        agent = AgentProcess(config, log, env=API_ENV)
        async with agent:
            assert await agent.wait() == 3, agent.output()[-3000:]
        assert "line stopped: repeated_rejects; order PROC-1 needs a person" in log.read_text()
        await gates_settled(sims)
        assert not sims.plc.running()
        assert (await sims.plc._get(3, reg.HR_STOP_REASON, 1)) == [10]  # repeated rejects
        before = sims.line.trigger_count
        assert 0 < before < units

        # Restarted, the daemon keeps the order held and the line stopped: nothing moves, and
        # the PLC hears again why (as after a PLC restart that lost the request).
        await sims.plc._set(3, reg.HR_STOP_REASON, [0])
        async with AgentProcess(config, log, env=API_ENV) as agent:
            assert await agent.wait() == 3, agent.output()[-3000:]
        assert sims.line.trigger_count == before and not sims.plc.running()
        assert (await sims.plc._get(3, reg.HR_STOP_REASON, 1)) == [10]

        sims.camera.defect_rate = 0.0  # the cause is fixed; the operator resets the PLC
        sims.plc.acknowledge()
        async with AgentProcess(config, log, env=API_ENV, args=["--exit-when-idle"]) as agent:
            async with Operator(port) as operator:
                await operator.wait_up(agent)
                assert (await operator.order("PROC-1"))["state"] == "held"
                assert (await operator.resume("PROC-1"))["state"] == "running"
                await until(lambda: sims.line.trigger_count > before, "units after the resume")
            assert await agent.wait(within=90.0) == 0, agent.output()[-3000:]
        await gates_settled(sims)
        with contextlib.closing(open_reader(tmp_path / "state")) as conn:
            report = reconcile(conn)
            check_gate_matches_ledger(conn, sims)
            check_nothing_sent_twice(conn, sims)

    assert report["balanced"], report["problems"]
    assert report["batch_state"] == "closed"
    assert sims.line.trigger_count > before  # units flowed after the resume
    assert report["passed"] > 0
