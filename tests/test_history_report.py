"""Reconciliation costs what the batch holds, not what the database has seen: every query of
``batch report`` (and the batch's event clock at start, and retention's search for what to
prune) searches an index, none scans the history. A schema 3 database gets the new indexes at
its next opening."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from benchmarks.history_db import CURRENT, build_history
from edge_agent.clock import last_event_time
from edge_agent.db import SCHEMA_VERSION, open_db, open_reader, write
from edge_agent.reconcile import reconcile

HISTORY_TABLES = ("serials", "transitions", "units", "outbox", "outbox_delivery")
_SCAN = re.compile(rf"^SCAN ({'|'.join(HISTORY_TABLES)})\b")


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("history") / "state"
    build_history(state, 50_000, batch_units=5_000)
    return state


def statements(conn: sqlite3.Connection, action: object) -> list[str]:
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    try:
        action()  # type: ignore[operator]
    finally:
        conn.set_trace_callback(None)
    return [s for s in seen if s.lstrip().upper().startswith("SELECT")]


def scans(conn: sqlite3.Connection, sql: str) -> list[str]:
    plan = conn.execute("EXPLAIN QUERY PLAN " + sql).fetchall()
    return [detail for *_, detail in plan if _SCAN.match(detail)]


@contextlib.contextmanager
def reader(state: Path) -> Iterator[sqlite3.Connection]:
    with contextlib.closing(open_reader(state)) as conn:
        yield conn


def test_no_report_query_scans_the_history(history: Path) -> None:
    with reader(history) as conn:
        report: dict[str, object] = {}
        sql = statements(conn, lambda: report.update(reconcile(conn, "H00003")))
        assert len(sql) >= 8
        assert {s: scans(conn, s) for s in sql if scans(conn, s)} == {}
        assert last_event_time(conn, CURRENT) is not None
        clock = statements(conn, lambda: last_event_time(conn, CURRENT))
        assert [scans(conn, s) for s in clock] == [[]]
    assert report["balanced"] is True and report["units"] == 5_000


def test_the_old_duplicate_query_would_have_been_caught(history: Path) -> None:
    with reader(history) as conn:
        old = (
            "SELECT count(*) FROM (SELECT serial FROM transitions WHERE to_state = "
            "'commissioned' AND serial IN (SELECT serial FROM serials WHERE batch_id = 'B') "
            "GROUP BY gtin, serial HAVING count(*) > 1)"
        )
        assert scans(conn, old) == ["SCAN transitions USING COVERING INDEX transitions_by_batch"]


def test_duplicates_are_counted_per_serial_of_the_batch(tmp_path: Path) -> None:
    state = tmp_path / "state"
    build_history(state, 2_000, batch_units=1_000)
    conn = open_db(state)
    with contextlib.closing(conn):
        (serial,) = conn.execute(
            "SELECT serial FROM serials WHERE batch_id = 'H00001' AND state = 'commissioned' "
            "LIMIT 1"
        ).fetchone()
        with write(conn):  # a serial commissioned twice: what the report exists to find
            conn.execute(
                "INSERT INTO transitions (gtin, serial, from_state, to_state, reason, at) "
                "SELECT gtin, serial, 'printed', 'commissioned', 'verified', 0 FROM serials "
                "WHERE serial = ?",
                (serial,),
            )
        assert reconcile(conn, "H00001")["duplicates"] == 1
        assert "1 serials commissioned more than once" in reconcile(conn, "H00001")["problems"]
        assert reconcile(conn, CURRENT)["duplicates"] == 0


def test_a_schema_3_database_gets_the_batch_index(tmp_path: Path) -> None:
    state = tmp_path / "state"
    build_history(state, 1_000, batch_units=1_000)
    conn = open_db(state)
    with write(conn):
        conn.execute("DROP INDEX outbox_by_batch")
        conn.execute("DROP INDEX outbox_by_ack")
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    conn.close()
    conn = open_db(state)
    with contextlib.closing(conn):
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert version == (str(SCHEMA_VERSION),) and SCHEMA_VERSION >= 4
        assert conn.execute(
            "SELECT sql FROM sqlite_schema WHERE name = 'outbox_by_batch'"
        ).fetchone() == ("CREATE INDEX outbox_by_batch ON outbox (batch_id, kind, created_at)",)
        assert conn.execute("SELECT 1 FROM sqlite_schema WHERE name = 'outbox_by_ack'").fetchone()
        assert reconcile(conn, CURRENT)["balanced"] is True


def test_retention_finds_what_it_prunes_without_walking_the_history(history: Path) -> None:
    from edge_agent.outbox.store import OutboxStore

    conn = open_db(history)
    with contextlib.closing(conn):
        seen: list[str] = []
        conn.set_trace_callback(seen.append)
        try:
            assert OutboxStore(conn, ["site"]).prune(30.0) == 0  # all delivered just now
        finally:
            conn.set_trace_callback(None)
        [search] = [s for s in seen if s.lstrip().startswith("SELECT seq FROM outbox")]
        plan = [d for *_, d in conn.execute("EXPLAIN QUERY PLAN " + search)]
        assert plan == [
            "SEARCH outbox USING COVERING INDEX outbox_by_ack (state=? AND acked_at<?)"
        ], plan


@pytest.mark.parametrize("old_index", ["transitions_by_serial", "transitions_by_serial_state"])
def test_an_older_database_gets_the_batch_of_every_transition(
    tmp_path: Path, old_index: str
) -> None:
    """Schema 7 gives every transition its serial's batch and indexes them by batch (replacing
    schema 5's index by serial, or schema 6's covering one); the report counts the same before
    and after, and reads one range of that index."""
    state = tmp_path / "state"
    build_history(state, 3_000, batch_units=1_000)
    conn = open_db(state)
    columns = (
        "gtin, serial"
        if old_index == "transitions_by_serial"
        else ("gtin, serial, to_state, from_state")
    )
    with write(conn):  # the database as schema 5 or 6 made it
        conn.execute("DROP TRIGGER transitions_batch")
        conn.execute("DROP INDEX transitions_by_batch")
        conn.execute("ALTER TABLE transitions DROP COLUMN batch_id")
        conn.execute(f"CREATE INDEX {old_index} ON transitions ({columns})")
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'",
            ("5" if old_index == "transitions_by_serial" else "6",),
        )
    with write(conn):  # a serial commissioned twice, one decommissioned: what the report counts
        (first, second) = conn.execute(
            "SELECT serial FROM serials WHERE batch_id = 'H00001' AND state = 'commissioned' "
            "ORDER BY rowid LIMIT 2"
        ).fetchall()
        for serial, change in (
            (first, "'printed', 'commissioned'"),
            (second, "'commissioned', 'rejected'"),
        ):
            conn.execute(
                "INSERT INTO transitions (gtin, serial, from_state, to_state, reason, at) "
                f"SELECT gtin, serial, {change}, 'test', 0 FROM serials WHERE serial = ?",
                serial,
            )
    before = _counts(conn, _OLD_JOIN)
    conn.close()
    with capture_logs() as logs:
        conn = open_db(state)
    with contextlib.closing(conn):
        events = [e["event"] for e in logs]
        assert "state_database_upgrading" in events and "state_database_upgraded" in events
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert version == (str(SCHEMA_VERSION),) and SCHEMA_VERSION >= 7
        indexes = {
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'transitions'"
            )
        }
        assert indexes == {"transitions_by_batch"}
        (unbatched,) = conn.execute(
            "SELECT count(*) FROM transitions WHERE batch_id IS NULL"
        ).fetchone()
        assert unbatched == 0
        sql = statements(conn, lambda: reconcile(conn, CURRENT))
        [walk] = [s for s in sql if "FROM transitions" in s]
        assert _counts(conn, walk) == before  # the same counts as the join of schema 5
        plan = [d for *_, d in conn.execute("EXPLAIN QUERY PLAN " + walk)]
        assert any("COVERING INDEX transitions_by_batch" in d for d in plan), plan
        assert not any("TEMP B-TREE" in d for d in plan), plan
        report = reconcile(conn, "H00001")
        assert report["duplicates"] == 1 and report["serials_decommissioned"] == 1
        assert reconcile(conn, CURRENT)["balanced"] is True
        (pending,) = [s for s in sql if "'pending'" in s]
        plan = [d for *_, d in conn.execute("EXPLAIN QUERY PLAN " + pending)]
        assert plan == ["SEARCH outbox USING INDEX outbox_by_batch (batch_id=?)"], plan
    # opened again: nothing left to upgrade
    with capture_logs() as logs:
        open_db(state).close()
    assert "state_database_upgrading" not in [e["event"] for e in logs]


def test_a_transition_recorded_without_its_batch_gets_it(tmp_path: Path) -> None:
    """The ledger writes every transition's batch; any other writer's gets it from the serial."""
    state = tmp_path / "state"
    build_history(state, 1_000, batch_units=1_000)
    conn = open_db(state)
    with contextlib.closing(conn):
        ((gtin, serial, batch),) = conn.execute(
            "SELECT gtin, serial, batch_id FROM serials LIMIT 1"
        ).fetchall()
        with write(conn):
            conn.execute(
                "INSERT INTO transitions (gtin, serial, to_state, reason, at) "
                "VALUES (?, ?, 'commissioned', 'test', 0)",
                (gtin, serial),
            )
        assert conn.execute(
            "SELECT batch_id FROM transitions ORDER BY id DESC LIMIT 1"
        ).fetchone() == (batch,)
        (unbatched,) = conn.execute(
            "SELECT count(*) FROM transitions WHERE batch_id IS NULL"
        ).fetchone()
        assert unbatched == 0  # the ledger gave every one of them its batch


# The join as schema 5's reconciliation ran it
_OLD_JOIN = (
    "SELECT coalesce(sum(c), 0), coalesce(sum(d), 0), coalesce(sum(c > 1), 0) FROM ("
    "SELECT sum(t.to_state = 'commissioned') AS c, "
    "sum(t.from_state = 'commissioned' AND t.to_state = 'rejected') AS d "
    "FROM serials s JOIN transitions t ON t.gtin = s.gtin AND t.serial = s.serial "
    "WHERE s.batch_id = ? GROUP BY s.gtin, s.serial)"
)


def _counts(conn: sqlite3.Connection, join: str) -> list[tuple[int, ...]]:
    """(commissionings, decommissionings, duplicates) of every batch, by ``join``."""
    sql = re.sub(r"batch_id = '[^']*'", "batch_id = ?", join)  # the trace has the value in
    batches = [b for (b,) in conn.execute("SELECT id FROM batches ORDER BY id")]
    counts = [tuple(conn.execute(sql, (b,)).fetchone()) for b in batches]
    assert any(c[2] for c in counts) and any(c[1] for c in counts)  # both kinds were counted
    return counts
