"""Serial pages asked of L3, one row per request, written before the request is sent.

The request id (a UUID) is L3's request token: asking again with it must yield the same page
(OPEN-SCS ``SNRequestUnallocated`` semantics). Because the row is durable before the first send,
a request interrupted by a crash, a timeout or a lost answer is retried with the same id after
the restart, so L3 never hands this line a second, different page for one need.

A row ends ``done`` (its serials allocated to the order's ledger batch, in the same transaction),
``refused`` (the page broke a rule: none of it is used; a new request gets a new id) or
``discarded`` (the order ended before the page came; its serials go back to L3).
"""

from __future__ import annotations

import enum
import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Any

from edge_agent.db import write


class RequestState(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    REFUSED = "refused"
    DISCARDED = "discarded"


@dataclass(frozen=True)
class SerialRequest:
    request_id: str
    order_id: str
    gtin: str
    count: int
    state: RequestState
    created_at: float
    attempts: int
    last_error: str | None
    received: int | None
    exhausted: bool


def create(conn: sqlite3.Connection, order_id: str, gtin: str, count: int) -> SerialRequest:
    """A new request, durable before it is sent."""
    request_id = str(uuid.uuid4())
    with write(conn):
        conn.execute(
            "INSERT INTO serial_requests (request_id, order_id, gtin, count, state, created_at) "
            "VALUES (?, ?, ?, ?, 'pending', ?)",
            (request_id, order_id, gtin, count, time.time()),
        )
    found = get(conn, request_id)
    assert found is not None
    return found


def get(conn: sqlite3.Connection, request_id: str) -> SerialRequest | None:
    row = conn.execute(_SELECT + " WHERE request_id = ?", (request_id,)).fetchone()
    return _request(row) if row else None


def pending(conn: sqlite3.Connection, order_id: str | None = None) -> list[SerialRequest]:
    """Requests sent (or about to be) and not answered yet, oldest first."""
    where, args = "state = 'pending'", []
    if order_id is not None:
        where += " AND order_id = ?"
        args.append(order_id)
    cur = conn.execute(f"{_SELECT} WHERE {where} ORDER BY seq", args)
    return [_request(row) for row in cur]


def for_order(conn: sqlite3.Connection, order_id: str) -> list[SerialRequest]:
    cur = conn.execute(_SELECT + " WHERE order_id = ? ORDER BY seq", (order_id,))
    return [_request(row) for row in cur]


def exhausted(conn: sqlite3.Connection, order_id: str, gtin: str | None = None) -> bool:
    """L3 said it has no more serials for this order (of this ``gtin``: the units', or a
    packaging level's, edge_agent.aggregation.supply)."""
    row = conn.execute(
        "SELECT 1 FROM serial_requests WHERE order_id = ? AND state = 'done' AND exhausted = 1 "
        "AND (?2 IS NULL OR gtin = ?2)",
        (order_id, gtin),
    ).fetchone()
    return row is not None


def failed(conn: sqlite3.Connection, request_id: str, error: str) -> None:
    with write(conn):
        conn.execute(
            "UPDATE serial_requests SET attempts = attempts + 1, last_error = ? "
            "WHERE request_id = ?",
            (error[:500], request_id),
        )


def finish(
    conn: sqlite3.Connection,
    request_id: str,
    state: RequestState,
    *,
    serials: list[str],
    exhausted: bool = False,
    detail: dict[str, Any] | None = None,
) -> None:
    """Record the answer; call inside the transaction that allocates (or refuses) its serials."""
    with write(conn):
        conn.execute(
            "UPDATE serial_requests SET state = ?, attempts = attempts + 1, received = ?, "
            "exhausted = ?, serials = ?, detail = ?, done_at = ? "
            "WHERE request_id = ? AND state = 'pending'",
            (
                state,
                len(serials),
                int(exhausted),
                json.dumps(serials, separators=(",", ":")),
                json.dumps(detail or {}, separators=(",", ":")),
                time.time(),
                request_id,
            ),
        )


def pending_count(conn: sqlite3.Connection) -> int:
    (n,) = conn.execute("SELECT count(*) FROM serial_requests WHERE state = 'pending'").fetchone()
    return int(n)


_SELECT = (
    "SELECT request_id, order_id, gtin, count, state, created_at, attempts, last_error, received, "
    "exhausted FROM serial_requests"
)


def _request(row: tuple[Any, ...]) -> SerialRequest:
    request_id, order_id, gtin, count, state, created, attempts, error, received, exh = row
    return SerialRequest(
        request_id,
        order_id,
        gtin,
        count,
        RequestState(state),
        created,
        attempts,
        error,
        received,
        bool(exh),
    )
