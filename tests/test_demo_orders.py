"""`edge-agent demo --orders 3` end to end, the audit trail of its state, and the daemon
SIGKILLed in the middle of an order and started again (issue 11 acceptance)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import signal
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from edge_agent.cli import main
from edge_agent.config.models import CameraSim, PlcSim, PrinterSim, SimulatorsSection
from edge_agent.db import open_reader
from edge_agent.reconcile import reconcile
from simulators.demo.orders import HELD_ORDER, demo_orders
from simulators.runner import SimulatorSet
from tests.helpers.agent_process import READ_POINT, AgentProcess, toml_text
from tests.helpers.waiting import until

UNITS = 24  # per order: the demo asks L3 for pages of 6
STEP_S = 60.0  # the longest a test waits for one thing (a loaded 2-core machine)


def test_demo_three_orders_a_hold_resumed_through_the_api_and_the_audit_trail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One demo run (the expensive part, so once) and what it left: the report, the hold and its
    resume, the audit trail of its state database."""
    report_file, state = tmp_path / "report.json", tmp_path / "state"
    args = ["demo", "--orders", "3", "--units", str(UNITS), "--fast", "--seed", "3"]
    code = main([*args, "--report-json", str(report_file), "--state-dir", str(state)])
    report = json.loads(report_file.read_text())
    assert code == 0, report["problems"]
    _no_forwarder_is_explained(report, capsys.readouterr().out)
    _orders_ran_one_after_another_and_closed_balanced(report, state)
    _order_2_held_and_was_resumed_through_the_api(report)
    _audit_verify_passes_and_finds_a_changed_row(state, tmp_path / "copy", capsys)


def _no_forwarder_is_explained(report: dict[str, Any], out: str) -> None:
    """Without --upstream the events stay in the outbox: the summary says so and what to do."""
    waiting = sum(o["events_pending_delivery"] for o in report["orders"])
    assert waiting >= 3 * UNITS - 3  # every unit's event at least (a few were rejected)
    text = " ".join(out.split())  # the console wraps at its width
    assert f"events waiting for upstream: {waiting:,}, kept in the outbox" in text
    assert "--upstream epcis-http" in text and "outbox export --state-dir" in text


def _orders_ran_one_after_another_and_closed_balanced(report: dict[str, Any], state: Path) -> None:
    assert report["balanced"] and report["process_exits"] == 0
    assert report["api_url"].startswith("http://127.0.0.1:")
    orders = report["orders"]
    assert [o["state"] for o in orders] == ["closed"] * 3
    assert len({o["gtin"] for o in orders}) == 3 and len({o["lot"] for o in orders}) == 3
    for order in orders:
        assert order["balanced"], order
        # Every unit printed got a verdict, or (in flight when the line held) was rejected for
        # lack of one; every unit the gate rejected has its serial rejected (a good unit can be:
        # no verdict in time, on a loaded machine, is a reject).
        assert order["units"] + order["undecided_rejected"] == UNITS == order["printed"]
        assert order["serials_rejected"] >= order["plc_rejected"] and order["duplicates"] == 0
        assert order["defects_rejected"] == order["injected_defects"]
        assert order["serials_unused"] == 0  # every unused serial went back to L3
        assert order["serials_returned"] == order["serials_returned_to_l3"]
        stored = json.loads((state / "reports" / f"{order['order_id']}.json").read_text())
        assert stored["balanced"] and stored["state"] == "closed"
    # Started one after another: each order's first unit after the one before it completed.
    started = [
        json.loads((state / "reports" / f"{o['order_id']}.json").read_text()) for o in orders
    ]
    for before, after in itertools.pairwise(started):
        assert after["started_at"] >= before["completed_at"]
    l3 = report["l3"]
    assert l3["orders_acknowledged"] == [o["order_id"] for o in orders]
    assert l3["pages_handed_out"] >= 3 * 4  # 24 units in pages of 6: paging really happened
    assert l3["reports"] == 3 and l3["returns"] == 3 and l3["duplicates"] == 0
    assert l3["serials_returned"] == report["serials_returned"] > 0


