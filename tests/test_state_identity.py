"""The state database knows itself: an empty, missing, foreign or replaced database, or a WAL that
does not continue it, is refused with the recovery step, never taken for a new database."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent import db_identity, wal
from edge_agent.db import _SCHEMA, open_db, open_reader
from edge_agent.errors import LedgerError, StateRefused
from edge_agent.ledger import BatchInfo, Ledger

ROOT = Path(__file__).resolve().parents[1]
GTIN = "09506000134352"
ALPHABET = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"


def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def agent_config(tmp_path: Path, state: Path) -> Path:
    text = (ROOT / "config" / "demo.toml").read_text()
    text = text.replace('state_dir = "demo-state"', f'state_dir = "{state}"')
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def ledger_of(state: Path) -> Ledger:
    return Ledger(
        open_db(state), read_point="urn:epc:id:sgln:0950600.01340.T", company_prefix_length=7
    )


def filled(state: Path, batch_id: str, count: int) -> None:
    """A state directory whose database holds a batch of ``count`` sent serials, closed."""
    ledger = ledger_of(state)
    fill(ledger, batch_id, count)
    ledger.conn.close()


def fill(ledger: Ledger, batch_id: str, count: int) -> BatchInfo:
    batch = ledger.open_batch(batch_id, GTIN, "LOT1", "281200", count)
    ledger.ensure_allocated(batch, count, length=12, alphabet=ALPHABET)
    for _ in range(count):
        ledger.take_for_print(batch)
    return batch


def sent_serials(state: Path) -> list[str]:
    with contextlib.closing(open_reader(state)) as conn:
        return [s for (s,) in conn.execute("SELECT serial FROM serials WHERE seq IS NOT NULL")]


def snapshot(state: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(state.iterdir()) if p.is_file()}


def assert_clean_refusal(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


# --- a new state directory ----------------------------------------------------------------


def test_a_new_state_dir_gets_a_database_and_its_identity(tmp_path: Path) -> None:
    state = tmp_path / "new" / "state"
    conn = open_db(state)
    with contextlib.closing(conn):
        (database_id,) = conn.execute("SELECT value FROM meta WHERE key = 'database_id'").fetchone()
        (app_id,) = conn.execute("PRAGMA application_id").fetchone()
    assert app_id == db_identity.APPLICATION_ID
    assert json.loads((state / "state.id").read_text())["database_id"] == database_id
    assert sorted(p.name for p in state.iterdir()) == ["state.db", "state.id"]
    open_db(state).close()  # and it opens again as its own


def test_an_interrupted_creation_is_finished_or_discarded(tmp_path: Path) -> None:
    state = tmp_path / "state"
    open_db(state).close()
    database_id = json.loads((state / "state.id").read_text())["database_id"]
    # a crash after state.id was written but before state.db.new became state.db: finished
    (state / "state.db").rename(state / "state.db.new")
    with contextlib.closing(open_db(state)) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'database_id'").fetchone()
    assert row == (database_id,) and not (state / "state.db.new").exists()
    # a crash before state.id was written: the half-made database held nothing, a new one is made
    (state / "state.id").unlink()
    (state / "state.db").rename(state / "state.db.new")
    open_db(state).close()
    assert json.loads((state / "state.id").read_text())["database_id"] != database_id


# --- empty, missing, replaced databases ---------------------------------------------------


def test_a_zero_length_database_is_refused_not_started_again(tmp_path: Path) -> None:
    """The original failure: `run` took an empty state.db for a new database and the same batch
    ran again from scratch, forgetting which serials had been used."""
    state = tmp_path / "state"
    ledger = ledger_of(state)
    fill(ledger, "DEMO-BATCH-0001", 5)
    ledger.conn.close()
    (state / "state.db").write_bytes(b"")
    config = agent_config(tmp_path, state)
    result = cli("run", "--config", str(config))
    assert_clean_refusal(
        result, f"{state / 'state.db'}", "empty (0 bytes)", "state.id", "state.db-wal", "restore"
    )
    assert (state / "state.db").stat().st_size == 0  # nothing was created in its place
    assert_clean_refusal(cli("check-config", str(config)), "agent.state_dir", "empty (0 bytes)")
    assert_clean_refusal(cli("batch", "report", "--state-dir", str(state)), "empty (0 bytes)")
    assert_clean_refusal(cli("outbox", "status", "--state-dir", str(state)), "empty (0 bytes)")


def test_a_deleted_database_is_refused_while_its_identity_is_there(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ledger_of(state).conn.close()
    (state / "state.db").unlink()
    with pytest.raises(StateRefused, match=r"the file is missing, but .*state.id says database"):
        open_db(state)
    assert not (state / "state.db").exists()


def test_a_database_from_another_state_dir_is_refused(tmp_path: Path) -> None:
    here, there = tmp_path / "here", tmp_path / "there"
    filled(here, "B1", 3)
    filled(there, "B2", 3)
    shutil.copy(there / "state.db", here / "state.db")
    with pytest.raises(StateRefused, match=r"it is database .*, but .*state.id says database"):
        open_db(here)
    assert_clean_refusal(cli("batch", "report", "--state-dir", str(here)), "another state")


def test_a_sqlite_file_of_another_application_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with contextlib.closing(sqlite3.connect(state / "state.db")) as other:
        other.execute("CREATE TABLE notes (text TEXT)")
        other.commit()
    with pytest.raises(StateRefused, match="not an edge-agent state database"):
        open_db(state)
    with contextlib.closing(sqlite3.connect(state / "state.db")) as other:
        other.execute("PRAGMA application_id = 1234")
        other.commit()
    with pytest.raises(StateRefused, match="another application"):
        open_db(state)


# --- the WAL belongs to this database -----------------------------------------------------

CRASHING_WRITER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from edge_agent.db import open_db, write
    from edge_agent.ledger import Ledger
    state, batch_id, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    ledger = Ledger(open_db(state), read_point="urn:x", company_prefix_length=7)
    batch = ledger.open_batch(batch_id, "09506000134352", "LOT1", "281200", count)
    ledger.ensure_allocated(batch, count, length=12, alphabet="0123456789ABCDEFGHJKLMNPQRSTUVWXYZ")
    reader = None
    for n in range(count):
        ledger.take_for_print(batch)
        if n == count // 3:  # a reader pins a snapshot: the checkpoint below stops at it
            reader = open_db(state)
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM serials").fetchone()
        if n == 2 * count // 3:
            ledger.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    os._exit(0)  # a crash: no close, no checkpoint, the WAL stays with every commit in it
    """
)


