"""The agent's optional OPC UA server: the line as a PackML state machine for SCADA/MES.

Imported by the agent always; asyncua is imported only when ``[opcua_server] enabled = true``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge_agent.config.models import AgentConfig
from edge_agent.errors import LineStopped
from edge_agent.line.stats import LineStats
from edge_agent.opcua_server.control import BatchLine, OperatorPlc
from edge_agent.opcua_server.controller import PackMLController
from edge_agent.opcua_server.packml import Command, CommandRefused
from edge_agent.stops import StopReason

if TYPE_CHECKING:
    from edge_agent.ledger import BatchInfo
    from edge_agent.line.runtime import LineRuntime

# Line stops that operator commands asked for: their Stop or Abort completes with them.
OPERATOR_ENDS = frozenset({StopReason.OPERATOR_STOP, StopReason.OPERATOR_ABORT})


@dataclass
class PackML:
    """The state machine of one agent run, the batch line it drives, and how the run uses it."""

    controller: PackMLController
    line: BatchLine
    wait_for_start: bool = False
    linger_s: float = 0.0


async def open_packml(
    stack: contextlib.AsyncExitStack, model: AgentConfig, stats: LineStats, plc: Any
) -> tuple[PackML | None, Any]:
    """Start the server if configured; returns it and the PLC link the runtime must use (one
    that lets operator commands act on the line)."""
    section = model.opcua_server
    if section is None or not section.enabled:
        return None, plc
    from edge_agent.opcua_server.server import PackMLServer

    operator_plc = OperatorPlc(plc)
    line = BatchLine(operator_plc)
    controller = PackMLController(line, alarm=stats.alarms.append)
    stack.push_async_callback(controller.close)
    await stack.enter_async_context(PackMLServer(section, stats, controller, line_id=model.line.id))
    packml = PackML(controller, line, section.wait_for_start, section.linger_s)
    return packml, operator_plc


async def run_batch(packml: PackML, runtime: LineRuntime, batch_id: str) -> BatchInfo:
    """Run the batch with the state machine following it: Starting → Execute once the runtime
    runs, then Complete (the batch is done), Stopped or Aborted (an operator's Stop or Abort),
    or Aborted (a line stop the agent decided itself, already raised as an alarm)."""
    controller, line = packml.controller, packml.line
    controller.set_order(batch_id)
    if not packml.wait_for_start:
        with contextlib.suppress(CommandRefused):  # an operator's Stop or Abort came first
            await controller.command(Command.START, by="agent")
    await line.wait_for_start()
    try:
        result = await runtime.run()
    except asyncio.CancelledError:
        line.ended()
        raise
    except Exception as exc:
        line.ended()
        if not (isinstance(exc, LineStopped) and exc.reason in OPERATOR_ENDS):
            await controller.fault(str(exc))
        await asyncio.sleep(packml.linger_s)
        raise
    line.ended()
    await controller.production_complete()
    await asyncio.sleep(packml.linger_s)
    return result
