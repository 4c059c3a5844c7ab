"""Who holds whom, in SQL only: the part of the hierarchy the ledger itself needs (a unit the
gate rejects after it was packed leaves its parent in the rejection's transaction). Imports
nothing of the ledger, so the ledger can import it."""

from __future__ import annotations

import sqlite3


def parent_of(conn: sqlite3.Connection, child: str) -> str | None:
    """The EPC of the container holding ``child`` (an EPC), or None."""
    row = conn.execute("SELECT parent FROM packed WHERE child = ?", (child,)).fetchone()
    return str(row[0]) if row else None


def release(conn: sqlite3.Connection, child: str) -> str | None:
    """Take ``child`` out of its parent and off the loose list (inside the caller's write
    transaction); returns the parent's EPC, None when it had none."""
    row = conn.execute("DELETE FROM packed WHERE child = ? RETURNING parent", (child,)).fetchone()
    conn.execute("DELETE FROM loose WHERE child = ?", (child,))
    return str(row[0]) if row else None
