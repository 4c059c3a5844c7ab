"""The state database: one SQLite file holding the serial ledger and the event outbox.

Durability settings follow SQLite's own guidance for data that must survive power loss: WAL with
synchronous=FULL (NORMAL may roll back a committed transaction on power loss). One writer
connection takes the write lock up front with BEGIN IMMEDIATE, so a transaction never fails
half-way on a lock upgrade; readers open their own short-lived connections.

Every opening first proves the database is this state directory's own (``db_identity``): a new,
empty state directory gets a new database and its ``state.id``; an empty, missing, foreign or
replaced database, or a WAL that does not continue it, is refused with the recovery step. SQLite
errors while opening or reading are mapped to messages naming the file (a lock names the process
holding it; a damaged file says how to restore it), never a traceback.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import secrets
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from urllib.parse import quote

import structlog

from edge_agent import clean_stop, db_identity, proclocks
from edge_agent.db_identity import (
    ADOPT,
    APPLICATION_ID,
    RESTORE,
    Inspection,
    StateFiles,
    refusal,
    refuse,
    write_identity,
)
from edge_agent.errors import LedgerError, StorageFull
from edge_agent.integrity_record import META_KEY, IntegrityResult

# 2: per-forwarder delivery state of outbox events; 3: work orders, audit; 4: outbox indexes by
# batch and by acknowledgement; 5: aggregation (containers, packed, loose, identifier ranges and
# pool; station_cases and pallet_scans of the stations); 6: the transitions index covers the
# states; 7: transitions carry their serial's batch, indexed by batch (transitions_by_batch
# replaces the indexes by serial)
SCHEMA_VERSION = 7
DB_NAME = db_identity.DB_NAME
log = structlog.get_logger("edge_agent.db")

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
    reason TEXT, trigger INTEGER, at REAL NOT NULL,
    batch_id TEXT  -- the serial's batch (schema 7; a serial never changes batch)
);
-- A batch's transitions side by side, their states in the index itself (schema 7): the
-- reconciliation reads one range of this index, whatever the history holds besides.
CREATE INDEX IF NOT EXISTS transitions_by_batch
    ON transitions (batch_id, gtin, serial, to_state, from_state);
-- Whoever records a transition without its batch (the ledger gives it), gets it from the serial.
CREATE TRIGGER IF NOT EXISTS transitions_batch AFTER INSERT ON transitions
WHEN NEW.batch_id IS NULL
BEGIN
    UPDATE transitions SET batch_id = (
        SELECT s.batch_id FROM serials s WHERE s.gtin = NEW.gtin AND s.serial = NEW.serial
    ) WHERE id = NEW.id;
END;
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
-- A batch's events (reconciliation, its event clock at start, export --batch) without a scan of
-- the whole history (schema 4).
CREATE INDEX IF NOT EXISTS outbox_by_batch ON outbox (batch_id, kind, created_at);
-- Delivered events by acknowledgement time: retention finds what it prunes without walking the
-- whole delivered history (schema 4).
CREATE INDEX IF NOT EXISTS outbox_by_ack ON outbox (state, acked_at);
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
-- Aggregation (edge_agent/aggregation): bundles, cases and pallets, and what each holds.
CREATE TABLE IF NOT EXISTS containers (
    epc TEXT PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    order_id TEXT NOT NULL,
    level TEXT NOT NULL CHECK (level IN ('bundle', 'case', 'pallet')),
    kind TEXT NOT NULL CHECK (kind IN ('sscc', 'gtin_serial')),
    gtin TEXT,
    serial TEXT,
    state TEXT NOT NULL
        CHECK (state IN ('reserved', 'open', 'closed', 'scrapped', 'disaggregated')),
    commissioned INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS containers_by_order ON containers (order_id, state);
-- One row per child in a parent: the primary key is the rule "a child is in one parent at most".
CREATE TABLE IF NOT EXISTS packed (
    child TEXT PRIMARY KEY,
    parent TEXT NOT NULL REFERENCES containers(epc),
    order_id TEXT NOT NULL,
    level TEXT NOT NULL,
    gtin TEXT,
    serial TEXT,
    packed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS packed_by_parent ON packed (parent);
CREATE INDEX IF NOT EXISTS packed_by_order ON packed (order_id, level);
CREATE INDEX IF NOT EXISTS packed_by_unit ON packed (gtin, serial) WHERE gtin IS NOT NULL;
-- Children in no parent, with why (removed in rework, partial case refused ...).
CREATE TABLE IF NOT EXISTS loose (
    child TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    level TEXT NOT NULL,
    gtin TEXT,
    serial TEXT,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS loose_by_order ON loose (order_id);
CREATE INDEX IF NOT EXISTS loose_by_unit ON loose (gtin, serial) WHERE gtin IS NOT NULL;
-- Local identifier ranges: the next number, moved in the transaction that reserves it.
CREATE TABLE IF NOT EXISTS identifier_ranges (
    key TEXT PRIMARY KEY,
    next INTEGER NOT NULL,
    last INTEGER NOT NULL
);
-- Identifiers L3 sent for an order's level, stored before any is used.
CREATE TABLE IF NOT EXISTS identifier_pool (
    code TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    level TEXT NOT NULL,
    received_at REAL NOT NULL,
    taken INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS identifier_pool_by_order ON identifier_pool (order_id, level, taken);
-- Aggregation stations (edge_agent/aggregation/station.py): each container a station reserved,
-- with the case's trigger at the case PLC and what its gate did (pending until known), and the
-- cases scanned onto the pallet being built: what a restart needs to finish or undo their work.
CREATE TABLE IF NOT EXISTS station_cases (
    container TEXT PRIMARY KEY REFERENCES containers(epc),
    station TEXT NOT NULL,
    order_id TEXT NOT NULL,
    trigger INTEGER,
    gate TEXT NOT NULL CHECK (gate IN ('pending', 'passed', 'rejected', 'scrapped')),
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS station_cases_by_gate ON station_cases (order_id, gate);
CREATE TABLE IF NOT EXISTS pallet_scans (
    case_epc TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    at REAL NOT NULL
);
"""


