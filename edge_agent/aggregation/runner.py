"""The bundle, case and pallet stations of ``[aggregation]``, following the order on the line.

The resident daemon (``edge-agent run``, ``Agent.serve``) runs a ``StationRunner`` as one of its
side tasks over its own state database connection; standalone, beside a daemon on the same
state database, it runs as

    python -m edge_agent.aggregation.runner --config /etc/edge-agent/agent.toml [--order ID]

The stations work on the order the line runs or holds (when its plan aggregates), and, once the
unit line has made its quantity, on that Completed order until it is closed, so its last cases
and its last, partial pallet are finished (the batch close is refused while a container is open,
and does not balance while a closed case is on no pallet). ``[aggregation] order`` or
``--order`` pins one order instead. Each station recovers what a crash left at its start
(``recover``), connects its devices and decides cases and pallets. A station that fails raises
an alarm (``bundle_station_down``, ``case_station_down``, ``pallet_station_down``) and is
reconnected with the usual
backoff, never ending the daemon; a config error ends the start (standalone: exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sqlite3
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import structlog

from edge_agent import registry
from edge_agent.aggregation.hierarchy import Hierarchy
from edge_agent.aggregation.plan import Level
from edge_agent.aggregation.station import (
    BundleStation,
    CaseStation,
    LabelPath,
    PalletStation,
    StationTimings,
)
from edge_agent.alarms import AlarmBoard, AlarmKind
from edge_agent.config import load_config
from edge_agent.config.loader import validate_table
from edge_agent.config.models import (
    AgentConfig,
    AggregationSection,
    CaseStationSection,
    VisionSection,
)
from edge_agent.db import open_db
from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.ledger import Ledger
from edge_agent.logs import configure_for
from edge_agent.orders.model import OrderState
from edge_agent.orders.store import OrderStore
from edge_agent.supervisor import Supervisor
from edge_agent.vision.pipeline import DecodePipeline

log = structlog.get_logger(__name__)

CASE_CODES = 200  # most codes a case frame may hold (the multi-code reader's setting)


def device(kind: registry.DeviceKind, table: dict[str, Any], key: str) -> Any:
    """A device object from its config table, validated by the driver its ``type`` selects."""
    type_name = table.get("type")
    if not isinstance(type_name, str):
        raise ConfigError(f"{key}.type: missing; give the {kind} driver type", key=key)
    try:
        driver = registry.driver_class(kind, type_name)
    except registry.UnknownDriver as exc:
        raise ConfigError(f"{key}.type: {exc}", key=key) from None
    return driver(key, validate_table(driver.Config, table, key=key))


def check_devices(section: AggregationSection) -> None:
    """Validate every station device table (ConfigError naming the key), connecting nothing."""
    for name, case in (("bundle", section.bundle_station), ("case", section.case_station)):
        key = f"aggregation.{name}_station"
        if case is not None:
            device("camera", case.camera, f"{key}.camera")
            device("plc", case.plc, f"{key}.plc")
            device("label_printer", case.label_printer, f"{key}.label_printer")
            device("camera", case.label_camera, f"{key}.label_camera")
    key = "aggregation.pallet_station"
    if (pallet := section.pallet_station) is not None:
        device("scanner", pallet.scanner, f"{key}.scanner")
        device("label_printer", pallet.label_printer, f"{key}.label_printer")
        device("camera", pallet.label_camera, f"{key}.label_camera")


def case_reader(vision: VisionSection) -> DecodePipeline:
    """Many codes per frame, the whole frame at once (``edge_agent.vision.multi``)."""
    return DecodePipeline(vision.model_copy(update={"max_codes": CASE_CODES, "fallbacks": []}))


def label_reader(vision: VisionSection) -> DecodePipeline:
    return DecodePipeline(vision.model_copy(update={"max_codes": 2}))


FOLLOW_S = 0.5  # how often the stations look which order they should work on
STATIONS = {
    Level.BUNDLE: ("bundle", AlarmKind.BUNDLE_STATION_DOWN),
    Level.CASE: ("case", AlarmKind.CASE_STATION_DOWN),
    Level.PALLET: ("pallet", AlarmKind.PALLET_STATION_DOWN),
}


def station_order(conn: sqlite3.Connection) -> str | None:
    """The order the stations work on: the one on the line (Running or Held) when its plan
    aggregates; with none on the line, the newest Completed one with a plan (not closed yet:
    its last cases and pallet are still to finish); else None."""
    store = OrderStore(conn)
    active = store.active()
    if active is not None:
        return active.id if active.order.aggregation is not None else None
    completed = store.all(frozenset({OrderState.COMPLETED}))
    finishing = [r for r in completed if r.order.aggregation is not None]
    return finishing[-1].id if finishing else None


class StationRunner:
    """The configured stations for the order ``target()`` names, switched when it changes.

    ``ledger`` (and ``alarms``): the daemon's, over its state database connection; without
    one the runner opens the state database itself (standalone)."""

    def __init__(
        self,
        model: AgentConfig,
        order_id: str | None = None,
        *,
        ledger: Ledger | None = None,
        alarms: AlarmBoard | None = None,
    ) -> None:
        if model.aggregation is None:
            raise ConfigError(
                "no [aggregation] section: add [aggregation.case_station] (and "
                "[aggregation.bundle_station], [aggregation.pallet_station] as the line has "
                "them; see config/line-example.toml)"
            )
        self.model = model
        self.section: AggregationSection = model.aggregation
        check_devices(self.section)  # a config error stops the start, never a retry loop
        self.pinned = order_id or self.section.order
        self._own_conn = ledger is None
        if ledger is None:
            line = model.line
            ledger = Ledger(
                open_db(model.agent.state_dir),
                read_point=line.read_point,
                biz_location=line.biz_location,
                company_prefix_length=line.company_prefix_length,
            )
        self.conn = ledger.conn
        self.ledger = ledger
        self.hierarchy = Hierarchy(ledger)
        self.alarms = alarms or AlarmBoard(self.conn)
        self.order_id: str | None = None  # the order the stations work on now
        # the running stations (the REST API's station routes, the demo's line end)
        self.bundle_station: BundleStation | None = None
        self.case_station: CaseStation | None = None
        self.pallet_station: PalletStation | None = None
        self._links: dict[str, Supervisor] = {}

    def close(self) -> None:
        if self._own_conn:
            self.conn.close()

    def target(self) -> str | None:
        return self.pinned or station_order(self.conn)

    async def run(self) -> None:
        """Follow ``target()`` until cancelled: the stations of one order at a time."""
        ended: str | None = None  # an order whose stations ended by themselves (none applies)
        while True:
            order = self.target()
            if order is None or order == ended:
                await asyncio.sleep(FOLLOW_S)
                continue
            ended = await self._follow(order)

    async def _follow(self, order: str) -> str | None:
        """The stations of ``order`` until it is no longer the target; ``order`` when they
        ended by themselves first."""
        self.order_id = order
        log.info("stations_follow_order", order=order)
        task = asyncio.create_task(self._run_order(order), name=f"stations:{order}")
        try:
            while not task.done() and self.target() == order:
                await asyncio.wait([task], timeout=FOLLOW_S)
        finally:
            await _cancel(task)
            self.order_id = None
            self._stations_gone(order)
        return order if self.target() == order else None

    def _stations_gone(self, order: str) -> None:
        """The stations left the order: their down alarms no longer stand."""
        for _, kind in STATIONS.values():
            with contextlib.suppress(EdgeAgentError, sqlite3.Error):
                self.alarms.clear(kind, order_id=order)

    async def _run_order(self, order: str) -> None:
        jobs: list[tuple[Level, Callable[[str], Coroutine[Any, Any, None]]]] = []
        if self.section.bundle_station is not None:
            jobs.append((Level.BUNDLE, self._bundle_station))
        if self.section.case_station is not None:
            jobs.append((Level.CASE, self._case_station))
        if self.section.pallet_station is not None:
            jobs.append((Level.PALLET, self._pallet_station))
        plan = OrderStore(self.conn).get(order).order.aggregation
        applies = [(lv, job) for lv, job in jobs if plan is not None and plan.has(lv)]
        for level, _ in jobs:
            if plan is None or not plan.has(level):
                log.info("station_not_needed", station=str(level), order=order)
        async with asyncio.TaskGroup() as tasks:
            for level, job in applies:
                tasks.create_task(self._supervised(level, order, job))

    async def _supervised(
        self, level: Level, order: str, run: Callable[[str], Coroutine[Any, Any, None]]
    ) -> None:
        """Run a station; after a failure, an alarm and a reconnect with backoff (never exit)."""
        name, kind = STATIONS[level]
        link = self._links[name] = Supervisor(
            f"{name}-station",
            first_s=0.2,
            max_s=5.0,
            lost_event="station down",
            still_event="station still down",
            back_event="station back",
            logger=log,
        )
        while True:
            try:
                await run(order)
            except* Exception as group:  # a bug in a station must not end the daemon either
                error = group.exceptions[0]
                if not isinstance(error, EdgeAgentError):
                    log.error("station_error", station=name, order=order, exc_info=error)
                detail = str(error) or type(error).__name__
                log.error("station_failed", station=name, order=order, detail=detail)
                if link.lost(detail):
                    self._alarm(
                        kind,
                        f"{name} station down for order {order}: {detail}. Check its devices "
                        f"([aggregation.{name}_station]); the agent reconnects by itself",
                        order,
                    )
                await link.pause()
            finally:
                if level is Level.BUNDLE:
                    self.bundle_station = None
                elif level is Level.CASE:
                    self.case_station = None
                else:
                    self.pallet_station = None

    def _up(self, level: Level, order: str) -> None:
        """The station's devices are connected: its down alarm is cleared."""
        name, kind = STATIONS[level]
        link = self._links.get(name)
        if link is not None and link.down:
            link.recovered()
        with contextlib.suppress(EdgeAgentError, sqlite3.Error):
            self.alarms.clear(kind, order_id=order)

    def _alarm(self, kind: AlarmKind, message: str, order: str) -> None:
        try:
            self.alarms.raise_(kind, message, order_id=order)
        except (EdgeAgentError, sqlite3.Error) as exc:  # storage trouble: the log has it
            log.error("alarm_not_recorded", kind=str(kind), detail=str(exc))

    async def _bundle_station(self, order: str) -> None:
        assert self.section.bundle_station is not None
        await self._boxing_station(Level.BUNDLE, self.section.bundle_station, order)

    async def _case_station(self, order: str) -> None:
        assert self.section.case_station is not None
        await self._boxing_station(Level.CASE, self.section.case_station, order)

    async def _boxing_station(self, level: Level, s: CaseStationSection, order: str) -> None:
        """The case station, or the bundle station (the same path one level down)."""
        vision = self.model.vision
        timings = StationTimings(
            closing_read_s=s.closing_read_s,
            label_confirm_s=s.label_confirm_s,
            label_read_s=s.label_read_s,
        )
        name = STATIONS[level][0]
        key = f"aggregation.{name}_station"
        async with contextlib.AsyncExitStack() as stack:
            camera = await stack.enter_async_context(device("camera", s.camera, f"{key}.camera"))
            plc = await stack.enter_async_context(device("plc", s.plc, f"{key}.plc"))
            printer = await stack.enter_async_context(
                device("label_printer", s.label_printer, f"{key}.label_printer")
            )
            label_camera = await stack.enter_async_context(
                device("camera", s.label_camera, f"{key}.label_camera")
            )
            reader = case_reader(vision)
            labels = LabelPath(printer, label_camera, label_reader(vision), timings)
            kind = BundleStation if level is Level.BUNDLE else CaseStation
            station = kind(
                self.hierarchy,
                order,
                camera=camera,
                plc=plc,
                labels=labels,
                reader=reader,
                timings=timings,
            )
            log.info(f"{name}_station_running", order=order, capacity=station.capacity)
            if isinstance(station, BundleStation):
                self.bundle_station = station
            else:
                self.case_station = station
            self._up(level, order)
            await station.run()

    async def _pallet_station(self, order: str) -> None:
        s = self.section.pallet_station
        assert s is not None
        timings = StationTimings(label_confirm_s=s.label_confirm_s, label_read_s=s.label_read_s)
        key = "aggregation.pallet_station"
        async with contextlib.AsyncExitStack() as stack:
            scanner = await stack.enter_async_context(
                device("scanner", s.scanner, f"{key}.scanner")
            )
            printer = await stack.enter_async_context(
                device("label_printer", s.label_printer, f"{key}.label_printer")
            )
            label_camera = await stack.enter_async_context(
                device("camera", s.label_camera, f"{key}.label_camera")
            )
            labels = LabelPath(printer, label_camera, label_reader(self.model.vision), timings)
            station = PalletStation(
                self.hierarchy,
                order,
                scanner=scanner,
                labels=labels,
                attempts=s.label_attempts,
                alarms=self.alarms,
            )
            log.info("pallet_station_running", order=station.order_id, capacity=station.capacity)
            self.pallet_station = station
            self._up(Level.PALLET, order)
            await station.run()


