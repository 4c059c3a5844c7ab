"""The serial ledger: every serial's one current state, moving only forward.

    allocated ─► sent ─► printed ─► commissioned ─► rejected (decommissioning event)
        │          │         └────► rejected (destroying event: never commissioned)
        └──────────┴──────────────► unused (no event) ─► returned (to L3, acknowledged)
                                    / rejected (destroying event)
    allocated / sent / printed ────► quarantined (restored from a backup: its fate after the
                                     backup is unknown here, so it is never used again)
    commissioned ─► sampled (taken for QA samples: sampling, then decommissioning events)
                 └► destroyed (destroyed after commissioning: destroying DELETE event)

A commissioned unit that leaves that state while packed (rejected at the gate, sampled,
destroyed) leaves its parent in the same transaction, with an unpacking event first.

``sent`` is written (committed) before a record goes to the printer, so a serial is never sent
twice, even across a crash. A unit passes only after its ``commissioned`` transition and its
event are committed together, in one transaction, with the outbox row.

The line's hot path goes through the state writer when one is attached (``attach``): a block of
serials is marked ``sent`` per printer refill in one commit, outcomes are group-committed off the
event loop, and print confirmations and "verdict written" flags ride the next group commit
(README, "Durability", says why each promise still holds).
"""

from __future__ import annotations

import copy
import enum
import functools
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from edge_agent import epcis, gs1, serialgen
from edge_agent.aggregation import membership
from edge_agent.clock import EventClock, last_event_time
from edge_agent.crashpoints import crash_point
from edge_agent.db import write
from edge_agent.errors import LedgerError
from edge_agent.writer import Writer


class SerialState(enum.StrEnum):
    ALLOCATED = "allocated"
    SENT = "sent"
    PRINTED = "printed"
    COMMISSIONED = "commissioned"
    REJECTED = "rejected"
    UNUSED = "unused"
    RETURNED = "returned"  # unused, and given back to L3, which acknowledged it
    QUARANTINED = "quarantined"  # not settled when the restored backup was taken: never used
    SAMPLED = "sampled"  # commissioned, then taken for QA samples (edge_agent.aggregation)
    DESTROYED = "destroyed"  # commissioned, then destroyed (damaged, QA destruction)


TERMINAL = frozenset(
    {
        SerialState.REJECTED,
        SerialState.UNUSED,
        SerialState.RETURNED,
        SerialState.QUARANTINED,
        SerialState.SAMPLED,
        SerialState.DESTROYED,
    }
)
IN_FLIGHT = (SerialState.ALLOCATED, SerialState.SENT, SerialState.PRINTED)

# to-state → states it may be reached from
ALLOWED_FROM: dict[SerialState, tuple[SerialState, ...]] = {
    SerialState.SENT: (SerialState.ALLOCATED,),
    SerialState.PRINTED: (SerialState.SENT,),
    SerialState.COMMISSIONED: (SerialState.PRINTED,),
    SerialState.REJECTED: (
        SerialState.SENT,
        SerialState.PRINTED,
        SerialState.COMMISSIONED,
    ),
    SerialState.UNUSED: (SerialState.ALLOCATED, SerialState.SENT),
    SerialState.RETURNED: (SerialState.UNUSED,),
    SerialState.QUARANTINED: IN_FLIGHT,
    SerialState.SAMPLED: (SerialState.COMMISSIONED,),
    SerialState.DESTROYED: (SerialState.COMMISSIONED,),
}
_MAX_DRAWS = 10_000  # consecutive generated serials that were all used already: space exhausted
POOL_QUARANTINED = 2  # serial_pool.taken: 0 free, 1 allocated, 2 quarantined by a restore


@dataclass(frozen=True)
class BatchInfo:
    id: str
    gtin: str
    lot: str
    expiry: str
    target: int
    state: str


@dataclass
class UnitOutcome:
    """What the line decided for one unit, ready to be committed."""

    trigger: int
    passed: bool
    reason: str
    serial: str | None  # the serial printed at this position, whose state the verdict settles
    read_text: str | None = None
    skipped_serials: list[str] = field(default_factory=list)  # printed, never seen by the camera