def open_db(state_dir: Path, *, check: bool = True, announce: bool = False) -> sqlite3.Connection:
    """Open the writer connection to the state database. In a new (empty) state directory the
    database and its ``state.id`` are created first. StateRefused: not provably this directory's
    database, damaged or not writable; LedgerError: locked by another process, disk full.

    ``check``: the full integrity check unless the agent closed this database cleanly last time
    (``close_db``); ``announce``: log whether it ran and why (the service's start, where an
    operator waits for it; command-line tools stay quiet)."""
    files = StateFiles(state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        refuse(
            files,
            f"cannot create the state directory {state_dir} ({exc.strerror})",
            f"Create it writable for user {user_name()}, or set agent.state_dir",
        )
    created = False
    try:
        with storage_errors(state_dir):
            _finish_interrupted_creation(files)
            seen = db_identity.inspect(files)
            if seen.header is None:
                _create(files)
                created = True
                seen = db_identity.inspect(files)
    except OSError as exc:
        refuse(
            files,
            f"cannot create the database in {state_dir} ({exc.strerror}: {exc.filename})",
            f"Make {{dir}} writable for user {user_name()}, or set agent.state_dir",
        )
    conn = _writer(files)
    try:
        with storage_errors(state_dir):
            # Taken (and removed) before anything is written: a crash from here on leaves none
            last_stop = clean_stop.take(files)
            database_id = _confirm(conn, seen, writer=True)
            if check and not created:
                _check_at_start(conn, files, last_stop, database_id, announce=announce)
            _migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def close_db(conn: sqlite3.Connection) -> None:
    """Close the writer connection of ``open_db`` and record the clean stop
    (``edge_agent.clean_stop``): one last commit stores the record's token, and only when it
    succeeds is the record written, so the next start may skip the full integrity check.
    Storage errors here are logged, never raised: the database then gets its check."""
    record = None
    path = ""
    try:
        path = conn.execute("PRAGMA database_list").fetchone()[2]
        if not conn.in_transaction:
            token = clean_stop.new_token()
            with write(conn):
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    (clean_stop.META_KEY, token),
                )
            (counter,) = conn.execute("PRAGMA user_version").fetchone()
            row = conn.execute("SELECT value FROM meta WHERE key = 'database_id'").fetchone()
            if row is not None:
                record = clean_stop.CleanStop(str(row[0]), token, int(counter))
    except sqlite3.Error as exc:
        log.warning("clean_stop_not_recorded", database=path, detail=str(exc))
    finally:
        conn.close()
    if record is not None and path:
        try:
            clean_stop.write_record(StateFiles(Path(path).parent), record)
        except OSError as exc:
            log.warning("clean_stop_not_recorded", database=path, detail=str(exc))


