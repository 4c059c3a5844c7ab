"""Backup and restore of the state database: online, checked, and never reusing a serial.

The database, SQLite's backup API, the files and the commands are all real; the end-to-end test
runs `edge-agent run` as a process on the simulators, takes `edge-agent backup` while the line
runs, loses the live state (SIGKILL, the directory is gone), restores into a fresh directory with
`edge-agent restore` and lets the order finish there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import string
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent import backup, serialgen
from edge_agent.alarms import AlarmBoard, AlarmKind
from edge_agent.config.models import (
    BackupSection,
    CameraSim,
    PrinterSim,
    SimulatorsSection,
)
from edge_agent.db import open_db, open_reader, write
from edge_agent.errors import StateRefused
from edge_agent.ledger import BatchInfo, Ledger, SerialState, UnitOutcome
from edge_agent.reconcile import reconcile
from simulators.runner import SimulatorSet
from tests.helpers.agent_process import AgentProcess, run_agent_process, write_agent_config
from tests.helpers.margins import plc_sim
from tests.helpers.waiting import until

GTIN = "09506000134352"
DIGITS = string.digits
ROOT = Path(__file__).resolve().parents[1]


def make_ledger(conn: sqlite3.Connection) -> Ledger:
    return Ledger(conn, read_point="urn:epc:id:sgln:0950600.01340.T", company_prefix_length=7)


@contextlib.contextmanager
def ledger_at(state_dir: Path) -> Iterator[Ledger]:
    with contextlib.closing(open_db(state_dir)) as conn:
        yield make_ledger(conn)


def open_batch(ledger: Ledger, batch_id: str = "B1", target: int = 100) -> BatchInfo:
    return ledger.open_batch(batch_id, GTIN, "LOT1", "281200", target)


def serials(conn: sqlite3.Connection, state: str | None = None) -> set[str]:
    if state is None:
        return {s for (s,) in conn.execute("SELECT serial FROM serials")}
    return {s for (s,) in conn.execute("SELECT serial FROM serials WHERE state = ?", (state,))}


def edge_agent(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


async def edge_agent_async(*args: object) -> tuple[int, str, str]:
    """The CLI as a process, without blocking the event loop the simulators run in."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_agent.cli",
        *map(str, args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# --- the backup ------------------------------------------------------------------------------


def test_a_backup_taken_while_a_writer_commits_is_a_consistent_snapshot(tmp_path: Path) -> None:
    """Every write transaction adds one unit and its event; a copy taken mid-stream holds both
    of each pair or neither, passes its integrity check, and the writer went on meanwhile."""
    state = tmp_path / "state"
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        with contextlib.closing(open_db(state)) as conn:
            n = 0
            while not stop.is_set() or n < 200:
                n += 1
                with write(conn):
                    conn.execute(
                        "INSERT INTO units (batch_id, trigger, verdict, reason, decided_at) "
                        "VALUES ('B1', ?, 'pass', 'ok', 0)",
                        (n,),
                    )
                    conn.execute(
                        "INSERT INTO outbox (event_id, batch_id, kind, payload, created_at) "
                        "VALUES (?, 'B1', 'commissioning', ?, 0)",
                        (f"e{n}", "x" * 2000),  # pages enough for several backup steps
                    )
                written.append(n)

    with contextlib.closing(open_db(state)):
        pass  # the database and its state.id exist before the writer and the backup start
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(written) < 200:
            threading.Event().wait(0.01)
        done = edge_agent("backup", "--to", tmp_path / "backups", "--state-dir", state)
        during = len(written)
    finally:
        stop.set()
        thread.join(60)
    assert done.returncode == 0, done.stderr
    (taken,) = backup.list_backups(tmp_path / "backups")
    with contextlib.closing(sqlite3.connect(taken.db)) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (units,) = copy.execute("SELECT count(*) FROM units").fetchone()
        (events,) = copy.execute("SELECT count(*) FROM outbox").fetchone()
        (journal,) = copy.execute("PRAGMA journal_mode").fetchone()
    assert units == events >= 200  # one snapshot: never a unit without its event
    assert len(written) > during >= units  # the writer was not stopped by the backup
    assert journal == "delete" and not Path(f"{taken.db}-wal").exists()  # one whole file
    identity = json.loads((taken.path / "state.id").read_text())
    assert identity["database_id"] == taken.database_id
    assert json.loads((state / "state.id").read_text())["database_id"] == taken.database_id
    assert taken.manifest["integrity"] == "ok" and len(taken.manifest["sha256"]) == 64
    assert str(taken.path) in done.stdout and "integrity ok" in done.stdout


def test_a_backup_of_no_database_or_a_foreign_one_is_refused(tmp_path: Path) -> None:
    done = edge_agent("backup", "--to", tmp_path / "b", "--state-dir", tmp_path / "none")
    assert done.returncode == 1 and "no state database" in done.stderr
    assert "Traceback" not in done.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    sqlite3.connect(foreign / "state.db").execute("CREATE TABLE t (x)").connection.close()
    done = edge_agent("backup", "--to", tmp_path / "b", "--state-dir", foreign)
    assert done.returncode == 2 and "not an edge-agent state database" in done.stderr
    assert not list((tmp_path / "b").glob("edge-agent-*"))


def test_retention_keeps_the_newest_of_this_database_only(tmp_path: Path) -> None:
    to = tmp_path / "backups"
    with contextlib.closing(open_db(tmp_path / "other")):
        pass
    theirs = backup.take_backup(tmp_path / "other", to)  # another line's, in the same folder
    with contextlib.closing(open_db(tmp_path / "state")):
        pass
    ours = [backup.take_backup(tmp_path / "state", to) for _ in range(4)]
    assert len({b.path for b in ours}) == 4  # taken within one second: still four folders
    done = edge_agent("backup", "--to", to, "--state-dir", tmp_path / "state", "--keep", "2")
    assert done.returncode == 0, done.stderr
    kept = backup.list_backups(to, ours[0].database_id)
    assert len(kept) == 2
    assert ours[-1].path in {b.path for b in kept}  # the newest ones
    assert {b.path for b in backup.list_backups(to, theirs.database_id)} == {theirs.path}
    assert done.stdout.count("removed") == 3


def test_a_partial_backup_left_by_a_crash_is_cleared_by_the_next(tmp_path: Path) -> None:
    with contextlib.closing(open_db(tmp_path / "state")):
        pass
    leftover = tmp_path / "backups" / ".edge-agent-20260101T000000Z.partial"
    leftover.mkdir(parents=True)
    (leftover / "state.db").write_bytes(b"half")
    backup.take_backup(tmp_path / "state", tmp_path / "backups")
    assert not leftover.exists()
    assert len(backup.list_backups(tmp_path / "backups")) == 1


# --- restore: the checks ---------------------------------------------------------------------


@pytest.fixture
def one_backup(tmp_path: Path) -> backup.Backup:
    with ledger_at(tmp_path / "live") as ledger:
        batch = open_batch(ledger)
        ledger.ensure_allocated(batch, 5, length=8, alphabet=DIGITS)
    return backup.take_backup(tmp_path / "live", tmp_path / "backups")


def test_restore_refuses_a_damaged_backup(tmp_path: Path, one_backup: backup.Backup) -> None:
    with one_backup.db.open("r+b") as f:
        f.seek(4096 + 200)
        f.write(b"\xff" * 64)
    done = edge_agent("restore", "--from", one_backup.path, "--state-dir", tmp_path / "new")
    assert done.returncode == 2 and "is damaged" in done.stderr, done.stderr
    assert not (tmp_path / "new" / "state.db").exists()


def test_restore_refuses_a_copy_that_fails_its_integrity_check(
    tmp_path: Path, one_backup: backup.Backup
) -> None:
    """Damage the checksum cannot see (the manifest rewritten to match): integrity_check does."""
    with one_backup.db.open("r+b") as f:
        f.seek(2 * 4096 + 8)
        f.write(b"\x00\xff\x13" * 40)  # a b-tree page's cell pointers
    manifest = dict(one_backup.manifest, sha256=backup._sha256(one_backup.db))
    (one_backup.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StateRefused, match="failed its integrity check"):
        backup.restore(one_backup.path, tmp_path / "new")
    assert not (tmp_path / "new" / "state.db").exists()
    assert not (tmp_path / "new" / "state.db.new").exists()


def test_restore_refuses_another_lines_database(tmp_path: Path, one_backup: backup.Backup) -> None:
    other = tmp_path / "other-line"
    with contextlib.closing(open_db(other)):
        pass
    before = (other / "state.id").read_text()
    done = edge_agent("restore", "--from", one_backup.path, "--state-dir", other, "--replace")
    assert done.returncode == 2 and "another line's or directory's database" in done.stderr
    assert (other / "state.id").read_text() == before  # nothing was touched
    assert not list(other.glob("replaced-*"))


def test_restore_over_the_same_database_needs_replace_and_keeps_the_old_files(
    tmp_path: Path, one_backup: backup.Backup
) -> None:
    live = tmp_path / "live"
    with pytest.raises(StateRefused, match="--replace"):
        backup.restore(one_backup.path, live)
    done = backup.restore(one_backup.path, live, replace=True)
    assert done.replaced is not None and (done.replaced / "state.db").exists()
    with contextlib.closing(open_reader(live)) as conn:
        assert serials(conn, "quarantined") and not serials(conn, "allocated")


def test_restore_refuses_a_folder_that_is_not_a_backup_and_lists_the_ones_inside(
    tmp_path: Path, one_backup: backup.Backup
) -> None:
    done = edge_agent("restore", "--from", tmp_path / "backups", "--state-dir", tmp_path / "new")
    assert done.returncode == 2
    assert "not an edge-agent backup" in done.stderr and one_backup.path.name in done.stderr


def test_restore_refuses_a_backup_of_another_line_by_config(
    tmp_path: Path, one_backup: backup.Backup
) -> None:
    manifest = dict(one_backup.manifest, line_id="LINE-7")
    (one_backup.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StateRefused, match="of line LINE-7"):
        backup.restore(one_backup.path, tmp_path / "new", line_id="LINE-2")


# --- restore: no serial is used again --------------------------------------------------------


def test_restore_quarantines_every_serial_not_settled_at_backup_time(tmp_path: Path) -> None:
    live = tmp_path / "live"
    with ledger_at(live) as ledger:
        batch = open_batch(ledger)
        ledger.ensure_allocated(batch, 8, length=10, alphabet=DIGITS)
        taken = [ledger.take_for_print(batch) for _ in range(4)]
        sent = [t[1] for t in taken if t]
        ledger.mark_printed(batch, sent[0])
        ledger.mark_printed(batch, sent[1])
        ledger.commit_outcomes(batch, [UnitOutcome(1, True, "ok", sent[0])])  # settled
        conn = ledger.conn
        with write(conn):
            conn.execute(
                "INSERT INTO serial_requests (request_id, order_id, gtin, count, state, "
                "created_at) VALUES ('r-1', 'B1', ?, 10, 'pending', 0)",
                (GTIN,),
            )
        unsettled = serials(conn, "allocated") | serials(conn, "sent") | serials(conn, "printed")
    assert len(unsettled) == 7
    taken_backup = backup.take_backup(live, tmp_path / "backups")

    done = edge_agent("restore", "--from", taken_backup.path, "--state-dir", tmp_path / "new")
    assert done.returncode == 0, done.stderr
    assert "7 serial(s) not settled at backup time quarantined" in done.stdout
    with contextlib.closing(open_db(tmp_path / "new")) as conn:
        assert serials(conn, "quarantined") == unsettled
        assert serials(conn, "commissioned") == {sent[0]}
        (state,) = conn.execute("SELECT state FROM serial_requests").fetchone()
        assert state == "discarded"  # L3 may have answered it after the backup
        report = reconcile(conn, "B1")
        alarm = {a.kind: a.message for a in AlarmBoard(conn).active()}
        (report_file,) = (tmp_path / "new" / "reports").glob("restore-*.json")
        restore_report = json.loads(report_file.read_text())
        ledger = make_ledger(conn)
        batch = open_batch(ledger)
        assert ledger.take_for_print(batch) is None  # none of them is ever sent again
    assert report["serials_quarantined"] == 7 and report["balanced"], report["problems"]
    assert "7 serial(s) not settled then are quarantined" in alarm[AlarmKind.RESTORED_FROM_BACKUP]
    assert set(restore_report["quarantined_serials"]["B1"]) == unsettled
    assert restore_report["serial_requests_discarded"] == 1


def test_free_serials_of_an_imported_list_are_quarantined(tmp_path: Path) -> None:
    live = tmp_path / "live"
    listing = tmp_path / "l3.txt"
    listing.write_text("".join(f"{n:08d}\n" for n in range(20)))
    with ledger_at(live) as ledger:
        batch = open_batch(ledger)
        ledger.import_serial_list(GTIN, listing)
        ledger.allocate_from_pool(batch, 5)
    taken = backup.take_backup(live, tmp_path / "backups")
    done = backup.restore(taken.path, tmp_path / "new")
    assert done.pool_quarantined == {GTIN: 15}
    with ledger_at(tmp_path / "new") as ledger:
        assert ledger.allocate_from_pool(open_batch(ledger), 5) == 0
        assert ledger.import_serial_list(GTIN, listing) == 0  # nor brought back by a re-import


def test_serials_generated_after_the_backup_are_never_generated_again(tmp_path: Path) -> None:
    """Six digits: a million serials, ten thousand per generation epoch. Drawn at random over
    the whole space, 5000 serials after the backup and 5000 after the restore would share about
    25; in different epochs they share none."""
    live = tmp_path / "live"
    with ledger_at(live) as ledger:
        ledger.ensure_allocated(open_batch(ledger, target=20_000), 10, length=6, alphabet=DIGITS)
    taken = backup.take_backup(live, tmp_path / "backups")
    with ledger_at(live) as ledger:  # the live line goes on after the backup...
        before = serials(ledger.conn)
        ledger.ensure_allocated(open_batch(ledger, target=20_000), 5010, length=6, alphabet=DIGITS)
        after_backup = serials(ledger.conn) - before
        live_epoch, _ = serialgen.epochs_used(ledger.conn)
    assert len(after_backup) == 5000  # ...then its disk is lost

    done = backup.restore(taken.path, tmp_path / "new")
    with ledger_at(tmp_path / "new") as ledger:
        before = serials(ledger.conn)
        ledger.ensure_allocated(open_batch(ledger, target=20_000), 5000, length=6, alphabet=DIGITS)
        generated = serials(ledger.conn) - before
        space = serialgen.space(ledger.conn)
    assert len(generated) == 5000
    assert generated.isdisjoint(after_backup)
    assert done.epoch != live_epoch
    assert {space.epoch_of(s, DIGITS) for s in generated} == {done.epoch}
    assert {space.epoch_of(s, DIGITS) for s in after_backup} == {live_epoch}


def test_generation_epochs_split_the_serial_space_into_equal_disjoint_parts() -> None:
    space = serialgen.SerialSpace(os.urandom(32), 0)
    every = [f"{n:04d}" for n in range(10_000)]
    sizes: dict[int, int] = {}
    for serial in every:
        epoch = space.epoch_of(serial, DIGITS)
        sizes[epoch] = sizes.get(epoch, 0) + 1
    assert sizes == dict.fromkeys(range(100), 100)  # each serial in exactly one epoch
    for epoch in (0, 1, 57, 99):
        drawn = serialgen.SerialSpace(space.key, epoch)
        assert {drawn.epoch_of(drawn.draw(4, DIGITS), DIGITS) for _ in range(50)} == {epoch}


def test_two_restores_of_one_backup_folder_take_different_epochs(
    tmp_path: Path, one_backup: backup.Backup
) -> None:
    first = backup.restore(one_backup.path, tmp_path / "a")
    second = backup.restore(one_backup.path, tmp_path / "b")
    assert first.epoch != second.epoch
    recorded = json.loads((one_backup.path / "restores.json").read_text())
    assert [r["epoch"] for r in recorded] == [first.epoch, second.epoch]
    # a backup of a restored database, restored again: still a new epoch for the lineage
    again = backup.take_backup(tmp_path / "a", tmp_path / "backups")
    third = backup.restore(again.path, tmp_path / "c")
    assert third.epoch not in {0, first.epoch, second.epoch}


# --- scheduled backups -----------------------------------------------------------------------


async def test_scheduled_backups_keep_the_newest_and_alarm_on_failure(tmp_path: Path) -> None:
    state, to = tmp_path / "state", tmp_path / "backups"
    with contextlib.closing(open_db(state)) as conn:
        alarms = AlarmBoard(conn)
        section = BackupSection(dir=to, interval_h=0.5 / 3600, keep=2)  # every half second
        schedule = backup.BackupSchedule(section, state, line_id="L1", alarms=alarms)
        task = asyncio.create_task(schedule.run())
        try:
            await until(lambda: schedule.last is not None and len(os.listdir(to)) >= 3, within=30)
            await until(lambda: len(backup.list_backups(to)) == 2, "pruning", within=30)
            assert schedule.last is not None and schedule.last.manifest["line_id"] == "L1"
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        newest = backup.list_backups(to)[0]
        assert 0 < schedule.due_in(now=newest.taken_at) <= 0.5  # a restart waits, not repeats

        blocked = tmp_path / "not-a-folder"
        blocked.write_text("a file where the backup folder should be")
        failing = backup.BackupSchedule(
            BackupSection(dir=blocked, interval_h=1), state, alarms=alarms
        )
        task = asyncio.create_task(failing.run())
        try:
            await until(
                lambda: AlarmKind.BACKUP_FAILED in {a.kind for a in alarms.active()}, within=30
            )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        blocked.unlink()
        recovered = backup.BackupSchedule(
            BackupSection(dir=blocked, interval_h=1), state, alarms=alarms
        )
        task = asyncio.create_task(recovered.run())
        try:
            await until(
                lambda: not alarms.active(), "the alarm cleared by a good backup", within=30
            )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# --- the whole story, on the simulators -------------------------------------------------------


@pytest.mark.slow
async def test_a_backup_taken_while_the_line_runs_restores_and_the_order_finishes_there(
    tmp_path: Path,
) -> None:
    units = 400
    section = SimulatorsSection(
        units_per_min=600,  # the live run: slow enough to be caught mid-order
        printer=PrinterSim(port=0, buffer_size=16),
        camera=CameraSim(port=0, defect_rate=0.02, seed=5),
        plc=plc_sim(),
    )
    live, fresh, backups = tmp_path / "live", tmp_path / "restored", tmp_path / "backups"
    async with SimulatorSet(section) as sims:
        printed = sims.printer.printed
        config = write_agent_config(tmp_path / "live.toml", sims, live, units=units)
        async with AgentProcess(config, tmp_path / "live.out") as agent:
            await until(
                lambda: len(printed) >= 50 or agent.returncode is not None,
                "units printed",
                within=60,
            )
            assert agent.returncode is None, agent.output()[-3000:]
            status, _, err = await edge_agent_async("backup", "--to", backups, "--state-dir", live)
            assert status == 0, err
            (taken,) = backup.list_backups(backups)
            # a running agent's directory is never restored over
            status, _, err = await edge_agent_async(
                "restore", "--from", taken.path, "--state-dir", live, "--replace"
            )
            assert status == 2 and "is in use" in err and "edge_agent.cli run" in err, err
            at_backup = len(printed)
            await until(
                lambda: len(printed) >= at_backup + 100 or agent.returncode is not None,
                "units printed after the backup",
                within=60,
            )
            assert agent.returncode is None, agent.output()[-3000:]
            agent.proc.kill()  # the disk dies with the line running: the live state is lost
            await agent.wait()
        # the PLC stops the line when the agent's heartbeat stops; what the printer had queued
        # is printed until then
        await until(lambda: not sims.line.running(), "the PLC to stop the line", within=10)
        await sims.line.drain()
        lost = set(printed)
        os.rename(live, tmp_path / "lost")
        with contextlib.closing(sqlite3.connect(taken.db)) as copy:
            settled_at_backup = {
                s
                for (s,) in copy.execute(
                    "SELECT serial FROM serials WHERE state IN ('commissioned', 'rejected')"
                )
            }
            unsettled_at_backup = {
                s
                for (s,) in copy.execute(
                    "SELECT serial FROM serials WHERE state IN ('allocated', 'sent', 'printed')"
                )
            }
        used_after_backup = lost - settled_at_backup
        shutil.copytree(tmp_path / "lost", tmp_path / "lost-copy")  # read with its WAL, as is
        with contextlib.closing(sqlite3.connect(tmp_path / "lost-copy" / "state.db")) as gone:
            sent_by_lost = {
                s for (s,) in gone.execute("SELECT serial FROM serials WHERE seq IS NOT NULL")
            }
        # the hazard is real: serials the backup holds as not yet used were printed after it
        assert unsettled_at_backup & used_after_backup

        status, _, err = await edge_agent_async(
            "restore", "--from", taken.path, "--state-dir", fresh
        )
        assert status == 0, err
        sims.line.units_per_min = 1500
        config = write_agent_config(tmp_path / "restored.toml", sims, fresh, units=units)
        log = tmp_path / "restored.out"
        assert await run_agent_process(config, log, within=180) == 0, log.read_text()[-3000:]
        again = printed[len(lost) :] if len(printed) > len(lost) else []

    with contextlib.closing(open_reader(fresh)) as conn:
        report = reconcile(conn)
        quarantined = serials(conn, SerialState.QUARANTINED)
        commissioned = serials(conn, SerialState.COMMISSIONED)
        settled = commissioned | serials(conn, SerialState.REJECTED)
    assert report["batch_state"] == "closed" and report["balanced"], report["problems"]
    assert quarantined == unsettled_at_backup
    # records the lost agent had queued in the printer may still be printed once, on units the
    # restored agent rejects; everything else printed now was sent by the restored agent
    leftovers = set(again) & sent_by_lost
    assert leftovers.isdisjoint(commissioned)
    new = set(again) - leftovers
    assert new and new <= settled - settled_at_backup  # the order finished there
    assert set(again).isdisjoint(used_after_backup)  # no serial used after the backup again
    assert new.isdisjoint(sent_by_lost)  # nor one the lost agent had sent
    assert len(printed) == len(set(printed))  # nor any serial printed twice, ever