def read_serial_list(path: Path) -> list[str]:
    """The serials of an L3 list file: one per line, blank lines and ``#`` comments skipped.
    LedgerError naming the file (and line) when it cannot be read or a serial is invalid."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LedgerError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise LedgerError(f"cannot read the serial list {path} ({exc.strerror})") from None
    serials = []
    for number, raw in enumerate(text.splitlines(), start=1):
        serial = raw.strip()
        if not serial or serial.startswith("#"):
            continue
        try:
            gs1.validate_serial(serial)
        except gs1.Gs1Error as exc:
            raise LedgerError(f"{path}:{number}: serial {serial!r} is invalid: {exc}") from exc
        serials.append(serial)
    return serials


class Ledger:
    """Owns the event loop's connection. Call it from the event loop only; with a state writer
    attached, the hot-path methods (``take_block``, ``note_printed``, ``record_outcomes``,
    ``note_verdicts_written``) run their transactions in the writer's thread."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        read_point: str,
        company_prefix_length: int,
        biz_location: str | None = None,
        event_clock: EventClock | None = None,
    ):
        self.conn = conn
        self.read_point = read_point
        self.biz_location = biz_location
        self.company_prefix_length = company_prefix_length
        # line events of a batch get times that never go backwards (edge_agent.clock)
        self.event_clock = event_clock or EventClock()
        self._clock_seeded: set[str] = set()
        self._clock_lock = threading.Lock()  # shared with the writer thread's copy
        self.writer: Writer | None = None
        self._bound: Ledger | None = None  # this ledger on the writer's connection
        # (gtin, serial) confirmed printed, the transition not yet committed
        self._printing: set[tuple[str, str]] = set()
        # Those not yet taken by the writer: one writer job for all of them, not one each
        self._marks: list[tuple[BatchInfo, str]] = []
        self._marks_lock = threading.Lock()  # the loop appends, the writer takes

    # --- batches ----------------------------------------------------------------------------

    def open_batch(self, batch_id: str, gtin: str, lot: str, expiry: str, target: int) -> BatchInfo:
        """Open a new batch or resume the open one with the same id and product."""
        with write(self.conn):
            row = self.conn.execute(
                "SELECT id, gtin, lot, expiry, target, state FROM batches WHERE id = ?", (batch_id,)
            ).fetchone()
            if row is None:
                self.conn.execute(
                    "INSERT INTO batches (id, gtin, lot, expiry, target, state, opened_at) "
                    "VALUES (?, ?, ?, ?, ?, 'open', ?)",
                    (batch_id, gtin, lot, expiry, target, time.time()),
                )
                return BatchInfo(batch_id, gtin, lot, expiry, target, "open")
        info = BatchInfo(*row)
        if info.state != "open":
            raise LedgerError(
                f"batch {batch_id} is already closed; give the new work order a new batch id"
            )
        if (info.gtin, info.lot, info.expiry) != (gtin, lot, expiry):
            raise LedgerError(
                f"batch {batch_id} is open for GTIN {info.gtin} lot {info.lot} expiry {info.expiry}, "
                f"but the config says GTIN {gtin} lot {lot} expiry {expiry}; fix the config or close "
                "the batch"
            )
        return info

    def batch(self, batch_id: str) -> BatchInfo | None:
        row = self.conn.execute(
            "SELECT id, gtin, lot, expiry, target, state FROM batches WHERE id = ?", (batch_id,)
        ).fetchone()
        return None if row is None else BatchInfo(*row)

    def close_batch(self, batch_id: str, reason: str = "batch_closed") -> int:
        """Close the batch: serials never sent become unused. Returns how many."""
        now = time.time()
        with write(self.conn):
            rows = self._in_states(batch_id, (SerialState.ALLOCATED,))
            for gtin, serial, _ in rows:
                self._move(gtin, serial, SerialState.UNUSED, reason, None, now)
            self.conn.execute(
                "UPDATE batches SET state = 'closed', closed_at = ? WHERE id = ?", (now, batch_id)
            )
        return len(rows)

    # --- serial supply ----------------------------------------------------------------------

    def ensure_allocated(self, batch: BatchInfo, count: int, *, length: int, alphabet: str) -> int:
        """Generate random serials until ``count`` are allocated and unsent. Persisted before use:
        the (gtin, serial) primary key makes reuse impossible, across batches too."""
        have = self._count(batch.id, SerialState.ALLOCATED)
        added = misses = 0
        now = time.time()
        with write(self.conn):
            space = serialgen.space(self.conn)  # this database's generation epoch
            while have + added < count:
                serial = space.draw(length, alphabet)
                try:
                    self.conn.execute(
                        "INSERT INTO serials (gtin, serial, batch_id, state, updated_at) "
                        "VALUES (?, ?, ?, 'allocated', ?)",
                        (batch.gtin, serial, batch.id, now),
                    )
                except sqlite3.IntegrityError:
                    misses += 1  # already used, here or in an earlier batch: draw again
                    if misses >= _MAX_DRAWS:
                        raise LedgerError(
                            f"no unused {length}-character serial left for GTIN {batch.gtin} "
                            f"({_MAX_DRAWS} draws in a row were all used); use longer serials "
                            "or a larger alphabet"
                        ) from None
                    continue
                self._record(
                    batch.gtin, serial, None, SerialState.ALLOCATED, "generated", None, now
                )
                added += 1
        return added

    def allocate(self, batch: BatchInfo, serials: Sequence[str], how: str) -> int:
        """Allocate these serials (an order's own list, an L3 page) to the batch, persisted
        before use. A serial known already, here or in any earlier batch, is refused: the
        whole call changes nothing then."""
        now = time.time()
        with write(self.conn):
            for serial in serials:
                try:
                    self.conn.execute(
                        "INSERT INTO serials (gtin, serial, batch_id, state, updated_at) "
                        "VALUES (?, ?, ?, 'allocated', ?)",
                        (batch.gtin, serial, batch.id, now),
                    )
                except sqlite3.IntegrityError as exc:
                    raise LedgerError(
                        f"serial {serial} of GTIN {batch.gtin} was handed out before; "
                        "a serial is never used twice"
                    ) from exc
                self._record(batch.gtin, serial, None, SerialState.ALLOCATED, how, None, now)
        return len(serials)

    def import_serial_list(self, gtin: str, path: Path) -> int:
        """Load an L3 serial list into the pool; serials already known are skipped."""
        serials = read_serial_list(path)
        now = time.time()
        with write(self.conn):
            before = self.conn.total_changes
            self.conn.executemany(
                "INSERT OR IGNORE INTO serial_pool (gtin, serial, imported_at) VALUES (?, ?, ?)",
                [(gtin, s, now) for s in serials],
            )
            return self.conn.total_changes - before

    def allocate_from_pool(self, batch: BatchInfo, count: int) -> int:
        have = self._count(batch.id, SerialState.ALLOCATED)
        need = max(0, count - have)
        now = time.time()
        with write(self.conn):
            rows = self.conn.execute(
                "SELECT serial FROM serial_pool WHERE gtin = ? AND taken = 0 AND serial NOT IN "
                "(SELECT serial FROM serials WHERE gtin = ?) ORDER BY rowid LIMIT ?",
                (batch.gtin, batch.gtin, need),
            ).fetchall()
            for (serial,) in rows:
                self.conn.execute(
                    "UPDATE serial_pool SET taken = 1 WHERE gtin = ? AND serial = ?",
                    (batch.gtin, serial),
                )
                self.conn.execute(
                    "INSERT INTO serials (gtin, serial, batch_id, state, updated_at) "
                    "VALUES (?, ?, ?, 'allocated', ?)",
                    (batch.gtin, serial, batch.id, now),
                )
                self._record(
                    batch.gtin, serial, None, SerialState.ALLOCATED, "from_list", None, now
                )
        return len(rows)

    def take_for_print(self, batch: BatchInfo) -> tuple[int, str] | None:
        """Mark the next allocated serial sent (committed) and return (record seq, serial)."""
        block = self.take_for_print_block(batch, 1)
        return block[0] if block else None

    def take_for_print_block(self, batch: BatchInfo, count: int) -> list[tuple[int, str]]:
        """Mark the next ``count`` allocated serials sent in ONE commit; returns their (record
        seq, serial), consecutive records in send order (fewer when fewer are allocated). A
        serial of the block not yet handed to the printer at a crash is settled as any sent and
        unconfirmed one (printer_reconcile.py): unused when the printer's queue proves it never
        arrived, else rejected. Never sent again either way."""
        now = self._now(batch.id)
        with write(self.conn):
            rows = self.conn.execute(
                "SELECT serial FROM serials WHERE batch_id = ? AND state = 'allocated' "
                "ORDER BY rowid LIMIT ?",
                (batch.id, count),
            ).fetchall()
            if not rows:
                return []
            (first,) = self.conn.execute(
                # Record numbers are unique in the state database, not only in the batch: a
                # record of an earlier order left in a printer's queue never passes for one of
                # this order (printer_reconcile.py matches the queue by record number).
                "UPDATE batches SET next_seq = (SELECT MAX(next_seq) FROM batches) + ? "
                "WHERE id = ? RETURNING next_seq - ?",
                (len(rows), batch.id, len(rows)),
            ).fetchone()
            for offset, (serial,) in enumerate(rows):
                self._move(
                    batch.gtin,
                    serial,
                    SerialState.SENT,
                    "sent_to_printer",
                    None,
                    now,
                    seq=first + offset,
                    known=SerialState.ALLOCATED,
                )
        return [(first + offset, serial) for offset, (serial,) in enumerate(rows)]

    def mark_returned(self, batch_id: str, serials: Sequence[str]) -> int:
        """L3 acknowledged the return of these unused serials: unused → returned. Idempotent
        (returned already stays so); a serial of the list in any other state stays as it is.
        Returns how many moved. Call inside the transaction that records the acknowledgement."""
        now, wanted, moved = time.time(), set(serials), 0
        with write(self.conn):
            for gtin, serial, _ in self._in_states(batch_id, (SerialState.UNUSED,)):
                if serial in wanted:
                    self._move(
                        gtin,
                        serial,
                        SerialState.RETURNED,
                        "returned_to_l3",
                        None,
                        now,
                        known=SerialState.UNUSED,
                    )
                    moved += 1
        return moved

    # --- line events ------------------------------------------------------------------------

    def mark_printed(self, batch: BatchInfo, serial: str) -> bool:
        """The printer confirmed this serial. False if it was not a sent serial of this batch."""
        with write(self.conn):
            return self._mark_printed(batch, serial, self._now(batch.id))

    def _mark_printed(self, batch: BatchInfo, serial: str, now: float) -> bool:
        # One statement moves it only from sent (what _move does in two: read, then write).
        moved = self.conn.execute(
            "UPDATE serials SET state = ?, reason = ?, updated_at = ? "
            "WHERE gtin = ? AND serial = ? AND batch_id = ? AND state = ?",
            (
                SerialState.PRINTED,
                "print_confirmed",
                now,
                batch.gtin,
                serial,
                batch.id,
                SerialState.SENT,
            ),
        ).rowcount
        if moved:
            self._record(
                batch.gtin,
                serial,
                SerialState.SENT,
                SerialState.PRINTED,
                "print_confirmed",
                None,
                now,
            )
        return bool(moved)

    def commit_outcomes(self, batch: BatchInfo, outcomes: Sequence[UnitOutcome]) -> None:
        """Record verdicts, serial transitions and their events in ONE durable transaction."""
        now = self._now(batch.id)
        with write(self.conn):
            for outcome in outcomes:
                self._commit_one(batch, outcome, now)
            crash_point("outbox_commit")

    def _commit_one(self, batch: BatchInfo, outcome: UnitOutcome, now: float) -> None:
        for skipped in outcome.skipped_serials:
            self._reject(batch, skipped, "no_frame", None, now)
        verdict = "pass" if outcome.passed else "reject"
        self.conn.execute(
            "INSERT INTO units (batch_id, trigger, serial, verdict, reason, read_text, decided_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                batch.id,
                outcome.trigger,
                outcome.serial,
                verdict,
                outcome.reason,
                outcome.read_text,
                now,
            ),
        )
        if outcome.serial is None:
            return
        if outcome.passed:
            self._move(
                batch.gtin,
                outcome.serial,
                SerialState.COMMISSIONED,
                "verified",
                outcome.trigger,
                now,
            )
            epc = self._epc(batch, outcome.serial)
            expiry = gs1.expiry_date(batch.expiry).isoformat()
            self._event(
                batch,
                "commissioning",
                epcis.commissioning(
                    epc,
                    self.read_point,
                    batch.lot,
                    expiry,
                    biz_location=self.biz_location,
                    when=_moment(now),
                ),
                now,
            )
        else:
            self._reject(batch, outcome.serial, outcome.reason, outcome.trigger, now)

    def _reject(
        self, batch: BatchInfo, serial: str, reason: str, trigger: int | None, now: float
    ) -> None:
        """Reject the serial with the event CBV has for where it was: a commissioned serial is
        decommissioned; one never commissioned (nothing to DELETE) is destroyed with its pack."""
        was = self._move(batch.gtin, serial, SerialState.REJECTED, reason, trigger, now)
        epc, where = self._epc(batch, serial), self.biz_location
        if was == SerialState.COMMISSIONED:
            self.leave_parent(batch, epc, reason, now)
            event = epcis.decommissioning(
                epc, self.read_point, reason, biz_location=where, when=_moment(now)
            )
        else:
            event = epcis.destroying(
                epc, self.read_point, reason, biz_location=where, when=_moment(now)
            )
        self._event(batch, event["bizStep"], event, now)

    # --- the hot path through the state writer ------------------------------------------------

    def attach(self, writer: Writer) -> None:
        """Run the hot-path transactions in ``writer``'s thread, group-committed."""
        bound = copy.copy(self)  # shares the clock, its lock and the pending confirmations
        bound.conn, bound.writer, bound._bound = writer.conn, None, None
        self.writer, self._bound = writer, bound

    async def take_block(
        self, batch: BatchInfo, count: int, *, wait_s: float = 0.0
    ) -> list[tuple[int, str]]:
        """``take_for_print_block``, committed by the writer: the loop runs on meanwhile.
        ``wait_s``: how long it may wait for other jobs to share its commit."""
        if self.writer is None or self._bound is None:
            return self.take_for_print_block(batch, count)
        bound = self._bound
        return await self.writer.run(
            lambda _: bound.take_for_print_block(batch, count), wait_s=wait_s
        )

    async def generate(
        self, batch: BatchInfo, count: int, *, length: int, alphabet: str, wait_s: float = 0.0
    ) -> int:
        """``ensure_allocated``, committed by the writer."""
        if self.writer is None or self._bound is None:
            return self.ensure_allocated(batch, count, length=length, alphabet=alphabet)
        bound = self._bound
        return await self.writer.run(
            lambda _: bound.ensure_allocated(batch, count, length=length, alphabet=alphabet),
            wait_s=wait_s,
        )

    def note_printed(self, batch: BatchInfo, serial: str) -> bool:
        """The printer confirmed this serial; False if it was not a sent serial of this batch.
        With a writer the transition rides the next group commit, unawaited. Lost in a crash,
        the serial is still ``sent`` after the restart, which recovery settles as it settles a
        printed one: rejected (a printed record is no longer in the printer's queue, so
        printer_reconcile never takes it for unused). It joins the confirmations' job queued
        and not yet started, if any (submitted before it), else queues one: the outcome that
        commissions it is submitted after that job, so it commits in the same or a later
        transaction."""
        if self.writer is None or self._bound is None:
            return self.mark_printed(batch, serial)
        key = (batch.gtin, serial)
        if key in self._printing or self._state(batch.gtin, serial, batch.id) != SerialState.SENT:
            return False
        self._printing.add(key)
        with self._marks_lock:
            first = not self._marks
            self._marks.append((batch, serial))
        if first:  # the confirmations that follow before the writer starts it ride this job
            taken: list[tuple[BatchInfo, str]] = []
            future = self.writer.defer(
                functools.partial(self._commit_marks, taken), "print_confirmed"
            )
            future.add_done_callback(lambda _: self._marks_settled(taken))
        return True

    def _commit_marks(self, taken: list[tuple[BatchInfo, str]], conn: sqlite3.Connection) -> None:
        """Writer thread: the confirmations queued so far, marked printed."""
        with self._marks_lock:
            taken.extend(self._marks)
            self._marks.clear()
        bound = self._bound
        assert bound is not None
        for batch, serial in taken:
            bound._mark_printed(batch, serial, bound._now(batch.id))

    def _marks_settled(self, taken: list[tuple[BatchInfo, str]]) -> None:
        """Committed or failed (the writer logs a failure), they are no longer pending. A job
        the writer never ran (it stopped) took nothing: what it would have taken is dropped."""
        if not taken:
            with self._marks_lock:
                taken.extend(self._marks)
                self._marks.clear()
        self._printing.difference_update((batch.gtin, serial) for batch, serial in taken)

    async def record_outcomes(self, batch: BatchInfo, outcomes: Sequence[UnitOutcome]) -> None:
        """``commit_outcomes``, group-committed by the writer: returns once durable."""
        if self.writer is None or self._bound is None:
            self.commit_outcomes(batch, outcomes)
            return
        bound = self._bound
        await self.writer.run(lambda _: bound.commit_outcomes(batch, outcomes))

    async def gate_rejected(self, batch: BatchInfo, trigger: int) -> str | None:
        """``confirm_rejected_at_gate``, committed by the writer."""
        if self.writer is None or self._bound is None:
            return self.confirm_rejected_at_gate(batch, trigger)
        bound = self._bound
        return await self.writer.run(lambda _: bound.confirm_rejected_at_gate(batch, trigger))

    def note_verdicts_written(self, batch: BatchInfo, triggers: Iterable[int]) -> None:
        """``mark_verdicts_written`` in the next group commit, unawaited. Lost in a crash, the
        passes among them are settled from the PLC's reject log at the restart, as every pass
        whose write was not recorded (``unwritten_passes``)."""
        if self.writer is None or self._bound is None:
            self.mark_verdicts_written(batch, triggers)
            return
        bound, done = self._bound, list(triggers)
        self.writer.defer(lambda _: bound.mark_verdicts_written(batch, done), "verdicts_written")

    async def flush(self) -> None:
        """Everything handed to the writer so far is committed: reads now see it."""
        if self.writer is not None:
            await self.writer.flush()

    def leave_parent(self, batch: BatchInfo, epc: str, reason: str, now: float) -> str | None:
        """Take a unit or container out of its parent, with the unpacking event (before any
        event that ends it, so L3 can apply them in order). Returns the parent's EPC."""
        parent = membership.release(self.conn, epc)
        if parent is not None:
            event = epcis.aggregation(
                parent,
                [epc],
                self.read_point,
                action="DELETE",
                biz_step="unpacking",
                biz_location=self.biz_location,
                when=_moment(now),
            )
            event["edge:reason"] = reason
            self._event(batch, "unpacking", event, now)
        return parent

    def end_commissioned(self, batch: BatchInfo, serial: str, to: SerialState, reason: str) -> None:
        """A commissioned unit ends ``sampled`` or ``destroyed`` (inside the caller's write
        transaction): out of its parent first, then its end-of-life events. Sampled: CBV
        sampling, then decommissioning (the sample never returns to the supply chain);
        destroyed: destroying (DELETE: the EPC was commissioned). LedgerError unless the
        serial is commissioned in this batch."""
        now = self.event_now(batch.id)
        self._move(batch.gtin, serial, to, reason, None, now)
        epc, where, when = self._epc(batch, serial), self.biz_location, _moment(now)
        self.leave_parent(batch, epc, reason, now)
        if to == SerialState.SAMPLED:
            sampled = epcis.object_event(
                epcs=[epc],
                action="OBSERVE",
                biz_step="sampling",
                disposition="non_sellable_other",
                read_point=self.read_point,
                biz_location=where,
                when=when,
                extra={"edge:reason": reason},
            )
            self._event(batch, "sampling", sampled, now)
            end = epcis.decommissioning(epc, self.read_point, reason, biz_location=where, when=when)
            self._event(batch, "sample_decommissioning", end, now)
        elif to == SerialState.DESTROYED:
            end = epcis.object_event(
                epcs=[epc],
                action="DELETE",
                biz_step="destroying",
                disposition="destroyed",
                read_point=self.read_point,
                biz_location=where,
                when=when,
                extra={"edge:reason": reason},
            )
            self._event(batch, "destroying_commissioned", end, now)
        else:
            raise LedgerError(f"a commissioned unit ends sampled or destroyed, not {to}")

    def emit(self, batch: BatchInfo, kind: str, event: dict[str, Any], now: float) -> None:
        """Queue an event of the batch in the outbox (inside the caller's write transaction)."""
        self._event(batch, kind, event, now)

    def event_now(self, batch_id: str) -> float:
        """An event time of the batch: never earlier than its previous event."""
        return self._now(batch_id)

    def epc(self, gtin: str, serial: str) -> str:
        return epcis.sgtin_uri(gtin, serial, self.company_prefix_length)

    def mark_verdicts_written(self, batch: BatchInfo, triggers: Iterable[int]) -> None:
        with write(self.conn):
            self.conn.executemany(
                "UPDATE units SET verdict_written = 1 WHERE batch_id = ? AND trigger = ?",
                [(batch.id, t) for t in triggers],
            )

    def confirm_rejected_at_gate(self, batch: BatchInfo, trigger: int) -> str | None:
        """The PLC rejected this unit. A unit we passed is decommissioned; returns what changed:
        'confirmed', 'decommissioned' or None when the trigger is not one of ours."""
        now = self._now(batch.id)
        with write(self.conn):
            row = self.conn.execute(
                "SELECT id, serial, verdict FROM units WHERE batch_id = ? AND trigger = ? "
                "ORDER BY id DESC LIMIT 1",
                (batch.id, trigger),
            ).fetchone()
            if row is None:
                return None
            unit_id, serial, verdict = row
            if verdict == "reject":
                self.conn.execute("UPDATE units SET confirmed = 1 WHERE id = ?", (unit_id,))
                return "confirmed"
            self.conn.execute(
                "UPDATE units SET verdict = 'reject', reason = 'rejected_at_gate', confirmed = 1 "
                "WHERE id = ?",
                (unit_id,),
            )
            if serial is not None:
                self._reject(batch, serial, "rejected_at_gate", trigger, now)
        return "decommissioned"

    def recover_in_flight(self, batch: BatchInfo) -> list[tuple[str, str]]:
        """After a restart: units in flight at the crash can no longer pass (the PLC rejected
        them for lack of a verdict), so their serials end rejected. Never re-sent."""
        now = self._now(batch.id)
        with write(self.conn):
            rows = self._in_states(batch.id, (SerialState.SENT, SerialState.PRINTED))
            for _gtin, serial, _state in rows:
                self._reject(batch, serial, "in_flight_at_restart", None, now)
        return [(serial, state) for _, serial, state in rows]

    def unwritten_passes(self, batch: BatchInfo) -> list[tuple[int, str]]:
        """Passed units whose verdict write was not recorded as done: (trigger, serial)."""
        return self.conn.execute(
            "SELECT trigger, serial FROM units WHERE batch_id = ? AND verdict = 'pass' "
            "AND verdict_written = 0 ORDER BY id",
            (batch.id,),
        ).fetchall()

    def recent_triggers(self, batch: BatchInfo, limit: int) -> list[int]:
        """Trigger counts of the newest ``limit`` units decided in this batch, oldest first."""
        rows = self.conn.execute(
            "SELECT trigger FROM units WHERE batch_id = ? ORDER BY id DESC LIMIT ?",
            (batch.id, limit),
        ).fetchall()
        return [trigger for (trigger,) in reversed(rows)]

    def reject_unconfirmed_prints(self, batch: BatchInfo, reason: str) -> list[str]:
        """Sent but never confirmed, or printed but never seen: they can never pass."""
        now = self._now(batch.id)
        with write(self.conn):
            rows = self._in_states(batch.id, (SerialState.SENT, SerialState.PRINTED))
            for _gtin, serial, state in rows:
                why = reason if state == SerialState.SENT else "no_frame"
                self._reject(batch, serial, why, None, now)
        return [serial for _, serial, _ in rows]

    def unuse_cleared(
        self, batch: BatchInfo, serials: Sequence[str], *, not_received: Sequence[str] = ()
    ) -> None:
        """The printer discarded these unprinted records (``serials``), and these others never
        reached it (``not_received``): none was applied to a unit. One transaction."""
        now = self._now(batch.id)
        with write(self.conn):
            for serial in serials:
                self._move(
                    batch.gtin, serial, SerialState.UNUSED, "cleared_from_printer", None, now
                )
            for serial in not_received:
                self._move(
                    batch.gtin, serial, SerialState.UNUSED, "not_received_by_printer", None, now
                )

    def reject_sent(self, batch: BatchInfo, serials: Sequence[str], reason: str) -> list[str]:
        """Reject those of ``serials`` still sent and unconfirmed (a lost printer link); returns
        them. Any other state was settled meanwhile and stays as it is."""
        now = self._now(batch.id)
        rejected = []
        with write(self.conn):
            for serial in serials:
                if (batch.gtin, serial) in self._printing:
                    continue  # confirmed printed meanwhile, the commit on its way
                if self._state(batch.gtin, serial, batch.id) == SerialState.SENT:
                    self._reject(batch, serial, reason, None, now)
                    rejected.append(serial)
        return rejected

    # --- queries ----------------------------------------------------------------------------

    def sent_count(self, batch_id: str) -> int:
        """Serials sent to the printer that were, or may yet be, applied to a unit: what counts
        toward the order's quantity. A record the printer discarded unprinted (a line stop,
        a restart) ends ``unused`` and is made up for by another serial."""
        (n,) = self.conn.execute(
            "SELECT count(*) FROM serials"
            " WHERE batch_id = ? AND seq IS NOT NULL AND state NOT IN (?, ?)",
            (batch_id, SerialState.UNUSED, SerialState.RETURNED),
        ).fetchone()
        return int(n)

    def unsent_count(self, batch_id: str) -> int:
        """Serials allocated to the batch and not yet sent to the printer."""
        return self._count(batch_id, SerialState.ALLOCATED)

    def unconfirmed_in_send_order(self, batch_id: str) -> list[tuple[int, str]]:
        """(record seq, serial) of the serials sent to the printer and not confirmed printed,
        oldest record first."""
        rows = self.conn.execute(
            "SELECT seq, serial FROM serials WHERE batch_id = ? AND state = 'sent' ORDER BY seq",
            (batch_id,),
        ).fetchall()
        return [(int(seq), serial) for seq, serial in rows]

    def serials_in(self, batch_id: str, state: SerialState) -> list[str]:
        return [r[1] for r in self._in_states(batch_id, (state,))]

    def state_of(self, gtin: str, serial: str) -> SerialState | None:
        if (gtin, serial) in self._printing:
            return SerialState.PRINTED  # confirmed; the transition rides the next group commit
        return self._stored_state(gtin, serial)

    def _stored_state(self, gtin: str, serial: str) -> SerialState | None:
        row = self.conn.execute(
            "SELECT state FROM serials WHERE gtin = ? AND serial = ?", (gtin, serial)
        ).fetchone()
        return SerialState(row[0]) if row else None

    # --- internals --------------------------------------------------------------------------

    def _now(self, batch_id: str) -> float:
        """Never earlier than the batch's previous event, in this process or a previous one."""
        with self._clock_lock:  # the writer thread's copy takes times too
            if batch_id not in self._clock_seeded:
                self.event_clock.seed(batch_id, last_event_time(self.conn, batch_id))
                self._clock_seeded.add(batch_id)
            return self.event_clock.now(batch_id)

    def _count(self, batch_id: str, state: SerialState) -> int:
        (n,) = self.conn.execute(
            "SELECT count(*) FROM serials WHERE batch_id = ? AND state = ?", (batch_id, state)
        ).fetchone()
        return int(n)

    def _in_states(
        self, batch_id: str, states: Sequence[SerialState]
    ) -> list[tuple[str, str, str]]:
        marks = ",".join("?" * len(states))
        return self.conn.execute(
            f"SELECT gtin, serial, state FROM serials WHERE batch_id = ? AND state IN ({marks}) "
            "ORDER BY rowid",
            (batch_id, *states),
        ).fetchall()

    def _state(self, gtin: str, serial: str, batch_id: str) -> SerialState | None:
        row = self.conn.execute(
            "SELECT state FROM serials WHERE gtin = ? AND serial = ? AND batch_id = ?",
            (gtin, serial, batch_id),
        ).fetchone()
        return SerialState(row[0]) if row else None

    def _move(
        self,
        gtin: str,
        serial: str,
        to: SerialState,
        reason: str,
        trigger: int | None,
        now: float,
        *,
        seq: int | None = None,
        known: SerialState | None = None,
    ) -> SerialState | None:
        """Returns the state moved from. ``known``: the serial's state as the caller read it in
        this transaction (hot path: take_for_print, mark_printed), so it is not read twice."""
        current = known if known is not None else self._stored_state(gtin, serial)
        if current not in ALLOWED_FROM[to]:
            raise LedgerError(
                f"serial {serial} cannot move from {current or 'unknown'} to {to} ({reason}); "
                "states only move forward"
            )
        self.conn.execute(
            "UPDATE serials SET state = ?, reason = ?, updated_at = ?, "
            "trigger = coalesce(?, trigger), seq = coalesce(?, seq) WHERE gtin = ? AND serial = ?",
            (to, reason, now, trigger, seq, gtin, serial),
        )
        self._record(gtin, serial, current, to, reason, trigger, now)
        return current

    def _record(
        self,
        gtin: str,
        serial: str,
        from_state: SerialState | None,
        to: SerialState,
        reason: str,
        trigger: int | None,
        now: float,
    ) -> None:
        self.conn.execute(  # with the serial's batch: the reconciliation reads by batch
            "INSERT INTO transitions (gtin, serial, from_state, to_state, reason, trigger, at, "
            "batch_id) VALUES (?, ?, ?, ?, ?, ?, ?, "
            "(SELECT batch_id FROM serials WHERE gtin = ? AND serial = ?))",
            (gtin, serial, from_state, to, reason, trigger, now, gtin, serial),
        )

    def _epc(self, batch: BatchInfo, serial: str) -> str:
        return epcis.sgtin_uri(batch.gtin, serial, self.company_prefix_length)

    def _event(self, batch: BatchInfo, kind: str, event: dict[str, Any], now: float) -> None:
        self.conn.execute(
            "INSERT INTO outbox (event_id, batch_id, kind, payload, created_at) VALUES (?, ?, ?, ?, ?)",
            (event["eventID"], batch.id, kind, json.dumps(event, separators=(",", ":")), now),
        )