def _check_at_start(
    conn: sqlite3.Connection,
    files: StateFiles,
    last_stop: clean_stop.CleanStop | None,
    database_id: str | None,
    *,
    announce: bool,
) -> None:
    """The full integrity check, unless the agent closed this very database cleanly (and no
    background check found damage in it since: ``edge_agent.integrity``)."""
    suspect = clean_stop.is_suspect(files)
    if not suspect and clean_stop.describes(last_stop, conn, database_id):
        if announce:
            log.info("integrity_check_skipped", database=str(files.db), reason="closed cleanly")
        return
    if announce:
        log.warning(
            "integrity_check",
            database=str(files.db),
            reason="the background integrity check found damage while it ran"
            if suspect
            else "not closed cleanly last time (crash, power loss or killed process)"
            if last_stop is None
            else "the clean-stop record does not describe this database",
            detail="checking every page before the line may run; this takes a while on a large "
            "database",
        )
    started = time.monotonic()
    _quick_check(conn, files)
    seconds = time.monotonic() - started
    record_integrity(conn, IntegrityResult(time.time(), True, seconds, 0, kind="start"))
    clean_stop.clear_suspect(files)
    if announce:
        log.info("integrity_check_passed", seconds=round(seconds, 2))


def record_integrity(conn: sqlite3.Connection, result: IntegrityResult) -> None:
    """Record a completed integrity check in ``meta`` (``edge_agent.integrity_record``)."""
    with write(conn):
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (META_KEY, result.as_json())
        )


def adopt_existing(state_dir: Path) -> str:
    """``edge-agent state adopt``: declare the state.db in ``state_dir`` to be this directory's
    database and write its state.id (after restoring a state.db without its state.id). The
    file checks still apply: an empty, foreign or damaged database, or a WAL that does not
    continue it, is refused as always."""
    files = StateFiles(state_dir)
    known = db_identity.read_identity(files)
    if known is not None:
        refuse(
            files,
            f"{files.identity} is already there and names database {known}",
            "If this state.db is to replace that database, move state.id out of {dir} first",
        )
    seen = db_identity.inspect(files)
    if seen.header is None:
        raise LedgerError(f"no state database at {files.db}; check --state-dir")
    with closing(_writer(files)) as conn, storage_errors(state_dir):
        tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_schema WHERE type='table'")}
        (app_id,) = conn.execute("PRAGMA application_id").fetchone()
        if "meta" not in tables or app_id & 0xFFFFFFFF not in (0, APPLICATION_ID):
            refuse(files, "it is not an edge-agent state database", RESTORE)
        _quick_check(conn, files)
        return adopt(conn, files)


def open_write_connection(state_dir: Path) -> sqlite3.Connection:
    """A second write connection to a database ``open_db`` opened (and proved) in this process:
    the state writer's (edge_agent/writer.py). Same durability settings; SQLite's write lock
    serializes its transactions with those of the first connection."""
    return _writer(StateFiles(state_dir))


def _writer(files: StateFiles) -> sqlite3.Connection:
    conn = sqlite3.connect(files.db, isolation_level=None, check_same_thread=False)
    try:
        with storage_errors(files.dir):
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            # Statement journals (a savepoint's undo log) in memory: on disk each was a temporary
            # file created and unlinked, 0.36 a unit on the line benchmark.
            conn.execute("PRAGMA temp_store=MEMORY")
            # After a checkpoint the WAL file is cut back to this: its size counts against the quota
            conn.execute("PRAGMA journal_size_limit=16777216")
    except BaseException:
        conn.close()
        raise
    return conn


