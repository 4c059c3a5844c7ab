"""The live objects metrics and health are read from, as the running agent has them.

Each source is a cheap call (no device I/O); the agent wires what it has, and what it leaves out
is simply not reported. Everything is read on the event loop, where the state database lives.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.alarms import AlarmBoard
from edge_agent.api.status import LineStatus
from edge_agent.line.stats import LineStats
from edge_agent.outbox.store import ForwarderStatus

if TYPE_CHECKING:
    from edge_agent.config.models import AgentConfig


def _none() -> LineStats | None:
    return None


def _no_forwarders() -> Sequence[ForwarderStatus]:
    return ()


@dataclass(frozen=True)
class MonitoringSources:
    conn: sqlite3.Connection  # the agent's state database connection
    line: LineStatus  # state, counters and device links (with their reconnect counts)
    alarms: AlarmBoard
    state_dir: Path | None = None  # disk free is measured on its filesystem
    stats: Callable[[], LineStats | None] = _none  # the running order's live counters
    outbox: Callable[[], Sequence[ForwarderStatus]] = _no_forwarders  # OutboxStore.status
    disk_stop_mb: float = 0.0  # [agent] disk_free_stop_mb: below it /health answers 503
    outbox_max_age_s: float = 3600.0  # older pending events make /health "degraded"
    version: str = "0"
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_agent(
        cls,
        model: AgentConfig,
        conn: sqlite3.Connection,
        line: LineStatus,
        alarms: AlarmBoard,
        *,
        stats: Callable[[], LineStats | None] = _none,
        outbox: Callable[[], Sequence[ForwarderStatus]] = _no_forwarders,
    ) -> MonitoringSources:
        """The sources as the daemon has them: its state directory and disk stop level."""
        return cls(
            conn=conn,
            line=line,
            alarms=alarms,
            state_dir=model.agent.state_dir,
            stats=stats,
            outbox=outbox,
            disk_stop_mb=model.agent.disk_free_stop_mb,
            extra={"line": model.line.id},
        )