def moment(at: float) -> datetime:
    """An event time (epoch seconds) as an aware datetime in the local time zone."""
    return _moment(at)


def _moment(at: float) -> datetime:
    return datetime.fromtimestamp(at).astimezone()


@dataclass(frozen=True)
class Quarantine:
    serials: dict[str, list[str]]  # batch id -> serials quarantined
    pool: dict[str, int]  # gtin -> free serials of an L3 list quarantined


def quarantine_unsettled(conn: sqlite3.Connection, reason: str) -> Quarantine:
    """After a restore from a backup: a serial that was not settled when the backup was taken
    (allocated, sent or printed) may have been printed after it, so none is ever sent again and
    none is returned to L3 as unused. The free serials of imported L3 lists too: they are taken
    in list order, so the lost window took the next ones. One transaction."""
    now = time.time()
    marks = ",".join("?" * len(IN_FLIGHT))
    with write(conn):
        rows = conn.execute(
            f"SELECT batch_id, gtin, serial, state FROM serials WHERE state IN ({marks}) "
            "ORDER BY rowid",
            IN_FLIGHT,
        ).fetchall()
        conn.executemany(
            "UPDATE serials SET state = ?, reason = ?, updated_at = ? WHERE gtin = ? AND serial = ?",
            [(SerialState.QUARANTINED, reason, now, gtin, serial) for _, gtin, serial, _ in rows],
        )
        conn.executemany(
            "INSERT INTO transitions (gtin, serial, from_state, to_state, reason, trigger, at, "
            "batch_id) VALUES (?, ?, ?, ?, ?, NULL, ?, ?)",
            [(g, s, state, SerialState.QUARANTINED, reason, now, b) for b, g, s, state in rows],
        )
        pool = dict(
            conn.execute(
                "SELECT gtin, count(*) FROM serial_pool WHERE taken = 0 GROUP BY gtin"
            ).fetchall()
        )
        conn.execute("UPDATE serial_pool SET taken = ? WHERE taken = 0", (POOL_QUARANTINED,))
    by_batch: dict[str, list[str]] = {}
    for batch_id, _, serial, _ in rows:
        by_batch.setdefault(batch_id, []).append(serial)
    return Quarantine(by_batch, pool)