def _order_2_held_and_was_resumed_through_the_api(report: dict[str, Any]) -> None:
    held = report["orders"][HELD_ORDER - 1]
    assert held["injected_by_kind"].get("unreadable", 0) >= 6  # the burst (stop after 5)
    # Rejected as unreadable, or (a loaded machine) for a verdict too late: 5 in a row hold.
    assert held["rejected_by_reason"].get("no_read", 0) > 0 and held["rejected"] >= 5
    # The burst's hold; a loaded machine may add one (late verdicts in a row), resumed alike.
    holds = [h for h in report["holds"] if h["order_id"] == held["order_id"]]
    assert holds[0]["reason"] == "repeated_rejects"
    for hold in report["holds"]:
        assert hold["resumed_at"] is not None and hold["duration_s"] > 0
        assert hold["resumed_by"] == "api:demo-operator"  # the API token's name
    assert held["order_id"] in report["daemon"]["resumed"]
    assert report["daemon"]["segments"] == 3 + len(report["holds"])
    assert report["line_stopped"] is None


def _audit_verify_passes_and_finds_a_changed_row(
    state: Path, copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "verify", "--state-dir", str(state)]) == 0
    assert "audit trail holds" in capsys.readouterr().out
    shutil.copytree(state, copy)
    with contextlib.closing(sqlite3.connect(copy / "state.db")) as conn:
        # Who bypasses the agent can drop the trigger that keeps the table append-only.
        conn.execute("DROP TRIGGER audit_no_update")
        seq = conn.execute("SELECT seq FROM audit WHERE action = 'resume'").fetchone()[0]
        conn.execute("UPDATE audit SET reason = 'nobody resumed it' WHERE seq = ?", (seq,))
        conn.commit()
    assert main(["audit", "verify", "--state-dir", str(copy)]) != 0
    out = capsys.readouterr()
    assert f"row {seq}" in out.out + out.err and "changed" in out.out + out.err


# --- the daemon SIGKILLed in order 2 ------------------------------------------------------------

FAST_L3 = {
    "page_size": 8,
    "low_water": 4,
    "request_timeout_s": 5.0,
    "poll_interval_s": 0.1,
    "check_interval_s": 0.1,
    "backoff_initial_s": 0.1,
    "backoff_max_s": 1.0,
}


def _config(path: Path, sims: SimulatorSet, state: Path) -> Path:
    sections: dict[str, dict[str, Any]] = {
        "agent": {"state_dir": str(state), "log_format": "json"},
        "line": {  # generous timings: the machine running the suite is loaded
            "verdict_deadline_ms": 1000,
            "heartbeat_interval_ms": 100,
            "plc_heartbeat_timeout_ms": 3000,
            "read_point": READ_POINT,
            "max_units_in_flight": 8,
        },
        **sims.device_configs(),
    }
    sections["l3"] = {**sections["l3"], **FAST_L3}
    path.write_text(toml_text(sections))
    return path


def _read(state: Path, query: str, *args: Any) -> list[tuple[Any, ...]]:
    try:
        with contextlib.closing(open_reader(state)) as conn:
            return conn.execute(query, args).fetchall()
    except Exception:  # not created yet, or busy for a moment
        return []


def _order_state(state: Path, order_id: str) -> str | None:
    rows = _read(state, "SELECT state FROM orders WHERE id = ?", order_id)
    return rows[0][0] if rows else None


def _decided(state: Path, order_id: str) -> int:
    rows = _read(state, "SELECT count(*) FROM units WHERE batch_id = ?", order_id)
    return int(rows[0][0]) if rows else 0


