"""The Agent: opens the state database, connects the devices, runs the line."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from edge_agent import systemd
from edge_agent.config import LoadedConfig
from edge_agent.db import open_db
from edge_agent.ledger import BatchInfo, Ledger
from edge_agent.line.runtime import LineRuntime
from edge_agent.line.stats import LineStats
from edge_agent.opcua_server import open_packml, run_batch
from edge_agent.vision.pipeline import build_reader

log = structlog.get_logger("edge_agent.app")


class Agent:
    def __init__(self, config: LoadedConfig, stats: LineStats | None = None, on_tick: Any = None):
        self.config = config
        self.stats = stats or LineStats()
        self.on_tick = on_tick

    def _device(self, kind: str) -> Any:
        spec = getattr(self.config, kind)
        return spec.driver(kind, spec.config)

    async def run(self) -> BatchInfo:
        model = self.config.model
        conn = open_db(model.agent.state_dir)
        ledger = Ledger(
            conn,
            read_point=model.line.read_point,
            company_prefix_length=model.line.company_prefix_length,
        )
        serials = model.batch.serials
        if serials.source == "list" and serials.file is not None:
            added = ledger.import_serial_list(model.batch.gtin, serials.file)
            log.info("serial_list_imported", file=str(serials.file), new=added)
        try:
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
                systemd.notify_ready(f"running batch {model.batch.id}")
                if packml is not None:
                    return await run_batch(packml, runtime, model.batch.id)
                return await runtime.run()
        finally:
            conn.close()
