"""`edge-agent outbox status | replay | export` on a state database the ledger filled."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.cli import main
from edge_agent.db import open_db
from edge_agent.ledger import Ledger, UnitOutcome
from edge_agent.outbox.commands import parse_since
from edge_agent.outbox.store import OutboxStore

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "epcis"
SCHEMA_FILE = SCHEMA_FILE / "EPCIS-JSON-Schema.json"
GTIN = "09506000134352"


def filled(state: Path, units: int = 6) -> list[str]:
    """A batch of ``units``: every third rejected. Returns the eventIDs in outbox order."""
    ledger = Ledger(
        open_db(state), read_point="urn:epc:id:sgln:0950600.01340.T", company_prefix_length=7
    )
    try:
        batch = ledger.open_batch("B1", GTIN, "LOT1", "281200", units)
        outcomes = []
        for trigger in range(1, units + 1):
            ledger.ensure_allocated(batch, 1, length=10, alphabet="0123456789ABCDEF")
            taken = ledger.take_for_print(batch)
            assert taken is not None
            ledger.mark_printed(batch, taken[1])
            ok = trigger % 3 != 0
            outcomes.append(UnitOutcome(trigger, ok, "ok" if ok else "no_read", taken[1]))
        ledger.commit_outcomes(batch, outcomes)
        return [r[0] for r in ledger.conn.execute("SELECT event_id FROM outbox ORDER BY seq")]
    finally:
        ledger.conn.close()


def test_status_shows_pending_age_rate_and_dead_letters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = filled(tmp_path)
    conn = open_db(tmp_path)
    store = OutboxStore(conn, ["l3"])
    store.mark("l3", store.pending("l3", 10), ids[:3], {ids[3]: "unknown GTIN"})
    conn.close()
    assert main(["outbox", "status", "--state-dir", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    [row] = report["forwarders"]
    assert row["forwarder"] == "l3" and row["pending"] == 2 and row["dead_letters"] == 1
    assert row["delivered_last_minute"] == 3 and row["oldest_pending_age_s"] >= 0
    assert main(["outbox", "status", "--state-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "l3: pending 2" in out and "dead letters 1" in out and "replay --dead" in err


def test_replay_since_requeues_delivered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = filled(tmp_path)
    conn = open_db(tmp_path)
    store = OutboxStore(conn, ["l3"])
    store.mark("l3", store.pending("l3", 10), ids, {})
    assert store.pending("l3", 10) == []
    assert main(["outbox", "replay", "--state-dir", str(tmp_path), "--since", "1h"]) == 0
    assert "re-queued 6" in capsys.readouterr().out
    assert [e.event_id for e in store.pending("l3", 10)] == ids
    conn.close()


def test_since_parses_ages_and_iso_times() -> None:
    now = 1_800_000_000.0
    assert parse_since("90m", now) == now - 5400
    assert parse_since("2026-01-01T00:00:00+00:00") == 1767225600.0
    with pytest.raises(Exception, match="neither an ISO 8601 time nor an age"):
        parse_since("yesterday")


def test_export_writes_a_valid_epcis_document(tmp_path: Path) -> None:
    ids = filled(tmp_path / "state")
    out = tmp_path / "events.jsonld"
    assert (
        main(["outbox", "export", "--state-dir", str(tmp_path / "state"), "--out", str(out)]) == 0
    )
    doc = json.loads(out.read_text())
    assert doc["type"] == "EPCISDocument"
    assert [e["eventID"] for e in doc["epcisBody"]["eventList"]] == ids
    kinds = [e["bizStep"] for e in doc["epcisBody"]["eventList"]]
    assert kinds.count("destroying") == 2 and kinds.count("commissioning") == 4  # no_read: never
    assert all("@context" not in e for e in doc["epcisBody"]["eventList"])  # commissioned
    if not SCHEMA_FILE.is_file():  # reference material beside the repo; users' clones lack it
        pytest.skip(f"{SCHEMA_FILE} not found (schema validation part)")
    from jsonschema import Draft7Validator, FormatChecker

    validator = Draft7Validator(json.loads(SCHEMA_FILE.read_text()), format_checker=FormatChecker())
    problems = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
    assert problems == []


def test_export_filters_and_refuses_without_a_state_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    filled(tmp_path / "state")
    out = tmp_path / "pending.jsonld"
    args: list[Any] = ["outbox", "export", "--state-dir", str(tmp_path / "state")]
    assert main([*args, "--state", "delivered", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["epcisBody"]["eventList"] == []
    assert main(["outbox", "status"]) == 2
    assert "--state-dir" in capsys.readouterr().err
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + 3600))
    assert main([*args, "--since", since, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["epcisBody"]["eventList"] == []