def crash_after_writes(state: Path, batch_id: str, count: int) -> None:
    subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(state), batch_id, str(count)],
        check=True,
        timeout=120,
    )


@pytest.mark.parametrize("count", [40, 1500], ids=["small-wal", "wal-restarted-and-pinned"])
def test_after_a_crash_the_own_wal_is_proven_and_replayed(tmp_path: Path, count: int) -> None:
    state = tmp_path / "state"
    crash_after_writes(state, "B1", count)
    assert (state / "state.db-wal").stat().st_size > 0
    seen = db_identity.inspect(db_identity.StateFiles(state))
    assert seen.wal_transactions is not None and seen.wal_transactions > 0
    with contextlib.closing(open_db(state)) as conn:
        assert conn.execute("SELECT count(*) FROM serials WHERE seq IS NOT NULL").fetchone() == (
            count,
        )


def test_a_foreign_wal_beside_a_good_database_is_refused(tmp_path: Path) -> None:
    """The original failure: another database's state.db-wal was replayed into a good state.db
    and its ledger overwritten."""
    ours, foreign = tmp_path / "ours", tmp_path / "foreign"
    filled(ours, "OURS", 20)
    kept = sorted(sent_serials(ours))
    crash_after_writes(foreign, "FOREIGN", 60)  # leaves a WAL full of committed transactions
    shutil.copy(foreign / "state.db-wal", ours / "state.db-wal")
    before = snapshot(ours)
    with pytest.raises(LedgerError, match=r"state.db-wal beside it does not continue this state"):
        open_db(ours)
    assert snapshot(ours) == before  # nothing replayed, checkpointed or deleted
    assert_clean_refusal(
        cli("batch", "report", "--state-dir", str(ours)), "state.db-wal", "state.db-shm", "Keep"
    )
    assert_clean_refusal(cli("run", "--config", str(agent_config(tmp_path, ours))), "state.db-wal")
    assert snapshot(ours) == before
    # the recovery step it names: move the log aside, the database is then used as it is
    (ours / "state.db-wal").rename(tmp_path / "foreign.wal")
    assert sorted(sent_serials(ours)) == kept


