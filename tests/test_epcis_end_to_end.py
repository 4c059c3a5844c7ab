"""The whole agent on simulated devices, forwarding to the simulated EPCIS capture server (which
fails for a while mid-batch): every event the ledger produced is captured, in order, and every
document the agent actually sent validates against the official GS1 EPCIS 2.0 JSON Schema (when
../shared/conformance is present)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from edge_agent import epcis
from edge_agent.config.models import CameraSim, PrinterSim, SimulatorsSection
from edge_agent.db import open_reader
from simulators.pytest_plugin import DEFAULT_ORDER
from simulators.runner import SimulatorSet
from simulators.upstream.capture_server import CaptureServerSim
from tests.helpers.epcis import cbv_history_problems, history_by_epc
from tests.helpers.line import run_order
from tests.helpers.margins import VERDICT_DEADLINE_MS, plc_sim

SCHEMA_FILE = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "conformance"
    / "epcis"
    / "EPCIS-JSON-Schema.json"
)


def line_simulators() -> SimulatorsSection:
    return SimulatorsSection(
        units_per_min=None,
        printer=PrinterSim(port=0, buffer_size=16),
        camera=CameraSim(port=0, defect_rate=0.1, seed=7),
        plc=plc_sim(),
    )


async def test_line_events_reach_the_capture_server_as_valid_documents(
    agent_config_factory: Any, capture_sim: CaptureServerSim
) -> None:
    units = 80
    capture_sim.faults.fail_captures, capture_sim.faults.fail_after = 3, 1
    capture_sim.faults.retry_after_s = 0
    forwarder = capture_sim.driver_config(
        name="l3", max_events_per_document=16, poll_interval_s=0.01
    )
    async with SimulatorSet(line_simulators()) as sims:
        config = agent_config_factory(
            simulators=sims,
            order={"quantity": units},
            line={"verdict_deadline_ms": VERDICT_DEADLINE_MS},
            upstream={
                "forwarders": [forwarder],
                "backoff_initial_s": 0.05,
                "backoff_max_s": 0.2,
                "drain_on_exit_s": 30,
            },
        )
        await run_order(config)
    with contextlib.closing(open_reader(Path(config.model.agent.state_dir))) as conn:
        ledger = [
            (event_id, json.loads(payload))
            for event_id, payload in conn.execute(
                "SELECT event_id, payload FROM outbox ORDER BY seq"
            )
        ]
        handed_out = conn.execute(
            "SELECT s.serial, s.state, EXISTS (SELECT 1 FROM transitions t WHERE t.gtin = s.gtin "
            "AND t.serial = s.serial AND t.to_state = 'commissioned') FROM serials s "
            "WHERE s.seq IS NOT NULL"
        ).fetchall()
        gtin, prefix_length = (
            DEFAULT_ORDER["product"]["gtin"],
            config.model.line.company_prefix_length,
        )
    assert len(ledger) >= units  # one event per unit at least
    assert [r[2] for r in capture_sim.requests].count(500) == 3  # the outage did happen
    # every event exactly as the ledger wrote it, first arrivals in ledger order
    first_seen: dict[str, Any] = {}
    for event in capture_sim.captured:
        first_seen.setdefault(event["eventID"], event)
    assert list(first_seen) == [event_id for event_id, _ in ledger]
    # ... inside documents, so without the standalone event's @context
    stored = [{k: v for k, v in body.items() if k != "@context"} for _, body in ledger]
    assert [first_seen[event_id] for event_id, _ in ledger] == stored
    # L3 can tell what became of every serial handed out, and no event contradicts CBV
    assert cbv_history_problems(capture_sim.captured) == []
    history = history_by_epc(capture_sim.captured)
    expected = {
        ("commissioned", True): ["commissioning"],
        ("rejected", True): ["commissioning", "decommissioning"],
        ("rejected", False): ["destroying"],
        ("unused", False): [],
    }
    assert any(state == "rejected" for _, state, _ in handed_out)
    for serial, state, was_commissioned in handed_out:
        epc = epcis.sgtin_uri(gtin, serial, prefix_length)
        assert history.get(epc, []) == expected[state, bool(was_commissioned)], (serial, state)
    if SCHEMA_FILE.is_file():
        from jsonschema import Draft7Validator, FormatChecker

        validator = Draft7Validator(
            json.loads(SCHEMA_FILE.read_text()), format_checker=FormatChecker()
        )
        for document in capture_sim.documents:
            assert [e.message for e in validator.iter_errors(document)] == []
