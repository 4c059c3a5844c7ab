"""The PackML state machine driving a line: commands in, the line's actions out.

``PackMLController`` keeps the state (``packml.StateMachine``) and runs the action of each acting
state on a ``LineActions``, the small interface a line implements (the one-batch runtime's
``control.BatchLine`` today, the order controller of the resident daemon later). It knows
nothing of OPC UA: the server, and any other command source, call ``command()``.

* A command PackML does not allow in the current state, or that the line refuses, raises
  ``CommandRefused`` and changes nothing.
* An accepted command enters its acting state at once and starts that state's action; the
  action returning is the state complete (SC) that moves on (Starting → Execute, ...).
* A command that leaves an acting state early (Stop while Starting, Abort while Stopping)
  cancels the running action first, so a late SC can never move the new state.
* An action that fails raises an alarm and aborts (PackML: a fault goes to Aborting); a failed
  abort still ends in Aborted, so every acting state completes.
* The line reports what it does by itself: ``production_complete()`` (Execute's SC, also when it
  comes while Held: Unhold then leads on to Completing) and ``fault()`` (→ Aborting).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from edge_agent.opcua_server.packml import (
    Command,
    CommandRefused,
    State,
    StateMachine,
    next_state,
)

log = structlog.get_logger("edge_agent.packml")

S = State


class LineActions(Protocol):
    """What each acting state does to the line. Each action returns once its work is done (the
    state complete); raising means it failed. An action may be cancelled by a later command
    (Stop, Abort). ``refuses`` lets the line turn down a command PackML would allow, e.g. Start
    when there is nothing to run: it returns the reason, or None."""

    def refuses(self, command: Command) -> str | None: ...
    async def start(self) -> None: ...
    async def complete(self) -> None: ...
    async def reset(self) -> None: ...
    async def hold(self) -> None: ...
    async def unhold(self) -> None: ...
    async def suspend(self) -> None: ...
    async def unsuspend(self) -> None: ...
    async def stop(self) -> None: ...
    async def abort(self) -> None: ...
    async def clear(self) -> None: ...


class NoLine:
    """A line with nothing to do: every action completes at once."""

    def refuses(self, command: Command) -> str | None:
        return None

    async def start(self) -> None:
        return None

    complete = reset = hold = unhold = suspend = unsuspend = stop = abort = clear = start


def action_of(line: LineActions, state: State) -> Callable[[], Awaitable[None]]:
    actions = {
        S.STARTING: line.start,
        S.COMPLETING: line.complete,
        S.RESETTING: line.reset,
        S.HOLDING: line.hold,
        S.UNHOLDING: line.unhold,
        S.SUSPENDING: line.suspend,
        S.UNSUSPENDING: line.unsuspend,
        S.STOPPING: line.stop,
        S.ABORTING: line.abort,
        S.CLEARING: line.clear,
    }
    return actions[state]


class PackMLController:
    def __init__(
        self,
        line: LineActions | None = None,
        *,
        state: State = State.IDLE,
        alarm: Callable[[str], None] | None = None,
    ) -> None:
        self.line: LineActions = line if line is not None else NoLine()
        self.machine = StateMachine(state)
        self.order_id = ""  # what the line works on (batch or order), shown to clients
        self.last_command = ""  # the latest command and what became of it, for operators
        self._alarm = alarm or (lambda text: None)
        self._lock = asyncio.Lock()
        self._action: asyncio.Task[None] | None = None
        self._action_state: State | None = None
        self._complete_pending = False
        self._listeners: list[Callable[[], None]] = []
        self.machine.on_change(self._changed)

    @property
    def state(self) -> State:
        return self.machine.state

    @property
    def acting(self) -> State | None:
        """The acting state whose action is running, if any."""
        return self._action_state

    def on_change(self, listener: Callable[[], None]) -> None:
        """``listener()`` runs after every change of state, order or last command."""
        self._listeners.append(listener)

    def set_order(self, order_id: str) -> None:
        self.order_id = order_id
        self._notify()

    # --- commands -----------------------------------------------------------------------------

    async def command(self, command: Command, *, by: str = "") -> State:
        """Apply a command; returns the acting state entered. Raises CommandRefused (nothing
        changed) when PackML does not allow it here or the line refuses it."""
        async with self._lock:
            state = self.state
            try:
                next_state(state, command)
                reason = self.line.refuses(command)
                if reason is not None:
                    raise CommandRefused(state, command, reason)
            except CommandRefused as exc:
                self.last_command = str(exc)
                self._notify()
                log.warning("packml_command_refused", command=command.title, by=by, detail=str(exc))
                raise
            self.last_command = f"{command.title} accepted in {state.title}"
            log.info("packml_command", command=command.title, by=by, state=state.title)
            await self._cancel_action()
            self.machine.command(command)
            return self.state

    async def production_complete(self) -> None:
        """The line finished its order: Execute's SC now, or as soon as Execute is back."""
        async with self._lock:
            self._complete_pending = True
            if self.state is S.EXECUTE:
                self.machine.complete()

    async def fault(self, detail: str) -> None:
        """The line stopped on its own: abort (nothing to do if already aborting/aborted)."""
        async with self._lock:
            if self.state in (S.ABORTING, S.ABORTED):
                return
            log.error("packml_fault", state=self.state.title, detail=detail)
            await self._cancel_action()
            self.machine.command(Command.ABORT)

    async def settled(self) -> State:
        """Wait until no action runs (the state is a wait state or Execute)."""
        while self._action is not None:
            await asyncio.wait({self._action})
        return self.state

    async def close(self) -> None:
        await self._cancel_action()

    # --- acting states ------------------------------------------------------------------------

    def _changed(self, before: State, after: State) -> None:
        log.info("packml_state", order=self.order_id, was=before.title, state=after.title)
        if after in (S.RESETTING, S.STOPPING, S.ABORTING):
            self._complete_pending = False  # what was produced is settled by this branch
        self._notify()
        if after.acting:
            self._action_state = after
            self._action = asyncio.create_task(self._act(after), name=f"packml-{after.title}")
        elif after is S.EXECUTE and self._complete_pending:
            self.machine.complete()

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    async def _act(self, state: State) -> None:
        me = asyncio.current_task()
        try:
            await action_of(self.line, state)()
        except Exception as exc:
            if self._action is not me:
                return
            self._action = self._action_state = None
            log.error("packml_action_failed", state=state.title, detail=str(exc))
            self._alarm(f"packml {state.title} failed: {exc}")
            if state is S.ABORTING:
                self.machine.complete()  # nothing more to try; the PLC's own fail-safe holds
            else:
                self.machine.command(Command.ABORT)
            return
        if self._action is me:  # not cancelled by a command meanwhile
            self._action = self._action_state = None
            self.machine.complete()

    async def _cancel_action(self) -> None:
        task, self._action, self._action_state = self._action, None, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})  # (a cancellation of our own still reaches us)
