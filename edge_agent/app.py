"""The Agent: the resident daemon of one packaging line.

``Agent(config).serve()`` opens the state database once and runs, side by side for the daemon's
life: the line controller (orders, one segment at a time, line/controller.py), the REST API,
the order inbox, the L3 link, the forwarders and outbox pruning, the clock guard, the backup
schedule, the PackML OPC UA server and the aggregation stations (``[aggregation]``, following
the order on the line: aggregation/runner.py), each where the config asks for it. It returns only when
told to stop (a signal: the line stops cleanly, units in flight settled), or, with
``until_idle``, once the line has nothing left to do (see ``Idle``). A problem in the config
found at start raises ConfigError before any device is opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn

import structlog

from edge_agent import shutdown, systemd
from edge_agent.aggregation.runner import StationRunner
from edge_agent.alarms import AlarmBoard
from edge_agent.config import LoadedConfig
from edge_agent.config.loader import DeviceSpec
from edge_agent.config.models import L3Section, UpstreamSection
from edge_agent.db import close_db, open_db, open_write_connection
from edge_agent.errors import EdgeAgentError, LineStopped, StorageFull
from edge_agent.integrity import IntegrityWatch
from edge_agent.ledger import Ledger
from edge_agent.line.controller import LineController
from edge_agent.line.stats import LineStats
from edge_agent.orders.closing import OrderSettlement
from edge_agent.orders.commands import CommandPath
from edge_agent.orders.inbox import Inbox
from edge_agent.orders.model import OrderState
from edge_agent.orders.store import Hold, OrderRecord
from edge_agent.orders.validation import OrderRules
from edge_agent.outbox.forwarding import ForwarderLoop, QuotaGuard, prune_periodically
from edge_agent.outbox.store import OutboxStore
from edge_agent.stops import StopReason
from edge_agent.storage import DiskGuard, log_capacity, storage_stop
from edge_agent.vision.pipeline import build_reader
from edge_agent.writer import Writer

log = structlog.get_logger("edge_agent.app")

# Orders still to run, or on the line: the daemon is not idle while one is in these states.
BUSY = frozenset({OrderState.WAITING, OrderState.READY, OrderState.RUNNING})
IDLE_CHECK_S = 0.2
WATCHDOG_S = 2.0  # well inside the unit's WatchdogSec=10s
GIL_SWITCH_INTERVAL_S = 0.001  # how long the loop waits at most for the GIL (see serve)


@dataclass(frozen=True)
class UntilIdle:
    """Return from ``serve`` once the line has nothing left to do by itself:

    * *idle*: no order Waiting, Ready or Running, none Held, none Completed and not closed, and
      every forwarder has delivered what it holds (or ``drain_on_exit_s`` passed);
    * *needs a person*: an order is Held (or Completed but not balanced, so not closed) and
      stays so for ``hold_timeout_s`` (None: wait for the person, however long).
    """

    hold_timeout_s: float | None = None


@dataclass(frozen=True)
class Served:
    """How ``serve`` ended: ``idle``, ``held`` (an order waits for a person) or ``signal``."""

    ended: str
    waiting: OrderRecord | None = None  # the order that needs a person, when ``held``
    hold: Hold | None = None  # its open hold (reason, detail), when it is Held
    reason: str | None = None  # why it is held (a stop reason, or an operator's words)


class Agent:
    def __init__(
        self, config: LoadedConfig, stats: LineStats | None = None, on_tick: Any = None
    ) -> None:
        self.config = config
        self.stats = stats or LineStats()
        self.on_tick = on_tick
        self.commands: CommandPath | None = None  # once serve() has opened the database
        self.controller: LineController | None = None
        self.api_url: str | None = None  # once the REST API listens
        self._stop: LineStopped | None = None
        self._stopped: asyncio.Event | None = None
        self._loops: list[ForwarderLoop] = []
        self._inbox: Inbox | None = None
        self.stations: StationRunner | None = None  # [aggregation]: the line end's stations
        # Called once the daemon begins to stop (the process bounds its exit from there)
        self.on_stopping: Callable[[], None] | None = None

    def request_stop(self, stop: LineStopped) -> bool:
        """Stop the daemon (a signal): the line stops as any line stop does (units in flight
        settled, the PLC told why) but the order stays as it was, so the next start resumes it.
        True when a segment is running and settles first; either way ``serve`` then returns."""
        self._stop = stop
        if self._stopped is not None:
            self._stopped.set()
        return self.controller is not None and self.controller.shutdown(stop)

    @property
    def line_settle_s(self) -> float:
        """Longest the line's stop path may take at the daemon's exit: units in flight are
        printed, reach the gate and have their verdicts recorded."""
        line = self.config.model.line
        waits = line.print_confirm_timeout_s + line.reject_confirm_timeout_ms / 1000
        return waits + shutdown.LINE_SETTLE_S

    @property
    def exit_bound_s(self) -> float:
        """Longest the daemon may take from a stop request to its end."""
        upstream = self.config.model.upstream or UpstreamSection()
        steps = self.line_settle_s + upstream.drain_on_exit_s + 2 * shutdown.TASKS_END_S
        return steps + shutdown.RESOURCES_CLOSE_S

    def _device(self, kind: str) -> Any:
        spec = getattr(self.config, kind)
        return spec.driver(kind, spec.config)

    def _storage_failed(self, exc: Exception) -> None:
        """A storage failure outside the line's own tasks (forwarders, pruning) stops the line."""
        if self.controller is not None:
            self.controller.request_line_stop(storage_stop(exc, self.config.model.agent.state_dir))

    async def _stop_before_line(self, stop: LineStopped) -> NoReturn:
        """A stop found before the daemon could open its database (no room for it): the PLC
        is told (its stop code) as for any line stop, then the stop is raised: without its
        state database the agent can record nothing, so it does not run."""
        log.error("line_stop", reason=stop.reason, detail=str(stop))
        systemd.notify_stopping(f"line stopped: {stop.reason}")
        try:
            async with self._device("plc") as plc:
                await plc.request_line_stop(stop.reason.code)
        except EdgeAgentError as exc:  # the stop stands; the PLC stops on the missing heartbeat
            log.error("line_stop_not_sent", device="plc", detail=str(exc))
        raise stop

    async def serve(
        self, ready: asyncio.Event | None = None, *, until_idle: UntilIdle | None = None
    ) -> Served:
        """Run the daemon until ``request_stop`` (or, with ``until_idle``, until idle); sets
        ``ready`` (and tells systemd READY=1) once every part is up."""
        model = self.config.model
        # The event loop gives up the GIL at every socket and SQLite call, and got it back only
        # when a decode or writer thread gave it up: by default after up to 5 ms. Measured on
        # the line benchmark (2 cores, another process decoding beside it): a send took 206 us
        # and a read-connection SELECT 164 us of the loop's time; at 1 ms the line ran faster in
        # 6 of 7 alternating pairs (geometric mean 1.06x).
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        self._stopped = asyncio.Event()
        if self._stop is not None:
            self._stopped.set()
        for warning in self.config.warnings:
            log.warning("config_warning", detail=warning)
        disk = DiskGuard(
            model.agent.state_dir,
            alarm_mb=model.agent.disk_free_alarm_mb,
            stop_mb=model.agent.disk_free_stop_mb,
            on_alarm=self.stats.alarms.append,
        )
        try:
            if disk.enabled:
                # Before the database is opened: on a full disk it fails in ways that look like
                # damage
                disk.check()
            conn = open_db(model.agent.state_dir, announce=True)
        except StorageFull as exc:
            await self._stop_before_line(storage_stop(exc, model.agent.state_dir))
        except LineStopped as exc:
            await self._stop_before_line(exc)
        log_capacity(
            conn,
            model.agent.state_dir,
            disk_free_stop_mb=model.agent.disk_free_stop_mb,
            quota_stop_mb=(model.upstream or UpstreamSection()).quota_stop_mb,
        )
        try:
            async with contextlib.AsyncExitStack() as stack:
                return await self._serve(conn, disk, stack, ready, until_idle)
        finally:
            self.commands = self.controller = self.stations = None
            close_db(conn)

    async def _serve(
        self,
        conn: Any,
        disk: DiskGuard,
        stack: contextlib.AsyncExitStack,
        ready: asyncio.Event | None,
        until_idle: UntilIdle | None,
    ) -> Served:
        model = self.config.model
        state_dir = model.agent.state_dir
        ledger = Ledger(
            conn,
            read_point=model.line.read_point,
            biz_location=model.line.biz_location,
            company_prefix_length=model.line.company_prefix_length,
        )
        writer = Writer(open_write_connection(state_dir))  # the line's commits, off the loop
        stack.callback(writer.close)
        ledger.attach(writer)
        alarms = AlarmBoard(conn)
        if model.aggregation is not None:  # its device tables are checked here, at the start
            self.stations = StationRunner(model, ledger=ledger, alarms=alarms)
        l3_link = self.config.l3 is not None
        settlement = OrderSettlement(conn, ledger, state_dir / "reports", l3_link=l3_link)
        rules = OrderRules(expiry_warn_days=model.orders.expiry_warn_days, l3_link=l3_link)
        commands = CommandPath(
            conn,
            ledger,
            alarms,
            settlement,
            rules,
            auto_close=model.orders.auto_close,
            line_end_wait_s=model.orders.line_end_wait_s,
        )
        upstream = model.upstream or UpstreamSection()
        store = OutboxStore(conn, [spec.name for spec in self.config.forwarders])
        quota = QuotaGuard(
            conn,
            alarm_mb=upstream.quota_alarm_mb,
            stop_mb=upstream.quota_stop_mb,
            store=store,
            on_alarm=self.stats.alarms.append,
            free_alarm_mb=model.agent.disk_free_alarm_mb,
        )
        guards: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = [
            ("outbox-quota", quota.run)
        ]
        if disk.enabled:
            guards.append(("disk-space", disk.run))
        clock = self._clock_guard(alarms)
        integrity = IntegrityWatch(
            conn,
            state_dir,
            interval_h=model.agent.integrity_check_interval_h,
            alarms=alarms,
            stop_line=lambda stop: controller.request_line_stop(stop),
        )
        reader = build_reader(model.vision)
        stack.callback(reader.close)
        await asyncio.to_thread(reader.start)  # libdmtx workers, if configured
        controller = LineController(
            self.config,
            commands,
            reader,
            stats=self.stats,
            on_tick=self.on_tick,
            guards=guards,
            start_problems=lambda: (clock.start_problems() if clock else []) + integrity.problems(),
            resume_checks=lambda: _disk_problems(disk) + integrity.problems(),
        )
        commands.line = controller
        self.commands, self.controller = commands, controller
        if self._stop is not None:  # a signal during start-up
            controller.shutdown(self._stop)
        self._loops = [
            self._forwarder_loop(spec, store, upstream) for spec in self.config.forwarders
        ]
        background: list[tuple[str, Coroutine[Any, Any, None]]] = [
            *((f"forwarder:{loop.name}", loop.run()) for loop in self._loops),
            (
                "outbox-prune",
                prune_periodically(
                    store, upstream.retention_days, on_storage_error=self._storage_failed
                ),
            ),
        ]
        inbox = Inbox.from_section(model.orders, commands)
        if inbox is not None:
            background.append(("inbox", inbox.run()))
        self._inbox = inbox
        if self.config.l3 is not None:
            background.append(("l3", self._l3_service(commands, conn).run()))
        if clock is not None:
            background.append(("clock", clock.run()))
        background.append(("integrity-check", integrity.run()))
        if model.backup.dir is not None:
            from edge_agent.backup import BackupSchedule

            schedule = BackupSchedule(model.backup, state_dir, line_id=model.line.id, alarms=alarms)
            background.append(("backup", schedule.run()))
        if self.stations is not None:
            background.append(("aggregation", self.stations.run()))
        background.append(("auto-close", commands.finish_line_ends()))
        if model.api is not None:
            await self._start_api(stack, commands, alarms, settlement, conn, store)
        from edge_agent.opcua_server import open_packml

        packml = await open_packml(stack, model, self.stats, commands, controller)
        if packml is not None:
            background.append(("packml", packml))
        tasks: list[asyncio.Task[Any]] = []
        try:
            for name, job in background:
                tasks.append(asyncio.create_task(job, name=name))
            line = asyncio.create_task(controller.run(), name="line-controller")
            tasks.append(line)
            watcher = asyncio.create_task(self._watch(until_idle, commands), name="idle-watch")
            tasks.append(watcher)
            tasks.append(asyncio.create_task(_feed_watchdog(controller), name="watchdog"))
            systemd.notify_ready(f"line {model.line.id} up")
            log.info("agent_ready", line=model.line.id, api=self.api_url)
            if ready is not None:
                ready.set()
            await asyncio.wait({line, watcher}, return_when=asyncio.FIRST_COMPLETED)
            served = watcher.result() if watcher.done() else Served("signal")
            log.info("agent_stopping", ended=served.ended)
            if self.on_stopping is not None:
                self.on_stopping()
            if not line.done():
                controller.shutdown(self._stop or LineStopped(StopReason.SHUTDOWN, served.ended))
            # The segment in progress settles its units in flight; what a cut-short settle
            # leaves is settled at the next start (in flight at restart)
            await shutdown.within("line stop", line, self.line_settle_s)
            await shutdown.step(
                "outbox drain",
                _drain(self._loops, upstream.drain_on_exit_s),
                upstream.drain_on_exit_s + shutdown.TASKS_END_S,
            )
            return served
        finally:
            for loop in self._loops:
                loop.stop()
            await shutdown.end_tasks(tasks, step="background tasks", bound_s=shutdown.TASKS_END_S)

    async def _watch(self, until_idle: UntilIdle | None, commands: CommandPath) -> Served:
        """Returns when the daemon is told to stop, or (``until_idle``) when it is idle."""
        assert self._stopped is not None
        held_since: float | None = None
        while not self._stopped.is_set():
            if until_idle is not None:
                waiting = _needs_person(commands)
                unrecorded = None if self.controller is None else self.controller.unrecorded_stop
                if unrecorded is not None:  # held, though storage could not record it yet
                    log.warning("agent_held", reason=unrecorded.reason, recorded=False)
                    return Served("held", commands.store.active(), reason=unrecorded.reason)
                if waiting is None:
                    held_since = None
                    inbox_empty = self._inbox is None or not self._inbox.waiting_files()
                    delivered = all(loop.idle() for loop in self._loops)
                    if inbox_empty and delivered and _idle(commands):
                        log.info("agent_idle", detail="no order left to run")
                        return Served("idle")
                elif self.controller is not None and self.controller.running is None:
                    held_since = held_since or time.monotonic()
                    timeout = until_idle.hold_timeout_s
                    if timeout is not None and time.monotonic() - held_since >= timeout:
                        log.warning("agent_held", order=waiting.id, state=waiting.state)
                        hold = commands.store.open_hold(waiting.id)
                        reason = hold.reason if hold is not None else f"order {waiting.state}"
                        return Served("held", waiting, hold, reason)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), IDLE_CHECK_S)
        return Served("signal")

    def _clock_guard(self, alarms: AlarmBoard) -> Any:
        section = self.config.model.clock
        if not section.check:
            return None
        from edge_agent.clock import ClockGuard

        return ClockGuard(section, alarms)

    def _l3_service(self, commands: CommandPath, conn: Any) -> Any:
        from edge_agent.l3.service import L3Service

        spec = self.config.l3
        assert spec is not None
        link = spec.driver(spec.config)
        settings = spec.config
        assert isinstance(settings, L3Section)  # each link's Config extends the service's keys
        return L3Service(commands, link, conn, settings=settings)

    async def _start_api(
        self,
        stack: contextlib.AsyncExitStack,
        commands: CommandPath,
        alarms: AlarmBoard,
        settlement: OrderSettlement,
        conn: Any,
        store: OutboxStore,
    ) -> None:
        from edge_agent.api.deps import ApiServices
        from edge_agent.api.service import agent_api_server
        from edge_agent.api.status import DbLineStatus
        from edge_agent.orders.report_html import StoredReports

        section = self.config.model.api
        assert section is not None
        services = ApiServices(
            commands=commands,
            alarms=alarms,
            line=DbLineStatus(conn),
            reports=StoredReports(settlement.report_path),
            stations=self.stations,
        )
        # The REST API with /metrics, /health and (with [hmi]) the operator screen, over the
        # daemon's live counters and outbox
        server = await stack.enter_async_context(
            agent_api_server(
                self.config.model, services, stats=lambda: self.stats, outbox=store.status
            )
        )
        self.api_url = server.url

    def _forwarder_loop(
        self, spec: DeviceSpec, store: OutboxStore, upstream: UpstreamSection
    ) -> ForwarderLoop:
        return ForwarderLoop(
            store,
            self._forwarder(spec),
            spec.name,
            batch_size=upstream.batch_size,
            backoff_initial_s=upstream.backoff_initial_s,
            backoff_max_s=upstream.backoff_max_s,
            on_alarm=self.stats.alarms.append,
            on_storage_error=self._storage_failed,
        )

    async def drain_outbox(self, timeout_s: float) -> int:
        """Run only the forwarders until every one has nothing pending (or ``timeout_s``
        passes); returns how many (forwarder, event) deliveries are still pending."""
        model = self.config.model
        conn = open_db(model.agent.state_dir, announce=True)
        try:
            store = OutboxStore(conn, [spec.name for spec in self.config.forwarders])
            upstream = model.upstream or UpstreamSection()
            loops = [self._forwarder_loop(spec, store, upstream) for spec in self.config.forwarders]
            tasks = [
                asyncio.create_task(loop.run(), name=f"forwarder:{loop.name}") for loop in loops
            ]
            try:
                await _drain(loops, timeout_s)
            finally:
                for loop in loops:
                    loop.stop()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            return sum(s.pending for s in store.status())
        finally:
            close_db(conn)

    def _forwarder(self, spec: DeviceSpec) -> Any:
        line = self.config.model.line
        accepts = inspect.signature(spec.driver).parameters
        context = {k: v for k, v in (("site", line.site), ("line", line.id)) if k in accepts}
        return spec.driver(spec.name, spec.config, **context)


