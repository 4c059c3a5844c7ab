"""The agent's optional OPC UA server: the line as a PackML-style state machine for SCADA/MES.

Imported by the agent always; asyncua is imported only when ``[opcua_server] enabled = true``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from edge_agent.config.models import AgentConfig
from edge_agent.errors import LineStopped
from edge_agent.line.stats import LineStats

if TYPE_CHECKING:
    from edge_agent.ledger import BatchInfo
    from edge_agent.line.runtime import LineRuntime
    from edge_agent.opcua_server.server import PackMLServer


async def open_packml(
    stack: contextlib.AsyncExitStack, model: AgentConfig, stats: LineStats, plc: Any
) -> tuple[PackMLServer | None, Any]:
    """Start the server if configured; returns it and the PLC link the runtime must use (one
    that lets operator commands act on the line)."""
    section = model.opcua_server
    if section is None or not section.enabled:
        return None, plc
    from edge_agent.opcua_server.control import OperatorPlc
    from edge_agent.opcua_server.server import PackMLServer

    server = await stack.enter_async_context(PackMLServer(section, stats, line_id=model.line.id))
    control = OperatorPlc(plc)
    server.control = control
    return server, control


async def run_batch(server: PackMLServer, runtime: LineRuntime, batch_id: str) -> BatchInfo:
    """Run the batch with the state machine following it: Execute, then Complete, Stopped (an
    operator Stop) or Aborted (any other line stop, raised as an alarm)."""
    if server.section.wait_for_start:
        await server.wait_for_start()
    await server.batch_started(batch_id)
    try:
        result = await runtime.run()
    except LineStopped as exc:
        await server.line_stopped(exc.reason, str(exc))
        await asyncio.sleep(server.section.linger_s)
        raise
    await server.batch_finished()
    await asyncio.sleep(server.section.linger_s)
    return result
