"""The line controller of the resident daemon: runs the active order, one segment at a time.

An order is run in *segments*. A segment is one ``LineRuntime.run()``: the devices are opened,
the printer queue is reconciled, what a former segment (or a crash) left in flight is settled,
the PLC line-stop request is withdrawn, and units are printed and decided until

* the quantity is printed and every unit decided: ``QUANTITY_REACHED`` goes to the command path
  (which completes the order and, when it balances, closes it);
* the line stops by itself (repeated rejects, a device lost, storage, heartbeat, missing
  confirms ...): an alarm is raised for the stop reason, the order goes Held with it
  (``LINE_STOPPED``), the PLC line-stop request stays set;
* a command stops it (hold, stop, abort) or the daemon is told to stop (a signal): the runtime's
  stop path settles the units in flight; the order stays Running after a signal, so the next
  start of the daemon resumes it.

A resume is a new segment for the same order: exactly the path of a restart, in-process. After
an order has ended, the next Ready order starts (``[orders] auto_start``). Between segments the
devices are closed; the PLC keeps the line stopped (its heartbeat watch) until the next segment.

The controller implements ``orders.commands.LineControl``: its methods return once the line has
acted, and it reports line events from its own task, never from inside a command it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import structlog

from edge_agent import systemd
from edge_agent.alarms import AlarmBoard
from edge_agent.config import LoadedConfig
from edge_agent.contracts import CodeReader
from edge_agent.errors import CommandRefused, EdgeAgentError, LineStopped
from edge_agent.ledger import Ledger
from edge_agent.line.job import LineJob
from edge_agent.line.runtime import LineRuntime
from edge_agent.line.stats import LineStats
from edge_agent.orders import audit
from edge_agent.orders.commands import CommandPath
from edge_agent.orders.lifecycle import LineEvent
from edge_agent.orders.model import OrderState
from edge_agent.orders.store import OrderRecord
from edge_agent.stops import StopReason

log = structlog.get_logger("edge_agent.line")

AUTO_START = audit.Actor("auto-start", "line")
IDLE_LOOK_S = 1.0  # the queue is looked at this often even without a wake-up
COMMAND_MOVES_S = 10.0  # longest wait for the command path to move an order a command stopped
DEVICE_CHECK_S = 10.0  # longest a resume check waits for one device to answer
# Stops that end the order (stop, abort): what is still in flight is settled with the segment.
ENDING = frozenset({StopReason.OPERATOR_STOP, StopReason.OPERATOR_ABORT})
# Stops a command asked for: the command makes the order's transition, not the line.
COMMANDED = ENDING | {StopReason.OPERATOR_HOLD}

Guard = tuple[str, Callable[[], Coroutine[Any, Any, None]]]


class _Segment:
    """One run of the runtime for one order; a stop may be asked for before the runtime exists."""

    def __init__(self, order_id: str) -> None:
        self.order_id = order_id
        self.stop: LineStopped | None = None
        self.runtime: LineRuntime | None = None
        self.done = asyncio.Event()

    def request_stop(self, stop: LineStopped) -> None:
        if self.stop is None:
            self.stop = stop
        if self.runtime is not None:
            self.runtime.request_stop(stop)


class LineController:
    def __init__(
        self,
        config: LoadedConfig,
        commands: CommandPath,
        reader: CodeReader,
        *,
        stats: LineStats | None = None,
        on_tick: Callable[[], None] | None = None,
        guards: list[Guard] | None = None,
        start_problems: Callable[[], list[str]] | None = None,
        resume_checks: Callable[[], list[str]] | None = None,
    ) -> None:
        self.config = config
        self.commands = commands
        self.reader = reader
        self.stats = stats or LineStats()
        self.on_tick = on_tick
        self.guards = list(guards or [])
        self._start_checks = start_problems or (lambda: [])
        self.resume_checks = resume_checks or (lambda: [])
        self.auto_start = config.model.orders.auto_start
        self._wake = asyncio.Event()
        self._segment: _Segment | None = None
        self._shutdown: LineStopped | None = None
        self._start_refused: list[str] = []
        # A stop asked for while no segment ran (a forwarder that cannot record): the next
        # segment acts on it at once.
        self._pending_stop: LineStopped | None = None
        # What the last segment did, until the command path has recorded it (storage may fail)
        self._unreported: tuple[str, LineStopped | None] | None = None
        self._report_failed = False
        self.segments = 0  # segments run by this process (tests, status)
        # One connection per device at a time: a serial port is locked while open, so a check
        # (start-up stop code, resume) must not race the segment or another check for it.
        self._in_use = {kind: asyncio.Lock() for kind in ("printer", "camera", "plc")}

    @property
    def ledger(self) -> Ledger:
        return self.commands.ledger

    @property
    def alarms(self) -> AlarmBoard:
        return self.commands.alarms

    @property
    def running(self) -> str | None:
        """The order a segment runs for now, if any."""
        return None if self._segment is None else self._segment.order_id

    @property
    def beating(self) -> bool:
        """A segment's heartbeat loop runs (it feeds the systemd watchdog itself)."""
        runtime = None if self._segment is None else self._segment.runtime
        return runtime is not None and runtime.beating

    @property
    def unrecorded_stop(self) -> LineStopped | None:
        """A line stop the state database could not record yet (it is full or failing): the
        line stays stopped, and the hold is recorded as soon as storage works again."""
        if self._unreported is None or not self._report_failed:
            return None
        return self._unreported[1]

    def request_line_stop(self, stop: LineStopped) -> None:
        """A stop from outside the line's tasks (a forwarder or retention that cannot write):
        the running segment stops with it, or the next one does at once."""
        if self._segment is not None:
            self._segment.request_stop(stop)
        elif self._pending_stop is None:
            self._pending_stop = stop

    # --- the controller's own task ------------------------------------------------------------

    async def run(self) -> None:
        """Run orders until ``shutdown``; returns once the segment in progress has settled."""
        await self._restate_hold()
        while self._shutdown is None:
            if not await self._flush_report():
                await self._idle()  # storage fails: the line stays stopped until it works
                continue
            record = await self._runnable()
            if record is None:
                await self._idle()
                continue
            segment = _Segment(record.id)  # set before any await: a command sees it at once
            if self._pending_stop is not None:
                segment.request_stop(self._pending_stop)
                self._pending_stop = None
            self._segment = segment
            try:
                stopped = await self._run_segment(segment, record)
            finally:
                self._segment = None
                segment.done.set()
            if stopped is not None and stopped.reason in COMMANDED:
                await self._until_moved(record.id)
            self._unreported = (record.id, stopped)
            await self._flush_report()

    async def _restate_hold(self) -> None:
        """A daemon started on a held order tells the PLC again that the line stays stopped,
        and why (the PLC may have been restarted, or its request cleared, meanwhile)."""
        active = self.commands.store.active()
        if active is None or active.state != OrderState.HELD:
            return
        hold = self.commands.store.open_hold(active.id)
        why = hold.reason if hold is not None else ""
        reason = StopReason(why) if why in StopReason.__members__.values() else None
        await self.tell_plc(
            LineStopped(reason or StopReason.OPERATOR_HOLD, f"order {active.id} is held: {why}")
        )
        log.warning("order_still_held", order=active.id, reason=why)

    def shutdown(self, stop: LineStopped) -> bool:
        """Stop the line for the daemon's end (the order stays as it is); True when a segment
        is under way and will settle its units in flight before ``run`` returns."""
        self._shutdown = stop
        self._wake.set()
        if self._segment is None:
            return False
        self._segment.request_stop(stop)
        return True

    async def _runnable(self) -> OrderRecord | None:
        """The Running order to run a segment for (auto-starting the next Ready one)."""
        active = self.commands.store.active()
        if active is None and self.auto_start and self.commands.store.next_ready() is not None:
            problems = self.start_problems()
            if problems != self._start_refused:
                self._start_refused = problems
                for problem in problems:
                    log.warning("auto_start_refused", detail=problem)
            if not problems:
                await self.commands.start_next(AUTO_START)
            active = self.commands.store.active()
        if active is None or active.state != OrderState.RUNNING or self._shutdown is not None:
            return None
        return active

    async def _until_moved(self, order_id: str) -> None:
        """A command stopped the segment: the command path moves the order next (held,
        completed, aborted). Until it has, the order still reads Running and must not get a new
        segment. Bounded: a command that failed leaves it Running, and the line runs it again."""
        deadline = time.monotonic() + COMMAND_MOVES_S
        while time.monotonic() < deadline and self._shutdown is None:
            if self.commands.store.get(order_id).state != OrderState.RUNNING:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.05)

    async def _idle(self) -> None:
        """Nothing to run: wait for a wake-up (an order or a command)."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), IDLE_LOOK_S)

    async def _run_segment(self, segment: _Segment, record: OrderRecord) -> LineStopped | None:
        """One segment; returns the stop it ended with, None when the quantity was reached."""
        job = LineJob.from_order(record.order)
        self.segments += 1
        log.info("segment_start", order=job.id, segment=self.segments, quantity=job.quantity)
        systemd.notify_status(f"running order {job.id}")
        try:
            async with contextlib.AsyncExitStack() as stack:
                if segment.stop is not None:  # stopped before it began: the PLC still hears it
                    await self.tell_plc(segment.stop)
                    return segment.stop
                printer = await stack.enter_async_context(self._open("printer"))
                camera = await stack.enter_async_context(self._open("camera"))
                plc = await stack.enter_async_context(self._open("plc"))
                runtime = LineRuntime(
                    self.config.model,
                    self.ledger,
                    job,
                    printer=printer,
                    camera=camera,
                    plc=plc,
                    reader=self.reader,
                    stats=self.stats,
                    on_tick=self.on_tick,
                )
                runtime.guards.extend(self.guards)
                segment.runtime = runtime
                if segment.stop is not None:
                    runtime.request_stop(segment.stop)
                try:
                    await runtime.run()
                except LineStopped as stop:
                    if stop.reason in ENDING:
                        await self._settle_in_flight(runtime)
                    return stop
                return None
        except LineStopped as stop:  # raised by a device while opening it
            await self.tell_plc(stop)
            return stop
        except EdgeAgentError as exc:  # a device could not be opened, the ledger refused
            failed = LineStopped(StopReason.DEVICE_ERROR, str(exc))
            log.error("line_stop", batch=job.id, reason=failed.reason, detail=str(exc))
            await self.tell_plc(failed)
            return failed

    async def _settle_in_flight(self, runtime: LineRuntime) -> None:
        try:
            await runtime.settle_in_flight()
        except (EdgeAgentError, TimeoutError) as exc:  # settled by a resume, or at close
            log.error("in_flight_not_settled", batch=runtime.job.id, detail=str(exc))

    async def tell_plc(self, stop: LineStopped) -> None:
        """A stop before the runtime ran: the PLC still hears it (its stop code), when it can."""
        try:
            async with asyncio.timeout(DEVICE_CHECK_S), self._open("plc") as plc:
                await plc.request_line_stop(stop.reason.code)
        except (EdgeAgentError, TimeoutError) as exc:  # it stops on the missing heartbeat
            log.error("line_stop_not_sent", device="plc", detail=str(exc))

    async def _flush_report(self) -> bool:
        """Tell the command path what the last segment did by itself (never what a command
        asked); False while the state database cannot record it (retried)."""
        if self._unreported is None:
            return True
        order_id, stopped = self._unreported
        try:
            await self._report(order_id, stopped)
        except (sqlite3.Error, OSError) as exc:  # the database, or the close report's file
            if not self._report_failed:
                log.error(
                    "line_event_not_recorded",
                    order=order_id,
                    reason=None if stopped is None else stopped.reason,
                    detail=str(exc),
                    retry="until storage works again; the line stays stopped",
                )
            self._report_failed = True
            return False
        self._unreported, self._report_failed = None, False
        return True

    async def _report(self, order_id: str, stopped: LineStopped | None) -> None:
        try:
            if stopped is None:
                await self.commands.line_event(order_id, LineEvent.QUANTITY_REACHED)
            elif stopped.reason is StopReason.SHUTDOWN or stopped.reason in COMMANDED:
                return
            else:
                self.alarms.raise_(
                    stopped.reason, f"{stopped.reason}: {stopped}", order_id=order_id
                )
                await self.commands.line_event(
                    order_id, LineEvent.LINE_STOPPED, reason=stopped.reason, detail=str(stopped)
                )
                log.warning("order_held", order=order_id, reason=stopped.reason)
                systemd.notify_status(f"order {order_id} held: {stopped.reason}")
        except CommandRefused as exc:  # a command changed the order meanwhile (it is held)
            log.info("line_event_superseded", order=order_id, detail=str(exc))

    # --- LineControl --------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    async def hold(self, order_id: str, reason: str) -> None:
        await self._stop_segment(order_id, LineStopped(StopReason.OPERATOR_HOLD, reason))

    async def finish(self, order_id: str) -> None:
        await self._stop_segment(order_id, LineStopped(StopReason.OPERATOR_STOP, "order stopped"))
        await self._settle_without_segment(order_id)

    async def abort(self, order_id: str) -> None:
        await self._stop_segment(order_id, LineStopped(StopReason.OPERATOR_ABORT, "order aborted"))
        await self._settle_without_segment(order_id)

    def start_problems(self) -> list[str]:
        return list(self._start_checks())

    async def resume_problems(self, order_id: str) -> list[str]:
        problems = list(self.resume_checks())
        for kind in ("printer", "camera", "plc"):
            problem = await self._device_problem(kind)
            if problem is not None:
                problems.append(problem)
        return problems

    async def _stop_segment(self, order_id: str, stop: LineStopped) -> None:
        segment = self._segment
        if segment is None or segment.order_id != order_id:
            # No segment runs for it (held already, or not yet picked up): nothing is in
            # flight, but the PLC still hears the stop and why.
            await self.tell_plc(stop)
            return
        segment.request_stop(stop)
        await segment.done.wait()

    async def _settle_without_segment(self, order_id: str) -> None:
        """Stop or abort of a held order: what its last segment left in flight ends now (the
        PLC rejected those units for lack of a verdict); nothing is printed any more."""
        batch = self.ledger.batch(order_id)
        if batch is None:
            return
        for serial, state in self.ledger.recover_in_flight(batch):
            log.warning("in_flight_at_end", batch=order_id, serial=serial, was=state)

    async def _device_problem(self, kind: str) -> str | None:
        """Can the device be reached now? For the PLC also: is its heartbeat moving?"""
        try:
            async with asyncio.timeout(DEVICE_CHECK_S), self._open(kind) as device:
                if kind == "plc":
                    return await self._heartbeat_problem(device)
        except (EdgeAgentError, TimeoutError, OSError) as exc:
            return (
                f"{kind} {getattr(self.config, kind).type_name} not reachable: {exc or 'timeout'}"
            )
        return None

    async def _heartbeat_problem(self, plc: Any) -> str | None:
        timeout_s = self.config.model.line.plc_heartbeat_timeout_ms / 1000.0
        first = (await plc.read_state()).heartbeat
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            await asyncio.sleep(min(0.05, timeout_s / 10))
            if (await plc.read_state()).heartbeat != first:
                return None
        return f"the PLC heartbeat did not move within {timeout_s:g} s; check the PLC program"

    @contextlib.asynccontextmanager
    async def _open(self, kind: str) -> AsyncIterator[Any]:
        async with self._in_use[kind]:
            spec = getattr(self.config, kind)
            async with spec.driver(kind, spec.config) as device:
                yield device
