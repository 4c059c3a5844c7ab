"""PrinterLink (edge_agent/line/printer_link.py) against a fake printer and PLC: the recovery's
order of steps, its single flight, what it settles, and what it refuses to send."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import pytest

from edge_agent.contracts import ClearResult, PrintConfirmation, PrintJob, PrintRecord
from edge_agent.errors import DeviceConnectionError, LineStopped
from edge_agent.ledger import SerialState
from edge_agent.line.printer_link import PrinterLink
from tests.helpers.ledger import GTIN, ledger_with_sent, record

STOP_CODE = 16


class FlakyPrinter:
    """A printer whose link can be dropped, and which refuses the next ``refuse`` connects;
    it holds the ``queued`` records and names them when it clears them."""

    name = "printer"

    def __init__(self, queued: list[PrintRecord], refuse: int = 0) -> None:
        self.queued, self.refuse = list(queued), refuse
        self.up = True
        self.opens = 0
        self.sent: list[str] = []
        self.jobs: list[PrintJob] = []
        self.events: asyncio.Queue[PrintConfirmation | None] = asyncio.Queue()

    async def __aenter__(self) -> FlakyPrinter:
        self.opens += 1
        if self.refuse:
            self.refuse -= 1
            raise DeviceConnectionError(self.name, "connection refused")
        self.up, self.events = True, asyncio.Queue()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.up = False

    def drop(self) -> None:
        self.up = False
        self.events.put_nowait(None)

    async def send(self, record: PrintRecord) -> None:
        if not self.up:
            raise DeviceConnectionError(self.name, "connection reset")
        self.sent.append(record.serial)
        self.queued.append(record)

    async def confirmations(self) -> AsyncIterator[PrintConfirmation]:
        while True:
            event = await self.events.get()
            if event is None:
                raise DeviceConnectionError(self.name, "connection reset")
            yield event

    async def clear(self) -> ClearResult:
        discarded, self.queued = tuple(self.queued), []
        return ClearResult(discarded)

    async def select_job(self, job: PrintJob) -> None:
        self.jobs.append(job)


class FakePlc:
    """Stops the line on the second look after a stop request."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.running, self.looks = True, 0

    async def request_line_stop(self, reason_code: int) -> None:
        self.calls.append(("stop", reason_code))

    async def read_state(self) -> Any:
        self.looks += 1
        if self.calls and self.looks >= 2 and self.running:
            self.running = False
            self.calls.append(("halted",))
        return SimpleNamespace(running=self.running)

    async def clear_line_stop(self) -> None:
        self.calls.append(("clear",))


def make_link(
    printer: FlakyPrinter,
    ledger: Any,
    batch: Any,
    *,
    judged: set[str] | None = None,
    mode: Literal["auto", "stop"] = "auto",
    max_outage_s: float = 10.0,
    max_recoveries_per_hour: int = 6,
) -> tuple[PrinterLink, FakePlc, list[int], list[str]]:
    plc, settled, alarms = FakePlc(), [], []

    async def on_settled(serials: list[str]) -> None:
        settled.append(len(serials))

    link = PrinterLink(
        printer,  # type: ignore[arg-type]
        ledger,
        plc,  # type: ignore[arg-type]
        batch=lambda: batch,
        job=lambda: PrintJob("SERIAL", GTIN, "LOT1", "281200"),
        mode=mode,
        max_outage_s=max_outage_s,
        max_recoveries_per_hour=max_recoveries_per_hour,
        stop_code=STOP_CODE,
        judged=lambda: judged or set(),
        on_settled=on_settled,
        alarm=alarms.append,
    )
    return link, plc, settled, alarms


async def consume(link: PrinterLink, into: list[str]) -> None:
    async for confirmation in link.confirmations():
        into.append(confirmation.serial)


