"""Whether the state database was closed cleanly last time: the record that lets a start skip
the full integrity check.

SQLite's ``quick_check`` reads every page: seconds per gigabyte, at every start. A database that
was closed by the agent itself (the process alive, every transaction committed or rolled back,
the last write a successful one) needs no such scan; one left by a crash, a power loss or a
killed process gets it before the line may run. The proof of a clean close is
``clean-stop.json`` in the state directory, written after the writer connection closed, and
tied to the database state it describes:

- at close, one last write transaction stores a random token in ``meta.clean_stop``; only if
  that commit succeeds (no full disk, no I/O error) is the record written, atomically, naming
  the database id, the token and the write counter after that commit;
- at the next start the record is read and removed (durably, before anything is written), and
  trusted only when the database's id, token and write counter are still the ones it names: a
  write by anyone after the close, a database restored or replaced, or a crash in this session
  (the record is gone) all mean a full check.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_agent.db_identity import StateFiles, fsync_dir

RECORD_NAME = "clean-stop.json"
META_KEY = "clean_stop"


@dataclass(frozen=True)
class CleanStop:
    database_id: str
    token: str
    write_counter: int  # PRAGMA user_version after the closing commit (signed, as SQLite has it)
    stopped_at: str = ""


def path_of(files: StateFiles) -> Path:
    return files.dir / RECORD_NAME


def new_token() -> str:
    return secrets.token_hex(16)


def take(files: StateFiles) -> CleanStop | None:
    """The record of the last clean close, removed from the disk before this returns: from here
    on a crash leaves no record, so the next start checks the whole database. None when there
    is none or it cannot be read (that, too, means a full check)."""
    path = path_of(files)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        text = ""
    try:
        path.unlink()
        fsync_dir(files.dir)
    except FileNotFoundError:
        pass
    except OSError:  # a record that cannot be removed could outlive a crash: not trusted
        return None
    try:
        data = json.loads(text)
        return CleanStop(
            str(data["database_id"]),
            str(data["token"]),
            int(data["write_counter"]),
            str(data.get("stopped_at", "")),
        )
    except (ValueError, KeyError, TypeError):
        return None


def describes(record: CleanStop | None, conn: sqlite3.Connection, database_id: str | None) -> bool:
    """True when ``record`` describes this database as it is now (read through SQLite, the WAL
    included): same id, same token, not one write since."""
    if record is None or database_id is None or record.database_id != database_id:
        return False
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (META_KEY,)).fetchone()
    (counter,) = conn.execute("PRAGMA user_version").fetchone()
    return row is not None and row[0] == record.token and int(counter) == record.write_counter


def write_record(files: StateFiles, record: CleanStop) -> None:
    """Atomically (a crash leaves the whole record or none) and durably."""
    path = path_of(files)
    tmp = path.with_name(RECORD_NAME + ".tmp")
    data = asdict(record) | {"stopped_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(files.dir)


# --- damage found while the database was open (edge_agent/integrity.py) -------------------------

SUSPECT_NAME = "integrity-failed.json"


def suspect_path(files: StateFiles) -> Path:
    return files.dir / SUSPECT_NAME


def mark_suspect(files: StateFiles, detail: str) -> None:
    """The background check found damage: the next start checks the whole database whatever
    the clean-stop record says (``db.open_db``). Written durably; removed once a full check at
    start passed."""
    path = suspect_path(files)
    tmp = path.with_name(SUSPECT_NAME + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(detail + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(files.dir)


def is_suspect(files: StateFiles) -> bool:
    return suspect_path(files).exists()


def clear_suspect(files: StateFiles) -> None:
    try:
        suspect_path(files).unlink()
    except FileNotFoundError:
        return
    fsync_dir(files.dir)
