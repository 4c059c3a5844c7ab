"""The agent's optional OPC UA server: the line as a PackML state machine for SCADA/MES.

Imported by the agent always; asyncua is imported only when ``[opcua_server] enabled = true``.
The server lives as long as the daemon and shows the order on the line; its commands act on the
orders through the command path (``control.OrderLine``), and ``control.follow_orders`` keeps its
state with the orders when they move by themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from edge_agent.config.models import AgentConfig
from edge_agent.line.stats import LineStats
from edge_agent.opcua_server.controller import PackMLController

if TYPE_CHECKING:
    from edge_agent.line.controller import LineController
    from edge_agent.orders.commands import CommandPath


async def open_packml(
    stack: contextlib.AsyncExitStack,
    model: AgentConfig,
    stats: LineStats,
    commands: CommandPath,
    line: LineController,
) -> Coroutine[Any, Any, None] | None:
    """Start the server if configured (closed with ``stack``); returns the coroutine that keeps
    its state machine with the orders, for the daemon to run beside the line."""
    section = model.opcua_server
    if section is None or not section.enabled:
        return None
    from edge_agent.opcua_server.control import OrderLine, follow_orders
    from edge_agent.opcua_server.server import PackMLServer

    actions = OrderLine(commands, line)
    controller = PackMLController(actions, alarm=stats.alarms.append)
    actions.show = controller.set_order
    stack.push_async_callback(controller.close)
    await stack.enter_async_context(PackMLServer(section, stats, controller, line_id=model.line.id))
    if section.wait_for_start:
        line.auto_start = False  # orders start when a client calls Start (or through the API)
    return follow_orders(controller, line, commands)