def test_a_wal_of_another_application_is_refused(tmp_path: Path) -> None:
    state, other = tmp_path / "state", tmp_path / "other"
    open_db(state).close()
    other.mkdir()
    conn = sqlite3.connect(other / "x.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (v BLOB)")
    for _ in range(5):
        conn.execute("INSERT INTO t VALUES (randomblob(2000))")
    shutil.copy(other / "x.db-wal", state / "state.db-wal")
    conn.close()
    with pytest.raises(StateRefused, match=r"not the agent's|another application"):
        open_db(state)


def test_a_restored_backup_with_the_newer_wal_left_beside_it_is_refused(tmp_path: Path) -> None:
    """state.db restored from an older backup while the newer database's WAL stayed: SQLite
    would replay pages of a later state over an earlier one."""
    state = tmp_path / "state"
    ledger = ledger_of(state)
    fill(ledger, "B1", 10)
    ledger.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    backup = (state / "state.db").read_bytes()
    fill(ledger, "B2", 10)
    ledger.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    fill(ledger, "B3", 10)  # in the WAL only
    live_wal = (state / "state.db-wal").read_bytes()
    ledger.conn.close()
    (state / "state.db").write_bytes(backup)
    (state / "state.db-wal").write_bytes(live_wal)
    with pytest.raises(StateRefused, match=r"does not continue this state.db: .* write numbers"):
        open_db(state)
    (state / "state.db-wal").unlink()  # the recovery step: the backup is used as it is
    assert len(sent_serials(state)) == 10


def test_a_damaged_wal_header_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    crash_after_writes(state, "B1", 20)
    data = bytearray((state / "state.db-wal").read_bytes())
    data[16:20] = b"\x00\x00\x00\x00"  # salt-1: the header checksum no longer matches
    (state / "state.db-wal").write_bytes(bytes(data))
    with pytest.raises(StateRefused, match="damaged or not a WAL"):
        open_db(state)


# --- a database made before identities, and the adopt command ------------------------------


def make_legacy_database(state: Path) -> None:
    """A state.db as agents before identities made it: no application_id, no state.id."""
    state.mkdir(parents=True)
    conn = sqlite3.connect(state / "state.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
    conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '2')")
    conn.execute(
        "INSERT INTO batches (id, gtin, lot, expiry, target, state, opened_at) "
        "VALUES ('OLD', ?, 'L', '281200', 1, 'open', 0)",
        (GTIN,),
    )
    conn.close()


def test_a_database_made_before_identities_is_adopted(tmp_path: Path) -> None:
    state = tmp_path / "state"
    make_legacy_database(state)
    open_reader(state).close()  # readers accept it and write nothing
    assert not (state / "state.id").exists()
    with contextlib.closing(open_db(state)) as conn:
        (database_id,) = conn.execute("SELECT value FROM meta WHERE key = 'database_id'").fetchone()
        assert conn.execute("SELECT id FROM batches").fetchall() == [("OLD",)]
        assert (
            conn.execute("SELECT count(*) FROM meta WHERE key = 'identity_pending'").fetchone()[0]
            == 0
        )
    assert json.loads((state / "state.id").read_text())["database_id"] == database_id
    open_db(state).close()


def test_a_lost_identity_file_is_refused_and_adopt_restores_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    filled(state, "B1", 4)
    (state / "state.id").unlink()
    with pytest.raises(StateRefused, match=r"state.id is missing .*`edge-agent state adopt"):
        open_db(state)
    checked = cli("state", "check", "--state-dir", str(state))
    assert_clean_refusal(checked, "state.id is missing", "state adopt")
    adopted = cli("state", "adopt", "--state-dir", str(state))
    assert adopted.returncode == 0, adopted.stderr
    assert "state.id written" in adopted.stdout
    assert len(sent_serials(state)) == 4
    again = cli("state", "adopt", "--state-dir", str(state))
    assert_clean_refusal(again, "is already there")
    checked = cli("state", "check", "--state-dir", str(state))
    assert checked.returncode == 0 and "state.id matches" in checked.stdout
    assert "integrity: ok" in checked.stdout