async def test_one_recovery_however_many_tasks_notice_the_loss(tmp_path: Path) -> None:
    with ledger_with_sent(tmp_path, 7) as (ledger, batch, serials):
        # s0 was judged print_unconfirmed by the camera (its commit is on the way); s6 is the
        # record being sent when the link drops; the printer still queues s4 and s5.
        printer = FlakyPrinter(queued=[record(serials, 4), record(serials, 5)], refuse=1)
        link, plc, settled, alarms = make_link(printer, ledger, batch, judged={serials[0]})
        confirmed: list[str] = []
        listener = asyncio.create_task(consume(link, confirmed))
        await asyncio.sleep(0)
        printer.drop()
        await link.send(PrintRecord(7, serials[6]))  # returns once recovered, nothing re-sent
        printer.events.put_nowait(PrintConfirmation(8, "NEW"))  # the new connection works
        await asyncio.sleep(0.05)
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        states = {s: ledger.state_of(GTIN, s) for s in serials}
    assert plc.calls == [("stop", STOP_CODE), ("halted",), ("clear",)]
    assert len(alarms) == 1 and "printer_link_lost" in alarms[0]
    assert printer.opens == 2 and len(printer.jobs) == 1  # one refused, one reconnect
    assert printer.sent == [], "a record of the lost link was sent again"
    assert confirmed == ["NEW"]
    # What the printer discarded (s4, s5) and what never reached it (s6): unused
    assert [s for s in serials if states[s] == SerialState.UNUSED] == serials[4:]
    assert states[serials[0]] == SerialState.SENT  # the camera's judgment settles it
    assert all(states[s] == SerialState.REJECTED for s in serials[1:4])
    assert settled == [6]


async def test_a_record_taken_during_the_recovery_is_not_sent_once_settled(
    tmp_path: Path,
) -> None:
    with ledger_with_sent(tmp_path, 4) as (ledger, batch, serials):
        # s1 queued, s2 being sent when the link drops; the recovery takes a few backoff steps
        printer = FlakyPrinter(queued=[record(serials, 1)], refuse=2)
        link, plc, _, _ = make_link(printer, ledger, batch)
        printer.drop()
        recovery = asyncio.create_task(link.send(PrintRecord(3, serials[2])))
        await asyncio.sleep(0.05)
        assert link.recovering
        # Taken for print before the reconcile ran: it never reached the printer, so unused
        await link.send(PrintRecord(4, serials[3]))
        await recovery
        state = ledger.state_of(GTIN, serials[3])
    assert state == SerialState.UNUSED
    assert printer.sent == [], "a serial settled by the reconcile went to the printer"
    assert plc.calls[-1] == ("clear",)


async def test_an_outage_past_the_maximum_stops_the_line_for_every_caller(
    tmp_path: Path,
) -> None:
    with ledger_with_sent(tmp_path, 3) as (ledger, batch, serials):
        printer = FlakyPrinter(queued=[], refuse=10**6)
        link, plc, settled, _ = make_link(printer, ledger, batch, max_outage_s=0.5)
        printer.drop()
        with pytest.raises(LineStopped) as stopped:
            await link.send(PrintRecord(3, serials[2]))
        with pytest.raises(LineStopped):
            await link.send(PrintRecord(3, serials[2]))
        states = {ledger.state_of(GTIN, s) for s in serials}
    assert stopped.value.reason == "printer_link_lost"
    assert "no link for 0.5 s" in str(stopped.value) and "refused" in str(stopped.value)
    assert plc.calls == [("stop", STOP_CODE), ("halted",)], "the stop must stay requested"
    assert printer.opens >= 2 and settled == []
    assert states == {SerialState.SENT}  # left for the restart's reconcile and recovery


async def test_a_flapping_link_stops_the_line_for_good(tmp_path: Path) -> None:
    with ledger_with_sent(tmp_path, 3) as (ledger, batch, serials):
        printer = FlakyPrinter(queued=[])
        link, plc, _, alarms = make_link(printer, ledger, batch, max_recoveries_per_hour=1)
        printer.drop()
        await link.send(PrintRecord(3, serials[2]))  # the first loss is recovered
        assert link.recoveries == 1 and plc.calls[-1] == ("clear",)
        printer.drop()
        with pytest.raises(LineStopped) as stopped:
            await link.send(PrintRecord(4, serials[2]))
    assert stopped.value.reason == "printer_link_lost"
    assert "link lost 2 times within an hour" in str(stopped.value)
    assert plc.calls[-1] == ("stop", STOP_CODE), "the second stop must stay requested"
    assert len(alarms) == 2 and printer.opens == 1  # one reconnect, none after the limit


async def test_stop_mode_lets_the_loss_through(tmp_path: Path) -> None:
    with ledger_with_sent(tmp_path, 1) as (ledger, batch, serials):
        printer = FlakyPrinter(queued=[])
        link, plc, _, _ = make_link(printer, ledger, batch, mode="stop")
        printer.drop()
        with pytest.raises(DeviceConnectionError):
            await link.send(PrintRecord(1, serials[0]))
        with pytest.raises(DeviceConnectionError):
            await consume(link, [])
    assert plc.calls == [] and printer.opens == 0
