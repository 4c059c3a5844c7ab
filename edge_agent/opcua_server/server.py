"""The agent's PackML-style OPC UA server: line state, batch, counters, alarms and commands.

Address space (namespace ``namespace_uri``, string node ids)::

    Objects/Line                    s=Line
      Status/StateCurrent   Int32   PackML state number (6 = Execute, 11 = Held, 2 = Stopped ...)
      Status/StateName      String  the state's name
      Status/LastCommand    String  the latest command and what became of it (why it was refused)
      Status/BatchId        String
      Status/UnitsPerMin    Double
      Admin/Printed         UInt32  units printed and decided
      Admin/Passed          UInt32
      Admin/Rejected        UInt32
      Admin/RejectedByReason/<reason>  UInt32, one variable per reason seen
      Alarms/Active         Boolean
      Alarms/Messages       String[] latest alarms, oldest first
      Start() Stop() Hold() Unhold() Suspend() Unsuspend() Reset() Abort() Clear()   methods on Line

The methods hand their command to the ``PackMLController``: a command it refuses answers
``BadInvalidState`` (OPC 30050's result code for it) and changes nothing; an accepted one answers
Good once its acting state is entered, and the state moves on when the line has done the work.
The server only publishes the controller's state and the counters.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Self

import structlog
from asyncua import ua
from asyncua.common.node import Node
from asyncua.server.server import Server
from asyncua.ua.status_codes import StatusCodes

from edge_agent.config.models import OpcUaServerSection
from edge_agent.line.stats import LineStats
from edge_agent.opcua_server.controller import PackMLController
from edge_agent.opcua_server.packml import Command, CommandRefused
from edge_agent.opcua_server.security import new_server, warn_if_insecure

log = structlog.get_logger("edge_agent.opcua_server")

ENDPOINT_PATH = "/edge-agent"
MAX_ALARMS = 20


class PackMLServer:
    def __init__(
        self,
        section: OpcUaServerSection,
        stats: LineStats,
        controller: PackMLController | None = None,
        *,
        line_id: str = "",
    ) -> None:
        self.section = section
        self.stats = stats
        self.controller = controller if controller is not None else PackMLController()
        self.line_id = line_id
        self.port = section.port
        self._server: Server | None = None
        self._ns = 0
        self._vars: dict[str, Node] = {}
        self._reasons: dict[str, Node] = {}
        self._reasons_folder: Node | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._refreshing = asyncio.Lock()  # one refresh at a time: each may add reason nodes
        self.controller.on_change(self._changed.set)

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.section.host}:{self.port}{ENDPOINT_PATH}"

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        s = self.section
        warn_if_insecure(s, "opcua server", url=self.url)
        passwords = {name: ref.resolve().get_secret_value() for name, ref in s.users.items()}
        server = await new_server(s, passwords=passwords, allow_anonymous=s.allow_anonymous)
        server.set_endpoint(self.url)
        server.set_server_name(f"edge-agent line {self.line_id}".strip())
        try:
            await self._build(server)
            await server.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await server.stop()
            raise
        if self.port == 0 and server.bserver is not None:
            self.port = server.bserver.port or 0
        self._server = server
        await self.refresh()
        self._task = asyncio.create_task(self._update_loop(), name="opcua-server-update")
        log.info("opcua_server_up", url=self.url, policy=s.security_policy)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        server, self._server = self._server, None
        if server is not None:
            await server.stop()

    # --- address space ------------------------------------------------------------------------

    async def _build(self, server: Server) -> None:
        self._ns = await server.register_namespace(self.section.namespace_uri)
        line = await server.nodes.objects.add_object(self._id("Line"), self._qn("Line"))
        status = await line.add_object(self._id("Line.Status"), self._qn("Status"))
        admin = await line.add_object(self._id("Line.Admin"), self._qn("Admin"))
        alarms = await line.add_object(self._id("Line.Alarms"), self._qn("Alarms"))
        self._reasons_folder = await admin.add_object(
            self._id("Line.Admin.RejectedByReason"), self._qn("RejectedByReason")
        )
        specs: list[tuple[Node, str, Any, ua.VariantType]] = [
            (status, "StateCurrent", 0, ua.VariantType.Int32),
            (status, "StateName", "", ua.VariantType.String),
            (status, "LastCommand", "", ua.VariantType.String),
            (status, "BatchId", "", ua.VariantType.String),
            (status, "UnitsPerMin", 0.0, ua.VariantType.Double),
            (admin, "Printed", 0, ua.VariantType.UInt32),
            (admin, "Passed", 0, ua.VariantType.UInt32),
            (admin, "Rejected", 0, ua.VariantType.UInt32),
            (alarms, "Active", False, ua.VariantType.Boolean),
            (alarms, "Messages", [], ua.VariantType.String),
        ]
        for parent, name, value, vtype in specs:
            path = f"{(await parent.read_browse_name()).Name}.{name}"
            node = await parent.add_variable(
                self._id(f"Line.{path}"), self._qn(name), ua.Variant(value, vtype)
            )
            self._vars[path] = node
        for command in Command:
            await self._add_method(line, command)

    async def _add_method(self, line: Node, command: Command) -> None:
        name = command.title

        async def call(parent: ua.NodeId) -> ua.StatusCode | list[ua.Variant]:
            try:
                await self.controller.command(command, by="opcua")
            except CommandRefused:
                return _status(StatusCodes.BadInvalidState)
            except Exception as exc:
                log.exception("opcua_command_failed", command=name, detail=str(exc))
                return _status(StatusCodes.BadInternalError)
            finally:
                await self.refresh()  # the client reads the state it caused right after
            return []

        await line.add_method(self._id(f"Line.{name}"), self._qn(name), call, [], [])

    def _qn(self, name: str) -> ua.QualifiedName:
        return ua.QualifiedName(name, self._ns)

    def _id(self, text: str) -> ua.NodeId:
        return ua.NodeId(text, self._ns)  # type: ignore[arg-type]

    async def refresh(self) -> None:
        """Copy the state and counters into the nodes."""
        async with self._refreshing:
            if self._server is not None:
                await self._copy_values()

    async def _copy_values(self) -> None:
        stats, controller = self.stats, self.controller
        state = controller.state
        values: list[tuple[str, Any, ua.VariantType]] = [
            ("Status.StateCurrent", int(state), ua.VariantType.Int32),
            ("Status.StateName", state.title, ua.VariantType.String),
            ("Status.LastCommand", controller.last_command, ua.VariantType.String),
            ("Status.BatchId", controller.order_id, ua.VariantType.String),
            ("Status.UnitsPerMin", round(stats.units_per_min(), 1), ua.VariantType.Double),
            ("Admin.Printed", stats.units, ua.VariantType.UInt32),
            ("Admin.Passed", max(stats.passed, 0), ua.VariantType.UInt32),
            ("Admin.Rejected", stats.rejected, ua.VariantType.UInt32),
            ("Alarms.Active", bool(stats.alarms), ua.VariantType.Boolean),
            ("Alarms.Messages", list(stats.alarms[-MAX_ALARMS:]), ua.VariantType.String),
        ]
        for path, value, vtype in values:
            await self._write(self._vars[path], value, vtype)
        for reason, count in stats.by_reason.items():
            node = self._reasons.get(reason) or await self._add_reason(reason)
            await self._write(node, count, ua.VariantType.UInt32)

    async def _add_reason(self, reason: str) -> Node:
        assert self._reasons_folder is not None
        node = await self._reasons_folder.add_variable(
            self._id(f"Line.Admin.RejectedByReason.{reason}"),
            self._qn(reason),
            ua.Variant(0, ua.VariantType.UInt32),
        )
        self._reasons[reason] = node
        return node

    async def _write(self, node: Node, value: Any, vtype: ua.VariantType) -> None:
        assert self._server is not None
        await self._server.write_attribute_value(
            node.nodeid, ua.DataValue(ua.Variant(value, vtype))
        )

    async def _update_loop(self) -> None:
        # Every interval for the counters, at once on a change of state.
        interval = self.section.update_interval_ms / 1000.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), interval)
            self._changed.clear()
            await self.refresh()


def _status(code: int) -> ua.StatusCode:
    return ua.StatusCode(code)  # type: ignore[arg-type]
