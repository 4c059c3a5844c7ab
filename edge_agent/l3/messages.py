"""Messages the line owes L3 (serial returns, close reports), queued durably before they are
sent and retried until L3 acknowledges them.

Each message has a stable id (``<order>:return``, ``<order>:report``): L3 de-duplicates on it, so
a message sent again after a crash or a lost answer has its effect once. Messages of one order
go out in the order they were queued.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from edge_agent.contracts import L3Message
from edge_agent.db import write

_SUFFIX = {"serial_return": "return", "close_report": "report", "order_refused": "refused"}


def queue(conn: sqlite3.Connection, kind: str, order_id: str, payload: dict[str, Any]) -> L3Message:
    """Queue (or keep, when queued already: idempotent) the message of this kind for the order."""
    message_id = f"{order_id}:{_SUFFIX[kind]}"
    with write(conn):
        conn.execute(
            "INSERT OR IGNORE INTO l3_messages (id, kind, order_id, payload, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (message_id, kind, order_id, json.dumps(payload, separators=(",", ":")), time.time()),
        )
    found = get(conn, message_id)
    assert found is not None
    return found


def get(conn: sqlite3.Connection, message_id: str) -> L3Message | None:
    row = conn.execute(_SELECT + " WHERE id = ?", (message_id,)).fetchone()
    return _message(row) if row else None


def pending(conn: sqlite3.Connection, limit: int = 100) -> list[L3Message]:
    cur = conn.execute(_SELECT + " WHERE delivered_at IS NULL ORDER BY seq LIMIT ?", (limit,))
    return [_message(row) for row in cur]


def for_order(conn: sqlite3.Connection, order_id: str) -> list[L3Message]:
    cur = conn.execute(_SELECT + " WHERE order_id = ? ORDER BY seq", (order_id,))
    return [_message(row) for row in cur]


_SELECT = "SELECT id, kind, order_id, payload, created_at, attempts, delivered_at FROM l3_messages"


def _message(row: tuple[Any, ...]) -> L3Message:
    message_id, kind, order_id, payload, created_at, attempts, delivered_at = row
    return L3Message(
        message_id, kind, order_id, json.loads(payload), created_at, attempts, delivered_at
    )