def open_reader(state_dir: Path) -> sqlite3.Connection:
    """A read-only connection for reports; keep its transactions short. Runs the same identity
    checks as the writer and never creates a database."""
    files = StateFiles(state_dir)
    seen = db_identity.inspect(files)
    if seen.header is None:
        raise LedgerError(
            f"no state database at {files.db}; run a batch first or check --state-dir"
        )
    conn = sqlite3.connect(f"file:{quote(str(files.db))}?mode=ro", uri=True, isolation_level=None)
    try:
        with storage_errors(state_dir):
            conn.execute("PRAGMA busy_timeout=5000")
            _confirm(conn, seen, writer=False)
    except BaseException:
        conn.close()
        raise
    return conn


def verify(state_dir: Path) -> Inspection:
    """The checks every opening runs, creating no file (``check-config``, ``state check``): the
    inspection, with the database id confirmed through SQLite. ``header`` None: no database yet
    (the first ``run`` creates it). While nobody has the database open the file is read as
    immutable: the WAL was proven already and SQLite must not make a -shm as this user."""
    files = StateFiles(state_dir)
    seen = db_identity.inspect(files)
    if seen.header is None:
        return seen
    if seen.wal_transactions and not seen.open_by and files.db.stat().st_uid != os.getuid():
        # The file alone is not the database (its proven WAL holds committed transactions, and a
        # checkpoint cut short, by a full disk or a crash, leaves it inconsistent without them),
        # and reading the WAL would make a -shm owned by this user: the identity stands on
        # state.id and the file header, as inspected.
        return seen
    # immutable only when the file alone is the whole database: no WAL transaction to replay
    mode = "ro" if seen.open_by or seen.wal_transactions else "ro&immutable=1"
    with (
        closing(sqlite3.connect(f"file:{quote(str(files.db))}?mode={mode}", uri=True)) as conn,
        storage_errors(state_dir),
    ):
        conn.execute("PRAGMA busy_timeout=5000")
        database_id = _confirm(conn, seen, writer=False)
    return dataclasses.replace(seen, database_id=database_id)


@contextmanager
def reading(state_dir: Path) -> Iterator[sqlite3.Connection]:
    """``open_reader`` for one report: closed afterwards, SQLite errors met while reading become
    a message naming the database (a damaged page may only show up in the middle of a query)."""
    with closing(open_reader(state_dir)) as conn, storage_errors(state_dir):
        yield conn


@contextmanager
def storage_errors(state_dir: Path) -> Iterator[None]:
    """Map SQLite's errors to the agent's: a lock names who holds it; a damaged file says how to
    restore it; missing permissions say which file and for which user."""
    try:
        yield
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorcode", None) is None:
            raise  # misuse of the sqlite3 module, not the database: a bug to see as such
        raise _mapped(StateFiles(state_dir), exc) from exc


_BUSY, _LOCKED = sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED
_NO_ACCESS = {sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM}
_NO_SPACE = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR}


def _mapped(files: StateFiles, exc: sqlite3.Error) -> LedgerError:
    code = int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF  # primary code
    if code in (_BUSY, _LOCKED):
        who = proclocks.describe(proclocks.holders(files.sqlite_files()))
        return LedgerError(
            f"state database {files.db} is locked by {who or 'another process'} ({exc}); the "
            "database is not damaged: stop that process or wait until it is done, then start "
            "again"
        )
    if code in _NO_ACCESS:
        denied = [
            str(p) for p in (files.dir, *files.sqlite_files()) if p.exists() and not writable(p)
        ]
        return refusal(
            files,
            f"cannot open it for writing ({exc})"
            + (f"; not writable by user {user_name()}: {', '.join(denied)}" if denied else ""),
            "Give the agent's user write access to {dir} and every file in it (under systemd: "
            "`chown -R edge-agent: {dir}`; run other edge-agent commands as that user too)",
        )
    if code in _NO_SPACE:
        return StorageFull(
            f"state database {files.db}: {exc}; free space on the filesystem of {files.dir} "
            "(the database is not damaged by a full disk)"
        )
    return refusal(
        files,
        f"it is damaged or unusable ({exc}); keep the files for investigation",
        RESTORE,
    )


def writable(path: Path) -> bool:
    return os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0))


def user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