async def test_sigkill_in_order_2_then_restart_finishes_every_order_once(tmp_path: Path) -> None:
    section = SimulatorsSection(
        units_per_min=900.0,  # slow enough to kill the daemon in the middle of order 2
        printer=PrinterSim(),
        camera=CameraSim(defect_rate=0.05, seed=11),
        plc=PlcSim(gate_delay_s=1.5, heartbeat_timeout_s=2.0, ring_size=64),
        l3={"type": "http", "seed": 11},
    )
    documents = demo_orders(3, 30)
    ids = [d["id"] for d in documents]
    state = tmp_path / "state"
    async with SimulatorSet(section) as sims:
        config = _config(tmp_path / "line.toml", sims, state)
        for document in documents:
            sims.l3.add_order(document)
        # The resident daemon (no --exit-when-idle): it stays up until a signal.
        first = AgentProcess(config, tmp_path / "agent-1.log", args=())
        async with first:
            await until(
                lambda: _order_state(state, ids[1]) == "running" and _decided(state, ids[1]) >= 6,
                "order 2 running with units decided",
                within=STEP_S,
                every=0.02,
            )
            assert _order_state(state, ids[0]) == "closed"
            first.send_signal(signal.SIGKILL)
            assert await first.wait() == -signal.SIGKILL
        killed_at = _decided(state, ids[1])
        assert killed_at < 30, "order 2 ended before the kill: nothing was tested"
        second = AgentProcess(config, tmp_path / "agent-2.log", args=())
        async with second:
            await until(
                lambda: all(_order_state(state, i) == "closed" for i in ids),
                "every order closed after the restart",
                within=STEP_S * 2,
                every=0.1,
            )
            await until(
                lambda: (
                    {r["order_id"] for r in sims.l3.reports.values()} >= set(ids)
                    and {r["order_id"] for r in sims.l3.returns.values()} >= set(ids)
                ),
                "L3 has every close report and return",
                within=STEP_S,
                every=0.05,
            )
            second.send_signal(signal.SIGTERM)
            assert await second.wait() == 128 + signal.SIGTERM, second.output()[-3000:]
        await asyncio.sleep(0)
        printed = list(sims.printer.printed)
        returns = list(sims.l3.returns.values())
        handed_out = [s for serials in sims.l3.site.handed_out.values() for s in serials]
        l3_received = sims.l3.site.received["serial_return"]
    with contextlib.closing(open_reader(state)) as conn:
        reports = {order_id: reconcile(conn, order_id) for order_id in ids}
        commissioned = conn.execute(
            "SELECT serial, count(*) FROM transitions WHERE to_state = 'commissioned' "
            "GROUP BY gtin, serial HAVING count(*) > 1"
        ).fetchall()
        first_close = conn.execute(
            "SELECT count(*) FROM audit WHERE order_id = ? AND action = 'close'", (ids[0],)
        ).fetchone()[0]
    for order_id, report in reports.items():
        assert report["balanced"], (order_id, report["problems"])
        assert report["batch_state"] == "closed" and report["serials_unused"] == 0
    assert first_close == 1  # order 1 was closed once, before the kill, and stayed closed
    assert reports[ids[1]]["units"] >= killed_at
    assert reports[ids[2]]["units"] == 30  # order 3 still ran, whole
    # No serial used twice: not in the ledger, not on the line, not both printed and returned.
    assert commissioned == []
    assert [s for s, n in Counter(printed).items() if n > 1] == []
    returned = [s for r in returns for s in r["payload"]["serials"]]
    assert len(returned) == len(set(returned)) and not set(returned) & set(printed)
    assert set(printed) | set(returned) <= set(handed_out)
    # L3 received each order's return once (one message each; a resend would count as a repeat).
    assert sorted(r["order_id"] for r in returns) == sorted(ids)
    assert all(r.times == 1 for r in l3_received.values())


# --- the hold itself: a run of rejects in one commit group -------------------------------------


async def test_a_burst_decided_in_one_commit_group_with_passes_after_it_holds(
    agent_config_factory: Any,
) -> None:
    """Unpaced, verdicts are committed in groups; a run of rejects followed by passes in the
    same group is still a run (the line must not count only where the group ends)."""
    from tests.helpers.line import gates_settled, make_config, run_agent, simulators

    async with SimulatorSet(simulators(defect_rate=0.0, seed=5)) as sims:
        sims.camera.add_burst(5, start_within=(10, 20))
        config = make_config(agent_config_factory, sims, 80, max_consecutive_rejects=5)
        stopped = await run_agent(config)
        await gates_settled(sims)
    assert stopped is not None and stopped.reason == "repeated_rejects"
    assert sims.camera.bursts[0].triggers and len(sims.camera.injected) == 5