# --- locks and damage ------------------------------------------------------------------------

LOCK_HOLDER = textwrap.dedent(
    """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")
    print("locked", flush=True)
    time.sleep(120)
    """
)


def test_a_locked_database_names_the_process_holding_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    open_db(state).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(state / "state.db")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(LedgerError) as info:
            open_db(state)
        message = str(info.value)
        assert f"locked by process {holder.pid}" in message and "not damaged" in message
        assert "restore" not in message and not isinstance(info.value, StateRefused)
        report = cli("batch", "report", "--state-dir", str(state))
        assert report.returncode == 1 and "Traceback" not in report.stderr
        assert f"locked by process {holder.pid}" in report.stderr
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def test_a_second_agent_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    fd = os.open(state / "agent.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())
        result = cli("run", "--config", str(agent_config(tmp_path, state)))
        assert_clean_refusal(result, "another agent is running", f"process {os.getpid()}")
    finally:
        os.close(fd)


def test_reports_on_a_damaged_database_print_a_message(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ledger = ledger_of(state)
    fill(ledger, "B1", 400)
    ledger.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    meta_pages = {
        page
        for (page,) in ledger.conn.execute(
            "SELECT rootpage FROM sqlite_schema WHERE tbl_name = 'meta'"
        )
    }
    ledger.conn.close()
    data = bytearray((state / "state.db").read_bytes())
    page = 4096
    for number in range(2, len(data) // page + 1):
        if number not in meta_pages:  # the identity stays readable, the ledger does not
            data[(number - 1) * page] = 0xFF  # not a b-tree page type: "malformed"
    (state / "state.db").write_bytes(bytes(data))
    for command in (("batch", "report"), ("outbox", "status"), ("state", "check")):
        result = cli(*command, "--state-dir", str(state))
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        out = result.stderr + result.stdout
        assert str(state / "state.db") in out and "restore" in out, out


# --- the WAL reader itself ------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([512, 1024, 4096]),
    st.sampled_from(["<", ">"]),
    st.binary(min_size=8, max_size=8),
    st.randoms(use_true_random=False),
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
)
def test_the_vectorised_checksum_is_sqlites_loop(
    page_size: int, order: str, head: bytes, rnd: object, sums: tuple[int, int]
) -> None:
    page = bytes(rnd.getrandbits(8) for _ in range(page_size))  # type: ignore[attr-defined]
    checksum = wal._Checksum(order, page_size)
    assert checksum.frame(head, page, sums) == checksum.small(head + page, sums)


def test_the_wal_reader_sees_the_frames_sqlite_sees(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (v BLOB)")
    for n in range(30):
        conn.execute("BEGIN")
        conn.execute(f"PRAGMA user_version = {n}")
        conn.execute("INSERT INTO t VALUES (randomblob(?))", (100 + 300 * n,))
        conn.execute("COMMIT")
    data = bytearray((tmp_path / "x.db-wal").read_bytes())
    content = wal.read_wal(tmp_path / "x.db-wal")
    (_busy, frames, _done) = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    conn.close()
    assert content is not None and len(content.transactions) == 31
    assert sum(t.frames for t in content.transactions) == frames
    versions = [t.page_one.user_version for t in content.transactions[1:] if t.page_one]
    assert versions == list(range(30))
    # a torn last frame ends the log before it, as SQLite's recovery does
    data[-10] ^= 0xFF
    (tmp_path / "torn-wal").write_bytes(bytes(data))
    torn = wal.read_wal(tmp_path / "torn-wal")
    assert torn is not None and len(torn.transactions) == 30


def test_the_wal_header_fields_are_read_big_endian(tmp_path: Path) -> None:
    image = bytearray(100)
    struct.pack_into(">I", image, 60, 0xDEADBEEF)
    struct.pack_into(">I", image, 68, db_identity.APPLICATION_ID)
    parsed = wal.PageOneImage.parse(bytes(image))
    assert parsed == wal.PageOneImage(0xDEADBEEF, db_identity.APPLICATION_ID)
