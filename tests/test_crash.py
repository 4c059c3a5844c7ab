"""Crash safety: SIGKILL the agent mid-batch at chosen points, restart it, check the invariants.

The simulators run in their own process (`edge-agent simulate`), like real devices that outlive
the agent; the agent is `edge-agent run` in another. After the restart the batch must complete with:
no serial printed twice, no unit passed by the PLC without a commissioned serial (and the other
way round), units in flight at the crash rejected, and a balanced reconciliation.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.db import open_reader
from edge_agent.reconcile import reconcile
from simulators.pytest_plugin import drop_order, order_for

ROOT = Path(__file__).resolve().parents[1]
DEMO = (ROOT / "config" / "demo.toml").read_text()
UNITS = 150

pytestmark = pytest.mark.slow


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge_agent.cli", *args]


def config_text(state_dir: Path, ports: dict[str, int] | None = None) -> str:
    text = re.sub(r'state_dir = "[^"]*"', f'state_dir = "{state_dir}"', DEMO)
    text = text.replace("units_per_min = 300 ", "units_per_min = 1500 ")
    text = text.replace('log_format = "json"', 'log_format = "json"\nlog_level = "warning"')
    for kind in ("printer", "camera", "plc"):
        if ports:  # the agent's config: devices at the simulators' ports
            text = re.sub(
                rf"(\n\[{kind}\][^\[]*?)port = \d+", rf"\g<1>port = {ports[kind]}", text, count=1
            )
        else:  # the simulators' config: any free port
            text = re.sub(
                rf"(\n\[simulators\.{kind}\][^\[]*?)port = \d+", r"\g<1>port = 0", text, count=1
            )
    return text


@contextlib.contextmanager
def simulators(tmp_path: Path) -> Any:
    config = tmp_path / "sim.toml"
    config.write_text(config_text(tmp_path / "unused"))
    truth = tmp_path / "truth.json"
    with (tmp_path / "sim.log").open("w") as sim_log:
        proc = subprocess.Popen(
            cli("simulate", "--config", str(config), "--report-json", str(truth)),
            stdout=subprocess.PIPE,
            stderr=sim_log,
            text=True,
        )
    try:
        assert proc.stdout is not None
        ports = json.loads(proc.stdout.readline())["simulators"]
        yield ports, proc, truth
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        if proc.stdout is not None:
            proc.stdout.close()


def with_order(config: Path, state: Path) -> None:
    """The config reads its orders from an inbox beside it, where an order of UNITS waits."""
    inbox = config.parent / "inbox"
    config.write_text(config.read_text() + f'\n[orders]\ninbox = "{inbox}"\ninbox_poll_s = 0.1\n')
    drop_order(inbox, order_for(quantity=UNITS))


def run_agent(config: Path, log: Path, crash_at: str | None = None) -> int:
    """`run` as scripts and CI run it: until its orders are done (0) or one is held (3)."""
    env = dict(os.environ)
    env.pop("EDGE_AGENT_CRASH_AT", None)
    if crash_at:
        env["EDGE_AGENT_CRASH_AT"] = crash_at
    with log.open("a") as out:
        return subprocess.run(
            cli("run", "--config", str(config), "--exit-when-idle", "--hold-timeout", "0"),
            env=env,
            stdout=out,
            stderr=out,
            timeout=120,
        ).returncode


@pytest.mark.parametrize(
    "crash_at",
    [
        "printer_buffer_full:20",  # reached once per refill (half a buffer), ~every 4 units
        "block_taken:12",
        "decoded:60",
        "outbox_commit:30",
        "group_commit:70",
    ],
    ids=[
        "printer-buffer-full",
        # a block of serials committed as sent, none handed to the printer yet
        "block-sent-none-printed",
        "between-decode-and-verdict",
        "during-outbox-commit",
        # the writer's group (outcomes, print confirmations, verdict-written flags) not committed
        "before-group-commit",
    ],
)
def test_sigkill_mid_batch_then_resume(tmp_path: Path, crash_at: str) -> None:
    state = tmp_path / "state"
    with simulators(tmp_path) as (ports, _proc, truth_file):
        config = tmp_path / "agent.toml"
        config.write_text(config_text(state, ports))
        with_order(config, state)
        log = tmp_path / "agent.out"
        first = run_agent(config, log, crash_at)
        assert first == -signal.SIGKILL, log.read_text()[-3000:]
        with contextlib.closing(open_reader(state)) as conn:
            before = reconcile(conn)
        assert before["batch_state"] == "open"
        time.sleep(1.5)  # the PLC notices the lost heartbeat and stops the line
        second = run_agent(config, log)
        assert second == 0, log.read_text()[-3000:]
    truth = json.loads(truth_file.read_text())
    with contextlib.closing(open_reader(state)) as conn:
        report = reconcile(conn)
        commissioned_triggers = {
            t for (t,) in conn.execute("SELECT trigger FROM serials WHERE state = 'commissioned'")
        }
        sent = dict(conn.execute("SELECT serial, state FROM serials WHERE seq IS NOT NULL"))
        sent_count = conn.execute("SELECT count(*) FROM serials WHERE seq IS NOT NULL").fetchone()
        restart_rejects = conn.execute(
            "SELECT count(*) FROM serials WHERE reason = 'in_flight_at_restart'"
        ).fetchone()[0]
    assert report["balanced"], report["problems"]
    assert report["batch_state"] == "closed" and report["serials_in_flight"] == 0
    assert truth["printed_twice"] == 0
    assert sent_count == (len(sent),), "a serial was sent twice"
    # The order's quantity was made: records the restart cleared from the printer, unprinted,
    # are unused and were made up for by other serials.
    assert sum(state != "unused" for state in sent.values()) == UNITS
    # Never silently passed: the units the PLC let through are exactly the commissioned ones.
    assert set(truth["gate_passed"]) == commissioned_triggers
    assert restart_rejects > 0
    # Every injected defect that reached the agent was rejected at the gate.
    assert not set(map(int, truth["injected_defects"])) & set(truth["gate_passed"])
