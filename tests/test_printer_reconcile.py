"""Reconciling the printer's queue with the ledger on (re)connect (edge_agent/line/printer_reconcile)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.contracts import PrintConfirmation
from edge_agent.db import open_db
from edge_agent.ledger import BatchInfo, Ledger, SerialState
from edge_agent.line.printer_reconcile import reconcile_printer_queue
from edge_agent.line.runtime import LineRuntime

GTIN = "09506000134352"


class QueuePrinter:
    """Just enough of a printer: ``clear()`` discards a queue of records and says how many."""

    name = "printer"

    def __init__(self, queued: int) -> None:
        self.queued = queued
        self.clears = 0

    async def clear(self) -> int:
        self.clears += 1
        discarded, self.queued = self.queued, 0
        return discarded


@contextlib.contextmanager
def ledger_with_sent(state_dir: Path, sent: int) -> Iterator[tuple[Ledger, BatchInfo, list[str]]]:
    ledger = Ledger(open_db(state_dir), read_point="urn:x", company_prefix_length=7)
    try:
        batch = ledger.open_batch("B1", GTIN, "LOT1", "281200", 100)
        ledger.ensure_allocated(batch, sent, length=10, alphabet="0123456789ABCDEF")
        serials = []
        for _ in range(sent):
            taken = ledger.take_for_print(batch)
            assert taken is not None
            serials.append(taken[1])
        yield ledger, batch, serials
    finally:
        ledger.conn.close()


@pytest.mark.parametrize(("sent", "confirmed", "queued"), [(6, 0, 2), (6, 2, 4), (5, 0, 0)])
async def test_the_last_discarded_serials_become_unused_the_rest_stay_unconfirmed(
    tmp_path: Path, sent: int, confirmed: int, queued: int
) -> None:
    with ledger_with_sent(tmp_path, sent) as (ledger, batch, serials):
        for serial in serials[:confirmed]:
            ledger.mark_printed(batch, serial)
        printer = QueuePrinter(queued)
        result = await reconcile_printer_queue(printer, ledger, batch)  # type: ignore[arg-type]
        states = {s: ledger.state_of(GTIN, s) for s in serials}
    assert printer.clears == 1
    unsent_tail = serials[sent - queued :] if queued else []
    assert result.unused == unsent_tail
    assert result.unconfirmed == serials[confirmed : sent - queued]
    for serial in unsent_tail:
        assert states[serial] == SerialState.UNUSED
    for serial in serials[confirmed : sent - queued]:
        assert states[serial] == SerialState.SENT  # recovery rejects these next
    for serial in serials[:confirmed]:
        assert states[serial] == SerialState.PRINTED


async def test_a_queue_the_ledger_cannot_account_for_settles_nothing_as_unused(
    tmp_path: Path,
) -> None:
    with ledger_with_sent(tmp_path, 3) as (ledger, batch, serials):
        result = await reconcile_printer_queue(QueuePrinter(5), ledger, batch)  # type: ignore[arg-type]
        states = {ledger.state_of(GTIN, s) for s in serials}
    assert (result.discarded, result.unused, result.unconfirmed) == (5, [], serials)
    assert states == {SerialState.SENT}


@settings(max_examples=25, deadline=None)
@given(st.data())
async def test_a_printed_serial_is_never_settled_unused(data: st.DataObject) -> None:
    """Whatever reached the printer and whatever it printed (in order), the serials marked
    unused are never ones it printed."""
    sent = data.draw(st.integers(1, 12))
    received = sorted(data.draw(st.sets(st.integers(0, sent - 1))))  # some lost on the way
    printed_n = data.draw(st.integers(0, len(received)))
    printed, queue = received[:printed_n], received[printed_n:]
    with (
        tempfile.TemporaryDirectory() as tmp,
        ledger_with_sent(Path(tmp), sent) as (
            ledger,
            batch,
            serials,
        ),
    ):
        result = await reconcile_printer_queue(QueuePrinter(len(queue)), ledger, batch)  # type: ignore[arg-type]
    assert not {serials[i] for i in printed} & set(result.unused)
    assert len(result.unused) == len(queue)


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
