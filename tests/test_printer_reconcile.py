"""Reconciling the printer's queue with the ledger on (re)connect (edge_agent/line/printer_reconcile)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.contracts import ClearResult, PrintConfirmation, PrintRecord
from edge_agent.ledger import SerialState
from edge_agent.line.job import LineJob
from edge_agent.line.printer_reconcile import reconcile_printer_queue, settle
from edge_agent.line.runtime import LineRuntime
from tests.helpers.ledger import GTIN, ledger_with_sent, record


def job_of(batch: Any) -> LineJob:
    return LineJob(batch.id, batch.gtin, batch.lot, batch.expiry, batch.target)


class QueuePrinter:
    """Just enough of a printer: ``clear()`` discards a queue of records and says which ones,
    or (``names=False``, a protocol that only counts) only how many."""

    name = "printer"

    def __init__(self, queued: list[PrintRecord], *, names: bool = True) -> None:
        self.queued, self.names = queued, names
        self.clears = 0

    async def clear(self) -> ClearResult:
        self.clears += 1
        discarded, self.queued = tuple(self.queued), []
        return ClearResult(discarded) if self.names else ClearResult(unnamed=len(discarded))


@pytest.mark.parametrize(
    ("sent", "confirmed", "queue", "not_received"),
    [
        (6, 0, [4, 5], []),
        (6, 2, [2, 3, 4, 5], []),
        (5, 0, [], []),
        # the restart of issue 10: s5 was taken for print but never written before the crash
        (6, 0, [2, 3, 4], [5]),
        # s3 got lost on the way, s5 never written: neither ever reached the printer
        (6, 1, [2, 4], [3, 5]),
    ],
)
async def test_discarded_records_are_settled_by_identity_never_by_count(
    tmp_path: Path, sent: int, confirmed: int, queue: list[int], not_received: list[int]
) -> None:
    with ledger_with_sent(tmp_path, sent) as (ledger, batch, serials):
        for serial in serials[:confirmed]:
            ledger.mark_printed(batch, serial)
        printer = QueuePrinter([record(serials, i) for i in queue])
        result = await reconcile_printer_queue(printer, ledger, batch)  # type: ignore[arg-type]
        states = {s: ledger.state_of(GTIN, s) for s in serials}
        reasons = dict(
            ledger.conn.execute(
                "SELECT serial, reason FROM serials WHERE state = 'unused'"
            ).fetchall()
        )
    assert printer.clears == 1
    oldest = queue[0] if queue else sent
    assert result.cleared == [serials[i] for i in queue]
    assert result.not_received == [serials[i] for i in not_received]
    assert result.unused == (serials[oldest:] if queue else [])
    assert result.unconfirmed == serials[confirmed:oldest]
    for i in queue:
        assert (states[serials[i]], reasons[serials[i]]) == (
            SerialState.UNUSED,
            "cleared_from_printer",
        )
    for i in not_received:
        assert (states[serials[i]], reasons[serials[i]]) == (
            SerialState.UNUSED,
            "not_received_by_printer",
        )
    for serial in serials[confirmed:oldest]:
        assert states[serial] == SerialState.SENT  # may be on a unit: recovery rejects these next
    for serial in serials[:confirmed]:
        assert states[serial] == SerialState.PRINTED


async def test_records_the_ledger_cannot_account_for_settle_nothing_as_unused(
    tmp_path: Path,
) -> None:
    with ledger_with_sent(tmp_path, 3) as (ledger, batch, serials):
        # Another host's records, and one of ours under the wrong record number
        foreign = [PrintRecord(1, "OTHER1"), PrintRecord(2, "OTHER2"), PrintRecord(9, serials[2])]
        result = await reconcile_printer_queue(QueuePrinter(foreign), ledger, batch)  # type: ignore[arg-type]
        states = {ledger.state_of(GTIN, s) for s in serials}
    assert (result.discarded, result.unused, result.unconfirmed) == (3, [], serials)
    assert result.unaccounted == 3
    assert states == {SerialState.SENT}


async def test_a_printer_that_only_counts_settles_nothing_as_unused(tmp_path: Path) -> None:
    """A count cannot tell which records were discarded: none is settled unused on a guess."""
    with ledger_with_sent(tmp_path, 4) as (ledger, batch, serials):
        printer = QueuePrinter([record(serials, 2), record(serials, 3)], names=False)
        result = await reconcile_printer_queue(printer, ledger, batch)  # type: ignore[arg-type]
        states = {ledger.state_of(GTIN, s) for s in serials}
    assert (result.discarded, result.unused, result.unconfirmed) == (2, [], serials)
    assert states == {SerialState.SENT}


@st.composite
def printer_histories(draw: st.DrawFn) -> tuple[int, list[int], list[int], ClearResult]:
    """What the ledger sent (n records), what reached the printer (some lost on the way, the
    last ones maybe never written), what it printed (in order), and what its clear reports:
    its queue, maybe with another host's records in it, named in full, in part (a newest
    tail, as a ZPL driver names its own records behind older ones) or not at all."""
    n = draw(st.integers(0, 12))
    received = sorted(draw(st.sets(st.integers(0, n - 1)))) if n else []
    printed = received[: draw(st.integers(0, len(received)))]
    queue: list[PrintRecord] = [PrintRecord(i + 1, f"S{i}") for i in received[len(printed) :]]
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(queue)))
        queue.insert(at, PrintRecord(draw(st.integers(1, 20)), "FOREIGN"))
    named = draw(st.integers(0, len(queue)))
    cleared = ClearResult(tuple(queue[len(queue) - named :]), len(queue) - named)
    return n, received, printed, cleared


@settings(max_examples=300, deadline=None)
@given(printer_histories())
def test_settling_never_marks_unused_what_may_be_on_a_unit(
    history: tuple[int, list[int], list[int], ClearResult],
) -> None:
    n, received, printed, cleared = history
    sent = [(i + 1, f"S{i}") for i in range(n)]
    result = settle(sent, cleared)
    index = {serial: i for i, (_, serial) in enumerate(sent)}
    unused = {index[s] for s in result.unused}
    assert not unused & set(printed), "a printed serial was settled unused"
    assert sorted(unused | {index[s] for s in result.unconfirmed}) == list(range(n))
    assert not unused & {index[s] for s in result.unconfirmed}
    named_ours = {r.seq - 1 for r in cleared.named if r.serial != "FOREIGN"}
    assert {index[s] for s in result.cleared} == named_ours, "a named record was not cleared"
    assert not {index[s] for s in result.not_received} & set(received)
    if not named_ours:
        assert result.unused == [], "unused on a guess"


class ConfirmingPrinter:
    """Delivers the confirmations a test hands it, when it hands them."""

    name = "printer"
    buffer_depth = 4

    def __init__(self) -> None:
        self.queue: asyncio.Queue[PrintConfirmation] = asyncio.Queue()

    async def confirmations(self) -> AsyncIterator[PrintConfirmation]:
        while True:
            yield await self.queue.get()


async def test_a_confirmation_after_the_unit_was_judged_unconfirmed_is_not_queued(
    tmp_path: Path, agent_config_factory: Any
) -> None:
    """A polled printer can confirm a label just after its frame was judged print_unconfirmed.
    Queued then, the serial would be settled twice: rejected for its own frame, and again as
    skipped (no_frame) when the next unit is matched -- a storage error that stops the line."""
    config = agent_config_factory().model
    with ledger_with_sent(tmp_path / "db", 2) as (ledger, batch, serials):
        printer = ConfirmingPrinter()
        runtime = LineRuntime(
            config,
            ledger,
            job_of(batch),
            printer=printer,
            camera=None,
            plc=None,
            reader=None,  # type: ignore[arg-type]
        )
        runtime.batch = batch
        runtime._unprinted = 2
        position, reason = await runtime._locate(serials[0])  # no confirmation within the wait
        assert (position.serial, reason) == (serials[0], "print_unconfirmed")
        task = asyncio.create_task(runtime._confirmations())
        try:
            await printer.queue.put(PrintConfirmation(1, serials[0]))  # late
            await printer.queue.put(PrintConfirmation(2, serials[1]))
            async with asyncio.timeout(5):
                while serials[1] not in runtime.printed:  # noqa: ASYNC110
                    await asyncio.sleep(0.005)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert runtime.printed.snapshot() == [serials[1]]
        assert ledger.state_of(GTIN, serials[0]) == SerialState.SENT  # its reject settles it
        assert runtime._unprinted == 0  # each label released its printer slot once
