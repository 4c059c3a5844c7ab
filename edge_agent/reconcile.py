"""Batch reconciliation computed from the state database alone.

Balanced means: every allocated serial is in exactly one state (allocated = commissioned +
rejected + unused + returned + quarantined + sampled + destroyed) and, for a closed batch, none
is still in flight; every unit has one verdict; units passed equal serials commissioned (or
sampled or destroyed after it); no serial
was commissioned twice; every commissioning has its event in the outbox; and every rejected
serial has the one event CBV has for it: decommissioning if it had been commissioned, destroying
if it never was (never a decommissioning of an EPC that was not commissioned); a sampled unit
has its sampling and end-of-life events, a destroyed one its destroying event; and the order's
hierarchy balances (``edge_agent.aggregation.balance``: ``hierarchy_balanced``).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from edge_agent.aggregation.balance import hierarchy_report
from edge_agent.errors import LedgerError


def latest_batch_id(conn: sqlite3.Connection) -> str:
    row = conn.execute("SELECT id FROM batches ORDER BY opened_at DESC LIMIT 1").fetchone()
    if row is None:
        raise LedgerError("the state database holds no batch yet")
    return str(row[0])


def reconcile(conn: sqlite3.Connection, batch_id: str | None = None) -> dict[str, Any]:
    conn.execute("BEGIN")  # one consistent snapshot, kept short
    try:
        return _reconcile(conn, batch_id or latest_batch_id(conn))
    finally:
        conn.execute("COMMIT")


def _reconcile(conn: sqlite3.Connection, batch_id: str) -> dict[str, Any]:
    batch = conn.execute(
        "SELECT id, gtin, lot, expiry, target, state FROM batches WHERE id = ?", (batch_id,)
    ).fetchone()
    if batch is None:
        raise LedgerError(f"no batch {batch_id!r} in the state database")
    states = dict(
        conn.execute(
            "SELECT state, count(*) FROM serials WHERE batch_id = ? GROUP BY state", (batch_id,)
        ).fetchall()
    )
    verdicts = dict(
        conn.execute(
            "SELECT verdict, count(*) FROM units WHERE batch_id = ? GROUP BY verdict", (batch_id,)
        ).fetchall()
    )
    reasons = dict(
        conn.execute(
            "SELECT reason, count(*) FROM units WHERE batch_id = ? AND verdict = 'reject' "
            "GROUP BY reason ORDER BY count(*) DESC",
            (batch_id,),
        ).fetchall()
    )
    serial_reasons = dict(
        conn.execute(
            "SELECT reason, count(*) FROM serials WHERE batch_id = ? AND state = 'rejected' "
            "GROUP BY reason ORDER BY count(*) DESC",
            (batch_id,),
        ).fetchall()
    )
    # One range of the batch's transitions index (transitions_by_batch: they carry their
    # serial's batch), states included: the cost is the batch's, not the whole history's, and
    # nothing is sorted. Per serial: commissionings (more than one is a duplicate) and
    # decommissionings (commissioned, then rejected).
    ever_commissioned, decommissioned, duplicates = conn.execute(
        "SELECT coalesce(sum(c), 0), coalesce(sum(d), 0), coalesce(sum(c > 1), 0) FROM ("
        "SELECT sum(to_state = 'commissioned') AS c, "
        "sum(from_state = 'commissioned' AND to_state = 'rejected') AS d "
        "FROM transitions WHERE batch_id = ? GROUP BY gtin, serial)",
        (batch_id,),
    ).fetchone()
    events = dict(
        conn.execute(
            "SELECT kind, count(*) FROM outbox WHERE batch_id = ? GROUP BY kind", (batch_id,)
        ).fetchall()
    )
    # Through the batch's index (``+state``: not the state index, which would walk every
    # pending event of every batch while the upstream is away)
    (pending,) = conn.execute(
        "SELECT count(*) FROM outbox WHERE batch_id = ? AND +state = 'pending'", (batch_id,)
    ).fetchone()
    allocated = sum(states.values())
    in_flight = sum(states.get(s, 0) for s in ("sent", "printed"))
    report: dict[str, Any] = {
        "batch_id": batch[0],
        "gtin": batch[1],
        "lot": batch[2],
        "expiry": batch[3],
        "target_quantity": batch[4],
        "batch_state": batch[5],
        "units": sum(verdicts.values()),
        "passed": verdicts.get("pass", 0),
        "rejected": verdicts.get("reject", 0),
        "rejected_by_reason": reasons,
        "serials_allocated": allocated,
        "serials_commissioned": states.get("commissioned", 0),
        "serials_rejected": states.get("rejected", 0),
        "serials_rejected_by_reason": serial_reasons,
        "serials_decommissioned": decommissioned,
        "serials_rejected_before_commissioning": states.get("rejected", 0) - decommissioned,
        "serials_unused": states.get("unused", 0),
        "serials_returned": states.get("returned", 0),
        "serials_quarantined": states.get("quarantined", 0),  # after a restore from backup
        "serials_sampled": states.get("sampled", 0),
        "serials_destroyed": states.get("destroyed", 0),
        "serials_allocated_unsent": states.get("allocated", 0),
        "serials_in_flight": in_flight,
        "duplicates": duplicates,
        "events_commissioning": events.get("commissioning", 0),
        "events_decommissioning": events.get("decommissioning", 0),
        "events_destroying": events.get("destroying", 0),
        "events_sampling": events.get("sampling", 0),
        "events_sample_end": events.get("sample_decommissioning", 0),
        "events_destroying_commissioned": events.get("destroying_commissioned", 0),
        "events_pending_delivery": pending,
    }
    problems = _problems(report, ever_commissioned)
    hierarchy = hierarchy_report(conn, batch_id)
    report.update(hierarchy)
    problems += hierarchy["hierarchy_problems"]
    report["problems"] = problems
    report["balanced"] = not problems
    return report


def _problems(r: dict[str, Any], ever_commissioned: int) -> list[str]:
    problems = []
    terminal = (
        r["serials_commissioned"]
        + r["serials_rejected"]
        + r["serials_unused"]
        + r["serials_returned"]
        + r["serials_quarantined"]
        + r["serials_sampled"]
        + r["serials_destroyed"]
    )
    if r["serials_allocated"] != terminal + r["serials_in_flight"] + r["serials_allocated_unsent"]:
        problems.append("serial states do not add up to the serials allocated")
    if r["batch_state"] == "closed" and (r["serials_in_flight"] or r["serials_allocated_unsent"]):
        problems.append(f"{r['serials_in_flight']} serials still in flight in a closed batch")
    after_pass = r["serials_commissioned"] + r["serials_sampled"] + r["serials_destroyed"]
    if r["passed"] != after_pass:
        problems.append(
            f"{r['passed']} units passed but {r['serials_commissioned']} serials commissioned"
            + (f" and {after_pass - r['serials_commissioned']} sampled or destroyed" if
               after_pass != r["serials_commissioned"] else "")
        )  # fmt: skip
    if not r["events_sampling"] == r["events_sample_end"] == r["serials_sampled"]:
        problems.append(
            f"{r['serials_sampled']} serials sampled but {r['events_sampling']} sampling and "
            f"{r['events_sample_end']} end-of-life events"
        )
    if r["events_destroying_commissioned"] != r["serials_destroyed"]:
        problems.append(
            f"{r['serials_destroyed']} serials destroyed after commissioning but "
            f"{r['events_destroying_commissioned']} destroying events"
        )
    if r["duplicates"]:
        problems.append(f"{r['duplicates']} serials commissioned more than once")
    if r["events_commissioning"] != ever_commissioned:
        problems.append("commissioning events do not match commissioned serials")
    if r["events_decommissioning"] != r["serials_decommissioned"]:
        problems.append(
            f"{r['events_decommissioning']} decommissioning events but "
            f"{r['serials_decommissioned']} serials rejected after commissioning"
        )
    if r["events_destroying"] != r["serials_rejected_before_commissioning"]:
        problems.append(
            f"{r['events_destroying']} destroying events but "
            f"{r['serials_rejected_before_commissioning']} serials rejected before commissioning"
        )
    return problems
