"""The PackML state machine (ISA-TR88.00.02), without I/O.

State numbers and command numbers are PackML's (PackTags ``StateCurrent`` / ``CntrlCmd``), so a
SCADA faceplate written for PackML reads them unchanged. Acting states (Starting, Holding, ...)
end with ``complete()`` (PackML's "state complete"), which the owner calls once the action is
done, e.g. when the PLC confirms that the line has stopped.
"""

from __future__ import annotations

import enum
from collections.abc import Callable


class State(enum.IntEnum):
    UNDEFINED = 0
    CLEARING = 1
    STOPPED = 2
    STARTING = 3
    IDLE = 4
    SUSPENDED = 5
    EXECUTE = 6
    STOPPING = 7
    ABORTING = 8
    ABORTED = 9
    HOLDING = 10
    HELD = 11
    UNHOLDING = 12
    SUSPENDING = 13
    UNSUSPENDING = 14
    RESETTING = 15
    COMPLETING = 16
    COMPLETE = 17

    @property
    def title(self) -> str:
        return self.name.capitalize()


class Command(enum.IntEnum):
    RESET = 1
    START = 2
    STOP = 3
    HOLD = 4
    UNHOLD = 5
    SUSPEND = 6
    UNSUSPEND = 7
    ABORT = 8
    CLEAR = 9
    COMPLETE = 10  # internal: the batch reached its quantity


class InvalidTransition(Exception):
    def __init__(self, state: State, command: Command) -> None:
        self.state, self.command = state, command
        super().__init__(f"command {command.name.title()} is not allowed in state {state.title}")


S, C = State, Command

_TRANSITIONS: dict[tuple[State, Command], State] = {
    (S.STOPPED, C.RESET): S.RESETTING,
    (S.COMPLETE, C.RESET): S.RESETTING,
    (S.IDLE, C.START): S.STARTING,
    (S.EXECUTE, C.HOLD): S.HOLDING,
    (S.HELD, C.UNHOLD): S.UNHOLDING,
    (S.EXECUTE, C.SUSPEND): S.SUSPENDING,
    (S.SUSPENDED, C.UNSUSPEND): S.UNSUSPENDING,
    (S.EXECUTE, C.COMPLETE): S.COMPLETING,
    (S.ABORTED, C.CLEAR): S.CLEARING,
}
# Stop is valid everywhere except in the stop/abort branch; Abort everywhere but there too.
_STOPPABLE = frozenset(State) - {
    S.UNDEFINED,
    S.STOPPING,
    S.STOPPED,
    S.ABORTING,
    S.ABORTED,
    S.CLEARING,
}
_ABORTABLE = frozenset(State) - {S.UNDEFINED, S.ABORTING, S.ABORTED}

_AFTER_ACTING: dict[State, State] = {
    S.CLEARING: S.STOPPED,
    S.STARTING: S.EXECUTE,
    S.STOPPING: S.STOPPED,
    S.ABORTING: S.ABORTED,
    S.HOLDING: S.HELD,
    S.UNHOLDING: S.EXECUTE,
    S.SUSPENDING: S.SUSPENDED,
    S.UNSUSPENDING: S.EXECUTE,
    S.RESETTING: S.IDLE,
    S.COMPLETING: S.COMPLETE,
}
ACTING = frozenset(_AFTER_ACTING)

Listener = Callable[[State, State], None]


class StateMachine:
    def __init__(self, state: State = State.IDLE) -> None:
        self.state = state
        self._listeners: list[Listener] = []

    def on_change(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def allowed(self, command: Command) -> bool:
        return self._target(command) is not None

    def command(self, command: Command) -> State:
        """Apply a command; raises InvalidTransition when PackML does not allow it here."""
        target = self._target(command)
        if target is None:
            raise InvalidTransition(self.state, command)
        self._set(target)
        return target

    def complete(self) -> State:
        """The acting state's work is done: move on to its wait state (no-op otherwise)."""
        target = _AFTER_ACTING.get(self.state)
        if target is not None:
            self._set(target)
        return self.state

    def force(self, state: State) -> None:
        """Follow the line when it changed on its own (e.g. the PLC stopped it)."""
        if state != self.state:
            self._set(state)

    def _target(self, command: Command) -> State | None:
        if command is C.STOP:
            return S.STOPPING if self.state in _STOPPABLE else None
        if command is C.ABORT:
            return S.ABORTING if self.state in _ABORTABLE else None
        return _TRANSITIONS.get((self.state, command))

    def _set(self, state: State) -> None:
        before, self.state = self.state, state
        for listener in self._listeners:
            listener(before, state)
