"""The state database: one SQLite file holding the serial ledger and the event outbox.

Durability settings follow SQLite's own guidance for data that must survive power loss: WAL with
synchronous=FULL (NORMAL may roll back a committed transaction on power loss). One writer
connection takes the write lock up front with BEGIN IMMEDIATE, so a transaction never fails
half-way on a lock upgrade; readers open their own short-lived connections.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge_agent.errors import LedgerError

SCHEMA_VERSION = 3  # 2: per-forwarder delivery state of outbox events; 3: work orders, audit
DB_NAME = "state.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    gtin TEXT NOT NULL, lot TEXT NOT NULL, expiry TEXT NOT NULL,
    target INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'closed')),
    next_seq INTEGER NOT NULL DEFAULT 1,
    opened_at REAL NOT NULL, closed_at REAL
);
CREATE TABLE IF NOT EXISTS serials (
    gtin TEXT NOT NULL,
    serial TEXT NOT NULL,
    batch_id TEXT NOT NULL REFERENCES batches(id),
    state TEXT NOT NULL,
    seq INTEGER,
    trigger INTEGER,
    reason TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (gtin, serial)
);
CREATE INDEX IF NOT EXISTS serials_by_batch_state ON serials (batch_id, state);
CREATE UNIQUE INDEX IF NOT EXISTS serials_by_batch_seq ON serials (batch_id, seq) WHERE seq IS NOT NULL;
CREATE TABLE IF NOT EXISTS serial_pool (
    gtin TEXT NOT NULL, serial TEXT NOT NULL, imported_at REAL NOT NULL,
    taken INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (gtin, serial)
);
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY,
    gtin TEXT NOT NULL, serial TEXT NOT NULL,
    from_state TEXT, to_state TEXT NOT NULL,
    reason TEXT, trigger INTEGER, at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_by_serial ON transitions (gtin, serial);
CREATE TABLE IF NOT EXISTS units (
    id INTEGER PRIMARY KEY,
    batch_id TEXT NOT NULL,
    trigger INTEGER NOT NULL,
    serial TEXT,
    verdict TEXT NOT NULL CHECK (verdict IN ('pass', 'reject')),
    reason TEXT NOT NULL,
    read_text TEXT,
    decided_at REAL NOT NULL,
    verdict_written INTEGER NOT NULL DEFAULT 0,
    confirmed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS units_by_batch_trigger ON units (batch_id, trigger);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    batch_id TEXT,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    acked_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_by_state ON outbox (state, seq);
-- One row per (forwarder, event) that forwarder has finished with: delivered or dead letter.
-- Absence means pending. The cursor says "every event up to seq is finished" for a forwarder,
-- so finding the pending ones never scans the delivered history.
CREATE TABLE IF NOT EXISTS outbox_delivery (
    forwarder TEXT NOT NULL,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('delivered', 'dead')),
    detail TEXT,
    at REAL NOT NULL,
    PRIMARY KEY (forwarder, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox_cursor (forwarder TEXT PRIMARY KEY, seq INTEGER NOT NULL);
-- Work orders and their holds (edge_agent/orders/store.py).
CREATE TABLE IF NOT EXISTS orders (
    queue INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    source TEXT NOT NULL,
    received_at REAL NOT NULL,
    started_at REAL, completed_at REAL, ended_at REAL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_by_state ON orders (state, queue);
CREATE TABLE IF NOT EXISTS order_holds (
    id INTEGER PRIMARY KEY,
    order_id TEXT NOT NULL REFERENCES orders(id),
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    held_at REAL NOT NULL,
    resumed_at REAL,
    resumed_by TEXT
);
CREATE INDEX IF NOT EXISTS order_holds_by_order ON order_holds (order_id, id);
-- Alarms, with raised / cleared / acknowledged times (edge_agent/alarms.py).
CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    order_id TEXT,
    raised_at REAL NOT NULL,
    count INTEGER NOT NULL DEFAULT 1,
    cleared_at REAL,
    acknowledged_at REAL,
    acknowledged_by TEXT
);
CREATE INDEX IF NOT EXISTS alarms_active ON alarms (cleared_at, kind);
-- Messages owed to L3: serial returns, close reports (edge_agent/l3/messages.py).
CREATE TABLE IF NOT EXISTS l3_messages (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    order_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    delivered_at REAL
);
-- The audit trail: append-only, hash-chained (edge_agent/orders/audit.py).
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    source TEXT NOT NULL,
    action TEXT NOT NULL,
    order_id TEXT,
    reason TEXT,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
-- Serial pages asked of L3 (edge_agent/l3/requests.py): the row is written before the request
-- is sent, so a request retried after a crash carries the same id and gets the same page.
CREATE TABLE IF NOT EXISTS serial_requests (
    seq INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    order_id TEXT NOT NULL,
    gtin TEXT NOT NULL,
    count INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'refused', 'discarded')),
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    received INTEGER,
    exhausted INTEGER NOT NULL DEFAULT 0,
    serials TEXT,
    detail TEXT,
    done_at REAL
);
CREATE INDEX IF NOT EXISTS serial_requests_by_order ON serial_requests (order_id, state);
CREATE INDEX IF NOT EXISTS serial_requests_by_state ON serial_requests (state, seq);
"""


def open_db(state_dir: Path, *, check: bool = True) -> sqlite3.Connection:
    """Open (creating if needed) the writer connection to the state database."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / DB_NAME
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        # After a checkpoint the WAL file is cut back to this: its size counts against the quota
        conn.execute("PRAGMA journal_size_limit=16777216")
        if check:
            _quick_check(conn, path)
        _migrate(conn)
    except sqlite3.DatabaseError as exc:
        raise LedgerError(
            f"state database {path} is unusable ({exc}); keep the file for investigation, "
            "restore it from a backup, and do not run the line until it is restored"
        ) from exc
    return conn


def open_reader(state_dir: Path) -> sqlite3.Connection:
    """A read-only connection for reports; keep its transactions short."""
    path = state_dir / DB_NAME
    if not path.exists():
        raise LedgerError(f"no state database at {path}; run a batch first or check --state-dir")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


@contextmanager
def write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, durable when the block exits without an exception.

    Nested inside another ``write`` it is a savepoint of the outer transaction: changes made by
    several owners (an order and its ledger batch) then commit together or not at all."""
    if conn.in_transaction:
        conn.execute("SAVEPOINT nested")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK TO nested")
            conn.execute("RELEASE nested")
            raise
        conn.execute("RELEASE nested")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _quick_check(conn: sqlite3.Connection, path: Path) -> None:
    result = [row[0] for row in conn.execute("PRAGMA quick_check")]
    if result != ["ok"]:
        raise LedgerError(
            f"state database {path} failed its integrity check: {'; '.join(result[:5])}. "
            "Keep the file, restore the last backup, and do not run the line until it is restored"
        )


def _migrate(conn: sqlite3.Connection) -> None:
    # executescript commits any open transaction itself, so the schema goes in its own script
    conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
    with write(conn):
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(row[0]) < SCHEMA_VERSION:
            # Older files only lack tables the schema script above has just created.
            conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
            )
        elif int(row[0]) > SCHEMA_VERSION:
            raise LedgerError(
                f"state database schema version {row[0]} is newer than this agent "
                f"({SCHEMA_VERSION}); upgrade the agent"
            )