@contextmanager
def write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, durable when the block exits without an exception. Every write to
    the state database goes through here (never an autocommit statement): each transaction then
    carries the agent's header, without which its WAL cannot be proven after a crash.

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
        _count_write(conn)
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _count_write(conn: sqlite3.Connection) -> None:
    """Step the write counter in page 1's header (``user_version``). Every write transaction so
    rewrites page 1, which puts the agent's header into every transaction of the WAL: that is
    what proves a WAL continues this database (``db_identity.prove_wal``)."""
    (counter,) = conn.execute("PRAGMA user_version").fetchone()
    conn.execute(f"PRAGMA user_version = {counter + 1 if counter < 2**31 - 1 else -(2**31)}")


def _random_counter() -> int:
    return secrets.randbelow(2**32) - 2**31  # user_version is a signed 32-bit number


def _confirm(conn: sqlite3.Connection, seen: Inspection, *, writer: bool) -> str | None:
    """The database's own identity, read through SQLite, must be the one state.id names.
    Returns the database id (None: a database made before identities, not adopted yet)."""
    files = seen.files
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type='table'")}
    if "meta" not in tables:
        refuse(files, "it is not an edge-agent state database (none of its tables)", RESTORE)
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    (app_id,) = conn.execute("PRAGMA application_id").fetchone()
    database_id = meta.get("database_id")
    if app_id & 0xFFFFFFFF == APPLICATION_ID and database_id:
        if seen.database_id == database_id:
            return str(database_id)
        if seen.database_id is not None:
            refuse(
                files,
                f"it is database {database_id}, but {files.identity} says database "
                f"{seen.database_id} lives here: a database from another state directory or "
                "line was put here",
                RESTORE,
            )
        if meta.get("identity_pending") and writer:
            _identity_written(conn, files, database_id)  # a crash cut short the adoption
        elif not meta.get("identity_pending"):
            refuse(
                files, f"{files.identity} is missing (state.db is database {database_id})", ADOPT
            )
        return str(database_id)
    if app_id == 0 and "schema_version" in meta and not database_id:
        if seen.database_id is not None:
            refuse(
                files,
                f"it carries no database id, but {files.identity} says database "
                f"{seen.database_id} lives here: it is not the database that belongs here",
                RESTORE,
            )
        return adopt(conn, files) if writer else None
    refuse(
        files,
        f"it is not an edge-agent state database (application_id 0x{app_id & 0xFFFFFFFF:08x}, "
        f"database id {database_id or 'none'})",
        RESTORE,
    )


