"""Online backups of the state database, and restoring one without ever reusing a serial.

**Backup** (``take_backup``): a consistent copy taken while the line runs, with SQLite's backup
API from a read-only connection that holds one read transaction for the whole copy. In WAL mode
a reader never blocks the writer, so the line keeps committing while the pages are copied (in
steps); the copy is the database as of the moment that read transaction began, and the steps
never restart because the snapshot does not move. The copy gets a full ``integrity_check``,
its own ``state.id`` and a ``manifest.json`` (database id, time, write counter, SHA-256, serial
generation epochs, serial counts), is written into ``DIR/.NAME.partial`` and renamed into place
only when complete, so a backup folder either is whole or does not exist. ``prune`` keeps the
newest ``keep`` backups of the database (other databases' backups in the same folder are left
alone).

**Restore** (``restore``) puts a backup into a state directory only if the backup is whole (its
SHA-256 and ``integrity_check``), is an edge-agent database whose id matches its ``state.id`` and
manifest, the directory is not in use (no agent holds its ``agent.lock``, no process has its
database open), and the directory holds no database of another id. A restored database does not
know what happened after the backup, so before it is put in place:

- every serial not settled at backup time (allocated, sent, printed) becomes ``quarantined``:
  never sent to a printer again, never returned to L3 as unused (it may have been printed and
  commissioned after the backup); so do the free serials of imported L3 lists;
- serial requests to L3 still pending at backup time are discarded: L3 may have answered them
  after the backup and the page may be in use; new requests carry new ids, so L3 hands out new
  serials;
- the serial generator moves to a generation epoch this database's lineage never used
  (``edge_agent.serialgen``): a serial generated after the backup can never be generated again;
- an alarm ``restored_from_backup`` and ``reports/restore-<time>.json`` (every quarantined
  serial, per batch) tell the operator and L3 what to reconcile; the restore is recorded in the
  backup folder, so another restore of the same backups chooses another epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import structlog

from edge_agent import db, db_identity, ledger, proclocks, serialgen
from edge_agent.alarms import AlarmBoard, AlarmKind
from edge_agent.config.models import BackupSection
from edge_agent.db_identity import APPLICATION_ID, StateFiles, refuse
from edge_agent.errors import LedgerError, StateRefused

log = structlog.get_logger("edge_agent.backup")

MANIFEST = "manifest.json"
RESTORES = "restores.json"
FORMAT = 1
PREFIX = "edge-agent-"
LOCK_NAME = "agent.lock"  # the agent's own lock of its state directory (edge_agent.preflight)
_PAGES_PER_STEP = 1024
_FAILED_RETRY_S = 300.0


@dataclass(frozen=True)
class Backup:
    path: Path
    manifest: dict[str, Any]

    @property
    def database_id(self) -> str:
        return str(self.manifest["database_id"])

    @property
    def taken_at(self) -> float:
        return float(self.manifest["taken_at_epoch"])

    @property
    def db(self) -> Path:
        return self.path / db_identity.DB_NAME

    def describe(self) -> str:
        m = self.manifest
        return (
            f"{self.path} (database {self.database_id}, taken {m['taken_at']}, {m['size']} bytes)"
        )


# --- taking a backup ----------------------------------------------------------------------------


def take_backup(
    state_dir: Path,
    to_dir: Path,
    *,
    line_id: str | None = None,
    in_process: bool = False,
) -> Backup:
    """A consistent copy of the state database in a new folder of ``to_dir``.

    ``in_process``: called by the running agent (scheduled backups): the agent proved the
    database's identity when it opened it, and nothing here may open state.db outside SQLite
    (closing such a descriptor would drop the agent's own SQLite locks). Otherwise (the
    ``backup`` command) the identity checks every opening runs come first."""
    files = StateFiles(state_dir)
    # open_reader: the identity and WAL checks; LedgerError when there is no database
    source = _reader(files) if in_process else db.open_reader(state_dir)
    with contextlib.closing(source), _folder_lock(to_dir):
        expected = db_identity.read_identity(files)
        _remove_partials(to_dir)
        stamp = datetime.now(UTC)
        final = _free_name(to_dir, stamp)
        partial = to_dir / f".{final.name}.partial"
        partial.mkdir()
        try:
            manifest = _copy(source, partial, files, expected, stamp, line_id)
            _write_json(partial / MANIFEST, manifest)
            db_identity.fsync_dir(partial)
            os.replace(partial, final)
            db_identity.fsync_dir(to_dir)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    backup = Backup(final, manifest)
    log.info(
        "backup_taken",
        backup=str(final),
        database_id=backup.database_id,
        size=manifest["size"],
        seconds=manifest["copy_seconds"],
    )
    return backup


def _reader(files: StateFiles) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{quote(str(files.db))}?mode=ro", uri=True, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def _copy(
    source: sqlite3.Connection,
    partial: Path,
    files: StateFiles,
    expected: str | None,
    stamp: datetime,
    line_id: str | None,
) -> dict[str, Any]:
    target_files = StateFiles(partial)
    started = time.monotonic()
    with db.storage_errors(files.dir):
        source.execute("BEGIN")  # one read snapshot for every step: the copy is consistent
        try:
            source.execute("SELECT count(*) FROM meta").fetchone()
            with contextlib.closing(sqlite3.connect(target_files.db)) as target:
                source.backup(target, pages=_PAGES_PER_STEP)
                target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
                facts = _facts(target)
        finally:
            source.execute("COMMIT")
    copy_seconds = round(time.monotonic() - started, 3)
    if facts["integrity"] != "ok":
        raise LedgerError(
            f"the copy of {files.db} failed its integrity check: {facts['integrity']}"
        )
    if facts["application_id"] != APPLICATION_ID or not facts["database_id"]:
        refuse(files, "it is not an edge-agent state database with an identity", db_identity.ADOPT)
    if expected is not None and facts["database_id"] != expected:
        refuse(
            files,
            f"it is database {facts['database_id']}, but {files.identity} names {expected}",
            db_identity.RESTORE,
        )
    with target_files.db.open("rb") as f:
        os.fsync(f.fileno())
    db_identity.write_identity(target_files, facts["database_id"])
    return {
        "format": FORMAT,
        "database_id": facts["database_id"],
        "line_id": line_id,
        "taken_at": stamp.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "taken_at_epoch": stamp.timestamp(),
        "source": str(files.dir),
        "host": socket.gethostname(),
        "size": target_files.db.stat().st_size,
        "sha256": _sha256(target_files.db),
        "copy_seconds": copy_seconds,
        "write_counter": facts["write_counter"],
        "schema_version": facts["schema_version"],
        "integrity": "ok",
        "serial_epoch": facts["serial_epoch"],
        "serial_epochs_used": facts["serial_epochs_used"],
        "serials": facts["serials"],
        "open_batches": facts["open_batches"],
    }


def _facts(conn: sqlite3.Connection) -> dict[str, Any]:
    integrity = [row[0] for row in conn.execute("PRAGMA integrity_check")]
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    (app_id,) = conn.execute("PRAGMA application_id").fetchone()
    (counter,) = conn.execute("PRAGMA user_version").fetchone()
    epoch, used = serialgen.epochs_used(conn)
    return {
        "integrity": "ok" if integrity == ["ok"] else "; ".join(integrity[:5]),
        "application_id": app_id & 0xFFFFFFFF,
        "database_id": meta.get("database_id"),
        "schema_version": int(meta.get("schema_version", 0)),
        "write_counter": counter & 0xFFFFFFFF,
        "serial_epoch": epoch,
        "serial_epochs_used": used,
        "serials": dict(conn.execute("SELECT state, count(*) FROM serials GROUP BY state")),
        "open_batches": [r[0] for r in conn.execute("SELECT id FROM batches WHERE state='open'")],
    }


def _free_name(to_dir: Path, stamp: datetime) -> Path:
    base = PREFIX + stamp.strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 1000):
        candidate = to_dir / (base if n == 1 else f"{base}-{n}")
        if not candidate.exists():
            return candidate
    raise LedgerError(f"{to_dir} holds too many backups named {base}")


def _remove_partials(to_dir: Path) -> None:
    """Left by a backup that died mid-copy (we hold the folder's lock: none is being written)."""
    for leftover in to_dir.glob(f".{PREFIX}*.partial"):
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def _folder_lock(to_dir: Path) -> Iterator[None]:
    """One backup at a time into a folder (the schedule and a `backup` command may meet)."""
    try:
        to_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(to_dir / ".backup.lock", os.O_RDWR | os.O_CREAT, 0o640)
    except OSError as exc:
        raise LedgerError(f"cannot write backups to {to_dir} ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- listing and retention ----------------------------------------------------------------------


def read_backup(path: Path) -> Backup:
    """The backup in folder ``path``; StateRefused when it is not a (whole) backup."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT or "database_id" not in manifest:
            raise ValueError(f"not a format-{FORMAT} edge-agent backup manifest")
    except FileNotFoundError:
        found = list_backups(path) if path.is_dir() else []
        hint = (
            "; it holds these backups, newest first: " + "; ".join(b.describe() for b in found)
            if found
            else ""
        )
        raise StateRefused(
            f"{path} is not an edge-agent backup (no {MANIFEST}){hint}; give one backup folder"
        ) from None
    except (OSError, ValueError) as exc:
        raise StateRefused(f"backup {path}: {MANIFEST} is unreadable ({exc})") from None
    return Backup(path, manifest)


def list_backups(to_dir: Path, database_id: str | None = None) -> list[Backup]:
    """Whole backups in ``to_dir`` (of one database, if given), newest first."""
    found = []
    for path in to_dir.glob(f"{PREFIX}*"):
        try:
            backup = read_backup(path)
        except StateRefused:
            continue
        if database_id is None or backup.database_id == database_id:
            found.append(backup)
    return sorted(found, key=lambda b: b.taken_at, reverse=True)


def prune(to_dir: Path, database_id: str, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` backups of this database; returns what went."""
    with _folder_lock(to_dir):
        gone = [b.path for b in list_backups(to_dir, database_id)[keep:]]
        for path in gone:
            shutil.rmtree(path)
    if gone:
        log.info("backups_pruned", folder=str(to_dir), removed=[p.name for p in gone], kept=keep)
    return gone


# --- restoring ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Restored:
    backup: Backup
    state_dir: Path
    quarantined: dict[str, list[str]]
    pool_quarantined: dict[str, int]
    requests_discarded: int
    epoch: int
    report: Path
    replaced: Path | None  # where the state directory's previous files were moved


def restore(
    backup_path: Path,
    state_dir: Path,
    *,
    replace: bool = False,
    line_id: str | None = None,
) -> Restored:
    backup = read_backup(backup_path)
    files = StateFiles(state_dir)
    _check_backup_files(backup)
    if line_id and backup.manifest.get("line_id") and backup.manifest["line_id"] != line_id:
        raise StateRefused(
            f"backup {backup.path} is of line {backup.manifest['line_id']}, the config is for "
            f"line {line_id}: a backup of another line's database is never restored here"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    with _state_dir_lock(files):
        _check_not_open(files)
        existing = _existing_database(files, backup)
        if existing and not replace:
            raise StateRefused(
                f"{state_dir} already holds database {backup.database_id} "
                f"({', '.join(p.name for p in existing)}). Give --replace to replace it by the "
                f"backup taken {backup.manifest['taken_at']}: its files are then moved to "
                f"{state_dir}/replaced-<time>/, never deleted"
            )
        staged = files.new_db
        for leftover in (staged, staged.with_name(staged.name + "-wal")):
            leftover.unlink(missing_ok=True)
        shutil.copyfile(backup.db, staged)
        ready = False
        try:
            outcome = _prepare(staged, backup, files)
            with staged.open("rb") as f:
                os.fsync(f.fileno())
            ready = True
            # state.id first: from here on a crash leaves the prepared state.db.new and its
            # state.id; once the old state.db is moved aside, the next start puts it in place
            # (db._finish_interrupted_creation)
            db_identity.write_identity(files, backup.database_id)
            replaced = _move_aside(files, existing) if existing else None
            os.replace(staged, files.db)
            db_identity.fsync_dir(files.dir)
        except BaseException:
            if not ready:
                staged.unlink(missing_ok=True)
            raise
    restored = Restored(backup, state_dir, *outcome, replaced=replaced)
    _record_restore(backup, restored)
    log.warning(
        "state_restored",
        backup=str(backup.path),
        state_dir=str(state_dir),
        quarantined=sum(len(s) for s in restored.quarantined.values()),
        epoch=restored.epoch,
        report=str(restored.report),
    )
    return restored


def _check_backup_files(backup: Backup) -> None:
    if not backup.db.is_file():
        raise StateRefused(f"backup {backup.path} has no {db_identity.DB_NAME}: it is incomplete")
    if _sha256(backup.db) != backup.manifest.get("sha256"):
        raise StateRefused(
            f"backup {backup.path} is damaged: {backup.db.name} does not match the SHA-256 its "
            "manifest recorded when the backup was taken; restore another backup"
        )
    known = db_identity.read_identity(StateFiles(backup.path))
    if known != backup.database_id:
        raise StateRefused(
            f"backup {backup.path}: its state.id names database {known}, its manifest "
            f"{backup.database_id}; the folder was put together from different backups"
        )


@contextlib.contextmanager
def _state_dir_lock(files: StateFiles) -> Iterator[None]:
    """Hold the agent's own lock of the directory: no agent runs on it, none starts meanwhile."""
    path = files.dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            who = (
                f"process {holder} ({proclocks.command_line(int(holder))})"
                if holder.isdigit()
                else "another process"
            )
            raise StateRefused(
                f"{files.dir} is in use: {who} holds {path}. Stop the agent first "
                "(`systemctl stop edge-agent`); a running agent's state is never replaced"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _check_not_open(files: StateFiles) -> None:
    users = proclocks.describe(proclocks.holders(files.sqlite_files()), exclude_self=False)
    if users:
        raise StateRefused(
            f"{files.db} is open in {users}; close it (or stop it) before restoring into {files.dir}"
        )


def _existing_database(files: StateFiles, backup: Backup) -> list[Path]:
    """The files of a database already in the directory; StateRefused when it is another one."""
    present = [p for p in (files.db, files.wal, files.shm, files.identity) if p.exists()]
    if not present:
        return []
    ids = set()
    with contextlib.suppress(StateRefused):
        if (known := db_identity.read_identity(files)) is not None:
            ids.add(known)
    with contextlib.suppress(sqlite3.Error, OSError):
        if files.db.exists():
            uri = f"file:{quote(str(files.db))}?mode=ro&immutable=1"
            with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
                row = conn.execute("SELECT value FROM meta WHERE key = 'database_id'").fetchone()
                if row:
                    ids.add(str(row[0]))
    others = ids - {backup.database_id}
    if others:
        raise StateRefused(
            f"{files.dir} holds database {', '.join(sorted(others))}, the backup "
            f"{backup.path} is of database {backup.database_id}: a backup of another line's or "
            "directory's database is never restored over it. Restore it into its own state "
            "directory, or move this directory's files out first if it really is to go"
        )
    return present


def _prepare(
    staged: Path, backup: Backup, files: StateFiles
) -> tuple[dict[str, list[str]], dict[str, int], int, int, Path]:
    """Check the staged copy and make it safe to run on: quarantine, discard, new epoch."""
    conn = sqlite3.connect(staged, isolation_level=None)
    try:
        try:
            result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        except sqlite3.DatabaseError as exc:  # damage that stops the check itself
            result = [str(exc)]
        if result != ["ok"]:
            raise StateRefused(
                f"backup {backup.path} failed its integrity check ({'; '.join(result[:3])}); "
                "restore another backup"
            )
        (app_id,) = conn.execute("PRAGMA application_id").fetchone()
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if app_id & 0xFFFFFFFF != APPLICATION_ID or meta.get("database_id") != backup.database_id:
            raise StateRefused(
                f"backup {backup.path}: its database is not edge-agent database "
                f"{backup.database_id} (application id 0x{app_id & 0xFFFFFFFF:08x}, database id "
                f"{meta.get('database_id')})"
            )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        taken = backup.manifest["taken_at"]
        reason = f"restored_from_backup_{taken}"
        with db.write(conn):
            quarantine = ledger.quarantine_unsettled(conn, reason)
            cur = conn.execute(
                "UPDATE serial_requests SET state = 'discarded', detail = ?, done_at = ? "
                "WHERE state = 'pending'",
                (json.dumps({"why": reason}), time.time()),
            )
            discarded = cur.rowcount
            epoch = serialgen.new_epoch(conn, lineage_epochs(backup))
            count = sum(len(s) for s in quarantine.serials.values())
            conn.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [("restored_from", json.dumps(_origin(backup))), ("restored_at", _now_text())],
            )
            report = _write_report(files, backup, quarantine, discarded, epoch)
            AlarmBoard(conn).raise_(
                AlarmKind.RESTORED_FROM_BACKUP,
                f"state restored from the backup taken {taken}: {count} serial(s) not settled "
                f"then are quarantined (never used again), {discarded} pending L3 serial "
                f"request(s) discarded, serial generation moved to epoch {epoch}. What happened "
                f"after the backup is known to L3 and the EPCIS repository only: reconcile the "
                f"serials listed in {report}",
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()
    return quarantine.serials, quarantine.pool, discarded, epoch, report


def lineage_epochs(backup: Backup) -> set[int]:
    """Serial generation epochs this database's lineage is known to use: the backup's own, and
    those of every backup of it and every restore recorded in the backup's folder."""
    epochs = {int(backup.manifest.get("serial_epoch", 0))}
    epochs |= {int(e) for e in backup.manifest.get("serial_epochs_used", [])}
    for sibling in list_backups(backup.path.parent, backup.database_id):
        epochs.add(int(sibling.manifest.get("serial_epoch", 0)))
        epochs |= {int(e) for e in sibling.manifest.get("serial_epochs_used", [])}
        epochs |= {int(r["epoch"]) for r in _restores(sibling.path)}
    return epochs


def _restores(path: Path) -> list[dict[str, Any]]:
    try:
        records = json.loads((path / RESTORES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [r for r in records if isinstance(r, dict) and "epoch" in r]


def _record_restore(backup: Backup, restored: Restored) -> None:
    """Best effort (a read-only backup medium): the next restore of these backups then knows
    which epoch this one took."""
    record = {
        "restored_at": _now_text(),
        "state_dir": str(restored.state_dir),
        "host": socket.gethostname(),
        "epoch": restored.epoch,
    }
    records = [*_restores(backup.path), record]
    try:
        _write_json(backup.path / RESTORES, records)
    except OSError as exc:
        log.warning("restore_not_recorded", backup=str(backup.path), detail=exc.strerror)


def _write_report(
    files: StateFiles,
    backup: Backup,
    quarantine: ledger.Quarantine,
    discarded: int,
    epoch: int,
) -> Path:
    reports = files.dir / "reports"
    reports.mkdir(exist_ok=True)
    path = reports / f"restore-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    _write_json(
        path,
        {
            "restored_at": _now_text(),
            "backup": _origin(backup),
            "quarantined_serials": quarantine.serials,
            "quarantined_list_serials": quarantine.pool,
            "serial_requests_discarded": discarded,
            "serial_generation_epoch": epoch,
            "what_to_do": "These serials were not settled when the backup was taken: each may "
            "have been printed, commissioned or rejected after it. The agent never uses them "
            "again. Ask L3 and the EPCIS repository which of them carry events after the "
            "backup time, and settle them there.",
        },
    )
    return path


def _origin(backup: Backup) -> dict[str, Any]:
    m = backup.manifest
    return {
        "path": str(backup.path),
        "taken_at": m["taken_at"],
        "database_id": backup.database_id,
        "write_counter": m.get("write_counter"),
    }


def _move_aside(files: StateFiles, existing: list[Path]) -> Path:
    aside = files.dir / f"replaced-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    aside.mkdir()
    for path in existing:
        if path != files.identity:  # state.id already names the restored database (same id)
            os.replace(path, aside / path.name)
    db_identity.fsync_dir(files.dir)
    return aside


# --- the schedule -------------------------------------------------------------------------------


class BackupSchedule:
    """``[backup] dir, interval_h, keep``: the daemon runs ``run()`` in its TaskGroup."""

    def __init__(
        self,
        section: BackupSection,
        state_dir: Path,
        *,
        line_id: str | None = None,
        alarms: AlarmBoard | None = None,
    ) -> None:
        self.section = section
        self.state_dir = state_dir
        self.line_id = line_id
        self.alarms = alarms
        self.last: Backup | None = None

    def due_in(self, now: float | None = None) -> float:
        """Seconds until the next backup: ``interval_h`` after the newest backup in ``dir``
        (so a restart neither repeats one nor postpones it)."""
        assert self.section.dir is not None
        database_id = db_identity.read_identity(StateFiles(self.state_dir))
        newest = list_backups(self.section.dir, database_id)
        if not newest:
            return 0.0
        now = time.time() if now is None else now
        return max(0.0, newest[0].taken_at + self.section.interval_h * 3600 - now)

    async def run_once(self) -> Backup:
        assert self.section.dir is not None
        backup = await asyncio.to_thread(
            take_backup, self.state_dir, self.section.dir, line_id=self.line_id, in_process=True
        )
        await asyncio.to_thread(prune, self.section.dir, backup.database_id, self.section.keep)
        self.last = backup
        return backup

    async def run(self) -> None:
        """Back up when due, forever; a failure is an alarm (retried within 5 minutes), never
        an exception: the line goes on."""
        if self.section.dir is None:
            return
        while True:
            try:
                wait = await asyncio.to_thread(self.due_in)
            except (OSError, StateRefused) as exc:
                wait = 0.0
                log.warning("backup_folder_unreadable", detail=str(exc))
            await asyncio.sleep(wait)
            try:
                await self.run_once()
            except (OSError, sqlite3.Error, LedgerError, StateRefused) as exc:
                log.error("backup_failed", folder=str(self.section.dir), detail=str(exc))
                self._alarm(str(exc))
                await asyncio.sleep(min(_FAILED_RETRY_S, self.section.interval_h * 3600))
                continue
            self._clear()

    def _alarm(self, detail: str) -> None:
        if self.alarms is not None:
            with contextlib.suppress(sqlite3.Error):
                self.alarms.raise_(
                    AlarmKind.BACKUP_FAILED, f"backup to {self.section.dir} failed: {detail}"
                )

    def _clear(self) -> None:
        if self.alarms is not None:
            with contextlib.suppress(sqlite3.Error):
                self.alarms.clear(AlarmKind.BACKUP_FAILED)


# --- helpers ------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _now_text() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")
