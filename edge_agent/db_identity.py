"""Which state database this is, proven from outside the file as well as inside it.

A state directory holds ``state.db`` (with SQLite's ``state.db-wal`` and ``state.db-shm``) and
``state.id``, a small JSON file written atomically when the database is created. The database
carries the same identity three ways:

- ``state.id`` and the database's ``meta`` table hold one random database id (a UUID). An empty,
  missing or replaced ``state.db`` cannot carry the id ``state.id`` names, so it is refused
  instead of being taken for a new database (which would forget which serials were used).
- The SQLite header of page 1 carries ``application_id`` = ``APPLICATION_ID`` ("EdgA": this is an
  edge-agent state database) and, in ``user_version``, a write counter that every write
  transaction of the agent increments (``db.write``), starting from a random value.
- Because every write rewrites page 1, every transaction in the WAL carries that header. SQLite
  itself does not tie a WAL to its database (see ``edge_agent.wal``); before SQLite may replay a
  ``state.db-wal``, its transactions must carry the agent's application id and a counter run that
  continues the counter in ``state.db``'s own page 1 (an unbroken run, which ``state.db`` has
  checkpointed up to somewhere along it). A WAL of another database, or of an older or newer
  state of this one (``state.db`` restored from a backup while a newer WAL stayed), fails that.

The WAL is read directly only while no process holds the database open (Linux /proc/locks):
then nothing can change under the check, and opening and closing the files cannot drop a lock
of a live connection. A database that another process has open was checked by whoever opened it
first. Databases made before identities existed (application id 0) are adopted at the next
writer start; their WAL cannot be proven and is replayed as before.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from edge_agent import proclocks
from edge_agent.errors import StateRefused
from edge_agent.wal import WalUnreadable, read_wal

DB_NAME = "state.db"
IDENTITY_NAME = "state.id"
APPLICATION_ID = 0x45646741  # "EdgA"
SQLITE_MAGIC = b"SQLite format 3\x00"
_MASK = 0xFFFFFFFF


@dataclass(frozen=True)
class StateFiles:
    dir: Path

    @property
    def db(self) -> Path:
        return self.dir / DB_NAME

    @property
    def wal(self) -> Path:
        return self.dir / f"{DB_NAME}-wal"

    @property
    def shm(self) -> Path:
        return self.dir / f"{DB_NAME}-shm"

    @property
    def identity(self) -> Path:
        return self.dir / IDENTITY_NAME

    @property
    def new_db(self) -> Path:
        """Where a new database is built before it becomes ``state.db``."""
        return self.dir / f"{DB_NAME}.new"

    def sqlite_files(self) -> list[Path]:
        return [self.db, self.wal, self.shm]


@dataclass(frozen=True)
class DbHeader:
    size: int
    page_size: int
    write_counter: int  # user_version, unsigned
    application_id: int


@dataclass(frozen=True)
class Inspection:
    """What the files of a state directory say, before SQLite opens the database."""

    files: StateFiles
    database_id: str | None  # from state.id; None = no identity file
    header: DbHeader | None  # None = no state.db
    wal_transactions: int | None  # committed WAL transactions proven ours; None = not checked
    open_by: dict[int, str]  # processes holding the database open (this one included)

    @property
    def legacy(self) -> bool:
        """A database made before identities existed: adopted by the next writer."""
        return self.header is not None and self.header.application_id == 0


def refusal(files: StateFiles, problem: str, recovery: str) -> StateRefused:
    return StateRefused(f"state database {files.db}: {problem}. {recovery.format(dir=files.dir)}")


def refuse(files: StateFiles, problem: str, recovery: str) -> NoReturn:
    raise refusal(files, problem, recovery)


RESTORE = (
    "Restore state.db together with its state.id from the same backup (with its state.db-wal if "
    "the backup has one, after moving any state.db-wal and state.db-shm left in {dir} out of "
    "it), and do not run the line until it is restored. Start a new, empty database only if L3 "
    "confirms which serials this line has used: then move state.db, state.db-wal, state.db-shm "
    "and state.id out of {dir}"
)
WAL_RECOVERY = (
    "Keep every file. If state.db was restored from a backup, move state.db-wal and "
    "state.db-shm out of {dir} (keep them for investigation) and start again: the restored "
    "state.db is then used as it is. If this state.db-wal is the log of the database that "
    "belongs here, put that database back as state.db instead. Never delete the state.db-wal "
    "of this line's database: it holds committed records"
)
ADOPT = (
    "If this state.db is this line's own database (for example restored from a backup made "
    "without its state.id), run `edge-agent state adopt --state-dir {dir}`; otherwise restore "
    "the state.id that was backed up with this state.db"
)


def read_identity(files: StateFiles) -> str | None:
    try:
        text = files.identity.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        refuse(files, f"cannot read {files.identity} ({exc.strerror})", "Fix its permissions")
    try:
        database_id = json.loads(text)["database_id"]
        if not isinstance(database_id, str) or not database_id:
            raise ValueError("database_id is not a string")
    except (ValueError, KeyError, TypeError) as exc:
        refuse(
            files,
            f"{files.identity} is damaged ({exc})",
            "Restore state.id from the backup of this state.db, or move it out of {dir} and "
            "run `edge-agent state adopt --state-dir {dir}` if state.db is this line's database",
        )
    return database_id


def write_identity(files: StateFiles, database_id: str) -> None:
    """Atomically: a crash leaves either no state.id or the whole file, never a part of it."""
    record = {
        "database_id": database_id,
        "database": DB_NAME,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "note": "Identity of state.db in this folder. Back it up and restore it together with "
        "state.db; the agent refuses a state.db whose identity does not match it.",
    }
    tmp = files.identity.with_name(IDENTITY_NAME + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, files.identity)
    fsync_dir(files.dir)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_header(files: StateFiles) -> DbHeader | None:
    try:
        with files.db.open("rb") as f:
            data = f.read(100)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return None
    except OSError as exc:
        refuse(files, f"cannot read it ({exc.strerror})", "Fix the permissions of {dir}")
    if size == 0:
        return DbHeader(0, 0, 0, 0)
    if len(data) < 100 or not data.startswith(SQLITE_MAGIC):
        refuse(
            files,
            f"the file is not an SQLite database ({size} bytes, no SQLite header)",
            RESTORE,
        )
    (page_size,) = struct.unpack_from(">H", data, 16)
    (counter,) = struct.unpack_from(">I", data, 60)
    (app_id,) = struct.unpack_from(">I", data, 68)
    return DbHeader(size, 65536 if page_size == 1 else page_size, counter, app_id)


def inspect(files: StateFiles) -> Inspection:
    """Check the files of the state directory; raise StateRefused for what is not provably the
    agent's own database. Never writes anything."""
    database_id = read_identity(files)
    header = read_header(files)
    open_by = proclocks.holders(files.sqlite_files()) or {}
    if header is None:
        if database_id is not None:
            refuse(
                files,
                f"the file is missing, but {files.identity} says database {database_id} lives "
                "here: the record of which serials were used is gone",
                RESTORE,
            )
        if files.wal.exists() and files.wal.stat().st_size > 0:
            refuse(files, "the file is missing but its state.db-wal is here", WAL_RECOVERY)
        return Inspection(files, None, None, None, open_by)
    if header.size == 0:
        said = f"{files.identity} says database {database_id} lives here" if database_id else ""
        refuse(
            files,
            "the file is empty (0 bytes)"
            + (f" although {said}" if said else "")
            + ": the record of which serials were used is gone",
            RESTORE,
        )
    if header.application_id not in (0, APPLICATION_ID):
        refuse(
            files,
            f"it is the SQLite database of another application (application_id "
            f"0x{header.application_id:08x}), not an edge-agent state database",
            RESTORE,
        )
    proven = None
    if header.application_id == APPLICATION_ID and not open_by:
        proven = prove_wal(files, header)
    return Inspection(files, database_id, header, proven, open_by)


