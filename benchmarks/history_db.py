"""A state database with a long history, built fast: one batch runs through the real ledger
(``Ledger`` with the agent's schema, events and transitions as the line writes them), then SQL
copies it into earlier batches with new serials, new event ids and older times. Every copied
event is delivered to one forwarder, as the history of a line with a working upstream is.

Used by ``benchmarks/history.py`` (2M units) and the history tests (about 50k units).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

from edge_agent.db import open_db, write
from edge_agent.ledger import Ledger, UnitOutcome

GTIN = "09506000134352"
ALPHABET = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"
CURRENT = "CURRENT"  # the template batch: the most recent one, closed
FORWARDER = "site"
_DAY = 86400.0


def ledger_of(conn: sqlite3.Connection) -> Ledger:
    return Ledger(
        conn,
        read_point="urn:epc:id:sgln:0950600.01340.LINE01",
        company_prefix_length=7,
    )


def build_history(state_dir: Path, units: int, *, batch_units: int = 10_000) -> dict[str, float]:
    """A state directory holding ``units`` units: batch ``CURRENT`` of ``batch_units`` (run
    through the ledger) and copies of it as earlier batches ``H00001``... Returns timings."""
    started = time.monotonic()
    batch_units = min(batch_units, units)
    copies = max(0, units // batch_units - 1)
    conn = open_db(state_dir)
    with contextlib.closing(conn):
        conn.execute("PRAGMA synchronous=OFF")  # a builder: no power loss to survive
        conn.execute("PRAGMA cache_size=-262144")
        _template(ledger_of(conn), batch_units)
        template_s = time.monotonic() - started
        for k in range(1, copies + 1):
            _copy(conn, k, shift=(copies - k + 1) * _DAY / 10.0)
        with write(conn):
            conn.execute(
                "INSERT INTO outbox_cursor (forwarder, seq) SELECT ?, max(seq) FROM outbox WHERE true "
                "ON CONFLICT (forwarder) DO UPDATE SET seq = excluded.seq",
                (FORWARDER,),
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return {"template_s": template_s, "total_s": time.monotonic() - started}


def _template(ledger: Ledger, count: int) -> None:
    """One batch as the line writes it: 2% rejected (no read), the rest commissioned."""
    batch = ledger.open_batch(CURRENT, GTIN, "LOT-H", "281200", count)
    ledger.ensure_allocated(batch, count, length=12, alphabet=ALPHABET)
    group: list[UnitOutcome] = []
    for trigger in range(1, count + 1):
        taken = ledger.take_for_print(batch)
        assert taken is not None
        serial = taken[1]
        ledger.mark_printed(batch, serial)
        passed = trigger % 50 != 0
        group.append(
            UnitOutcome(
                trigger,
                passed,
                "verified" if passed else "no_read",
                serial,
                f"(01){GTIN}(21){serial}" if passed else None,
            )
        )
        if len(group) == 3 or trigger == count:
            ledger.commit_outcomes(batch, group)
            ledger.mark_verdicts_written(batch, [o.trigger for o in group])
            group = []
    ledger.close_batch(CURRENT)
    now = time.time()
    with write(ledger.conn):
        _delivered(ledger.conn, CURRENT, now)


def _delivered(conn: sqlite3.Connection, batch_id: str, at: float) -> None:
    conn.execute(
        "INSERT INTO outbox_delivery (forwarder, seq, state, at) "
        "SELECT ?, seq, 'delivered', ? FROM outbox WHERE batch_id = ?",
        (FORWARDER, at, batch_id),
    )
    conn.execute(
        "UPDATE outbox SET state = 'delivered', acked_at = ? WHERE batch_id = ?", (at, batch_id)
    )


def _copy(conn: sqlite3.Connection, k: int, *, shift: float) -> None:
    """Batch ``CURRENT`` again as batch H<k>, ``shift`` seconds earlier, every serial with a
    suffix of its own (so no serial repeats), every event with a new id."""
    batch, suffix = f"H{k:05d}", f"{k:05d}"
    args = {"b": batch, "sfx": suffix, "shift": shift, "t": CURRENT, "fwd": FORWARDER}
    with write(conn):
        for sql in (
            "INSERT INTO batches (id, gtin, lot, expiry, target, state, next_seq, opened_at, "
            "closed_at) SELECT :b, gtin, lot || :sfx, expiry, target, state, next_seq, "
            "opened_at - :shift, closed_at - :shift FROM batches WHERE id = :t",
            "INSERT INTO transitions (gtin, serial, from_state, to_state, reason, trigger, at, "
            "batch_id) SELECT t.gtin, t.serial || :sfx, t.from_state, t.to_state, t.reason, "
            "t.trigger, t.at - :shift, :b FROM serials s JOIN transitions t ON t.gtin = s.gtin "
            "AND t.serial = s.serial WHERE s.batch_id = :t ORDER BY t.id",
            "INSERT INTO serials (gtin, serial, batch_id, state, seq, trigger, reason, "
            "updated_at) SELECT gtin, serial || :sfx, :b, state, seq, trigger, reason, "
            "updated_at - :shift FROM serials WHERE batch_id = :t ORDER BY rowid",
            "INSERT INTO units (batch_id, trigger, serial, verdict, reason, read_text, "
            "decided_at, verdict_written, confirmed) SELECT :b, trigger, serial || :sfx, "
            "verdict, reason, read_text || :sfx, decided_at - :shift, verdict_written, "
            "confirmed FROM units WHERE batch_id = :t ORDER BY id",
            # a new event id: the UUID's last group made of the copy number and the seq
            "INSERT INTO outbox (event_id, batch_id, kind, payload, created_at, state, "
            "acked_at) SELECT e.id, :b, o.kind, replace(replace(o.payload, o.event_id, e.id), "
            "json_extract(o.payload, '$.epcList[0]'), json_extract(o.payload, '$.epcList[0]') "
            "|| :sfx), o.created_at - :shift, 'delivered', o.acked_at - :shift FROM outbox o "
            "JOIN (SELECT seq, substr(event_id, 1, length(event_id) - 12) || "
            f"printf('%012x', {k} * 1000000000 + seq) AS id FROM outbox "
            "WHERE batch_id = :t) e ON e.seq = o.seq WHERE o.batch_id = :t ORDER BY o.seq",
            "INSERT INTO outbox_delivery (forwarder, seq, state, at) SELECT :fwd, seq, "
            "'delivered', acked_at FROM outbox WHERE batch_id = :b",
        ):
            conn.execute(sql, args)
