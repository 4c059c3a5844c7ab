"""The Agent: opens the state database, connects the devices, runs the line."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sqlite3
import time
from collections.abc import Coroutine
from typing import Any, NoReturn

import structlog

from edge_agent import systemd
from edge_agent.config import LoadedConfig
from edge_agent.config.loader import DeviceSpec
from edge_agent.config.models import UpstreamSection
from edge_agent.db import close_db, open_db
from edge_agent.errors import EdgeAgentError, LineStopped, StorageFull
from edge_agent.ledger import BatchInfo, Ledger
from edge_agent.line.runtime import LineRuntime
from edge_agent.line.stats import LineStats
from edge_agent.opcua_server import open_packml, run_batch
from edge_agent.outbox.forwarding import ForwarderLoop, QuotaGuard, prune_periodically
from edge_agent.outbox.store import OutboxStore
from edge_agent.storage import DiskGuard, log_capacity, storage_stop
from edge_agent.vision.pipeline import build_reader

log = structlog.get_logger("edge_agent.app")


class Agent:
    def __init__(self, config: LoadedConfig, stats: LineStats | None = None, on_tick: Any = None):
        self.config = config
        self.stats = stats or LineStats()
        self.on_tick = on_tick
        self._runtime: LineRuntime | None = None

    def request_stop(self, stop: LineStopped) -> bool:
        """Stop the running line cleanly (see LineRuntime.request_stop). False when no line is
        running yet (start-up, waiting for an operator's Start) or any more (draining the outbox):
        then there is nothing in flight to settle, and the caller may simply cancel the run."""
        return self._runtime is not None and self._runtime.request_stop(stop)

    def _device(self, kind: str) -> Any:
        spec = getattr(self.config, kind)
        return spec.driver(kind, spec.config)

    def _storage_failed(self, exc: Exception) -> None:
        """A storage failure outside the line's own tasks (forwarders, pruning) stops the line."""
        if self._runtime is not None:
            self._runtime.request_stop(storage_stop(exc, self.config.model.agent.state_dir))

    async def _stop_before_line(self, stop: LineStopped) -> NoReturn:
        """A stop found before the line could run (no room for the state database): the PLC
        is told (its stop code) as for any line stop, then the stop is raised."""
        log.error(
            "line_stop", batch=self.config.model.batch.id, reason=stop.reason, detail=str(stop)
        )
        systemd.notify_stopping(f"line stopped: {stop.reason}")
        try:
            async with self._device("plc") as plc:
                await plc.request_line_stop(stop.reason.code)
        except EdgeAgentError as exc:  # the stop stands; the PLC stops on the missing heartbeat
            log.error("line_stop_not_sent", device="plc", detail=str(exc))
        raise stop

    async def run(self) -> BatchInfo:
        model = self.config.model
        for warning in self.config.warnings:
            log.warning("config_warning", batch=model.batch.id, detail=warning)
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
            batch_target=model.batch.target_quantity,
        )
        ledger = Ledger(
            conn,
            read_point=model.line.read_point,
            biz_location=model.line.biz_location,
            company_prefix_length=model.line.company_prefix_length,
        )
        serials = model.batch.serials
        try:
            if serials.source == "list" and serials.file is not None:
                try:
                    added = ledger.import_serial_list(model.batch.gtin, serials.file)
                except sqlite3.Error as exc:
                    raise storage_stop(exc, model.agent.state_dir) from exc
                log.info("serial_list_imported", file=str(serials.file), new=added)
            async with contextlib.AsyncExitStack() as stack:
                printer = await stack.enter_async_context(self._device("printer"))
                camera = await stack.enter_async_context(self._device("camera"))
                plc = await stack.enter_async_context(self._device("plc"))
                reader = build_reader(model.vision)
                stack.callback(reader.close)
                await asyncio.to_thread(reader.start)  # libdmtx workers, if configured
                packml, plc = await open_packml(stack, model, self.stats, plc)
                runtime = LineRuntime(
                    model,
                    ledger,
                    printer=printer,
                    camera=camera,
                    plc=plc,
                    reader=reader,
                    stats=self.stats,
                    on_tick=self.on_tick,
                )
                self._runtime = runtime
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
                runtime.guards.append(("outbox-quota", quota.run))
                if disk.enabled:
                    runtime.guards.append(("disk-space", disk.run))
                systemd.notify_ready(f"running batch {model.batch.id}")
                line_run = (
                    run_batch(packml, runtime, model.batch.id)
                    if packml is not None
                    else runtime.run()
                )
                batch = await self._with_forwarders(line_run, store, upstream)
                assert batch is not None
                return batch
        finally:
            close_db(conn)

    async def drain_outbox(self, timeout_s: float) -> int:
        """Run only the forwarders until every one has nothing pending (or ``timeout_s``
        passes); returns how many (forwarder, event) deliveries are still pending."""
        model = self.config.model
        conn = open_db(model.agent.state_dir, announce=True)
        try:
            store = OutboxStore(conn, [spec.name for spec in self.config.forwarders])
            upstream = model.upstream or UpstreamSection()
            upstream = upstream.model_copy(update={"drain_on_exit_s": timeout_s})
            await self._with_forwarders(None, store, upstream)
            return sum(s.pending for s in store.status())
        finally:
            close_db(conn)

    def _forwarder(self, spec: DeviceSpec) -> Any:
        line = self.config.model.line
        accepts = inspect.signature(spec.driver).parameters
        context = {k: v for k, v in (("site", line.site), ("line", line.id)) if k in accepts}
        return spec.driver(spec.name, spec.config, **context)

    async def _with_forwarders(
        self,
        line: Coroutine[Any, Any, BatchInfo] | None,
        store: OutboxStore,
        upstream: UpstreamSection,
    ) -> BatchInfo | None:
        """Run the line with the forwarder loops beside it in one TaskGroup. The loops never
        raise; when the line ends (or stops), they get ``drain_on_exit_s`` to empty the outbox."""
        loops = [
            ForwarderLoop(
                store,
                self._forwarder(spec),
                spec.name,
                batch_size=upstream.batch_size,
                backoff_initial_s=upstream.backoff_initial_s,
                backoff_max_s=upstream.backoff_max_s,
                on_alarm=self.stats.alarms.append,
                on_storage_error=self._storage_failed,
            )
            for spec in self.config.forwarders
        ]
        failure: Exception | None = None
        batch = None
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(loop.run(), name=f"forwarder:{loop.name}") for loop in loops]
            tasks.append(
                tg.create_task(
                    prune_periodically(
                        store, upstream.retention_days, on_storage_error=self._storage_failed
                    ),
                    name="outbox-prune",
                )
            )
            try:
                batch = None if line is None else await line
            except Exception as exc:  # re-raised once the forwarders had their chance to drain
                failure = exc
            await _drain(loops, upstream.drain_on_exit_s)
            for loop in loops:
                loop.stop()
            for task in tasks:
                task.cancel()
        if failure is not None:
            raise failure
        return batch


async def _drain(loops: list[ForwarderLoop], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while loops and time.monotonic() < deadline:
        if all(loop.idle() for loop in loops):
            return
        await asyncio.sleep(0.1)
    for loop in loops:
        if not loop.idle():
            log.warning("outbox_not_drained", forwarder=loop.name, detail="events stay pending")
