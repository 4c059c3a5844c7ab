"""The agent's PackML-style OPC UA server: line state, batch, counters, alarms and commands.

Address space (namespace ``namespace_uri``, string node ids)::

    Objects/Line                    s=Line
      Status/StateCurrent   Int32   PackML state number (6 = Execute, 11 = Held, 2 = Stopped ...)
      Status/StateName      String  the state's name
      Status/BatchId        String
      Status/UnitsPerMin    Double
      Admin/Printed         UInt32  units printed and decided
      Admin/Passed          UInt32
      Admin/Rejected        UInt32
      Admin/RejectedByReason/<reason>  UInt32, one variable per reason seen
      Alarms/Active         Boolean
      Alarms/Messages       String[] latest alarms, oldest first
      Start() Stop() Hold() Unhold() Reset() Abort() Clear()   methods on Line

Commands not allowed in the current state answer ``BadInvalidState``. What a command does to the
line is the ``LineControl`` given by the agent (hold = PLC line-stop request, stop = end the
batch through the line-stop path); the server only keeps the state machine and the nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol, Self

import structlog
from asyncua import ua
from asyncua.common.node import Node
from asyncua.server.server import Server
from asyncua.ua.status_codes import StatusCodes

from edge_agent.config.models import OpcUaServerSection
from edge_agent.line.stats import LineStats
from edge_agent.opcua_server.packml import Command, InvalidTransition, State, StateMachine
from edge_agent.opcua_server.security import new_server, warn_if_insecure

log = structlog.get_logger("edge_agent.opcua_server")

ENDPOINT_PATH = "/edge-agent"
MAX_ALARMS = 20


class LineControl(Protocol):
    """What operator commands do to the line; the agent provides it."""

    async def hold(self) -> None: ...
    async def unhold(self) -> None: ...
    async def stop(self) -> None: ...
    async def abort(self) -> None: ...


class PackMLServer:
    def __init__(self, section: OpcUaServerSection, stats: LineStats, *, line_id: str = "") -> None:
        self.section = section
        self.stats = stats
        self.line_id = line_id
        self.machine = StateMachine(State.IDLE)
        self.control: LineControl | None = None
        self.batch_id = ""
        self.port = section.port
        self._server: Server | None = None
        self._ns = 0
        self._vars: dict[str, Node] = {}
        self._reasons: dict[str, Node] = {}
        self._reasons_folder: Node | None = None
        self._task: asyncio.Task[None] | None = None
        self._start_requested = asyncio.Event()
        self.machine.on_change(self._log_change)

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

    # --- what the agent reports -----------------------------------------------------------------

    async def wait_for_start(self) -> None:
        """Wait for a Start command (MES-started batches)."""
        await self._start_requested.wait()

    async def batch_started(self, batch_id: str) -> None:
        self.batch_id = batch_id
        if self.machine.state is State.IDLE:
            self.machine.command(Command.START)
        self.machine.complete()  # Starting → Execute: the runtime is running
        await self.refresh()

    async def batch_finished(self) -> None:
        self.machine.force(State.COMPLETING)
        self.machine.complete()
        await self.refresh()

    async def line_stopped(self, reason: str, detail: str = "") -> None:
        """The line stopped: by an operator Stop (→ Stopped) or on its own (→ Aborted + alarm)."""
        if self.machine.state is State.STOPPING:
            self.machine.complete()
        else:
            self.alarm(f"{reason}: {detail}" if detail else reason)
            self.machine.force(State.ABORTING)
            self.machine.complete()
        await self.refresh()

    def alarm(self, text: str) -> None:
        self.stats.alarms.append(text)

    # --- commands ---------------------------------------------------------------------------

    async def command(self, command: Command) -> State:
        """Apply an operator command (also what the OPC UA methods call)."""
        machine = self.machine
        if not machine.allowed(command):
            raise InvalidTransition(machine.state, command)
        machine.command(command)
        try:
            await self._act(command)
        except Exception as exc:
            log.error("opcua_command_failed", command=command.name, detail=str(exc))
            self.alarm(f"command {command.name.title()} failed: {exc}")
            machine.force(State.ABORTED if command is Command.ABORT else machine.state)
            await self.refresh()
            raise
        await self.refresh()
        return machine.state

    async def _act(self, command: Command) -> None:
        control, machine = self.control, self.machine
        if command is Command.START:
            self._start_requested.set()  # Execute follows once the batch runs
        elif command in (Command.RESET, Command.CLEAR):
            machine.complete()
        elif command is Command.HOLD and control is not None:
            await control.hold()
            machine.complete()
        elif command is Command.UNHOLD and control is not None:
            await control.unhold()
            machine.complete()
        elif command is Command.STOP and control is not None:
            await control.stop()  # Stopped follows when the line has stopped
        elif command is Command.ABORT and control is not None:
            await control.abort()
        elif control is None:
            machine.complete()  # no line attached (between batches): nothing to wait for

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
        for command in (Command.START, Command.STOP, Command.HOLD, Command.UNHOLD):
            await self._add_method(line, command)
        for command in (Command.RESET, Command.ABORT, Command.CLEAR):
            await self._add_method(line, command)

    async def _add_method(self, line: Node, command: Command) -> None:
        name = command.name.title()

        async def call(parent: ua.NodeId) -> ua.StatusCode | list[ua.Variant]:
            try:
                await self.command(command)
            except InvalidTransition as exc:
                log.warning("opcua_command_refused", command=name, state=exc.state.title)
                return _status(StatusCodes.BadInvalidState)
            except Exception:
                return _status(StatusCodes.BadInternalError)
            return []

        await line.add_method(self._id(f"Line.{name}"), self._qn(name), call, [], [])

    def _qn(self, name: str) -> ua.QualifiedName:
        return ua.QualifiedName(name, self._ns)

    def _id(self, text: str) -> ua.NodeId:
        return ua.NodeId(text, self._ns)  # type: ignore[arg-type]

    async def refresh(self) -> None:
        """Copy the state and counters into the nodes."""
        if self._server is None:
            return
        stats, state = self.stats, self.machine.state
        values: list[tuple[str, Any, ua.VariantType]] = [
            ("Status.StateCurrent", int(state), ua.VariantType.Int32),
            ("Status.StateName", state.title, ua.VariantType.String),
            ("Status.BatchId", self.batch_id, ua.VariantType.String),
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
        interval = self.section.update_interval_ms / 1000.0
        while True:
            await asyncio.sleep(interval)
            await self.refresh()

    def _log_change(self, before: State, after: State) -> None:
        log.info(
            "packml_state",
            line=self.line_id,
            batch=self.batch_id,
            was=before.title,
            state=after.title,
        )


def _status(code: int) -> ua.StatusCode:
    return ua.StatusCode(code)  # type: ignore[arg-type]
