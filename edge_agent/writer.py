"""The durable writer: one thread owning the line's write connection, with group commit.

A commit with ``synchronous=FULL`` waits for the disk (``fdatasync``): 1-5 ms on a quiet SSD, far
more on an eMMC or while a backup runs. Run on the event loop, that wait stalled everything the
loop does: PLC heartbeats, verdict writes, other units' decisions. Here the loop hands a job (a
function of the connection) to the writer thread and awaits its future; only the coroutines that
need that job durable wait for the disk.

Group commit: every job queued while the previous commit was on disk goes into the next
transaction, each in its own savepoint (a job that raises is rolled back alone and its future
gets the exception), then ONE ``COMMIT``. A future resolves only after that commit returned, so a
resolved future means durable, and jobs are committed in the order they were submitted: when a
job's future resolves, every job submitted before it is durable too.

A job may wait a little for company (``wait_s``): it starts a commit only once it has waited
that long, and rides any commit started before. A refill of the printer, with half a buffer still
to print, waits a few milliseconds for the next units' outcomes; a unit's outcome waits for
nothing. ``defer`` submits a job nobody awaits (a print confirmation, a "verdict written" flag):
it waits up to ``MAX_DEFER_S``. Only facts that recovery settles from device evidence when they
are lost may be deferred (see the README, "Durability").
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from edge_agent.crashpoints import crash_point
from edge_agent.db import write

log = structlog.get_logger("edge_agent.writer")

T = TypeVar("T")
MAX_GROUP = 512  # jobs in one transaction: bounds how long one commit holds the write lock
MAX_DEFER_S = 0.25  # how long a deferred job may wait for a commit someone waits for


@dataclass
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    future: Future[Any]
    due: float  # monotonic time by which it starts a commit if no other job did


@dataclass
class WriterStats:
    commits: int = 0
    jobs: int = 0
    commit_s: float = 0.0  # time inside COMMIT (the fsync) summed
    max_commit_s: float = 0.0


class Writer:
    """Owns ``conn`` (a write connection of its own) and the thread that commits on it."""

    def __init__(self, conn: sqlite3.Connection, *, name: str = "state-writer") -> None:
        self.conn = conn
        self.stats = WriterStats()
        # Fault injection for tests: runs in the writer thread just before every COMMIT.
        self.before_commit: Callable[[], None] | None = None
        self._jobs: deque[_Job] = deque()  # in submission order, the order they commit in
        self._due = float("inf")  # the earliest ``due`` of the jobs queued
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # --- the loop's side ---------------------------------------------------------------------

    def submit(self, fn: Callable[[sqlite3.Connection], T], *, wait_s: float = 0.0) -> Future[T]:
        """Queue ``fn(conn)`` for a group commit (thread-safe), at the latest ``wait_s`` from now.
        Its future resolves with the result once the transaction holding it is committed, or
        with the exception."""
        future: Future[T] = Future()
        due = time.monotonic() + wait_s
        with self._changed:
            if self._closed:
                raise RuntimeError("the state writer is closed")
            self._jobs.append(_Job(fn, future, due))
            if due < self._due:
                self._due = due
                self._changed.notify()
        return future

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, wait_s: float = 0.0) -> T:
        """``fn(conn)`` committed durably; the event loop keeps running meanwhile."""
        return await asyncio.wrap_future(self.submit(fn, wait_s=wait_s))

    def defer(self, fn: Callable[[sqlite3.Connection], Any], what: str) -> Future[Any]:
        """``fn(conn)`` in the next group commit, not awaited. A failure is logged; the caller's
        next awaited job (or recovery) meets the cause."""
        future = self.submit(fn, wait_s=MAX_DEFER_S)
        future.add_done_callback(lambda f: _log_failure(f, what))
        return future

    async def flush(self) -> None:
        """Every job submitted so far is committed (or has failed)."""
        await self.run(_nothing)

    def close(self) -> None:
        """Commit what is queued, stop the thread and close the connection."""
        with self._changed:
            if self._closed:
                return
            self._closed = True
            self._changed.notify()
        self._thread.join()
        self.conn.close()

    # --- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                group = self._next_group()
                if not group:
                    return  # closed, and nothing left
                self._commit(group)
        finally:
            self._fail_queued()  # a writer that died must not leave anyone waiting forever

    def _fail_queued(self) -> None:
        with self._changed:
            self._closed = True
            left, self._jobs = list(self._jobs), deque()
        for job in left:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(RuntimeError("the state writer stopped"))

    def _next_group(self) -> list[_Job]:
        """Wait until a queued job is due (or the writer closes); then everything queued, in
        submission order."""
        with self._changed:
            while not self._closed:
                left = self._due - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(None if left == float("inf") else left)
            group: list[_Job] = []
            while self._jobs and len(group) < MAX_GROUP:
                group.append(self._jobs.popleft())
            self._due = min((job.due for job in self._jobs), default=float("inf"))
            return group

    def _commit(self, group: list[_Job]) -> None:
        live = [job for job in group if job.future.set_running_or_notify_cancel()]
        results: list[tuple[bool, Any]] = []
        try:
            with write(self.conn):
                for job in live:
                    results.append(self._one(job))
                if self.before_commit is not None:
                    self.before_commit()
                crash_point("group_commit")
                started = time.perf_counter()
            took = time.perf_counter() - started
        except BaseException as exc:  # nothing of the group is durable
            for job in live:
                job.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
            if not isinstance(exc, Exception):
                raise
            return
        self.stats.commits += 1
        self.stats.jobs += len(live)
        self.stats.commit_s += took
        self.stats.max_commit_s = max(self.stats.max_commit_s, took)
        for job, (ok, value) in zip(live, results, strict=True):
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)

    def _one(self, job: _Job) -> tuple[bool, Any]:
        try:
            with write(self.conn):  # a savepoint of the group's transaction
                return True, job.fn(self.conn)
        except Exception as exc:
            if not self.conn.in_transaction:
                # SQLite rolled the whole transaction back (disk full, I/O error): the jobs
                # before this one are gone too, so the group fails as one.
                raise
            return False, exc


def _nothing(conn: sqlite3.Connection) -> None:
    return None


def _log_failure(future: Future[Any], what: str) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("deferred_write_failed", what=what, error=repr(future.exception()))
