"""Messages the line owes L3 (serial returns, close reports), queued durably before they are
sent and retried until L3 acknowledges them.

Each message has a stable id (``<order>:return``, ``<order>:report``): L3 de-duplicates on it, so
a message sent again after a crash or a lost answer has its effect once. Messages of one order
go out in the order they were queued.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import time
from typing import Any

from edge_agent.contracts import L3Message
from edge_agent.db import write


class MessageKind(enum.StrEnum):
    SERIAL_RETURN = "serial_return"
    CLOSE_REPORT = "close_report"
    ORDER_REFUSED = "order_refused"


_SUFFIX = {"serial_return": "return", "close_report": "report", "order_refused": "refused"}


def queue(
    conn: sqlite3.Connection,
    kind: str,
    order_id: str,
    payload: dict[str, Any],
    *,
    key: str | None = None,
) -> L3Message:
    """Queue (or keep, when queued already: idempotent) the message of this kind for the order.
    ``key`` tells apart several messages of one kind for one order (``<order>:refused:<key>``:
    each distinct refused document, each late page returned)."""
    message_id = f"{order_id}:{_SUFFIX[kind]}" + (f":{key}" if key else "")
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


def pending_count(conn: sqlite3.Connection) -> int:
    (n,) = conn.execute("SELECT count(*) FROM l3_messages WHERE delivered_at IS NULL").fetchone()
    return int(n)


def mark_delivered(conn: sqlite3.Connection, message_id: str) -> None:
    """L3 acknowledged the message. Call inside the transaction of what that acknowledgement
    changes (serials returned), so the two commit together."""
    with write(conn):
        conn.execute(
            "UPDATE l3_messages SET delivered_at = ?, attempts = attempts + 1, last_error = NULL "
            "WHERE id = ? AND delivered_at IS NULL",
            (time.time(), message_id),
        )


def mark_failed(conn: sqlite3.Connection, message_id: str, error: str) -> None:
    with write(conn):
        conn.execute(
            "UPDATE l3_messages SET attempts = attempts + 1, last_error = ? WHERE id = ?",
            (error[:500], message_id),
        )


_SELECT = "SELECT id, kind, order_id, payload, created_at, attempts, delivered_at FROM l3_messages"


def _message(row: tuple[Any, ...]) -> L3Message:
    message_id, kind, order_id, payload, created_at, attempts, delivered_at = row
    return L3Message(
        message_id, kind, order_id, json.loads(payload), created_at, attempts, delivered_at
    )