def adopt(conn: sqlite3.Connection, files: StateFiles) -> str:
    """Give a database an identity and write its state.id: for databases made before identities
    existed (at the next writer start) and for ``edge-agent state adopt``."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'database_id'").fetchone()
    database_id = row[0] if row else str(uuid.uuid4())
    with write(conn):
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        if not row:
            conn.execute(f"PRAGMA user_version = {_random_counter()}")
        conn.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [("database_id", database_id), ("identity_pending", "1")],
        )
    _identity_written(conn, files, database_id)
    log.warning(
        "state_database_adopted",
        database=str(files.db),
        database_id=database_id,
        identity=str(files.identity),
    )
    return database_id


def _identity_written(conn: sqlite3.Connection, files: StateFiles, database_id: str) -> None:
    # Empty the WAL first: transactions written before the database had its header (older
    # agents) would otherwise make its WAL unprovable after a crash.
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    write_identity(files, database_id)
    with write(conn):
        conn.execute("DELETE FROM meta WHERE key = 'identity_pending'")


def _create(files: StateFiles) -> None:
    """A new database, built aside as state.db.new, becomes state.db only after its state.id
    is durable: a crash leaves either nothing, or a complete pair that the next start finishes."""
    for leftover in _new_db_files(files):
        leftover.unlink(missing_ok=True)
    database_id = str(uuid.uuid4())
    with closing(sqlite3.connect(files.new_db, isolation_level=None)) as conn:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {_random_counter()}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        _migrate(conn)
        with write(conn):
            conn.execute("INSERT INTO meta (key, value) VALUES ('database_id', ?)", (database_id,))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    with files.new_db.open("rb") as f:
        os.fsync(f.fileno())
    write_identity(files, database_id)
    os.replace(files.new_db, files.db)
    db_identity.fsync_dir(files.dir)


def _finish_interrupted_creation(files: StateFiles) -> None:
    if not files.new_db.exists() or files.db.exists():
        return
    expected = db_identity.read_identity(files)
    if expected is None:  # state.id was never written: the new database holds nothing yet
        for leftover in _new_db_files(files):
            leftover.unlink(missing_ok=True)
    elif _database_id_of(files.new_db) == expected:
        os.replace(files.new_db, files.db)
        db_identity.fsync_dir(files.dir)


def _new_db_files(files: StateFiles) -> list[Path]:
    new = files.new_db
    return [new, *(new.with_name(new.name + s) for s in ("-wal", "-shm", "-journal"))]


def _database_id_of(path: Path) -> str | None:
    try:
        with closing(
            sqlite3.connect(f"file:{quote(str(path))}?mode=ro&immutable=1", uri=True)
        ) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'database_id'").fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def _quick_check(conn: sqlite3.Connection, files: StateFiles) -> None:
    result = [row[0] for row in conn.execute("PRAGMA quick_check")]
    if result != ["ok"]:
        refuse(
            files,
            f"it failed its integrity check: {'; '.join(result[:5])}; keep the files for "
            "investigation",
            RESTORE,
        )


# What each version changes besides the objects the schema script creates, run in the schema
# script's transaction and before it on a database older than that version: (table, column it
# adds or None, SQL). Skipped where the table is missing (the schema script makes it as it is
# now) or already has the column.
_UPGRADES: dict[int, tuple[str, str | None, str]] = {
    6: ("transitions", None, "DROP INDEX IF EXISTS transitions_by_serial;"),
    7: (
        "transitions",
        "batch_id",
        "ALTER TABLE transitions ADD COLUMN batch_id TEXT;"
        "UPDATE transitions SET batch_id = (SELECT s.batch_id FROM serials s "
        "WHERE s.gtin = transitions.gtin AND s.serial = transitions.serial);"
        "DROP INDEX IF EXISTS transitions_by_serial_state;",
    ),
}


def _upgrades(conn: sqlite3.Connection, version: int | None) -> str:
    if version is None:
        return ""
    steps = []
    for v, (table, column, sql) in sorted(_UPGRADES.items()):
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if v > version and columns and column not in columns:
            steps.append(sql)
    return "".join(steps)


def _migrate(conn: sqlite3.Connection) -> None:
    version = _schema_version(conn)
    if version is not None and version > SCHEMA_VERSION:
        raise LedgerError(
            f"state database schema version {version} is newer than this agent "
            f"({SCHEMA_VERSION}); upgrade the agent"
        )
    upgrades = _upgrades(conn, version)
    started = time.monotonic()
    if version is not None and version < SCHEMA_VERSION:
        log.warning(
            "state_database_upgrading",
            schema_from=version,
            schema_to=SCHEMA_VERSION,
            detail="the history is reindexed once: 2 to 3 minutes for 2M units",
        )
    # executescript commits any open transaction itself, so the schema goes in its own script
    (cache,) = conn.execute("PRAGMA cache_size").fetchone()
    if upgrades:
        conn.execute("PRAGMA cache_size=-65536")  # index builds sort in it: half the time
    try:
        conn.executescript("BEGIN IMMEDIATE;" + upgrades + _SCHEMA + "COMMIT;")
    finally:
        conn.execute(f"PRAGMA cache_size={int(cache)}")
    with write(conn):
        if version is None:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif version < SCHEMA_VERSION:
            # Older files lack tables and indexes the schema script has just created, and hold
            # those the upgrades have just dropped.
            conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
            )
            log.info(
                "state_database_upgraded",
                schema_from=version,
                schema_to=SCHEMA_VERSION,
                seconds=round(time.monotonic() - started, 1),
            )


def _schema_version(conn: sqlite3.Connection) -> int | None:
    """None for a database that has no schema yet (being created)."""
    if not conn.execute("SELECT 1 FROM sqlite_schema WHERE name = 'meta'").fetchone():
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return None if row is None else int(row[0])
