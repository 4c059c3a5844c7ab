"""Keep the line's printer connected across a lost link, without giving up any ledger promise.

With ``[line] printer_reconnect = "auto"``, a ``DeviceConnectionError`` from the printer (cable
pulled, printer rebooted, switch port flapping) no longer ends the run. The runtime's ``send`` and
``confirmations`` go through a ``PrinterLink``, and the first of them to hit the loss recovers:

1. one alarm (``printer_link_lost``) and a PLC line stop with that reason; the agent waits (a
   little) for the PLC to report the line stopped: units in flight wait, and are then decided as
   always from camera evidence (a serial the printer never confirmed is rejected);
2. reconnect with capped, jittered exponential backoff, for at most ``printer_max_outage_s``; past
   that the line stops for good (``LineStopped("printer_link_lost")``), as it did before;
3. the printer's queue is cancelled and settled exactly as at a restart
   (``reconcile_printer_queue``): what the printer discarded becomes ``unused``, every other
   unconfirmed serial may be on a unit nobody verified and is rejected (``printer_link_lost``).
   Nothing is sent again; a record taken for print during the recovery is sent only if the
   reconcile left it untouched;
4. the job is selected again, the runtime's flow control gets back the settled serials, and the
   PLC line stop is cleared: the line may run again (a PLC that wants the operator's
   acknowledgement after any stop keeps it stopped until then).

With ``"stop"`` every loss propagates, and the line stops as before (reconcile at the restart).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Literal

import structlog

from edge_agent.contracts import PlcLink, PrintConfirmation, Printer, PrintJob, PrintRecord
from edge_agent.errors import (
    DeviceConnectionError,
    DeviceError,
    DeviceTimeout,
    EdgeAgentError,
    LineStopped,
)
from edge_agent.ledger import BatchInfo, Ledger, SerialState
from edge_agent.line.printer_reconcile import reconcile_printer_queue
from edge_agent.stops import StopReason

log = structlog.get_logger("edge_agent.line")

REASON = StopReason.PRINTER_LINK_LOST
FIRST_DELAY_S = 0.2  # as the drivers' own connect retries
MAX_DELAY_S = 5.0
HALT_WAIT_S = 2.0  # how long the PLC may take to report the line stopped


def next_delay(attempt: int, rng: random.Random, first: float = FIRST_DELAY_S) -> float:
    """Exponential, capped, with "equal jitter" (half fixed, half random): several agents
    re-dialling one printer server after a switch reboot do not hit it in lockstep."""
    ceiling = min(MAX_DELAY_S, first * 2.0 ** min(attempt, 30))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


class PrinterLink:
    """The runtime's printer, recovered in-process on a lost link (see the module docstring)."""

    def __init__(
        self,
        printer: Printer,
        ledger: Ledger,
        plc: PlcLink,
        *,
        batch: Callable[[], BatchInfo],
        job: Callable[[], PrintJob],
        mode: Literal["auto", "stop"],
        max_outage_s: float,
        max_recoveries_per_hour: int = 6,
        stop_code: int,
        judged: Callable[[], Collection[str]],
        on_settled: Callable[[list[str]], Awaitable[None]],
        alarm: Callable[[str], None],
    ) -> None:
        self.printer = printer
        self.ledger = ledger
        self.plc = plc
        self._batch = batch
        self._job = job
        self.mode = mode
        self.max_outage_s = max_outage_s
        self.max_recoveries_per_hour = max_recoveries_per_hour
        self._recovered_at: list[float] = []  # monotonic times of recent recoveries
        self._stop_code = stop_code
        self._judged = judged  # serials the camera judged print_unconfirmed, maybe not committed
        self._on_settled = on_settled
        self._alarm = alarm
        self._lock = asyncio.Lock()  # held for a whole recovery
        self._generation = 0  # connections recovered so far
        self._failed: EdgeAgentError | None = None  # the recovery that ended the run
        self._rng = random.Random()

    # --- what the runtime calls --------------------------------------------------------------

    @property
    def recoveries(self) -> int:
        """Losses recovered so far."""
        return self._generation

    @property
    def recovering(self) -> bool:
        return self._lock.locked()

    async def send(self, record: PrintRecord) -> None:
        if self._lock.locked():
            # Taken for print while the link was being recovered: the reconcile may have settled
            # it already, and a settled serial must never reach the printer.
            async with self._lock:
                pass
            if self._settled_meanwhile(record):
                return
        generation = self._generation
        try:
            await self.printer.send(record)
        except DeviceConnectionError as exc:
            if self.mode == "stop":
                raise
            # Whether the printer took it is unknown: the reconcile settles it, never a re-send
            await self.recover(generation, exc)

    async def confirmations(self) -> AsyncIterator[PrintConfirmation]:
        while True:
            generation = self._generation
            try:
                async for confirmation in self.printer.confirmations():
                    yield confirmation
            except DeviceConnectionError as exc:
                if self.mode == "stop":
                    raise
                await self.recover(generation, exc)

    # --- recovery ----------------------------------------------------------------------------

    async def recover(self, generation: int, cause: DeviceConnectionError) -> None:
        """Recover the connection lost at ``generation``, once, whoever notices first."""
        async with self._lock:
            if self._failed is not None:
                raise self._failed
            if generation != self._generation:
                return  # another task recovered it already
            try:
                await self._recover(cause)
            except EdgeAgentError as exc:  # the line stops: no other task may try again
                self._failed = exc
                raise
            self._generation += 1

    async def _recover(self, cause: DeviceConnectionError) -> None:
        batch, started = self._batch(), time.monotonic()
        log.error(REASON, batch=batch.id, device=self.printer.name, detail=str(cause))
        self._alarm(f"{REASON}: {cause}")
        await self.plc.request_line_stop(self._stop_code)  # units in flight wait meanwhile
        # A link that keeps dropping would halt and resume the line forever: a person must look.
        self._recovered_at = [t for t in self._recovered_at if started - t < 3600]
        if len(self._recovered_at) >= self.max_recoveries_per_hour:
            raise LineStopped(
                REASON,
                f"printer {self.printer.name}: link lost {len(self._recovered_at) + 1} times "
                f"within an hour ({cause}); check its cable or network, then restart the line",
            )
        deadline = started + self.max_outage_s
        await self._await_halt(batch, min(HALT_WAIT_S, self.max_outage_s))
        attempt, last, settled = 0, str(cause), list[str]()
        while True:
            await self._close()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LineStopped(
                    REASON,
                    f"printer {self.printer.name}: no link for {self.max_outage_s:g} s ({last})",
                )
            try:
                async with asyncio.timeout(remaining):
                    await self.printer.__aenter__()
                    # Kept across attempts: a later one finds these settled already
                    settled += await self._reconcile(batch)
                    await self.printer.select_job(self._job())
                break
            except (DeviceConnectionError, DeviceTimeout, TimeoutError) as exc:
                last = str(exc) or "reconnect timed out"
                delay = min(next_delay(attempt, self._rng), max(0.0, deadline - time.monotonic()))
                log.warning(
                    "printer_reconnect_failed", device=self.printer.name, error=last, retry_s=delay
                )
                attempt += 1
                await asyncio.sleep(delay)
        await self._on_settled(settled)
        await self.plc.clear_line_stop()
        self._recovered_at.append(time.monotonic())
        log.warning(
            "printer_link_restored",
            batch=batch.id,
            device=self.printer.name,
            outage_s=round(time.monotonic() - started, 2),
            attempts=attempt + 1,
        )

    async def _await_halt(self, batch: BatchInfo, within_s: float) -> None:
        """Wait until the PLC reports the line stopped: the settling then happens while nothing
        moves, and the stop is cleared only once the PLC has acted on it. A PLC that does not
        report it in time is logged; the settling is right either way (printer_reconcile.py)."""
        until = time.monotonic() + within_s
        while (await self.plc.read_state()).running:
            if time.monotonic() > until:
                log.warning("line_not_halted", batch=batch.id, waited_s=within_s)
                return
            await asyncio.sleep(0.02)

    async def _close(self) -> None:
        try:
            await self.printer.__aexit__(None, None, None)
        except DeviceError as exc:  # the link is gone already; closing it cannot do more
            log.info("printer close failed", device=self.printer.name, error=str(exc))

    async def _reconcile(self, batch: BatchInfo) -> list[str]:
        """Settle every serial of the lost link, as at a restart; returns the serials settled
        (each held a place in the runtime's feed-ahead and in-flight counts)."""
        result = await reconcile_printer_queue(self.printer, self.ledger, batch)
        judged = self._judged()
        doubtful = [s for s in result.unconfirmed if s not in judged]
        rejected = self.ledger.reject_sent(batch, doubtful, REASON)
        for serial in rejected:
            log.warning("unconfirmed_at_link_loss", batch=batch.id, serial=serial, verdict="reject")
        return [*result.unused, *rejected]

    def _settled_meanwhile(self, record: PrintRecord) -> bool:
        batch = self._batch()
        state = self.ledger.state_of(batch.gtin, record.serial)
        if state == SerialState.SENT:
            return False
        log.warning(
            "record_settled_by_reconnect", batch=batch.id, serial=record.serial, state=state
        )
        return True
