"""Reconcile the printer's queue with the ledger when the agent (re)connects to a printer.

Feed-ahead keeps up to ``buffer_depth`` records in the printer. After a lost link or a restart,
the ledger holds serials that were sent but never confirmed, in send order. The printer holds a
queue of records it has not printed yet. Printing and sending are both in order, so the printer's
queue is a tail of what it received, and what it received is a subsequence of what was sent:

    sent, unconfirmed:   s1 s2 s3 s4 s5 s6
    printer's queue:                 s5 s6     (s1..s4 printed, or lost on the way)

The agent cancels the queue (``Printer.clear()`` returns how many records it discarded, say
``d``) and settles the ledger explicitly, never re-sending anything:

* the last ``d`` unconfirmed serials were never applied to a unit: ``unused``
  (``cleared_from_printer``). If a record got lost on the way, the one counted unused instead
  is a record that did reach the printer and was discarded: unused either way. A serial the
  printer printed can never be among them: it has at least ``d`` later records behind it.
* the others may be on units that passed the camera while nobody confirmed them: there is no
  camera evidence for them any more, and the PLC rejected those units for lack of a verdict.
  Recovery (``Ledger.recover_in_flight``) rejects them (``in_flight_at_restart``).

If the printer discards more records than the ledger has unconfirmed, its queue holds records
the ledger cannot account for (another batch, another host): nothing is marked unused, the
mismatch is logged, and every unconfirmed serial is rejected by recovery.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from edge_agent.contracts import Printer
from edge_agent.ledger import BatchInfo, Ledger

log = structlog.get_logger("edge_agent.line")


@dataclass(frozen=True)
class QueueReconciliation:
    """What reconnecting found: records the printer discarded, serials settled unused, serials
    left for recovery to reject (printed, or possibly printed, without confirmation)."""

    discarded: int
    unused: list[str] = field(default_factory=list)
    unconfirmed: list[str] = field(default_factory=list)


async def reconcile_printer_queue(
    printer: Printer, ledger: Ledger, batch: BatchInfo
) -> QueueReconciliation:
    """Cancel whatever the printer still queues and settle those serials in the ledger."""
    sent = ledger.unconfirmed_in_send_order(batch.id)
    discarded = await printer.clear()
    if discarded == 0:
        result = QueueReconciliation(0, [], sent)
    elif discarded <= len(sent):
        cut = len(sent) - discarded
        ledger.unuse_cleared(batch, sent[cut:])
        result = QueueReconciliation(discarded, sent[cut:], sent[:cut])
    else:
        log.error(
            "printer_queue_unaccounted",
            batch=batch.id,
            device=printer.name,
            discarded=discarded,
            unconfirmed=len(sent),
        )
        result = QueueReconciliation(discarded, [], sent)
    for serial in result.unused:
        log.warning("cleared_from_printer", batch=batch.id, serial=serial, state="unused")
    if discarded or sent:
        log.warning(
            "printer_queue_reconciled",
            batch=batch.id,
            device=printer.name,
            discarded=discarded,
            unused=len(result.unused),
            unconfirmed=len(result.unconfirmed),
        )
    return result
