"""The line runtime end to end: Agent + LineRuntime against the printer, camera and PLC simulators.

Each test runs a small batch on loopback simulators that share one simulated conveyor, then checks
the outcome three ways: the agent's ledger (reconciliation, serials, units, outbox), what the
simulated line physically did (serials printed, gate decisions, line stops), and the two against
each other. The invariant behind every test is the README's "a unit passes only after its
commissioning is committed": the triggers the PLC let through are exactly the triggers of the
commissioned serials, whatever went wrong on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Sequence
from typing import Any

import pytest

from drivers.plc.modbus.registers import StopCause
from edge_agent import epcis
from edge_agent.app import Agent
from edge_agent.ledger import BatchInfo, Ledger, UnitOutcome
from edge_agent.line.stats import LineStats
from edge_agent.reconcile import reconcile
from simulators.pytest_plugin import DEFAULT_ORDER
from simulators.runner import SimulatorSet
from tests.helpers.line import (
    alongside,
    check_gate_matches_ledger,
    check_nothing_sent_twice,
    column,
    gates_settled,
    make_config,
    run_agent,
    simulators,
    state_db,
    units_by_trigger,
)
from tests.helpers.waiting import until

pytestmark = pytest.mark.slow

# What the agent must call each defect the camera simulator injects.
DEFECT_REASON = {
    "unreadable": "no_read",
    "wrong_serial": "serial_mismatch",
    "duplicate_serial": "duplicate_serial",
    "wrong_gtin": "wrong_gtin",
    "wrong_lot": "wrong_lot",
    "wrong_expiry": "wrong_expiry",
    "low_contrast": "low_contrast",
}


# --- scenarios --------------------------------------------------------------------------------


async def test_clean_batch_rejects_exactly_the_defects(agent_config_factory: Any) -> None:
    units = 150
    # Seed 44 injects every defect kind in 150 units, never more than two in a row, and
    # duplicates serials of units far enough back to be commissioned already.
    async with SimulatorSet(simulators(defect_rate=0.1, seed=44)) as sims:
        config = make_config(agent_config_factory, sims, units)
        assert await run_agent(config) is None
        await gates_settled(sims)
        with state_db(config) as conn:
            report = reconcile(conn)
            decided = units_by_trigger(conn)
            commissioned = column(conn, "SELECT serial FROM serials WHERE state = 'commissioned'")
            events = column(conn, "SELECT payload FROM outbox WHERE kind = 'commissioning'")
            check_gate_matches_ledger(conn, sims)
            check_nothing_sent_twice(conn, sims)
    injected = sims.camera.injected

    assert report["balanced"], report["problems"]
    assert report["batch_state"] == "closed"
    assert report["units"] == units == sims.line.trigger_count == len(sims.printer.printed)
    assert set(injected.values()) == set(DEFECT_REASON), "the seed must inject every kind"
    assert set(sims.plc.rejected_triggers) == set(injected), "defect passed or good unit rejected"
    for trigger, kind in injected.items():
        assert decided[trigger] == ("reject", DEFECT_REASON[kind]), (trigger, kind)
    assert report["passed"] == len(commissioned) == units - len(injected)
    # One commissioning event per commissioned serial, naming that serial.
    gtin, prefix = DEFAULT_ORDER["product"]["gtin"], config.model.line.company_prefix_length
    event_epcs = [epc for payload in events for epc in json.loads(payload)["epcList"]]
    assert sorted(event_epcs) == sorted(epcis.sgtin_uri(gtin, s, prefix) for s in commissioned)


async def test_repeated_doubt_stops_the_line(agent_config_factory: Any) -> None:
    async with SimulatorSet(simulators(defect_rate=1.0)) as sims:
        sims.camera.defect_kinds = ("wrong_gtin",)
        config = make_config(agent_config_factory, sims, 60, max_consecutive_rejects=4)
        stopped = await run_agent(config)
        await gates_settled(sims)
        with state_db(config) as conn:
            report = reconcile(conn)
            decided = units_by_trigger(conn)
            check_gate_matches_ledger(conn, sims)
            check_nothing_sent_twice(conn, sims)

    assert stopped is not None and stopped.reason == "repeated_rejects"
    assert int(StopCause.AGENT_REQUEST) in [cause for _, cause in sims.plc.stops]
    assert not sims.plc.running()
    assert sims.plc.passed_triggers == []
    assert report["passed"] == report["serials_commissioned"] == 0
    assert len(decided) >= 4
    assert set(decided.values()) == {("reject", "wrong_gtin")}
    assert report["batch_state"] == "open"
    assert sims.line.trigger_count < 60


async def test_printer_fault_stops_the_line(agent_config_factory: Any) -> None:
    units, fault_after = 120, 30
    async with SimulatorSet(simulators()) as sims:
        config = make_config(agent_config_factory, sims, units)

        async def ink_out() -> None:
            await until(lambda: len(sims.printer.printed) >= fault_after, "printed units")
            sims.printer.faults.ink_out()

        async with alongside(ink_out()) as injector:
            stopped = await run_agent(config)
        assert injector.done() and injector.exception() is None
        await gates_settled(sims)
        with state_db(config) as conn:
            report = reconcile(conn)
            check_gate_matches_ledger(conn, sims)
            check_nothing_sent_twice(conn, sims)

    assert stopped is not None and stopped.reason == "device_error"
    assert "INK_OUT" in str(stopped)
    assert int(StopCause.AGENT_REQUEST) in [cause for _, cause in sims.plc.stops]
    assert fault_after <= len(sims.printer.printed) < units
    assert report["duplicates"] == 0
    assert report["passed"] == report["serials_commissioned"] > 0
    assert report["batch_state"] == "open"


async def test_lost_print_confirmations_are_never_commissioned(agent_config_factory: Any) -> None:
    units = 60
    async with SimulatorSet(simulators()) as sims:
        sims.printer.faults.lose_next_confirmations(2)
        config = make_config(agent_config_factory, sims, units)
        assert await run_agent(config) is None
        await gates_settled(sims)
        unconfirmed = sims.printer.printed[:2]
        with state_db(config) as conn:
            report = reconcile(conn)
            decided = units_by_trigger(conn)
            settled = dict(
                conn.execute(
                    "SELECT serial, state || ':' || reason FROM serials WHERE serial IN (?, ?)",
                    unconfirmed,
                ).fetchall()
            )
            check_gate_matches_ledger(conn, sims)
            check_nothing_sent_twice(conn, sims)

    assert report["balanced"], report["problems"]
    assert report["batch_state"] == "closed"
    assert settled == {serial: "rejected:print_unconfirmed" for serial in unconfirmed}
    assert decided[1] == decided[2] == ("reject", "print_unconfirmed")
    assert {1, 2} <= set(sims.plc.rejected_triggers)
    assert report["passed"] == units - 2
    assert sorted(sims.plc.passed_triggers) == list(range(3, units + 1))


async def test_lost_plc_link_stops_the_line(agent_config_factory: Any) -> None:
    units = 150
    async with SimulatorSet(simulators()) as sims:
        config = make_config(agent_config_factory, sims, units)

        async def pull_the_cable() -> None:
            await until(lambda: sims.line.trigger_count >= 40, "units on the line")
            sims.plc.drop_link()

        async with alongside(pull_the_cable()) as injector:
            stopped = await run_agent(config)
        assert injector.done() and injector.exception() is None
        await gates_settled(sims)
        triggered = sims.line.trigger_count
        await asyncio.sleep(0.3)
        assert sims.line.trigger_count == triggered, "the line kept running"
        with state_db(config) as conn:
            report = reconcile(conn)
            check_gate_matches_ledger(conn, sims)
            check_nothing_sent_twice(conn, sims)

    assert stopped is not None and stopped.reason == "device_error"
    # "link lost" when a request was under way, "dropped" when the drop came between requests
    assert "plc" in str(stopped) and ("link lost" in str(stopped) or "dropped" in str(stopped))
    assert sims.plc.stops, "the PLC never stopped the line"
    assert not sims.plc.running()
    assert triggered < units
    assert report["batch_state"] == "open"
    assert report["passed"] == report["serials_commissioned"] > 0


async def test_storage_error_rejects_the_group_and_stops(
    agent_config_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = Ledger.commit_outcomes
    calls: list[list[int]] = []

    def failing_commit(self: Ledger, batch: BatchInfo, outcomes: Sequence[UnitOutcome]) -> None:
        calls.append([o.trigger for o in outcomes])
        if len(calls) > 5:
            raise sqlite3.OperationalError("disk I/O error")
        commit(self, batch, outcomes)

    monkeypatch.setattr(Ledger, "commit_outcomes", failing_commit)
    async with SimulatorSet(simulators()) as sims:
        config = make_config(agent_config_factory, sims, 100)
        stopped = await run_agent(config)
        await gates_settled(sims)
        with state_db(config) as conn:
            report = reconcile(conn)
            decided = units_by_trigger(conn)
            check_gate_matches_ledger(conn, sims)
            check_nothing_sent_twice(conn, sims)

    assert stopped is not None and stopped.reason == "storage_error"
    assert "disk I/O error" in str(stopped)
    assert len(calls) == 6, "the line went on committing after a storage error"
    failed_group = calls[-1]
    assert failed_group
    assert not set(failed_group) & set(sims.plc.passed_triggers)
    assert set(failed_group) <= set(sims.plc.rejected_triggers)
    assert not set(failed_group) & set(decided), "the failed transaction left unit rows"
    assert int(StopCause.AGENT_REQUEST) in [cause for _, cause in sims.plc.stops]
    assert report["passed"] == report["serials_commissioned"]
    assert report["batch_state"] == "open"


async def test_restart_after_cancel_resumes_the_batch(agent_config_factory: Any) -> None:
    units = 120
    async with SimulatorSet(simulators(defect_rate=0.05, seed=3)) as sims:
        config = make_config(agent_config_factory, sims, units)
        stats = LineStats()
        first = asyncio.create_task(Agent(config, stats=stats).serve())
        await until(lambda: stats.units >= 40 or first.done(), "40 verdicts")
        # Cancelled while the printer holds records: on an unpaced line whose refill waits on a
        # slow fsync, everything sent can be decided meanwhile, and then nothing is in flight.
        with state_db(config) as watch:
            sent = "SELECT count(*) FROM serials WHERE state = 'sent'"
            await until(lambda: column(watch, sent)[0] or first.done(), "records in the printer")
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        assert first.cancelled(), "the first run ended before it was cancelled"
        with state_db(config) as conn:
            in_flight = column(
                conn, "SELECT serial FROM serials WHERE state IN ('sent', 'printed') ORDER BY seq"
            )
            sent_before = len(column(conn, "SELECT serial FROM serials WHERE seq IS NOT NULL"))
        assert in_flight, "nothing was in flight when the run was cancelled"
        assert sent_before < units

        assert await run_agent(config) is None
        await gates_settled(sims)
        with state_db(config) as conn:
            report = reconcile(conn)
            decided = units_by_trigger(conn)
            marks = ",".join("?" * len(in_flight))
            in_flight_end = dict(
                conn.execute(
                    f"SELECT serial, state || ':' || reason FROM serials WHERE serial IN ({marks})",
                    in_flight,
                ).fetchall()
            )
            sent = column(conn, "SELECT serial FROM serials WHERE seq IS NOT NULL")
            applied = column(
                conn, "SELECT serial FROM serials WHERE seq IS NOT NULL AND state != 'unused'"
            )
            check_gate_matches_ledger(conn, sims)
            check_nothing_sent_twice(conn, sims)

    assert report["balanced"], report["problems"]
    assert report["batch_state"] == "closed" and report["serials_in_flight"] == 0
    # Records still queued in the printer were cancelled: unused; the rest can no longer pass
    settled = {"rejected:in_flight_at_restart", "unused:cleared_from_printer"}
    assert set(in_flight_end) == set(in_flight) and set(in_flight_end.values()) <= settled
    # No serial sent twice; the cleared records were made up for: the order's quantity was made
    assert len(sent) == len(set(sent)) and len(applied) == units
    assert report["serials_rejected_by_reason"].get("in_flight_at_restart", 0) == sum(
        v == "rejected:in_flight_at_restart" for v in in_flight_end.values()
    )
    # Every injected defect the agent saw was rejected; none got through the gate.
    assert not set(sims.camera.injected) & set(sims.plc.passed_triggers)
    assert all(
        verdict == "reject" for t, (verdict, _) in decided.items() if t in sims.camera.injected
    )
