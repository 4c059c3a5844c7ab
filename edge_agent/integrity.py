"""The state database's integrity, checked in the background while the daemon runs.

The full check at start runs only after an unclean stop (``edge_agent.clean_stop``): damage that
appears while the agent runs or sits stopped (a failing disk, a bad sector, a bug in a layer
below SQLite) would otherwise stay unseen until the next crash. So the daemon checks the whole
database every ``[agent] integrity_check_interval_h`` hours (24; 0 = never), at low priority:

- in a thread of its own, on its own read-only connection (WAL mode: the check reads one
  snapshot and never blocks the writer; the line's commits go on meanwhile);
- one table at a time (``PRAGMA integrity_check(<table>)``: the table's b-tree and every index
  of it, index entries against the rows), so each snapshot lives for one table only;
- in time slices: SQLite's progress handler pauses the check after ``slice_s`` of work for
  ``pause_s`` (a quarter of one core at most by default), and the thread runs at nice 19;
- due ``interval_h`` after the last completed check, recorded in ``meta`` (a restart neither
  repeats nor postpones it; the full check at start after an unclean stop counts as one).

Damage found: an error log line (``integrity_check_failed``), a ``database_damaged`` alarm, a
``storage_error`` line stop (the order held; resumes and starts are refused while the damage
stands) and ``integrity-failed.json`` in the state directory, so the next start runs the full
check whatever the clean-stop record says (and refuses a damaged database with the recovery
steps). ``edge_agent_integrity_check_*`` metrics carry the last check's time, result and length.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog
from prometheus_client.core import GaugeMetricFamily, Metric

from edge_agent.alarms import AlarmBoard, AlarmKind
from edge_agent.clean_stop import mark_suspect, suspect_path
from edge_agent.db import open_reader
from edge_agent.db import record_integrity as record
from edge_agent.db_identity import StateFiles
from edge_agent.errors import EdgeAgentError, LineStopped
from edge_agent.integrity_record import MAX_PROBLEMS, IntegrityResult, last_result
from edge_agent.stops import StopReason

log = structlog.get_logger("edge_agent.integrity")

_PROGRESS_STEPS = 20_000  # SQLite VM steps between two looks at the clock (well under 1 ms)
FIRST_CHECK_S = 600.0  # after the start, for a database with no check recorded
_RETRY_S = 3600.0  # a check that could not run (database locked, unreadable) is tried again


class CheckCancelled(Exception):
    """The daemon stops: the check in progress ends (nothing is recorded)."""


class Throttle:
    """SQLite's progress handler: after ``slice_s`` of work, sleep ``pause_s``; abort the
    statement once ``cancel`` is set."""

    def __init__(self, slice_s: float, pause_s: float, cancel: threading.Event) -> None:
        self.slice_s, self.pause_s, self.cancel = slice_s, pause_s, cancel
        self._since = time.monotonic()
        self.paused_s = 0.0

    def __call__(self) -> int:
        if self.cancel.is_set():
            return 1  # SQLite interrupts the statement
        now = time.monotonic()
        if now - self._since >= self.slice_s:
            if self.pause_s > 0 and self.cancel.wait(self.pause_s):
                return 1
            self.paused_s += self.pause_s
            self._since = time.monotonic()
        return 0


def _lower_priority() -> None:
    """Nice 19 for this thread alone (Linux schedules threads as tasks); best effort."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def check_database(
    state_dir: Path,
    *,
    slice_s: float = 0.05,
    pause_s: float = 0.15,
    cancel: threading.Event | None = None,
    nice: bool = True,
) -> IntegrityResult:
    """Every table of the state database with its indexes, one table per read transaction, in
    time slices. Runs in the calling thread (the daemon calls it from a worker thread).
    CheckCancelled when ``cancel`` is set; LedgerError/StateRefused when it cannot be opened."""
    if nice:
        _lower_priority()
    cancel = cancel or threading.Event()
    started = time.monotonic()
    problems: list[str] = []
    with contextlib.closing(open_reader(state_dir)) as conn:
        conn.execute("PRAGMA query_only=ON")
        throttle = Throttle(slice_s, pause_s, cancel)
        conn.set_progress_handler(throttle, _PROGRESS_STEPS)
        tables = [
            str(name)
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY rootpage"
            )
        ]
        for table in tables:
            problems += _check_table(conn, table, cancel)
    return IntegrityResult(
        time.time(), not problems, time.monotonic() - started, len(tables), tuple(problems)
    )


def _check_table(conn: sqlite3.Connection, table: str, cancel: threading.Event) -> list[str]:
    """What ``integrity_check`` reports for one table and its indexes (empty: none). A page too
    damaged to walk at all is a problem found too; any other failure (a lock, an I/O error) is
    raised: the check did not run, which says nothing about the database."""
    quoted = '"' + table.replace('"', '""') + '"'
    try:
        cursor = conn.execute(f"PRAGMA integrity_check({quoted})")
        rows = cursor.fetchmany(MAX_PROBLEMS)
        cursor.close()
    except sqlite3.DatabaseError as exc:
        if cancel.is_set():
            raise CheckCancelled from exc
        code = int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
        if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            return [f"{table}: {exc}"]
        raise
    return [f"{table}: {row[0]}" for row in rows if row[0] != "ok"]


