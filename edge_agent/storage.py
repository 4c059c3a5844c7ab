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
from collections.abc import Callable
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
