"""Shared helpers for the outbox, MQTT and chaos tests: events written as the ledger writes them."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections import defaultdict
from typing import Any

from edge_agent.db import write


def add_events(conn: sqlite3.Connection, n: int, batch: str = "B1", start: int = 0) -> list[str]:
    """Insert ``n`` commissioning-like events in one transaction; returns their eventIDs."""
    ids = []
    rows = []
    now = time.time()
    for i in range(start, start + n):
        event_id = f"urn:uuid:{uuid.uuid4()}"
        ids.append(event_id)
        payload = {
            "type": "ObjectEvent",
            "eventID": event_id,
            "eventTime": "2026-11-21T12:00:00.000+00:00",
            "eventTimeZoneOffset": "+00:00",
            "epcList": [f"urn:epc:id:sgtin:0950600.013435.S{i:08d}"],
            "action": "ADD",
            "bizStep": "commissioning",
            "disposition": "active",
            "readPoint": {"id": "urn:epc:id:sgln:0950600.01340.L1"},
            "n": i,
        }
        rows.append((event_id, batch, "commissioning", json.dumps(payload), now))
    with write(conn):
        conn.executemany(
            "INSERT INTO outbox (event_id, batch_id, kind, payload, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            rows,
        )
    return ids


def ledger_events(conn: sqlite3.Connection) -> dict[str, tuple[str | None, str]]:
    """eventID → (batch, payload) of every event the ledger produced."""
    return {
        r[0]: (r[1], r[2])
        for r in conn.execute("SELECT event_id, batch_id, payload FROM outbox ORDER BY seq")
    }


def check_oracle(conn: sqlite3.Connection, received: list[Any]) -> None:
    """Every event at least once; de-duplicated == the ledger's set, payloads intact; per batch,
    first arrivals in outbox order."""
    expected = ledger_events(conn)
    first: dict[str, str] = {}
    for r in received:
        first.setdefault(r.event_id, r.payload)
    missing = set(expected) - set(first)
    unexpected = set(first) - set(expected)
    assert not missing, f"{len(missing)} events never arrived"
    assert not unexpected, f"{len(unexpected)} events the ledger never produced"
    for event_id, payload in first.items():
        assert json.loads(payload) == json.loads(expected[event_id][1]), event_id
    order = {event_id: i for i, event_id in enumerate(expected)}
    per_batch: dict[str | None, list[int]] = defaultdict(list)
    for event_id in first:
        per_batch[expected[event_id][0]].append(order[event_id])
    for batch, seqs in per_batch.items():
        assert seqs == sorted(seqs), f"batch {batch}: events arrived out of order {seqs}"