def prove_wal(files: StateFiles, header: DbHeader) -> int:
    """How many committed transactions ``state.db-wal`` holds, all proven to continue this very
    ``state.db``; StateRefused for a log SQLite would otherwise replay into it."""
    try:
        content = read_wal(files.wal)
    except WalUnreadable as exc:
        refuse(files, f"state.db-wal beside it is damaged or not a WAL ({exc})", WAL_RECOVERY)
    except OSError as exc:
        refuse(files, f"cannot read state.db-wal ({exc.strerror})", "Fix the permissions of {dir}")
    if content is None or not content.transactions:
        return 0
    count = len(content.transactions)
    if content.page_size != header.page_size:
        refuse(
            files,
            f"state.db-wal beside it was written for pages of {content.page_size} bytes, "
            f"state.db has {header.page_size}: it is another database's log",
            WAL_RECOVERY,
        )
    images = [t.page_one for t in content.transactions if t.page_one is not None]
    foreign = [i.application_id for i in images if i.application_id != APPLICATION_ID]
    if not images or foreign:
        what = (
            f"another application's database (application_id 0x{foreign[0]:08x})"
            if foreign
            else "a database that is not the agent's (its transactions carry no agent header)"
        )
        refuse(
            files, f"state.db-wal beside it holds {count} transaction(s) of {what}", WAL_RECOVERY
        )
    counters = [i.user_version for i in images]
    steps = {(b - a) & _MASK for a, b in itertools.pairwise(counters)}
    first, last = counters[0], counters[-1]
    behind = (header.write_counter - first + 1) & _MASK  # 0: nothing checkpointed yet
    if not steps <= {0, 1} or behind > ((last - first + 1) & _MASK):
        refuse(
            files,
            f"state.db-wal beside it does not continue this state.db: its {count} "
            f"transaction(s) carry write numbers {first}..{last}, but state.db is at write "
            f"{header.write_counter} (the log of another database, or of another version of "
            "this one, e.g. after state.db was restored from a backup)",
            WAL_RECOVERY,
        )
    return count
