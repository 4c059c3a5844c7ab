"""Run the case and pallet stations of ``[aggregation]`` as a process of their own.

    python -m edge_agent.aggregation.runner --config /etc/edge-agent/agent.toml [--order ID]

Opens the state database (the same ledger as the unit station), recovers what a crash left
(``CaseStation.recover``), connects the stations' devices and decides cases and pallets until
SIGINT or SIGTERM (exit 0). A device that fails is reconnected with the usual backoff; a config
error exits 2 with a message naming the key.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from edge_agent import registry
from edge_agent.aggregation.hierarchy import Hierarchy
from edge_agent.aggregation.station import CaseStation, LabelPath, PalletStation, StationTimings
from edge_agent.config import load_config
from edge_agent.config.loader import validate_table
from edge_agent.config.models import AgentConfig, AggregationSection, VisionSection
from edge_agent.db import open_db
from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.ledger import Ledger
from edge_agent.logs import configure_for
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
    key = "aggregation.case_station"
    if (case := section.case_station) is not None:
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


class StationRunner:
    def __init__(self, model: AgentConfig, order_id: str | None = None) -> None:
        if model.aggregation is None:
            raise ConfigError(
                "no [aggregation] section: add [aggregation.case_station] and/or "
                "[aggregation.pallet_station] (see config/line-example.toml)"
            )
        self.model = model
        self.section: AggregationSection = model.aggregation
        check_devices(self.section)  # a config error stops the start, never a retry loop
        self.order_id = order_id or self.section.order
        self.conn = open_db(model.agent.state_dir)
        line = model.line
        self.ledger = Ledger(
            self.conn,
            read_point=line.read_point,
            biz_location=line.biz_location,
            company_prefix_length=line.company_prefix_length,
        )
        self.hierarchy = Hierarchy(self.ledger)
        # the running stations, for a caller in the same process (the demo's line end)
        self.case_station: CaseStation | None = None
        self.pallet_station: PalletStation | None = None

    def close(self) -> None:
        self.conn.close()

    def order(self) -> str:
        if self.order_id is not None:
            return self.order_id
        active = OrderStore(self.conn).active()
        if active is None:
            raise EdgeAgentError("no active order; start one, or name it with --order")
        return active.id

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            if self.section.case_station is not None:
                tasks.create_task(self._supervised("case", self._case_station))
            if self.section.pallet_station is not None:
                tasks.create_task(self._supervised("pallet", self._pallet_station))

    async def _supervised(self, name: str, run: Any) -> None:
        """Run a station; after a device failure, reconnect with backoff (never exit)."""
        link = Supervisor(
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
                await run()
            except* EdgeAgentError as group:
                for exc in group.exceptions:
                    log.error("station_failed", station=name, detail=str(exc))
                link.lost(str(group.exceptions[0]))
                await link.pause()

    async def _case_station(self) -> None:
        s = self.section.case_station
        assert s is not None
        vision = self.model.vision
        timings = StationTimings(
            closing_read_s=s.closing_read_s,
            label_confirm_s=s.label_confirm_s,
            label_read_s=s.label_read_s,
        )
        key = "aggregation.case_station"
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
            station = CaseStation(
                self.hierarchy,
                self.order(),
                camera=camera,
                plc=plc,
                labels=labels,
                reader=reader,
                timings=timings,
            )
            log.info("case_station_running", order=station.order_id, capacity=station.capacity)
            self.case_station = station
            await station.run()

    async def _pallet_station(self) -> None:
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
                self.order(),
                scanner=scanner,
                labels=labels,
                attempts=s.label_attempts,
            )
            log.info("pallet_station_running", order=station.order_id, capacity=station.capacity)
            self.pallet_station = station
            await station.run()


async def _until_signal(runner: StationRunner) -> None:
    task = asyncio.ensure_future(runner.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([task, stopping], return_when="FIRST_COMPLETED")
    stopping.cancel()
    # Cancel until it ends: Python 3.11's wait_for (inside pymodbus) can lose one cancellation
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=1.0)
    with contextlib.suppress(asyncio.CancelledError):
        task.result()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edge_agent.aggregation.runner",
        description="Run the case and pallet stations of the config's [aggregation] section.",
    )
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--order", help="order id (default: [aggregation].order, else active)")
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
