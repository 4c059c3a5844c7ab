"""SIGTERM (systemctl stop) and SIGINT (Ctrl-C) on `edge-agent run` stop the line cleanly.

A real agent process runs a batch against the simulators; mid-batch it gets a signal. It must stop
the line as a line stop does (the PLC told why, the units already decided gated and learnt), log
it, tell systemd STOPPING=1 on the NOTIFY_SOCKET, and exit 128 + the signal number. SIGINT is
sent to a process started with SIGINT ignored (as some shells and service wrappers do): the
program's own handlers must still work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.plc.modbus import registers as reg
from edge_agent.config.models import CameraSim, PrinterSim, SimulatorsSection
from edge_agent.db import open_reader
from edge_agent.reconcile import reconcile
from edge_agent.stops import StopReason
from simulators.runner import SimulatorSet
from tests.helpers.agent_process import AgentProcess, write_agent_config
from tests.helpers.line import check_gate_matches_ledger, column, gates_settled
from tests.helpers.margins import plc_sim
from tests.helpers.waiting import until

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def notify_socket(path: Path) -> Iterator[list[str]]:
    """A datagram socket standing in for systemd's, read as messages arrive (as systemd does)."""
    messages: list[str] = []
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), lambda: messages.append(sock.recv(4096).decode()))
        try:
            yield messages
        finally:
            loop.remove_reader(sock.fileno())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_stops_the_line_cleanly(tmp_path: Path, signum: signal.Signals) -> None:
    units = 100_000  # never reached: the signal ends the run
    section = SimulatorsSection(
        units_per_min=1200,
        printer=PrinterSim(port=0, buffer_size=16),
        camera=CameraSim(port=0, defect_rate=0.05, seed=7),
        plc=plc_sim(),
    )
    notify = tmp_path / "notify.sock"
    with notify_socket(notify) as messages:
        async with SimulatorSet(section) as sims:
            state = tmp_path / "state"
            config = write_agent_config(tmp_path / "agent.toml", sims, state, units=units)
            agent = AgentProcess(config, tmp_path / "agent.out", env={"NOTIFY_SOCKET": str(notify)})
            agent.ignore_sigint = signum == signal.SIGINT
            async with agent:
                await until(
                    lambda: len(sims.plc.passed_triggers) >= 30 or agent.returncode is not None,
                    within=60.0,
                    what="units through the gate",
                )
                assert agent.returncode is None, agent.output()[-3000:]
                agent.send_signal(signum)
                status = await agent.wait(within=30.0)
            await gates_settled(sims)
            stop_reason = await sims.plc._get(3, reg.HR_STOP_REASON, 1)
            with contextlib.closing(open_reader(state)) as conn:
                report = reconcile(conn)
                order_state = conn.execute("SELECT state FROM orders").fetchone()[0]
                check_gate_matches_ledger(conn, sims)
                unwritten = column(
                    conn, "SELECT trigger FROM units WHERE verdict = 'pass' AND verdict_written = 0"
                )

    output = agent.output()
    assert status == 128 + signum, output[-3000:]
    assert "Traceback" not in output
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any(e["event"] == "shutdown_requested" and e["signal"] == signum.name for e in events)
    assert any(e["event"] == "line_stop" and e["reason"] == "shutdown" for e in events)
    assert f"stopped on {signum.name}" in output
    # systemd heard READY=1 at start and STOPPING=1 when the stop began
    assert messages and messages[0].startswith("READY=1")
    assert any(m.startswith("STOPPING=1") for m in messages), messages
    # the PLC was told why, and stopped on the agent's request
    assert stop_reason == [StopReason.SHUTDOWN.code] == [19]
    assert int(reg.StopCause.AGENT_REQUEST) in [cause for _, cause in sims.plc.stops]
    # settled: every pass reached the PLC, and the ledger agrees with the gate (checked above)
    assert unwritten == []
    assert report["batch_state"] == "open"
    assert order_state == "running"  # not held: the next start of the daemon resumes it
    assert report["passed"] == report["serials_commissioned"] > 0