async def _feed_watchdog(controller: LineController) -> None:
    """WATCHDOG=1 while no segment's heartbeat loop does it (idle, held, a segment opening its
    devices): the daemon's loop is alive. Once the line runs, only the PLC heartbeat feeds it,
    so a hung line is restarted by systemd."""
    while True:
        if not controller.beating:
            systemd.notify_watchdog()
        await asyncio.sleep(WATCHDOG_S)


def _needs_person(commands: CommandPath) -> OrderRecord | None:
    """The order that waits for a person: Held, or Completed but not closed (unbalanced)."""
    active = commands.store.active()
    if active is not None and active.state == OrderState.HELD:
        return active
    completed = commands.store.all(frozenset({OrderState.COMPLETED}))
    return completed[0] if completed else None


def _idle(commands: CommandPath) -> bool:
    return not commands.store.all(BUSY)


def _disk_problems(disk: DiskGuard) -> list[str]:
    if not disk.enabled:
        return []
    try:
        disk.check()
    except LineStopped as exc:
        return [str(exc)]
    return []


async def _drain(loops: list[ForwarderLoop], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while loops and time.monotonic() < deadline:
        if all(loop.idle() for loop in loops):
            return
        await asyncio.sleep(0.1)
    for loop in loops:
        if not loop.idle():
            log.warning("outbox_not_drained", forwarder=loop.name, detail="events stay pending")
