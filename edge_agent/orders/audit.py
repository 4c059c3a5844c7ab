"""The audit trail (21 CFR Part 11 §11.10(e), EU GMP Annex 11 §9): every command, from whichever
source, with who, when, what and why, in an append-only, hash-chained table.

Each row's hash covers its content and the previous row's hash, so changing or deleting any row
breaks the chain from there on; SQLite triggers refuse UPDATE and DELETE, so only someone who
bypasses the agent (and drops the triggers) can change a row, and ``verify`` then finds it. The
chain cannot tell that its newest rows were cut off; the row count and head hash are also
published in the close report of every order, which L3 keeps.
"""

from __future__ import annotations

import enum
import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

GENESIS = hashlib.sha256(b"edge-agent audit trail").hexdigest()

_COLUMNS = "seq, at, actor, source, action, order_id, reason, outcome, detail"


class Role(enum.StrEnum):
    """What a person may do (operator screen users): a supervisor signs off exceptions."""

    OPERATOR = "operator"  # runs orders: submit, start, hold, resume, stop, close when balanced
    SUPERVISOR = "supervisor"  # also abort, close with exceptions, rework


@dataclass(frozen=True)
class Actor:
    """Who asked: ``name`` as the source knows them (API token name, OPC UA user, 'l3', a local
    user name), ``source`` the way in (api, cli, inbox, l3, opcua, hmi, line). ``role`` is a
    person's ``Role`` where the way in knows one (the operator screen); None for systems (API
    tokens, L3, the inbox, the line), whose rights their configuration grants."""

    name: str
    source: str
    role: str | None = None

    def __str__(self) -> str:
        return f"{self.source}:{self.name}"


LINE = Actor("line", "line")  # transitions the line makes by itself


@dataclass(frozen=True)
class AuditRow:
    seq: int
    at: float
    actor: str
    source: str
    action: str
    order_id: str | None
    reason: str | None
    outcome: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str


def row_hash(prev_hash: str, values: tuple[Any, ...]) -> str:
    body = json.dumps([prev_hash, *values], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


def append(
    conn: sqlite3.Connection,
    actor: Actor,
    action: str,
    *,
    order_id: str | None = None,
    reason: str | None = None,
    outcome: str = "done",
    detail: dict[str, Any] | None = None,
) -> AuditRow:
    """Append one row. Call inside the write transaction of the change it records, so the
    change and its record commit together."""
    head = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS)
    text = json.dumps(detail or {}, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    values = (seq, time.time(), actor.name, actor.source, action, order_id, reason, outcome, text)
    digest = row_hash(prev, values)
    conn.execute(
        f"INSERT INTO audit ({_COLUMNS}, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (*values, prev, digest),
    )
    return _row((*values, prev, digest))


def rows(
    conn: sqlite3.Connection, *, order_id: str | None = None, after: int = 0, limit: int = 1000
) -> list[AuditRow]:
    where, args = "seq > ?", list[Any]([after])
    if order_id is not None:
        where += " AND order_id = ?"
        args.append(order_id)
    cur = conn.execute(
        f"SELECT {_COLUMNS}, prev_hash, hash FROM audit WHERE {where} ORDER BY seq LIMIT ?",
        (*args, limit),
    )
    return [_row(r) for r in cur]


@dataclass(frozen=True)
class ChainCheck:
    rows: int
    head: str
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(conn: sqlite3.Connection) -> ChainCheck:
    """Recompute the chain; every row whose content, link or position is not what the chain
    says is a problem (a changed row, a deleted row, a row inserted out of place)."""
    problems: list[str] = []
    prev, expected_seq, count = GENESIS, 1, 0
    for row in _scan(conn):
        count += 1
        seq, values, prev_hash, digest = row[0], row[:9], row[9], row[10]
        if seq != expected_seq:
            problems.append(f"row {expected_seq}..{seq - 1} missing (deleted)")
        if prev_hash != prev:
            problems.append(f"row {seq}: does not link to the row before it")
        if row_hash(prev_hash, values) != digest:
            problems.append(f"row {seq}: content does not match its hash (changed)")
        prev, expected_seq = digest, seq + 1
    return ChainCheck(count, prev, problems)


def _scan(conn: sqlite3.Connection) -> Iterator[tuple[Any, ...]]:
    yield from conn.execute(f"SELECT {_COLUMNS}, prev_hash, hash FROM audit ORDER BY seq")


def _row(r: tuple[Any, ...]) -> AuditRow:
    seq, at, actor, source, action, order_id, reason, outcome, detail, prev_hash, digest = r
    return AuditRow(
        seq,
        at,
        actor,
        source,
        action,
        order_id,
        reason,
        outcome,
        json.loads(detail),
        prev_hash,
        digest,
    )