# --- the daemon's side task --------------------------------------------------------------------


class IntegrityWatch:
    """``run()`` is one of the daemon's background tasks; ``problems()`` is a start and resume
    check of the line (damage found refuses both until the database is restored)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        state_dir: Path,
        *,
        interval_h: float,
        alarms: AlarmBoard,
        stop_line: Callable[[LineStopped], None],
        slice_s: float = 0.05,
        pause_s: float = 0.15,
    ) -> None:
        self.conn = conn  # the daemon's connection, on the event loop: the record in meta
        self.state_dir = state_dir
        self.interval_s = interval_h * 3600.0
        self.alarms = alarms
        self.stop_line = stop_line
        self.slice_s, self.pause_s = slice_s, pause_s
        self.damage: IntegrityResult | None = None
        self.checks = 0  # completed checks in this process (tests, status)
        self._cancel = threading.Event()

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    def problems(self) -> list[str]:
        if self.damage is None:
            return []
        return [_damage_text(self.state_dir, self.damage)]

    def due_in(self, now: float | None = None) -> float:
        """Seconds to the next check: ``interval_h`` after the last one; a database never checked
        (new, or upgraded from an agent without this check) a while after the start, not while
        the line starts."""
        last = last_result(self.conn)
        if last is None:
            return min(FIRST_CHECK_S, self.interval_s)
        now = time.time() if now is None else now
        return max(0.0, last.at + self.interval_s - now)

    async def run(self) -> None:
        if not self.enabled:
            return
        try:
            while self.damage is None:
                await asyncio.sleep(self.due_in())
                if not await self.run_once():
                    await asyncio.sleep(min(_RETRY_S, self.interval_s))
        finally:
            self._cancel.set()  # a check in progress ends at its next progress call

    async def run_once(self) -> bool:
        """One whole check; False when it could not run (it is tried again later)."""
        log.info("integrity_check_started", database=str(StateFiles(self.state_dir).db))
        # A thread of its own, not the loop's shared executor: it lowers its own priority, and
        # an unprivileged process cannot raise it back for the next job of a shared thread.
        pool = ThreadPoolExecutor(1, thread_name_prefix="integrity-check")
        check = functools.partial(
            check_database,
            self.state_dir,
            slice_s=self.slice_s,
            pause_s=self.pause_s,
            cancel=self._cancel,
        )
        try:
            result = await asyncio.get_running_loop().run_in_executor(pool, check)
        except CheckCancelled:
            return False
        except (EdgeAgentError, sqlite3.Error, OSError) as exc:
            log.warning("integrity_check_not_run", detail=str(exc))
            return False
        finally:
            pool.shutdown(wait=False)  # cancelled: the check ends at its next progress call
        self.checks += 1
        try:
            record(self.conn, result)
        except sqlite3.Error as exc:  # the guards and the line meet storage trouble
            log.warning("integrity_check_not_recorded", detail=str(exc))
        if result.ok:
            log.info(
                "integrity_check_passed",
                background=True,
                tables=result.tables,
                seconds=round(result.seconds, 1),
            )
            return True
        self._damaged(result)
        return True

    def _damaged(self, result: IntegrityResult) -> None:
        self.damage = result
        files = StateFiles(self.state_dir)
        log.error(
            "integrity_check_failed",
            database=str(files.db),
            problems=list(result.problems[:MAX_PROBLEMS]),
            detail="the line is held; restore the state database (README: State database)",
        )
        try:
            mark_suspect(files, result.as_json())
        except OSError as exc:
            log.error(
                "integrity_suspect_not_recorded", path=str(suspect_path(files)), detail=str(exc)
            )
        text = _damage_text(self.state_dir, result)
        try:
            self.alarms.raise_(AlarmKind.DATABASE_DAMAGED, text)
        except sqlite3.Error as exc:  # the log line and the line stop still tell
            log.error("integrity_alarm_not_recorded", detail=str(exc))
        self.stop_line(LineStopped(StopReason.STORAGE_ERROR, text))


def _damage_text(state_dir: Path, result: IntegrityResult) -> str:
    first = "; ".join(result.problems[:3])
    more = len(result.problems) - 3
    return (
        f"the state database {StateFiles(state_dir).db} failed its integrity check: {first}"
        + (f" (and {more} more)" if more > 0 else "")
        + "; keep the files for investigation and restore the last good backup (README: State "
        "database: identity and recovery)"
    )


def integrity_metrics(conn: sqlite3.Connection) -> Iterator[Metric]:
    """The last completed check (background, or the full one at start): none before the first."""
    try:
        last = last_result(conn)
    except sqlite3.Error:  # a scrape never fails for it: the storage guards report trouble
        return
    if last is None:
        return
    yield GaugeMetricFamily(
        "edge_agent_integrity_check_last_timestamp_seconds",
        "When the last integrity check of the state database completed (Unix time)",
        last.at,
    )
    yield GaugeMetricFamily(
        "edge_agent_integrity_check_ok",
        "1 when the last integrity check of the state database found no damage",
        1 if last.ok else 0,
    )
    yield GaugeMetricFamily(
        "edge_agent_integrity_check_duration_seconds",
        "How long the last integrity check took (pauses included: it runs at low priority)",
        last.seconds,
    )
