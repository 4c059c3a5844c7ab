"""The outbox store: events committed by the ledger, and each forwarder's progress through them.

The ledger writes events into ``outbox`` in the same transaction as the unit's verdict (group
commit: one transaction per commit group of the line). This module only reads them and records
delivery. Every read is one short statement and every write one short ``BEGIN IMMEDIATE``
transaction, so a slow upstream never holds a read snapshot open (a long reader stops WAL
checkpoints and the WAL grows without bound).

Per forwarder, an event is pending until a row in ``outbox_delivery`` says ``delivered`` or
``dead`` (upstream rejected it as invalid: a dead letter, kept and alarmed, never retried on its
own). The aggregate ``outbox.state`` turns ``delivered``/``dead`` once every configured forwarder
is done with the event; only then may retention prune it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.contracts import OutboxEvent
from edge_agent.db import DB_NAME, write

_COLUMNS = "o.seq, o.event_id, o.batch_id, o.kind, o.payload"
_PRUNE_CHUNK = 2000


@dataclass(frozen=True)
class ForwarderStatus:
    forwarder: str
    pending: int
    oldest_pending_age_s: float | None
    delivered_last_minute: int
    dead_letters: int


class OutboxStore:
    """Delivery bookkeeping over the agent's writer connection (call from the event loop)."""

    def __init__(self, conn: sqlite3.Connection, forwarders: Sequence[str]) -> None:
        self.conn = conn
        self.forwarders = tuple(forwarders)

    # --- reading ------------------------------------------------------------------------------

    def cursor(self, forwarder: str) -> int:
        row = self.conn.execute(
            "SELECT seq FROM outbox_cursor WHERE forwarder = ?", (forwarder,)
        ).fetchone()
        return int(row[0]) if row else 0

    def pending(self, forwarder: str, limit: int, after: int | None = None) -> list[OutboxEvent]:
        """The oldest ``limit`` events this forwarder has not finished, in outbox order."""
        start = self.cursor(forwarder) if after is None else after
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM outbox o WHERE o.seq > ? AND NOT EXISTS ("
            "SELECT 1 FROM outbox_delivery d WHERE d.forwarder = ? AND d.seq = o.seq) "
            "ORDER BY o.seq LIMIT ?",
            (start, forwarder, limit),
        ).fetchall()
        return [OutboxEvent(*row) for row in rows]

    def status(self, now: float | None = None) -> list[ForwarderStatus]:
        now = time.time() if now is None else now
        return [self._status(name, now) for name in self.forwarders]

    def _status(self, forwarder: str, now: float) -> ForwarderStatus:
        start = self.cursor(forwarder)
        (pending, oldest) = self.conn.execute(
            "SELECT count(*), min(o.created_at) FROM outbox o WHERE o.seq > ? AND NOT EXISTS ("
            "SELECT 1 FROM outbox_delivery d WHERE d.forwarder = ? AND d.seq = o.seq)",
            (start, forwarder),
        ).fetchone()
        (recent,) = self.conn.execute(
            "SELECT count(*) FROM outbox_delivery WHERE forwarder = ? AND state = 'delivered' "
            "AND at >= ?",
            (forwarder, now - 60.0),
        ).fetchone()
        (dead,) = self.conn.execute(
            "SELECT count(*) FROM outbox_delivery WHERE forwarder = ? AND state = 'dead'",
            (forwarder,),
        ).fetchone()
        age = None if oldest is None else max(0.0, now - float(oldest))
        return ForwarderStatus(forwarder, int(pending), age, int(recent), int(dead))

    def dead_letters(self, forwarder: str | None = None) -> list[dict[str, Any]]:
        sql = (
            "SELECT d.forwarder, d.seq, o.event_id, o.batch_id, d.detail, d.at "
            "FROM outbox_delivery d JOIN outbox o ON o.seq = d.seq WHERE d.state = 'dead'"
        )
        args: tuple[Any, ...] = ()
        if forwarder is not None:
            sql, args = sql + " AND d.forwarder = ?", (forwarder,)
        keys = ("forwarder", "seq", "event_id", "batch_id", "detail", "at")
        return [dict(zip(keys, row, strict=True)) for row in self.conn.execute(sql, args)]

    # --- writing ------------------------------------------------------------------------------

    def mark(
        self,
        forwarder: str,
        events: Sequence[OutboxEvent],
        delivered: Iterable[str],
        rejected: dict[str, str],
    ) -> tuple[int, int]:
        """Durably record what one delivery achieved; returns (delivered, dead) counts."""
        by_id = {e.event_id: e.seq for e in events}
        done = [(forwarder, by_id[i], "delivered", None) for i in delivered if i in by_id]
        dead = [(forwarder, by_id[i], "dead", why) for i, why in rejected.items() if i in by_id]
        if not done and not dead:
            return 0, 0
        now = time.time()
        seqs = [row[1] for row in done + dead]
        with write(self.conn):
            self.conn.executemany(
                "INSERT OR IGNORE INTO outbox_delivery (forwarder, seq, state, detail, at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(*row, now) for row in done + dead],
            )
            self._settle(seqs, now)
            self._advance(forwarder)
        return len(done), len(dead)

    def _settle(self, seqs: Sequence[int], now: float) -> None:
        """Events every configured forwarder is done with leave the aggregate 'pending' state."""
        n = len(self.forwarders)
        if n == 0:
            return
        marks = ",".join("?" * n)
        # Every lookup names the forwarders, so it is a primary-key probe, never a scan.
        self.conn.executemany(
            "UPDATE outbox SET acked_at = ?, state = CASE WHEN EXISTS (SELECT 1 FROM "
            f"outbox_delivery d WHERE d.forwarder IN ({marks}) AND d.seq = outbox.seq "
            "AND d.state = 'dead') THEN 'dead' ELSE 'delivered' END "
            f"WHERE seq = ? AND state = 'pending' AND (SELECT count(*) FROM outbox_delivery d "
            f"WHERE d.forwarder IN ({marks}) AND d.seq = outbox.seq) = ?",
            [(now, *self.forwarders, seq, *self.forwarders, n) for seq in seqs],
        )

    def _advance(self, forwarder: str) -> None:
        start = self.cursor(forwarder)
        first = self.pending(forwarder, 1, after=start)
        if first:
            new = first[0].seq - 1
        else:
            (top,) = self.conn.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()
            new = int(top)
        if new != start:
            self.conn.execute(
                "INSERT INTO outbox_cursor (forwarder, seq) VALUES (?, ?) "
                "ON CONFLICT (forwarder) DO UPDATE SET seq = excluded.seq",
                (forwarder, new),
            )

    def replay(self, since: float, forwarder: str | None = None, *, dead: bool = False) -> int:
        """Make events created at or after ``since`` pending again (delivered ones; dead letters
        too when ``dead``). Returns how many (forwarder, event) deliveries were re-queued."""
        states = ("delivered", "dead") if dead else ("delivered",)
        names = (forwarder,) if forwarder else self._known_forwarders()
        total = 0
        with write(self.conn):
            (first,) = self.conn.execute(
                "SELECT min(seq) FROM outbox WHERE created_at >= ?", (since,)
            ).fetchone()
            if first is None:
                return 0
            for name in names:
                cur = self.conn.execute(
                    f"DELETE FROM outbox_delivery WHERE forwarder = ? AND seq >= ? "
                    f"AND state IN ({','.join('?' * len(states))})",
                    (name, first, *states),
                )
                total += cur.rowcount
                self.conn.execute(
                    "UPDATE outbox_cursor SET seq = min(seq, ?) WHERE forwarder = ?",
                    (first - 1, name),
                )
            every = self._known_forwarders()
            self.conn.execute(
                "UPDATE outbox SET state = 'pending', acked_at = NULL WHERE seq >= ? "
                "AND NOT EXISTS (SELECT 1 FROM outbox_delivery d WHERE d.forwarder IN "
                f"({','.join('?' * len(every))}) AND d.seq = outbox.seq AND d.state = 'dead' "
                "AND ?)",
                (first, *every, 0 if dead else 1),
            )
        return total

    def _known_forwarders(self) -> tuple[str, ...]:
        rows = self.conn.execute(
            "SELECT forwarder FROM outbox_cursor UNION SELECT DISTINCT forwarder FROM "
            "outbox_delivery"
        ).fetchall()
        return tuple(sorted({r[0] for r in rows} | set(self.forwarders)))

    def prune(self, retention_days: float, now: float | None = None) -> int:
        """Delete delivered events acknowledged more than ``retention_days`` ago, in short
        transactions. Pending events and dead letters are never pruned."""
        cutoff = (time.time() if now is None else now) - retention_days * 86400.0
        total = 0
        while True:
            with write(self.conn):
                seqs = [
                    r[0]
                    for r in self.conn.execute(
                        "SELECT seq FROM outbox WHERE state = 'delivered' AND acked_at < ? "
                        "ORDER BY acked_at LIMIT ?",
                        (cutoff, _PRUNE_CHUNK),
                    )
                ]
                if not seqs:
                    return total
                marks = ",".join("?" * len(seqs))
                names = self._known_forwarders()
                self.conn.execute(
                    f"DELETE FROM outbox_delivery WHERE forwarder IN ({','.join('?' * len(names))})"
                    f" AND seq IN ({marks})",
                    [*names, *seqs],
                )
                self.conn.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", seqs)
            total += len(seqs)


def used_bytes(conn: sqlite3.Connection) -> int:
    """Bytes the state database holds: pages in use (freed pages are reused, so pruning lowers
    this even though the file does not shrink) plus the WAL file."""
    page_size, pages, free = (
        int(conn.execute(f"PRAGMA {name}").fetchone()[0])
        for name in ("page_size", "page_count", "freelist_count")
    )
    path = conn.execute("PRAGMA database_list").fetchone()[2]
    wal = 0
    if path:
        with contextlib.suppress(FileNotFoundError):
            wal = os.stat(path + "-wal").st_size
    return (pages - free) * page_size + wal


def free_bytes(conn: sqlite3.Connection) -> int:
    """Bytes an unprivileged writer may still use on the database's filesystem."""
    path = conn.execute("PRAGMA database_list").fetchone()[2]
    stat = os.statvfs(os.path.dirname(path) or ".")
    return stat.f_bavail * stat.f_frsize


def database_bytes(state_dir: Path) -> int:
    """Bytes the state database takes on disk, WAL included."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            total += os.stat(state_dir / (DB_NAME + suffix)).st_size
    return total
