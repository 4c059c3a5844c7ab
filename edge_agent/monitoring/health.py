"""The agent's health for monitoring: each check ok, warn or fail; any failure answers 503.

A failure means the agent cannot keep records (the state database does not answer, the disk is
below the stop level): the line cannot run. A warning is trouble an operator handles (a device
link down, a held line, the outbox behind, dead letters): the agent is up and says so with 200
and status "degraded"; the metrics have the detail.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field

from edge_agent.api.status import LineMode
from edge_agent.monitoring.metrics import disk_free_bytes
from edge_agent.monitoring.sources import MonitoringSources

log = structlog.get_logger("edge_agent.monitoring")

Level = Literal["ok", "warn", "fail"]
_MB = 1024 * 1024


class HealthCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Level
    detail: str = ""


class Health(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ok", "degraded", "failing"] = Field(
        description="failing (HTTP 503): the agent cannot keep records; degraded: see checks"
    )
    version: str
    checks: dict[str, HealthCheck] = Field(default_factory=dict)

    @property
    def http_status(self) -> int:
        return 503 if self.status == "failing" else 200


def health(sources: MonitoringSources) -> Health:
    checks = {"database": _database(sources)}
    if checks["database"].status == "ok":  # the others read the database
        for name, check in (
            ("disk", _disk),
            ("line", _line),
            ("devices", _devices),
            ("outbox", _outbox),
        ):
            checks[name] = _guarded(name, check, sources)
    levels = {c.status for c in checks.values()}
    status: Literal["ok", "degraded", "failing"] = (
        "failing" if "fail" in levels else "degraded" if "warn" in levels else "ok"
    )
    return Health(status=status, version=sources.version, checks=checks)


def _guarded(
    name: str, check: Callable[[MonitoringSources], HealthCheck], sources: MonitoringSources
) -> HealthCheck:
    """A check that breaks is a warning (records are still kept); the log has the error, the
    answer only its type (an error's text may name a path or a secret)."""
    try:
        return check(sources)
    except Exception as exc:
        log.exception("health_check_failed", check=name)
        return HealthCheck(status="warn", detail=f"the check failed ({type(exc).__name__})")


def _database(sources: MonitoringSources) -> HealthCheck:
    try:
        sources.conn.execute("SELECT count(*) FROM meta").fetchone()
    except sqlite3.Error as exc:
        return HealthCheck(status="fail", detail=f"the state database does not answer: {exc}")
    return HealthCheck(status="ok")


def _disk(sources: MonitoringSources) -> HealthCheck:
    free = disk_free_bytes(sources)
    if free is None:
        return HealthCheck(status="ok", detail="not measured")
    detail = f"{free / _MB:.0f} MB free"
    if sources.disk_stop_mb and free < sources.disk_stop_mb * _MB:
        return HealthCheck(status="fail", detail=f"{detail}, below disk_free_stop_mb")
    return HealthCheck(status="ok", detail=detail)


def _line(sources: MonitoringSources) -> HealthCheck:
    snapshot = sources.line.snapshot()
    where = f" (order {snapshot.order_id})" if snapshot.order_id else ""
    level: Level = "warn" if snapshot.state == LineMode.HELD else "ok"
    return HealthCheck(status=level, detail=f"{snapshot.state}{where}")


def _devices(sources: MonitoringSources) -> HealthCheck:
    down = [d.name for d in sources.line.snapshot().devices if d.state == "down"]
    if down:
        return HealthCheck(status="warn", detail="down: " + ", ".join(down))
    return HealthCheck(status="ok")


def _outbox(sources: MonitoringSources) -> HealthCheck:
    problems = []
    for status in sources.outbox():
        age = status.oldest_pending_age_s or 0.0
        if age > sources.outbox_max_age_s:
            problems.append(f"{status.forwarder}: oldest pending event {age:.0f} s old")
        if status.dead_letters:
            problems.append(f"{status.forwarder}: {status.dead_letters} dead letters")
    if problems:
        return HealthCheck(status="warn", detail="; ".join(problems))
    return HealthCheck(status="ok")
