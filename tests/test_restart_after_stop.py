"""After a line stop, a restarted agent runs the line again once the PLC is reset.

The agent's line-stop request is the agent's own: the PLC holds the line while it is set. A stop
ends the agent (exit 3) with the request still set, so the next start must clear it (after its
recovery) or no PLC reset can ever let the line run again.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from drivers.plc.modbus import registers as reg
from edge_agent.config.models import CameraSim, PlcSim, PrinterSim, SimulatorsSection
from edge_agent.db import open_reader
from edge_agent.reconcile import reconcile
from simulators.runner import SimulatorSet
from tests.helpers.agent_process import run_agent_process, write_agent_config
from tests.helpers.line import check_gate_matches_ledger, check_nothing_sent_twice, gates_settled

pytestmark = pytest.mark.slow


async def test_restart_after_a_line_stop_runs_the_line_again(tmp_path: Path) -> None:
    units = 60
    section = SimulatorsSection(
        units_per_min=1500,
        printer=PrinterSim(port=0, buffer_size=16),
        camera=CameraSim(port=0, defect_rate=1.0, seed=2),
        plc=PlcSim(port=0, gate_delay_s=0.6, heartbeat_timeout_s=1.0, ring_size=512),
    )
    async with SimulatorSet(section) as sims:
        sims.plc.auto_restart = False  # after any stop the line needs the operator's reset
        sims.camera.defect_kinds = ("wrong_gtin",)
        config = write_agent_config(
            tmp_path / "agent.toml",
            sims,
            tmp_path / "state",
            units=units,
            line={"max_consecutive_rejects": 3},
        )
        log = tmp_path / "agent.out"
        assert await run_agent_process(config, log) == 3, log.read_text()[-3000:]
        await gates_settled(sims)
        assert not sims.plc.running()
        assert (await sims.plc._get(3, reg.HR_STOP_REASON, 1)) == [10]  # repeated rejects
        before = sims.line.trigger_count
        assert 0 < before < units

        sims.camera.defect_rate = 0.0  # the cause is fixed; the operator resets the PLC
        sims.plc.acknowledge()
        assert await run_agent_process(config, log) == 0, log.read_text()[-3000:]
        await gates_settled(sims)
        with contextlib.closing(open_reader(tmp_path / "state")) as conn:
            report = reconcile(conn)
            check_gate_matches_ledger(conn, sims)
            check_nothing_sent_twice(conn, sims)

    assert report["balanced"], report["problems"]
    assert report["batch_state"] == "closed"
    assert sims.line.trigger_count > before  # units flowed after the restart
    assert report["passed"] > 0