CANCEL_TRIES = 15  # 1 s each: then the stations are left behind, logged (the daemon exits)


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel until it ends: Python 3.11's wait_for (inside pymodbus) can lose a cancellation,
    and a TaskGroup passes its parent's cancellation on to its tasks only once. Bounded: a
    station that never ends must not keep the daemon from stopping."""
    for _ in range(CANCEL_TRIES):
        if task.done():
            break
        task.cancel()
        await asyncio.wait([task], timeout=1.0)
    if not task.done():
        log.error("stations_not_stopped", task=task.get_name(), detail="left behind")
    elif not task.cancelled() and task.exception() is not None:
        log.error("stations_ended", detail=str(task.exception()))


async def _until_signal(runner: StationRunner) -> None:
    task = asyncio.ensure_future(runner.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([task, stopping], return_when="FIRST_COMPLETED")
    stopping.cancel()
    await _cancel(task)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edge_agent.aggregation.runner",
        description="Run the bundle, case and pallet stations of the config's [aggregation] "
        "section.",
    )
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument(
        "--order", help="order id (default: [aggregation].order, else the order on the line)"
    )
    args = parser.parse_args(argv)
    try:
        loaded = load_config(args.config)
        configure_for(loaded.model.agent)
        runner = StationRunner(loaded.model, args.order)
    except EdgeAgentError as exc:
        print(f"edge-agent aggregation: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        asyncio.run(_until_signal(runner))
    except KeyboardInterrupt:
        pass
    finally:
        runner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
