"""Storage trouble stops the line; it never crashes the agent.

Every write of the state database can fail: the disk is full (filled by the outbox, by logs, by
another program, or simply small), the disk has an I/O error, another process holds the lock.
Whatever part of the agent meets the failure (serial allocation, a print confirmation, a commit,
the outbox, a forwarder's delivery state, pruning), the outcome is the same: a line stop with
``storage_error`` (PLC code 11) and one clear log line. SQLite's transactions are atomic, so what
was committed is kept; the next start resumes the batch once the disk has room again.

``DiskGuard`` watches the free space of the state directory's filesystem, with an alarm level and
a stop level of its own: the outbox quota (``QuotaGuard``) counts only the database's own bytes,
and cannot see a disk that is small or filled by something else.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from edge_agent.errors import LineStopped
from edge_agent.stops import StopReason

log = structlog.get_logger("edge_agent.storage")

_MB = 1024 * 1024


def storage_stop(exc: BaseException, state_dir: Path) -> LineStopped:
    """The line stop for a failed read or write of the state database."""
    return LineStopped(
        StopReason.STORAGE_ERROR,
        f"the state database in {state_dir} failed ({exc}); free disk space there or fix the "
        "disk, then start the agent again (what was committed is kept)",
    )


class DiskGuard:
    """Free space on the state directory's filesystem: an alarm at one level, a line stop at the
    next (``[agent] disk_free_alarm_mb`` / ``disk_free_stop_mb``; 0 turns a level off)."""

    def __init__(
        self,
        directory: Path,
        *,
        alarm_mb: float,
        stop_mb: float,
        on_alarm: Callable[[str], None] | None = None,
        interval_s: float = 1.0,
    ) -> None:
        self.directory = directory
        self.alarm_bytes = alarm_mb * _MB
        self.stop_bytes = stop_mb * _MB
        self.on_alarm = on_alarm or (lambda _msg: None)
        self.interval_s = interval_s
        self._alarmed = False

    @property
    def enabled(self) -> bool:
        return bool(self.alarm_bytes or self.stop_bytes)

    def free_bytes(self) -> int:
        """Bytes an unprivileged writer (the agent's service user) may still use there."""
        path = self.directory
        while not path.exists() and path != path.parent:  # not created yet: its filesystem
            path = path.parent
        stat = os.statvfs(path)
        return stat.f_bavail * stat.f_frsize

    def check(self) -> None:
        try:
            free = self.free_bytes()
        except OSError as exc:
            raise storage_stop(exc, self.directory) from exc
        if free < self.stop_bytes:
            raise LineStopped(
                StopReason.STORAGE_ERROR,
                f"only {free / _MB:.1f} MB free on the filesystem of {self.directory}, below "
                f"[agent] disk_free_stop_mb = {self.stop_bytes / _MB:g}; free disk space there, "
                "then start the agent again (nothing was lost)",
            )
        if free < self.alarm_bytes:
            if not self._alarmed:
                self._alarmed = True
                log.error(
                    "disk_free_alarm", directory=str(self.directory), free_mb=round(free / _MB, 1)
                )
                self.on_alarm(
                    f"disk: {free / _MB:.1f} MB free on the filesystem of {self.directory}, "
                    f"below [agent] disk_free_alarm_mb = {self.alarm_bytes / _MB:g}"
                )
        else:
            self._alarmed = False

    async def run(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(self.interval_s)


# A unit of history (its serial, transitions, verdict, commissioning event and one forwarder's
# delivery record, with their indexes): 1,950 bytes on the 2M-unit database of
# benchmarks/history.py (schema 7: transitions carry their batch). Used until the database has
# history enough to measure its own.
DEFAULT_BYTES_PER_UNIT = 1950
_MEASURED_FROM_UNITS = 10_000


@dataclass(frozen=True)
class Capacity:
    """How much more history the state database can take before the line stops."""

    database_bytes: int
    free_bytes: int
    room_bytes: int  # until the first stop level
    limited_by: str  # the setting that sets that level
    units_recorded: int
    bytes_per_unit: int
    units_fit: int
    events_fit: int


def capacity(
    conn: sqlite3.Connection,
    state_dir: Path,
    *,
    disk_free_stop_mb: float,
    quota_stop_mb: float | None,
) -> Capacity:
    """Cheap at any size: page counts, the filesystem, and the highest row ids."""
    from edge_agent.outbox.store import free_bytes, used_bytes

    used, free = used_bytes(conn), free_bytes(conn)
    room, limited_by = free - int(disk_free_stop_mb * _MB), "[agent] disk_free_stop_mb"
    if quota_stop_mb is not None and quota_stop_mb * _MB - used < room:
        room, limited_by = int(quota_stop_mb * _MB) - used, "[upstream] quota_stop_mb"
    room = max(0, room)
    (units,) = conn.execute("SELECT coalesce(max(id), 0) FROM units").fetchone()
    (events,) = conn.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()
    per_unit = used // units if units >= _MEASURED_FROM_UNITS else DEFAULT_BYTES_PER_UNIT
    units_fit = room // max(1, per_unit)
    events_per_unit = events / units if units >= _MEASURED_FROM_UNITS else 1.0
    return Capacity(
        used,
        free,
        room,
        limited_by,
        int(units),
        int(per_unit),
        int(units_fit),
        int(units_fit * max(1.0, events_per_unit)),
    )


def log_capacity(
    conn: sqlite3.Connection,
    state_dir: Path,
    *,
    disk_free_stop_mb: float,
    quota_stop_mb: float | None,
    batch_target: int = 0,
) -> Capacity:
    """Tell the operator at start how much history still fits."""
    try:
        room = capacity(
            conn, state_dir, disk_free_stop_mb=disk_free_stop_mb, quota_stop_mb=quota_stop_mb
        )
    except (OSError, sqlite3.Error) as exc:  # the guards meet the trouble; this is a notice
        log.warning("storage_capacity_unknown", directory=str(state_dir), detail=str(exc))
        return Capacity(0, 0, 0, "unknown", 0, DEFAULT_BYTES_PER_UNIT, 0, 0)
    fields = {
        "directory": str(state_dir),
        "database_mb": round(room.database_bytes / _MB, 1),
        "free_mb": round(room.free_bytes / _MB, 1),
        "room_mb": round(room.room_bytes / _MB, 1),
        "limited_by": room.limited_by,
        "units_recorded": room.units_recorded,
        "bytes_per_unit": room.bytes_per_unit,
        "units_fit": room.units_fit,
        "events_fit": room.events_fit,
    }
    detail = (
        f"room for about {room.units_fit:,} more units ({room.events_fit:,} events) of "
        f"history before the line stops at {room.limited_by}"
    )
    if room.units_fit < batch_target:
        log.warning("storage_low", detail=detail + f"; this batch needs {batch_target:,}", **fields)
    else:
        log.info("storage_capacity", detail=detail, **fields)
    return room
