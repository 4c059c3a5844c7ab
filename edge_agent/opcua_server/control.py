"""The PackML actions of the resident daemon: PackML commands become order commands.

``OrderLine`` is the ``LineActions`` of the line controller (``line/controller.py``). Every
action goes through the one command path (``orders/commands.py``), audited with the OPC UA
client as the actor, so a SCADA client and the REST API can never disagree about the order:

* Start starts the oldest Ready order (or resumes a Held one); it completes when the line's
  segment runs (its first heartbeat to the PLC) → Execute. With nothing to start, Start is
  refused (``BadInvalidState``, ``LastCommand`` says why).
* Hold and Suspend hold the running order (PLC line-stop request, reason 20; units in flight
  settled); Unhold and Unsuspend resume it (after the recovery checks) → Execute.
* Stop stops the order (it ends short: completed, closed when it balances); Abort aborts it.
  With no order on the line, Abort only sets the PLC line-stop request (reason 22).
* Reset, Clear and Completing have nothing to do: the controller settles every unit itself.

``follow_orders`` keeps the state machine where the orders are when they move without a PackML
command (auto-start, a line stop holding the order, the quantity reached, a command through the
REST API): Starting/Execute for a running order, Held for a held one, Complete when it ended.

A command the order refuses (a resume before its alarms are acknowledged, a device not reachable)
fails its acting state, which PackML answers with Aborting; that Abort then leaves the order as
it is (held): only an Abort a client asked for aborts the order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from edge_agent.errors import CommandRefused, LineStopped
from edge_agent.line.controller import LineController
from edge_agent.opcua_server.controller import PackMLController
from edge_agent.opcua_server.packml import Command, State
from edge_agent.orders import audit
from edge_agent.orders.commands import CommandPath
from edge_agent.orders.model import OrderCommand, OrderState
from edge_agent.orders.store import OrderRecord, OrderStore
from edge_agent.stops import StopReason

log = structlog.get_logger("edge_agent.packml")

C, S = OrderCommand, State
OPCUA = audit.Actor("opcua-client", "opcua")
RUNS_WITHIN_S = 60.0  # a start or resume whose segment does not beat within this fails
FOLLOW_S = 0.1


class OrderLine:
    """``LineActions`` over the command path (see the module docstring)."""

    def __init__(
        self, commands: CommandPath, line: LineController, *, actor: audit.Actor = OPCUA
    ) -> None:
        self.commands = commands
        self.line = line
        self.actor = actor
        self._failed = False  # an action failed: the Abort PackML answers with keeps the order
        self.show: Callable[[str], None] = lambda order_id: None  # the order clients see

    @property
    def store(self) -> OrderStore:
        return self.commands.store

    # --- LineActions --------------------------------------------------------------------------

    def refuses(self, command: Command) -> str | None:
        if command is Command.START and self._startable() is None:
            return (
                "no order is ready to start; submit one (REST API, inbox folder or L3) or "
                "resume the held one"
            )
        return None

    async def start(self) -> None:
        record = self._startable()
        if record is None:
            return
        self.show(record.id)
        if record.state == OrderState.READY:
            await self._command(record.id, C.START)
        elif record.state == OrderState.HELD:
            await self._command(record.id, C.RESUME)
        await self._until_running(record.id)

    async def complete(self) -> None:
        return None

    async def reset(self) -> None:
        return None

    async def clear(self) -> None:
        return None

    async def hold(self) -> None:
        active = self.store.active()
        if active is not None and active.state == OrderState.RUNNING:
            await self._command(active.id, C.HOLD, "PackML Hold from an OPC UA client")

    suspend = hold

    async def unhold(self) -> None:
        active = self.store.active()
        if active is None:
            return
        if active.state == OrderState.HELD:
            await self._command(active.id, C.RESUME)
        await self._until_running(active.id)

    unsuspend = unhold

    async def stop(self) -> None:
        active = self.store.active()
        if active is not None:
            await self._command(active.id, C.STOP, "PackML Stop from an OPC UA client")

    async def abort(self) -> None:
        failed, self._failed = self._failed, False
        active = self.store.active()
        if active is not None and not failed:
            await self._command(active.id, C.ABORT, "PackML Abort from an OPC UA client")
            return
        await self.line.tell_plc(LineStopped(StopReason.OPERATOR_ABORT, "PackML Abort"))

    # --- how ----------------------------------------------------------------------------------

    def _startable(self) -> OrderRecord | None:
        active = self.store.active()
        if active is not None:
            return active
        ready: OrderRecord | None = self.store.next_ready()
        return ready

    async def _command(
        self, order_id: str, command: OrderCommand, reason: str | None = None
    ) -> None:
        try:
            await self.commands.command(order_id, command, self.actor, reason=reason)
        except CommandRefused:
            self._failed = True
            raise

    async def _until_running(self, order_id: str) -> None:
        """Until the order's segment beats (Execute); it failing to is the action failing."""
        deadline = time.monotonic() + RUNS_WITHIN_S
        while not (self.line.running == order_id and self.line.beating):
            record = self.store.get(order_id)
            if record.state != OrderState.RUNNING or time.monotonic() > deadline:
                self._failed = True
                raise CommandRefused(
                    f"order {order_id} did not start running (it is {record.state})",
                    order_id=order_id,
                )
            await asyncio.sleep(0.02)


async def follow_orders(
    packml: PackMLController, line: LineController, commands: CommandPath
) -> None:
    """Keep the state machine with the orders (see the module docstring); runs for the daemon's
    life. Acts only between actions: an acting state finishes (or fails) first."""
    store = commands.store
    while True:
        await asyncio.sleep(FOLLOW_S)
        active = store.active()
        if active is not None and active.id != packml.order_id:
            packml.set_order(active.id)
        if packml.acting is not None:
            continue
        step = _next_step(packml.state, active, running=line.beating)
        if step is None:
            continue
        try:
            await step(packml)
        except Exception as exc:  # a command PackML refused meanwhile: look again
            log.info("packml_follow_skipped", state=packml.state.title, detail=str(exc))


Step = Callable[[PackMLController], Awaitable[None]]


def _next_step(state: State, active: OrderRecord | None, *, running: bool) -> Step | None:
    """The one PackML step that brings the state machine nearer to where the order is."""
    if active is not None and active.state == OrderState.RUNNING and running:
        to_execute = {
            S.IDLE: Command.START,
            S.COMPLETE: Command.RESET,
            S.STOPPED: Command.RESET,
            S.ABORTED: Command.CLEAR,
            S.HELD: Command.UNHOLD,
            S.SUSPENDED: Command.UNSUSPEND,
        }
        if state in to_execute:
            return _command(to_execute[state])
        return None
    if active is not None and active.state == OrderState.HELD:
        return _command(Command.HOLD) if state is S.EXECUTE else None
    if active is None:
        if state is S.EXECUTE:
            return _complete
        if state in (S.HELD, S.SUSPENDED):
            return _command(Command.STOP)
    return None


def _command(command: Command) -> Step:
    async def step(packml: PackMLController) -> None:
        await packml.command(command, by="agent")

    return step


async def _complete(packml: PackMLController) -> None:
    await packml.production_complete()
