"""The line runtime: one segment of an order's run, from serial allocation to verdicts, as
asyncio tasks (the line controller runs a new segment after every hold; see controller.py).

    feed ──► printer ──► confirmations ──► PrintedQueue
                                                 │
    camera frames ──► decode (thread pool) ──► decide ──► commit (ledger + outbox) ──► PLC verdict

Tasks are joined by bounded queues and run in one TaskGroup. A unit passes only after its
commissioning transition and event are committed; every doubt (no read, wrong content, late,
storage error, lost link) is a reject, and ``max_consecutive_rejects`` in a row stop the line.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import sqlite3
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import structlog

from edge_agent import systemd
from edge_agent.asyncio_support import raise_if_cancel_lost as _raise_if_cancel_lost
from edge_agent.config.models import AgentConfig
from edge_agent.contracts import (
    AgentLineState,
    CodeRead,
    CodeReader,
    Frame,
    FrameSource,
    LineStatus,
    PlcLink,
    PlcStatusLink,
    PlcVerdictsLink,
    Printer,
    PrintJob,
    PrintRecord,
    Verdict,
)
from edge_agent.crashpoints import crash_point
from edge_agent.errors import DeviceFault, DeviceTimeout, EdgeAgentError, LineStopped
from edge_agent.ledger import BatchInfo, Ledger, SerialState, UnitOutcome
from edge_agent.line.group_commit import CommitCompany
from edge_agent.line.job import LineJob
from edge_agent.line.printer_link import PrinterLink
from edge_agent.line.printer_reconcile import reconcile_printer_queue
from edge_agent.line.silence import DeviceSilence
from edge_agent.line.stats import LineStats
from edge_agent.line.tracking import Position, PrintedQueue, SeenTriggers
from edge_agent.line.verify import BatchIdentity, check_content, serial_pattern_for
from edge_agent.stops import StopReason
from edge_agent.storage import storage_stop
from edge_agent.vision.archive import FailedFrameArchive
from edge_agent.vision.grade import with_grades

log = structlog.get_logger("edge_agent.line")

_COMMIT_GROUP = 64
_ALLOCATE_BLOCK = 64
_CONFIRM_WAIT_S = 0.1  # how long a frame may wait for its print confirmation to arrive
# How long a commit waits for others to share its fsync, and when (group_commit.py). Measured on
# 2 quiet cores (line_throughput, 3000 units, fdatasync counted by perf): no wait 0.81 fdatasync
# per unit, 16,200-18,100 units/min, p99 20-23 ms; 7 ms at full speed 0.47 per unit, 17,100-17,700
# units/min, p99 19.5-20.3 ms, and less CPU per unit.
_COMMIT_COMPANY_S = 0.007
_MAX_UNACKNOWLEDGED = 3  # records in a row the printer did not acknowledge: it stopped answering


class _BatchComplete(Exception):
    pass


def _refill_block(depth: int, window: int) -> int:
    """Records marked sent per commit: half the printer's buffer (and of the in-flight window),
    so a block fits whenever the printer has printed half of what it holds."""
    return max(1, min(depth, window) // 2)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass
class _Pending:
    frame: Frame
    outcome: UnitOutcome


class LineRuntime:
    def __init__(
        self,
        config: AgentConfig,
        ledger: Ledger,
        job: LineJob,
        *,
        printer: Printer,
        camera: FrameSource,
        plc: PlcLink,
        reader: CodeReader,
        stats: LineStats | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = config
        self.ledger = ledger
        self.job = job
        self.printer = printer
        self.camera = camera
        self.plc = plc
        # A protocol check walks the protocol's members on every call: the link's abilities
        # are fixed, so they are looked up once rather than for each group of verdicts.
        self._verdicts_link = plc if isinstance(plc, PlcVerdictsLink) else None
        self._status_link = plc if isinstance(plc, PlcStatusLink) else None
        self.reader = reader
        self.stats = stats or LineStats()
        self.on_tick = on_tick or (lambda: None)
        self.batch: BatchInfo | None = None
        self.printed = PrintedQueue()
        self._identity = BatchIdentity(job.gtin, job.lot, job.expiry)
        # Flow control: records in the printer's buffer, and units printed but not yet decided.
        # The second bounds the whole line when it runs faster than the agent (fast mode).
        self._unprinted = 0
        self._undecided = 0
        # Records marked sent but not yet handed to the printer (the rest of the block being
        # sent): a line stop leaves them never sent (settled unused at the stop). ``_reserved``
        # counts them and the block being taken ahead: each holds its places in both counts from
        # before its commit, so a reconnect that settles it releases places it holds.
        self._taken: collections.deque[tuple[int, str]] = collections.deque()
        self._reserved = 0
        self._void: set[str] = set()  # settled by a reconnect before they were handed over
        self._flow = asyncio.Condition()
        self._decode_q: asyncio.Queue[tuple[Frame, asyncio.Future[list[CodeRead]]]] = asyncio.Queue(
            64
        )
        self._commit_q: asyncio.Queue[_Pending] = asyncio.Queue(256)
        self._committed_q: asyncio.Queue[list[_Pending]] = asyncio.Queue(1)  # to be written
        self._deciding = 0  # frames taken for a decision, not yet queued for the commit
        self._decision_waiter: asyncio.Future[None] | None = None  # a commit waiting for company
        self._company = CommitCompany(_COMMIT_COMPANY_S)
        self._feed_done = asyncio.Event()
        self._last_activity = time.monotonic()
        # reject trigger → when its verdict was written
        self._awaiting_confirm: dict[int, float] = {}
        self._missing_confirms = 0
        self._confirms_seen: int | None = None
        # The newest trigger taken from the reject log. The gate confirms rejects in conveyor
        # (= trigger) order, so entries above it are the unseen ones, however many confirms
        # landed between reading the counter and reading the log.
        self._last_confirmed = 0
        # Units the PLC rejected before the agent decided them (the verdict came too late).
        self._gated_before_decided: set[int] = set()
        self._last_trigger = 0
        self._seen = SeenTriggers()  # triggers whose frame was taken for a decision
        # Bounded waits on the devices (silence.py); running = the PLC's last word on the line
        self._line_running = False
        line, now = config.line, time.monotonic()
        self._printer_silence = DeviceSilence(
            line.print_confirm_timeout_s, "print confirmations", now
        )
        self._camera_silence = DeviceSilence(
            line.no_frame_timeout_s, "frames for printed units", now
        )
        vision = config.vision
        self._serial_pattern = serial_pattern_for(
            vision.serial_pattern, job.serial_source, job.serial_length, job.serial_alphabet
        )
        self.archive = (
            FailedFrameArchive(vision.archive_dir, vision.archive_max_files)
            if vision.archive_dir is not None
            else None
        )
        self._details: dict[int, str] = {}  # trigger -> what the content check found wrong
        # Extra watchers run in the line's TaskGroup; a LineStopped from one stops the line
        # (the outbox quota guard). Set by the Agent before run().
        self.guards: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []
        self._unacknowledged = 0  # records in a row sent without the printer's acknowledgement
        # A line stop asked for from outside the line's tasks (a signal, a forwarder); see
        # request_stop. The first one wins.
        self._stop_request: LineStopped | None = None
        self._stop_requested = asyncio.Event()
        self._active = False  # run() has started and not yet ended
        self.beating = False  # the heartbeat loop runs (and feeds the systemd watchdog)
        # Serials whose frame was judged print_unconfirmed before the confirmation came
        self._judged_unconfirmed: set[str] = set()
        self._link = PrinterLink(
            printer,
            ledger,
            plc,
            batch=lambda: self._batch,
            job=self._print_job,
            mode=config.line.printer_reconnect,
            max_outage_s=config.line.printer_max_outage_s,
            max_recoveries_per_hour=config.line.printer_max_reconnects_per_hour,
            stop_code=StopReason.PRINTER_LINK_LOST.code,
            judged=lambda: self._judged_unconfirmed,
            on_settled=self._after_printer_reconnect,
            alarm=self.stats.alarms.append,
        )

    # --- lifecycle --------------------------------------------------------------------------

    def request_stop(self, stop: LineStopped) -> bool:
        """Stop the line as any line stop does (units in flight settled, the PLC told why),
        from outside the line's own tasks: a signal, a forwarder that cannot record. The first
        request wins. False when no run is under way that could stop."""
        if self._stop_request is None:
            self._stop_request = stop
            self._stop_requested.set()
        return self._active

    async def _stop_when_requested(self) -> None:
        await self._stop_requested.wait()
        assert self._stop_request is not None
        raise self._stop_request

    async def run(self) -> BatchInfo:
        """Run (or resume) the job until its quantity is printed and every unit is decided.
        Raises LineStopped on a line stop."""
        self._active = True
        try:
            return await self._run()
        finally:
            self._active = self.beating = False

    async def _run(self) -> BatchInfo:
        try:
            await self._start()
        except sqlite3.Error as exc:
            await self._stop_line(storage_stop(exc, self.cfg.agent.state_dir))
        executor = ThreadPoolExecutor(self.cfg.line.decode_threads, thread_name_prefix="decode")
        await self._warm_up(executor)
        stop: BaseException | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                # Stop requests and guards first: a stop already due acts before any record is
                # sent (a task's first step runs in creation order).
                for name, job in (
                    ("stop-requests", self._stop_when_requested),
                    *self.guards,
                    ("heartbeat", self._heartbeat),
                    ("feed", self._feed),
                    ("print-confirmations", self._confirmations),
                    ("frames", lambda: self._frames(executor)),
                    ("decide", self._decide),
                    ("commit", self._commit),
                    ("verdicts", self._verdicts),
                    ("reject-confirms", self._watch_rejects),
                    ("device-silence", self._watch_silence),
                    ("batch-end", self._finish),
                ):
                    tg.create_task(job(), name=name)
        except* _BatchComplete:
            pass
        except* sqlite3.Error as group:  # any storage failure of any task: a storage stop
            stop = storage_stop(group.exceptions[0], self.cfg.agent.state_dir)
        except* EdgeAgentError as group:
            stop = stop or group.exceptions[0]
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
            if self.archive is not None:
                await asyncio.to_thread(self.archive.close)
        if stop is not None:
            await self._stop_line(stop)
        return self._batch

    async def _start(self) -> None:
        j = self.job
        self.batch = self.ledger.open_batch(j.id, j.gtin, j.lot, j.expiry, j.quantity)
        log.info("batch_open", batch=j.id, gtin=j.gtin, lot=j.lot, target=j.quantity)
        await self._prepare_printer()
        await self._recover()
        # Rejects in a row are counted within one segment: the operator who resumes after a
        # repeated-rejects hold has dealt with the cause (a restart counts afresh too).
        self.stats.consecutive_rejects = 0
        await self._release_line()

    async def _warm_up(self, executor: ThreadPoolExecutor) -> None:
        """Decode a blank frame on every thread first: the first call into the decoder is slow,
        and that cost must not fall on the first units of the batch."""
        blank = np.full((64, 64), 255, dtype=np.uint8)
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(
                loop.run_in_executor(executor, self.reader.read, blank)
                for _ in range(self.cfg.line.decode_threads)
            )
        )

    async def _prepare_printer(self) -> None:
        # Records left in the printer from before a restart must never be printed now: the
        # cancelled ones become unused, the rest are settled by recovery as in-flight.
        await reconcile_printer_queue(self.printer, self.ledger, self._batch)
        await self.printer.select_job(self._print_job())

    async def _recover(self) -> None:
        batch = self._batch
        settled = self.ledger.recover_in_flight(batch)
        for serial, state in settled:
            log.warning(
                "in_flight_at_restart", batch=batch.id, serial=serial, was=state, verdict="reject"
            )
        unwritten = self.ledger.unwritten_passes(batch)
        if unwritten:
            await self._settle_unwritten_passes(unwritten)
        await self._apply_missed_confirms()
        await self._remember_decided_triggers()

    async def _remember_decided_triggers(self) -> None:
        """Units decided before this start keep their one verdict: a camera re-sending such a
        frame after the restart is a repeat too. Only counts the PLC has reached are taken, and
        within the window, so a PLC whose counter was reset meanwhile is not second-guessed."""
        newest = (await self.plc.read_state()).trigger_count
        for trigger in self.ledger.recent_triggers(self._batch, self._seen.size):
            if newest - self._seen.size < trigger <= newest:
                self._seen.add(trigger)

    async def _release_line(self) -> None:
        """Withdraw the line-stop request an earlier run left set (every line stop ends the agent
        with it set): with it, no PLC reset could ever start the line again. Only after recovery,
        so everything in flight was settled while nothing moved; a PLC that wants the operator's
        reset after a stop still waits for it."""
        await self.plc.clear_line_stop()
        await self._publish_status(AgentLineState.RUNNING)
        log.info("line_released", batch=self._batch.id)

    async def _apply_missed_confirms(self) -> None:
        """Rejects the PLC confirmed while no agent watched (after a line stop on a lost link, or
        a crash): a pass among them reached the gate too late and is decommissioned now."""
        batch = self._batch
        rejects = list(await self.plc.recent_rejects())
        for trigger in rejects:
            if self.ledger.confirm_rejected_at_gate(batch, trigger) == "decommissioned":
                log.error("pass_rejected_at_gate", batch=batch.id, trigger=trigger, when="start")
        self._last_confirmed = max(rejects, default=0)

    async def _settle_unwritten_passes(self, unwritten: list[tuple[int, str]]) -> None:
        """Passes committed before a crash whose PLC write may not have landed: the PLC's reject
        log says which units it rejected; those serials are decommissioned."""
        batch = self._batch
        last = max(trigger for trigger, _ in unwritten)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            state = await self.plc.read_state()
            if state.passed + state.rejected >= last:
                break
            await asyncio.sleep(0.05)
        rejected = set(await self.plc.recent_rejects())
        for trigger, serial in unwritten:
            if trigger in rejected:
                self.ledger.confirm_rejected_at_gate(batch, trigger)
                log.warning("pass_not_applied", batch=batch.id, serial=serial, trigger=trigger)
        if state.rejected != state.reject_confirms:
            # The log holds confirmed rejects only: with unconfirmed ones outstanding, "not in
            # the log" proves nothing. Left unsettled; the next start tries again.
            doubt = [t for t, _ in unwritten if t not in rejected]
            log.error("passes_unverifiable", batch=batch.id, triggers=doubt)
            self.stats.alarms.append(f"passes_unverifiable: triggers {doubt}")
            return
        self.ledger.mark_verdicts_written(batch, [t for t, _ in unwritten if t not in rejected])

    async def _stop_line(self, cause: BaseException) -> NoReturn:
        reason = cause.reason if isinstance(cause, LineStopped) else StopReason.DEVICE_ERROR
        level = log.warning if reason is StopReason.SHUTDOWN else log.error
        level("line_stop", batch=self.job.id, reason=reason, detail=str(cause))
        self.stats.alarms.append(f"{reason}: {cause}")
        systemd.notify_status(f"order {self.job.id}: line stopped ({reason})")
        try:
            await self.plc.request_line_stop(reason.code)
            await self._publish_status(AgentLineState.STOPPED)
            if self.batch is not None:  # else it stopped before the batch was open
                await self._settle_at_stop()
        except (EdgeAgentError, TimeoutError, sqlite3.Error) as exc:
            # Left to the next start (reject log, unwritten passes), when storage works again
            log.error("line_stop_settle_failed", detail=str(exc))
        if isinstance(cause, LineStopped):
            raise cause
        raise LineStopped(reason, str(cause)) from cause

    async def settle_in_flight(self) -> None:
        """After a stop that ends the order (stop, abort): units still in flight will never be
        decided. Records still queued in the printer are withdrawn (their serials unused); the
        rest can no longer pass (the PLC rejects a unit without a verdict)."""
        batch = self._batch
        await reconcile_printer_queue(self.printer, self.ledger, batch)
        for serial in self.ledger.reject_unconfirmed_prints(batch, "in_flight_at_stop"):
            log.warning("in_flight_at_stop", batch=batch.id, serial=serial, verdict="reject")

    async def _settle_at_stop(self) -> None:
        # The stop may have cancelled a commit group between its ledger commit and its PLC
        # writes: those passes are committed but may never have reached the PLC.
        await self.ledger.flush()  # the "verdict written" flags still on their way
        self._unuse_never_sent()
        unwritten = self.ledger.unwritten_passes(self._batch)
        if unwritten:
            await self._settle_unwritten_passes(unwritten)
        # Units already given a verdict still reach the gate: learn what it did with them.
        await asyncio.wait_for(self._await_gate(), timeout=5.0)

    def _unuse_never_sent(self) -> None:
        """The records of the block that the stop kept from the printer: this process never
        wrote them, so no unit can carry them (after a crash nobody knows that, and recovery
        rejects them instead). The next segment makes up for them with other serials."""
        never_sent = [serial for _, serial in self._taken]
        self._taken.clear()
        if never_sent:
            self.ledger.unuse_cleared(self._batch, [], not_received=never_sent)
            for serial in never_sent:
                log.warning("never_sent_to_printer", batch=self._batch.id, serial=serial)

    @property
    def _batch(self) -> BatchInfo:
        assert self.batch is not None
        return self.batch

    # --- printer side -----------------------------------------------------------------------

    async def _feed(self) -> None:
        batch = self._batch
        depth = getattr(self.printer, "buffer_depth", 8)
        window = self.cfg.line.max_units_in_flight
        block = _refill_block(depth, window)
        sent = self.ledger.sent_count(batch.id)  # marked sent: handed over or taken ahead
        # One commit per printer refill, taken one block ahead: the next block commits while
        # this one waits for room and goes to the printer, so the printer never waits for a
        # commit (at full speed the take waits for company: 5.5 s of the feed's 9.8 s in 3000 units).
        ahead: asyncio.Future[list[tuple[int, str]]] | None = None
        try:
            while sent < batch.target:
                _raise_if_cancel_lost()
                if ahead is None:
                    ahead = self._take_ahead(min(block, batch.target - sent))
                taken = await asyncio.shield(ahead)
                ahead = None
                if not taken:
                    await self._replenish(batch.target - sent)
                    continue
                sent += len(taken)
                self._keep_taken(taken)
                crash_point("block_taken")
                if sent < batch.target:
                    ahead = self._take_ahead(min(block, batch.target - sent))
                await self._hand_over(depth, window)
        except asyncio.CancelledError:
            # A line stop while a block commits: none of it reached the printer
            if ahead is not None:
                with contextlib.suppress(Exception):
                    self._keep_taken(await ahead)
            raise
        self._feed_done.set()

    def _take_ahead(self, count: int) -> asyncio.Future[list[tuple[int, str]]]:
        self._reserved += count
        self._unprinted += count
        self._undecided += count
        return asyncio.ensure_future(self._take(count))

    async def _take(self, count: int) -> list[tuple[int, str]]:
        # At full speed the outcomes of the units in flight commit within milliseconds: the
        # block rides along.
        wait_s = self._company.wait_s() if self._handed_undecided else 0.0
        taken: list[tuple[int, str]] = []
        try:
            taken = await self.ledger.take_block(self._batch, count, wait_s=wait_s)
        finally:
            short = count - len(taken)  # places asked for that no serial took
            self._reserved -= short
            self._unprinted -= short
            self._undecided -= short
        return taken

    def _keep_taken(self, taken: list[tuple[int, str]]) -> None:
        """Queue a taken block for the printer."""
        self._taken.extend(self._unvoided(taken))
        self._void.clear()

    def _unvoided(self, taken: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """``taken`` without what a reconnect settled before it was handed over (its places
        were released then, and a settled serial never reaches the printer)."""
        kept = [record for record in taken if record[1] not in self._void]
        self._reserved -= len(taken) - len(kept)
        return kept

    async def _hand_over(self, depth: int, window: int) -> None:
        """Send the taken records once the printer's buffer and the in-flight window have room
        for all of them."""
        count = len(self._taken)
        async with self._flow:
            await self._flow.wait_for(functools.partial(self._room_for, count, depth, window))
        while self._taken:
            # Off the list before the send: a record being sent may reach the printer
            record = self._taken.popleft()
            self._reserved -= 1
            await self._send(PrintRecord(*record))
            if self._in_printer >= depth:
                crash_point("printer_buffer_full")

    @property
    def _in_printer(self) -> int:
        """Records handed to the printer and not yet confirmed printed."""
        return self._unprinted - self._reserved

    @property
    def _handed_undecided(self) -> int:
        """Units handed to the printer and not yet decided."""
        return self._undecided - self._reserved

    def _room_for(self, block: int, depth: int, window: int) -> bool:
        return self._in_printer + block <= depth and self._handed_undecided + block <= window

    async def _replenish(self, still_needed: int) -> None:
        """Make the next serials available (persisted before use), never more than the order
        still needs, so a normal order ends with no unused serial: generated here, or waited
        for from L3 (its pages are asked for ahead of need, l3/service.py). An order's own list
        is allocated whole when it is stored: when it is used up, so are the serials."""
        batch, job = self._batch, self.job
        if job.serial_source == "generate":
            block = min(_ALLOCATE_BLOCK, still_needed)
            await self.ledger.generate(
                batch,
                block,
                length=job.serial_length,
                alphabet=job.serial_alphabet,
                wait_s=self._company.wait_s() if self._handed_undecided else 0.0,
            )
            return
        if job.serial_source == "l3":
            wait_s = self.cfg.line.serial_wait_s
            deadline = time.monotonic() + wait_s
            log.warning("waiting_for_serials", batch=batch.id, still_needed=still_needed)
            while time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                if self.ledger.unsent_count(batch.id):
                    return
            raise LineStopped(
                StopReason.SERIALS_EXHAUSTED,
                f"no serial page from L3 within {wait_s:g} s ([line] serial_wait_s); the order "
                "resumes once L3 has sent serials",
            )
        raise LineStopped(StopReason.SERIALS_EXHAUSTED, "the order's serial list is used up")

    async def _send(self, record: PrintRecord) -> None:
        while True:
            try:
                await self._link.send(record)
                self._unacknowledged = 0
                return
            except DeviceFault as exc:
                if exc.code != "BUFFER_FULL":
                    raise
                await asyncio.sleep(0.01)  # refused, so not taken: the same record may go again
            except DeviceTimeout:
                self._unacknowledged += 1
                if self._unacknowledged >= _MAX_UNACKNOWLEDGED:
                    raise  # repeated doubt: the alarm names the printer and its silence
                # Unknown whether it was taken: never re-send; a confirmation or the camera settles it.
                log.warning("record_unacknowledged", batch=self._batch.id, serial=record.serial)
                return

    async def _confirmations(self) -> None:
        batch = self._batch
        async for confirmation in self._link.confirmations():
            self._last_activity = now = time.monotonic()
            self._printer_silence.heard(now)
            if confirmation.serial in self._judged_unconfirmed:
                # Too late: its unit is already rejected and its slot released. Queued, it
                # would be settled a second time as a unit the camera never saw.
                self._judged_unconfirmed.discard(confirmation.serial)
                log.warning("late_print_confirmation", batch=batch.id, serial=confirmation.serial)
                continue
            if self.ledger.note_printed(batch, confirmation.serial):
                await self.printed.push(confirmation.serial)
            else:
                log.warning(
                    "unexpected_print_confirmation", batch=batch.id, serial=confirmation.serial
                )
                continue
            await self._release(unprinted=1)

    def _print_job(self) -> PrintJob:
        j = self.job
        return PrintJob("SERIAL", j.gtin, j.lot, j.expiry)

    async def _after_printer_reconnect(self, settled: list[str]) -> None:
        # The serials the reconcile settled will never be confirmed nor decided by the camera;
        # those not handed over yet must never reach the printer.
        self._last_activity = time.monotonic()
        self._void = set(settled)  # kept for the block still being taken ahead, if any
        self._taken = collections.deque(self._unvoided(list(self._taken)))
        await self._release(unprinted=len(settled), undecided=len(settled))

    async def _release(self, *, unprinted: int = 0, undecided: int = 0) -> None:
        async with self._flow:
            self._unprinted = max(0, self._unprinted - unprinted)
            self._undecided = max(0, self._undecided - undecided)
            self._flow.notify_all()

    # --- camera side ------------------------------------------------------------------------

    async def _frames(self, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        async for frame in self.camera.frames():
            if not self._seen.add(frame.trigger):
                self._repeated_frame(frame)
                continue
            self._last_activity = now = time.monotonic()
            self._camera_silence.heard(now)
            self._company.heard_frame(now)
            if frame.reads is not None:  # a smart reader decoded it on the device: no thread hop
                future: asyncio.Future[list[CodeRead]] = loop.create_future()
                future.set_result(list(frame.reads))
            else:
                future = loop.run_in_executor(executor, self._read, frame)
            self._deciding += 1
            await self._decode_q.put((frame, future))

    def _repeated_frame(self, frame: Frame) -> None:
        """A second frame for a trigger already decided or in decision. Its unit has exactly one
        verdict, written once to its slot; this frame changes nothing, in the ledger or the PLC."""
        self.stats.repeated_frames += 1
        log.warning(
            "repeated_frame",
            batch=self._batch.id,
            trigger=frame.trigger,
            source=frame.source,
            repeated_frames=self.stats.repeated_frames,
        )
        if self.archive is not None:
            self.archive.submit(
                frame,
                batch=self._batch.id,
                serial=None,
                reason="repeated_frame",
                detail="a second frame for this trigger; its unit was decided on the first",
                read=None,
            )

    def _read(self, frame: Frame) -> list[CodeRead]:
        reads = list(self.reader.read(frame.image))
        if self.cfg.vision.min_grade is not None:
            reads = with_grades(frame.image, reads)
        return reads

    async def _decide(self) -> None:
        while True:
            _raise_if_cancel_lost()
            frame, future = await self._decode_q.get()
            try:
                reads = await future
            except Exception as exc:  # a decoder failure is a no-read, never a crash
                log.error("decode_failed", trigger=frame.trigger, error=repr(exc))
                reads = []
            crash_point("decoded")
            outcome = await self._judge(frame, reads)
            await self._commit_q.put(_Pending(frame, outcome))
            self._deciding -= 1
            if self._decision_waiter is not None:
                _wake(self._decision_waiter)

    async def _judge(self, frame: Frame, reads: list[CodeRead]) -> UnitOutcome:
        line = self.cfg.line
        check = check_content(
            reads,
            self._identity,
            require_symbology=line.require_symbology or None,
            min_contrast=line.min_symbol_contrast,
            serial_pattern=self._serial_pattern,
            grade=reads[0].grade if len(reads) == 1 else None,
            min_grade=self.cfg.vision.min_grade,
        )
        if not check.ok and self.archive is not None:
            self._details[frame.trigger] = check.detail
        position, reason = await self._locate(check.serial)
        if not check.ok:
            reason = check.reason
        elif reason is None and position.serial != check.serial:
            reason = "serial_mismatch"
        passed = reason is None
        return UnitOutcome(
            frame.trigger, passed, reason or "ok", position.serial, check.text, position.skipped
        )

    async def _locate(self, serial: str | None) -> tuple[Position, str | None]:
        """Match what was read to the printed FIFO (see tracking.py). Returns the position and a
        reject reason the match itself implies, if any."""
        if serial is not None and serial not in self.printed:
            state = self.ledger.state_of(self._batch.gtin, serial)
            if state == SerialState.SENT:
                await self.printed.wait_for(serial, _CONFIRM_WAIT_S)
                state = self.ledger.state_of(self._batch.gtin, serial)
            if state == SerialState.SENT:
                # Printed but never confirmed by the printer: never commissioned on faith.
                self._judged_unconfirmed.add(serial)
                await self._release(unprinted=1)
                return Position(serial), "print_unconfirmed"
            if state in (SerialState.COMMISSIONED, SerialState.REJECTED, SerialState.UNUSED):
                why = (
                    "duplicate_serial"
                    if state == SerialState.COMMISSIONED
                    else "serial_already_settled"
                )
                return Position(None), why
        if serial is not None and serial in self.printed:
            return self.printed.take_through(serial), None
        if not len(self.printed):
            await self.printed.wait_for(None, _CONFIRM_WAIT_S)
        position = self.printed.take_head()
        return position, None if position.serial is not None else "no_print_confirmation"

    # --- commit and verdicts ----------------------------------------------------------------

    async def _commit(self) -> None:
        """Group commit, pipelined with the PLC writes: a group commits while the group before
        it is still being written (``_verdicts``). Every verdict is written after its own
        group is durable, in decision order."""
        while True:
            _raise_if_cancel_lost()
            group = await self._next_group()
            try:
                await self._make_durable(group)
                await self._committed_q.put(group)  # waits while a committed group still waits
            except asyncio.CancelledError:
                # A line stop after the group committed: its passes must still reach the PLC.
                with contextlib.suppress(Exception):
                    await self._deliver(group)
                raise

    async def _verdicts(self) -> None:
        while True:
            _raise_if_cancel_lost()
            group = await self._committed_q.get()
            try:
                await self._deliver(group)
            except asyncio.CancelledError:
                # A line stop: groups committed and handed over still reach the PLC.
                while not self._committed_q.empty():
                    with contextlib.suppress(Exception):
                        await self._deliver(self._committed_q.get_nowait())
                    self._committed_q.task_done()
                raise
            finally:
                self._committed_q.task_done()

    async def _next_group(self) -> list[_Pending]:
        group = [await self._commit_q.get()]
        # Group commit: at full speed a commit waits a few milliseconds at most for the outcomes
        # of the frames behind it (one fsync for all) and stops once it has company and no frame
        # is being decided. A slower line does not wait: its commit goes as soon as it is queued.
        deadline = time.monotonic() + self._company.wait_s()
        while len(group) < _COMMIT_GROUP:
            while len(group) < _COMMIT_GROUP and not self._commit_q.empty():
                group.append(self._commit_q.get_nowait())
            left = deadline - time.monotonic()
            if left <= 0 or (len(group) > 1 and not self._deciding):
                break
            await self._next_decision(left)
        return group

    async def _next_decision(self, timeout_s: float) -> None:
        """Until the next frame's outcome is queued, or ``timeout_s``: woken by ``_decide``
        rather than polled (a poll every half millisecond cost the loop more than the wait)."""
        loop = asyncio.get_running_loop()
        waiter = self._decision_waiter = loop.create_future()
        timer = loop.call_later(timeout_s, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._decision_waiter = None

    async def _make_durable(self, group: list[_Pending]) -> None:
        """Commit the group's outcomes (late ones first become rejects). Cancelled, it still
        waits for the commit, so a committed pass is never left behind unknown."""
        batch, deadline_s = self._batch, self.cfg.line.verdict_deadline_ms / 1000.0
        now = time.monotonic()
        for item in group:
            late = now - item.frame.received_at > deadline_s
            late = late or item.frame.trigger in self._gated_before_decided
            if item.outcome.passed and late:
                item.outcome.passed, item.outcome.reason = False, "late_verdict"
        outcomes = [item.outcome for item in group]
        # The commit runs in the writer thread; a line stop (cancellation) meanwhile waits for
        # it, so a committed pass still gets its write.
        commit = asyncio.ensure_future(self.ledger.record_outcomes(batch, outcomes))
        cancelled = False
        try:
            try:
                await asyncio.shield(commit)
            except asyncio.CancelledError:
                cancelled = True
                await commit
        except Exception as exc:
            for item in group:  # no record, no pass
                item.outcome.passed, item.outcome.reason = False, "storage_error"
            await self._committed_q.join()  # the groups before it are written first
            # Rejecting the group can reach max_consecutive_rejects: the cause is still storage.
            with contextlib.suppress(LineStopped):
                await self._write_verdicts(group)
            raise storage_stop(exc, self.cfg.agent.state_dir) from exc
        if cancelled:
            raise asyncio.CancelledError

    async def _deliver(self, group: list[_Pending]) -> None:
        """Write a committed group's verdicts. Committed passes must reach the PLC: a line stop
        (cancellation) waits for these writes instead of cutting them off."""
        writes = asyncio.ensure_future(self._write_committed(group))
        try:
            await asyncio.shield(writes)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await writes
            raise

    async def _write_committed(self, group: list[_Pending]) -> None:
        await self._gated_while_committing(group)
        await self._write_verdicts(group)
        self.ledger.note_verdicts_written(self._batch, [item.frame.trigger for item in group])
        outcomes = (item.outcome for item in group)
        settled = sum((o.serial is not None) + len(o.skipped_serials) for o in outcomes)
        await self._release(undecided=settled)

    async def _gated_while_committing(self, group: list[_Pending]) -> None:
        """A reject confirm that came in while the group was committing found no unit row yet:
        a pass among them reached the gate too late and is decommissioned now."""
        for item in group:
            trigger = item.frame.trigger
            if item.outcome.passed and trigger in self._gated_before_decided:
                self._gated_before_decided.discard(trigger)
                await self._on_reject_confirmed(self._batch, trigger)

    async def _write_verdicts(self, group: list[_Pending]) -> None:
        batch, line = self._batch, self.cfg.line
        run = 0  # the longest run of rejects in this group: a later pass must not hide it
        verdicts = [
            (item.outcome.trigger, Verdict.PASS if item.outcome.passed else Verdict.REJECT)
            for item in group
        ]
        written = time.monotonic()
        if self._verdicts_link is not None:  # one round trip for the group
            await self._verdicts_link.write_verdicts(verdicts)
            written = time.monotonic()
        for item, (trigger, verdict) in zip(group, verdicts, strict=True):
            outcome = item.outcome
            if self._verdicts_link is None:
                await self.plc.write_verdict(trigger, verdict)
                written = time.monotonic()
            latency_ms = (written - item.frame.received_at) * 1000.0
            self._last_trigger = max(self._last_trigger, outcome.trigger)
            if outcome.trigger in self._gated_before_decided:  # rejected and confirmed already
                self._gated_before_decided.discard(outcome.trigger)
            elif not outcome.passed:
                self._awaiting_confirm[outcome.trigger] = written
            self.stats.record(outcome.passed, outcome.reason, latency_ms)
            run = max(run, self.stats.consecutive_rejects)
            log.info(
                "verdict",
                batch=batch.id,
                serial=outcome.serial,
                trigger=outcome.trigger,
                verdict=verdict.name.lower(),
                reason=outcome.reason,
                read=outcome.read_text,
                latency_ms=round(latency_ms, 2),
            )
            for skipped in outcome.skipped_serials:
                log.warning("no_frame", batch=batch.id, serial=skipped, verdict="reject")
            if self.archive is not None and not outcome.passed:
                self.archive.submit(
                    item.frame,
                    batch=batch.id,
                    serial=outcome.serial,
                    reason=outcome.reason,
                    detail=self._details.pop(outcome.trigger, None),
                    read=outcome.read_text,
                )
        self.on_tick()
        if run >= line.max_consecutive_rejects:
            raise LineStopped(StopReason.REPEATED_REJECTS, f"{run} rejects in a row")

    # --- PLC supervision --------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        interval = self.cfg.line.heartbeat_interval_ms / 1000.0
        timeout = self.cfg.line.plc_heartbeat_timeout_ms / 1000.0
        last_value, last_change = None, time.monotonic()
        while True:
            _raise_if_cancel_lost()
            await self.plc.beat()
            await self._publish_status(AgentLineState.RUNNING)
            state = await self.plc.read_state()
            self._line_running = state.running
            now = time.monotonic()
            if state.heartbeat != last_value:
                last_value, last_change = state.heartbeat, now
            elif now - last_change > timeout:
                raise LineStopped(
                    StopReason.PLC_HEARTBEAT_LOST,
                    f"PLC heartbeat still {last_value} after {timeout:.1f}s",
                )
            systemd.notify_watchdog(
                f"order {self._batch.id}: {self.stats.units} units, {self.stats.passed} passed, "
                f"{self.stats.rejected} rejected"
            )
            self.beating = True
            await asyncio.sleep(interval)

    async def _watch_silence(self) -> None:
        """Bound every wait on a device (silence.py): while the line runs mid-batch, records in
        the printer must be printed and printed units must reach the camera."""
        line = self.cfg.line
        interval = min(0.5, line.print_confirm_timeout_s / 4, line.no_frame_timeout_s / 4)
        alarm = self.stats.alarms.append
        while True:
            _raise_if_cancel_lost()
            await asyncio.sleep(interval)
            # A stopped line, a printer being recovered and the batch end (its own bound, see
            # _finish) expect nothing of the devices.
            working = (
                self._line_running and not self._link.recovering and not self._feed_done.is_set()
            )
            now = time.monotonic()
            self._printer_silence.check(
                now,
                device=self.printer.name,
                expecting=working and self._in_printer > 0,
                alarm=alarm,
            )
            self._camera_silence.check(
                now,
                device=self.camera.name,
                expecting=working and len(self.printed) > 0,
                alarm=alarm,
            )

    async def _publish_status(self, state: AgentLineState) -> None:
        """The agent's line state and counters, for the PLC and its HMI (when the link has room)."""
        if self._status_link is not None:
            s = self.stats
            status = LineStatus(
                state, s.units, s.passed, s.rejected, self._last_trigger, self._missing_confirms
            )
            await self._status_link.write_status(status)

    async def _watch_rejects(self) -> None:
        while True:
            _raise_if_cancel_lost()
            await self._poll_rejects()
            await asyncio.sleep(0.1)

    async def _poll_rejects(self) -> None:
        batch, line = self._batch, self.cfg.line
        state = await self.plc.read_state()
        if self._confirms_seen is None:
            self._confirms_seen = state.reject_confirms
        new = state.reject_confirms - self._confirms_seen
        if new > 0:
            log_ring = list(await self.plc.recent_rejects())
            if new > len(log_ring):
                # Rejects we cannot see any more may include units we passed: the ledger could
                # then hold commissioned serials of rejected units. That is a stop, not a guess.
                raise LineStopped(
                    StopReason.REJECT_LOG_OVERRUN, f"{new} new rejects, log holds {len(log_ring)}"
                )
            fresh = [t for t in log_ring if t > self._last_confirmed]
            for trigger in fresh:
                await self._on_reject_confirmed(batch, trigger)
            if fresh:
                self._last_confirmed = fresh[-1]
            self._confirms_seen = state.reject_confirms
        now, timeout_s = time.monotonic(), line.reject_confirm_timeout_ms / 1000.0
        expired = [t for t, at in self._awaiting_confirm.items() if now - at > timeout_s]
        for trigger in expired:
            del self._awaiting_confirm[trigger]
            self._missing_confirms += 1
            log.error(
                "reject_confirm_missing",
                batch=batch.id,
                trigger=trigger,
                in_a_row=self._missing_confirms,
            )
            self.stats.alarms.append(f"reject_confirm_missing: trigger {trigger}")
            if self._missing_confirms >= line.max_missing_confirms:
                raise LineStopped(
                    StopReason.REJECT_CONFIRM_MISSING, f"{self._missing_confirms} in a row"
                )

    async def _on_reject_confirmed(self, batch: BatchInfo, trigger: int) -> None:
        self._awaiting_confirm.pop(trigger, None)
        self._missing_confirms = 0
        change = await self.ledger.gate_rejected(batch, trigger)
        if change is None and trigger > self._last_trigger:
            self._gated_before_decided.add(trigger)
        if change == "decommissioned":
            self.stats.passed -= 1
            self.stats.rejected += 1
            self.stats.by_reason["rejected_at_gate"] += 1
            log.error("pass_rejected_at_gate", batch=batch.id, trigger=trigger, verdict="reject")

    # --- batch end --------------------------------------------------------------------------

    async def _finish(self) -> None:
        await self._feed_done.wait()
        idle_limit = self.cfg.line.no_frame_timeout_s
        while self._undecided or not self._decode_q.empty() or not self._commit_q.empty():
            idle = time.monotonic() - self._last_activity > idle_limit
            if idle and not self._link.recovering:  # a recovery settles them itself
                await self._settle_leftovers()
                break
            await asyncio.sleep(0.02)
        await self._await_gate()
        await self._poll_rejects()
        await self.ledger.flush()  # the last group's confirmations and flags
        # The serial account stays open: closing it (unused serials, returns, the close report)
        # is the order's settlement, once the command path has completed the order.
        with contextlib.suppress(EdgeAgentError):  # informative only: every unit is decided
            await self._publish_status(AgentLineState.COMPLETE)
        log.info("order_printed", batch=self._batch.id, units=self.stats.units)
        raise _BatchComplete

    async def _settle_leftovers(self) -> None:
        batch = self._batch
        await reconcile_printer_queue(self.printer, self.ledger, batch)
        leftovers = self.ledger.reject_unconfirmed_prints(batch, "print_unconfirmed")
        self.printed.drain()
        await self._release(unprinted=self._unprinted, undecided=self._undecided)
        for serial in leftovers:
            log.warning("settled_at_batch_end", batch=batch.id, serial=serial, verdict="reject")

    async def _await_gate(self) -> None:
        """Wait until the PLC has gated every unit we gave a verdict, so its confirms are in."""
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            _raise_if_cancel_lost()
            state = await self.plc.read_state()
            if state.passed + state.rejected >= self._last_trigger and not self._awaiting_confirm:
                return
            await self._poll_rejects()
            await asyncio.sleep(0.05)
