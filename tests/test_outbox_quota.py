"""Disk quota: the state database at the outbox's stop level stops the line with a clear alarm,
and nothing is lost: every commissioned serial has its event, the gate let through exactly the
commissioned units, and a restart above the stop level does not run the line."""

from __future__ import annotations

import json
from typing import Any

import pytest

from drivers.plc.modbus.registers import StopCause
from edge_agent import epcis
from edge_agent.line.stats import LineStats
from edge_agent.reconcile import reconcile
from simulators.runner import SimulatorSet
from tests.helpers.line import (
    check_gate_matches_ledger,
    check_nothing_sent_twice,
    gates_settled,
    run_agent,
    simulators,
    state_db,
)
from tests.helpers.margins import VERDICT_DEADLINE_MS

pytestmark = pytest.mark.slow


async def test_quota_stop_level_stops_the_line_and_loses_nothing(
    agent_config_factory: Any,
) -> None:
    units = 2000
    async with SimulatorSet(simulators()) as sims:
        # The empty database with its order (about 0.25 MB) is above the alarm level and below
        # the stop level, which the line reaches within the guard's next look
        upstream = {"quota_alarm_mb": 0.2, "quota_stop_mb": 0.6}
        config = agent_config_factory(
            simulators=sims,
            order={"quantity": units},
            line={"verdict_deadline_ms": VERDICT_DEADLINE_MS},
            upstream=upstream,
        )
        stats = LineStats()
        stopped = await run_agent(config, stats)
        await gates_settled(sims)
        with state_db(config) as conn:
            report = reconcile(conn)
            check_gate_matches_ledger(conn, sims)
            check_nothing_sent_twice(conn, sims)
            commissioned = {
                epcis.sgtin_uri(gtin, serial, 7)
                for gtin, serial in conn.execute(
                    "SELECT gtin, serial FROM serials WHERE state = 'commissioned'"
                )
            }
            in_events = {
                json.loads(payload)["epcList"][0]
                for (payload,) in conn.execute(
                    "SELECT payload FROM outbox WHERE kind = 'commissioning'"
                )
            }
        assert int(StopCause.AGENT_REQUEST) in [cause for _, cause in sims.plc.stops]
        # a restart while the outbox is still over its stop level stops again at once
        again = await run_agent(config, LineStats())

    assert stopped is not None and stopped.reason == "outbox_full", stopped
    assert "no event was dropped" in str(stopped) and "outbox status" in str(stopped)
    assert any("alarm level" in a for a in stats.alarms), stats.alarms
    assert any(a.startswith("outbox_full") for a in stats.alarms), stats.alarms
    assert 0 < report["units"] < units  # the line stopped mid-batch
    assert report["batch_state"] == "open"
    # nothing lost: each commissioned serial has its commissioning event in the outbox
    assert report["balanced"], report["problems"]
    assert commissioned and commissioned <= in_events
    assert report["events_pending_delivery"] > 0  # no forwarder: all still there, none dropped
    assert again is not None and again.reason == "outbox_full"
