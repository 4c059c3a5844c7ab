"""Alarms: what an operator must see and acknowledge, each with a raised and a cleared time.

An alarm is raised by whoever notices the trouble (a line stop, a missing reject confirm, the
outbox quota, a dead letter, free disk space), cleared when the condition is gone (a resume, the
disk freed), and acknowledged by a person. The same kind for the same order is one alarm while
it is active: raising it again counts the repeat instead of flooding the list.
"""

from __future__ import annotations

import enum
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.db import write
from edge_agent.errors import EdgeAgentError
from edge_agent.stops import StopReason


class AlarmKind(enum.StrEnum):
    """Alarms that do not stop the line by themselves (a line stop raises its StopReason)."""

    REJECT_CONFIRM_MISSING = "reject_confirm_missing"
    PASSES_UNVERIFIABLE = "passes_unverifiable"
    OUTBOX_QUOTA = "outbox_quota"
    DISK_SPACE_LOW = "disk_space_low"
    DEAD_LETTER = "dead_letter"
    PRINTER_LINK_LOST = "printer_link_lost"
    DEVICE_DOWN = "device_down"
    L3_UNREACHABLE = "l3_unreachable"
    SERIAL_PAGE_REFUSED = "serial_page_refused"  # an L3 page broke a rule: none of it is used
    SERIAL_POOL_EXHAUSTED = "serial_pool_exhausted"  # L3 has no more serials for an order
    ORDER_REJECTED = "order_rejected"
    EXPIRY_NEAR = "expiry_near"
    CLOSE_UNBALANCED = "close_unbalanced"
    CLOCK_UNSYNCHRONISED = "clock_unsynchronised"  # edge_agent/clock.py
    CLOCK_JUMP = "clock_jump"  # the wall clock stepped against the monotonic clock
    BACKUP_FAILED = "backup_failed"  # edge_agent/backup.py: a scheduled backup failed
    RESTORED_FROM_BACKUP = "restored_from_backup"  # serials of the lost window quarantined
    BUNDLE_STATION_DOWN = "bundle_station_down"  # edge_agent/aggregation/runner.py
    CASE_STATION_DOWN = "case_station_down"
    PALLET_STATION_DOWN = "pallet_station_down"
    PALLET_LABEL_FAILED = "pallet_label_failed"  # the pallet station holds for a person
    DATABASE_DAMAGED = "database_damaged"  # edge_agent/integrity.py: the background check


Kind = AlarmKind | StopReason


@dataclass(frozen=True)
class Alarm:
    id: int
    kind: str
    message: str
    order_id: str | None
    raised_at: float
    count: int
    cleared_at: float | None
    acknowledged_at: float | None
    acknowledged_by: str | None

    @property
    def active(self) -> bool:
        return self.cleared_at is None

    def as_dict(self) -> dict[str, object]:
        return {**self.__dict__, "active": self.active}


_COLUMNS = (
    "id, kind, message, order_id, raised_at, count, cleared_at, acknowledged_at, acknowledged_by"
)


class AlarmBoard:
    """The alarm list, persisted in the state database so its history survives restarts."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._listeners: list[Callable[[Alarm], None]] = []

    def subscribe(self, listener: Callable[[Alarm], None]) -> None:
        self._listeners.append(listener)

    def raise_(self, kind: Kind, message: str, *, order_id: str | None = None) -> Alarm:
        now = time.time()
        with write(self.conn):
            row = self._active_row(kind, order_id)
            if row is None:
                cur = self.conn.execute(
                    "INSERT INTO alarms (kind, message, order_id, raised_at, count) "
                    "VALUES (?, ?, ?, ?, 1)",
                    (kind, message, order_id, now),
                )
                alarm_id = int(cur.lastrowid or 0)
            else:
                alarm_id = row[0]
                self.conn.execute(
                    "UPDATE alarms SET count = count + 1, message = ? WHERE id = ?",
                    (message, alarm_id),
                )
        return self._notify(alarm_id)

    def clear(self, kind: str, *, order_id: str | None = None) -> Alarm | None:
        row = self._active_row(kind, order_id)
        if row is None:
            return None
        with write(self.conn):
            self.conn.execute(
                "UPDATE alarms SET cleared_at = ? WHERE id = ?", (time.time(), row[0])
            )
        return self._notify(row[0])

    def acknowledge(self, alarm_id: int, by: str) -> Alarm:
        with write(self.conn):
            cur = self.conn.execute(
                "UPDATE alarms SET acknowledged_at = ?, acknowledged_by = ? "
                "WHERE id = ? AND acknowledged_at IS NULL",
                (time.time(), by, alarm_id),
            )
            if cur.rowcount == 0 and self.get(alarm_id) is None:
                raise EdgeAgentError(f"no alarm {alarm_id}; `edge-agent line status` lists them")
        return self._notify(alarm_id)

    def get(self, alarm_id: int) -> Alarm | None:
        row = self.conn.execute(f"SELECT {_COLUMNS} FROM alarms WHERE id = ?", (alarm_id,))
        found = row.fetchone()
        return Alarm(*found) if found else None

    def active(self) -> list[Alarm]:
        cur = self.conn.execute(
            f"SELECT {_COLUMNS} FROM alarms WHERE cleared_at IS NULL ORDER BY id"
        )
        return [Alarm(*row) for row in cur]

    def unacknowledged(self) -> list[Alarm]:
        cur = self.conn.execute(
            f"SELECT {_COLUMNS} FROM alarms WHERE acknowledged_at IS NULL ORDER BY id"
        )
        return [Alarm(*row) for row in cur]

    def for_order(self, order_id: str) -> list[Alarm]:
        cur = self.conn.execute(
            f"SELECT {_COLUMNS} FROM alarms WHERE order_id = ? ORDER BY id", (order_id,)
        )
        return [Alarm(*row) for row in cur]

    def _active_row(self, kind: str, order_id: str | None) -> tuple[int] | None:
        row: tuple[int] | None = self.conn.execute(
            "SELECT id FROM alarms WHERE kind = ? AND order_id IS ? AND cleared_at IS NULL",
            (kind, order_id),
        ).fetchone()
        return row

    def _notify(self, alarm_id: int) -> Alarm:
        alarm = self.get(alarm_id)
        assert alarm is not None
        for listener in self._listeners:
            listener(alarm)
        return alarm
