"""Reconcile the printer's queue with the ledger when the agent (re)connects to a printer.

Feed-ahead keeps up to ``buffer_depth`` records in the printer. After a lost link or a restart,
the ledger holds serials that were sent but never confirmed, in send (record seq) order. The
printer holds a queue of records it has not printed yet. Sending and printing are both in order,
so the printer's queue is a tail of what it received, and what it received is a subsequence of
what was sent (a record can get lost on the way, and one taken for print may never have been
written before a crash):

    sent, unconfirmed:   s1 s2 s3 s4 s5 s6
    printer's queue:           s3    s5        (s1 s2 printed or lost; s4 lost; s6 never sent)

The agent cancels the queue, and ``Printer.clear()`` says which records it discarded by their
identity (record seq and serial) as far as the protocol can tell (``ClearResult``). The ledger is
settled from that, never from a count, and nothing is ever re-sent:

* a discarded record the printer names is ``unused`` (``cleared_from_printer``);
* an unconfirmed serial sent after the oldest named one that the printer does not hold never
  reached it (lost on the way, or never written): a record it had received would still be queued
  behind the named one, since nothing behind an unprinted record prints. ``unused``
  (``not_received_by_printer``);
* every older unconfirmed serial may be on a unit that passed the camera while nobody confirmed
  it: left to the caller, which rejects it (recovery: ``in_flight_at_restart``; a lost link:
  ``printer_link_lost``; batch end: ``print_unconfirmed``).

Where the printer cannot name what it discarded (ZPL after a restart: the printer only counts),
no serial is marked unused on a guess: a count cannot tell a record that printed from one that
did not, once a record was lost on the way or another host queued labels. Named records the
ledger does not hold as unconfirmed (another batch, another host) are logged and settle nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from edge_agent.contracts import ClearResult, Printer
from edge_agent.ledger import BatchInfo, Ledger

log = structlog.get_logger("edge_agent.line")


@dataclass(frozen=True)
class QueueReconciliation:
    """What reconnecting found: how many records the printer discarded; the serials settled
    unused because the printer named them (``cleared``) or because they provably never reached
    it (``not_received``); the serials left for the caller to reject (printed, or possibly
    printed, without confirmation); named records that are not the ledger's (``unaccounted``)."""

    discarded: int
    cleared: list[str] = field(default_factory=list)
    not_received: list[str] = field(default_factory=list)
    unconfirmed: list[str] = field(default_factory=list)
    unaccounted: int = 0
    unused: list[str] = field(default_factory=list)  # cleared and not_received, in send order


def settle(sent: Sequence[tuple[int, str]], cleared: ClearResult) -> QueueReconciliation:
    """Pure: the unconfirmed ``(seq, serial)`` records in send order and what the printer
    discarded -> how each serial is settled (see the module docstring)."""
    position = {record: i for i, record in enumerate(sent)}
    named = {position[(r.seq, r.serial)] for r in cleared.named if (r.seq, r.serial) in position}
    unaccounted = len({(r.seq, r.serial) for r in cleared.named}) - len(named)
    serials = [serial for _, serial in sent]
    if not named:
        return QueueReconciliation(cleared.discarded, unconfirmed=serials, unaccounted=unaccounted)
    oldest = min(named)
    return QueueReconciliation(
        cleared.discarded,
        cleared=[serials[i] for i in sorted(named)],
        not_received=[serials[i] for i in range(oldest, len(serials)) if i not in named],
        unconfirmed=serials[:oldest],
        unaccounted=unaccounted,
        unused=serials[oldest:],
    )


async def reconcile_printer_queue(
    printer: Printer, ledger: Ledger, batch: BatchInfo
) -> QueueReconciliation:
    """Cancel whatever the printer still queues and settle those serials in the ledger."""
    await ledger.flush()  # confirmations on their way to the state writer count as confirmed
    sent = ledger.unconfirmed_in_send_order(batch.id)
    cleared = await printer.clear()
    result = settle(sent, cleared)
    ledger.unuse_cleared(batch, result.cleared, not_received=result.not_received)
    _log(printer, batch, cleared, result)
    return result


def _log(
    printer: Printer, batch: BatchInfo, cleared: ClearResult, result: QueueReconciliation
) -> None:
    for serial in result.cleared:
        log.warning("cleared_from_printer", batch=batch.id, serial=serial, state="unused")
    for serial in result.not_received:
        log.warning("not_received_by_printer", batch=batch.id, serial=serial, state="unused")
    if result.unaccounted:
        log.error(
            "printer_queue_unaccounted",
            batch=batch.id,
            device=printer.name,
            records=result.unaccounted,
            why="the printer discarded records the ledger does not hold as unconfirmed",
        )
    if cleared.unnamed:
        log.warning(
            "printer_queue_unidentified",
            batch=batch.id,
            device=printer.name,
            records=cleared.unnamed,
            why="the printer cannot say which records it discarded; none is settled unused",
        )
    if cleared.discarded or result.unconfirmed or result.unused:
        log.warning(
            "printer_queue_reconciled",
            batch=batch.id,
            device=printer.name,
            discarded=cleared.discarded,
            unused=len(result.unused),
            not_received=len(result.not_received),
            unconfirmed=len(result.unconfirmed),
        )
