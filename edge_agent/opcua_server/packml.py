"""The PackML state model (ANSI/ISA-TR88.00.02-2015; OPC 30050, the OPC UA PackML companion
specification), as data and without I/O.

State and command numbers are PackML's (PackTags ``StateCurrent`` and ``CntrlCmd``), so a SCADA
faceplate written for PackML reads them unchanged.

* Wait states (Idle, Held, Suspended, Stopped, Aborted, Complete) change only on a command.
* Acting states (Starting, Completing, Resetting, Holding, Unholding, Suspending, Unsuspending,
  Stopping, Aborting, Clearing) do their work and then move on by themselves: the *state
  complete* (SC) transition to the state in ``STATE_COMPLETE``.
* Execute is PackML's dual state: it waits for commands while the line produces, and its SC (the
  order is done) leads to Completing.

``TRANSITIONS`` is the whole command table. Its Stop and Abort rows follow OPC 30050's nesting:
Stop applies to every sub-state of *Running* (the 12 states from Idle to Unsuspending, none of
the stop/abort branch), Abort to every sub-state of *Cleared* (everything but Aborting and
Aborted). The optional Hold transitions of the 2015 model (the dashed lines: Hold from Starting,
Unholding, Suspending, Suspended, Unsuspending) are not offered.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from types import MappingProxyType

from edge_agent.errors import EdgeAgentError


class State(enum.IntEnum):
    UNDEFINED = 0  # PackTags' "no state yet"; never a state of the machine
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

    @property
    def acting(self) -> bool:
        return self in ACTING


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

    @property
    def title(self) -> str:
        return self.name.capitalize()


class CommandRefused(EdgeAgentError):
    """A command was not carried out; nothing changed. ``reason`` says why, for the operator."""

    def __init__(self, state: State, command: Command, reason: str) -> None:
        self.state, self.command, self.reason = state, command, reason
        super().__init__(f"{command.title} refused in state {state.title}: {reason}")


class InvalidTransition(CommandRefused):
    """PackML does not allow the command in the current state."""

    def __init__(self, state: State, command: Command) -> None:
        allowed = ", ".join(c.title for c in allowed_commands(state)) or "none"
        super().__init__(state, command, f"PackML does not allow it here (allowed: {allowed})")


S, C = State, Command

STATES = frozenset(State) - {S.UNDEFINED}  # the 17 states of the model
RUNNING = frozenset(
    {
        S.IDLE,
        S.STARTING,
        S.EXECUTE,
        S.COMPLETING,
        S.COMPLETE,
        S.RESETTING,
        S.HOLDING,
        S.HELD,
        S.UNHOLDING,
        S.SUSPENDING,
        S.SUSPENDED,
        S.UNSUSPENDING,
    }
)
CLEARED = RUNNING | {S.STOPPED, S.STOPPING, S.CLEARING}

TRANSITIONS: Mapping[tuple[State, Command], State] = MappingProxyType(
    {
        (S.IDLE, C.START): S.STARTING,
        (S.EXECUTE, C.HOLD): S.HOLDING,
        (S.HELD, C.UNHOLD): S.UNHOLDING,
        (S.EXECUTE, C.SUSPEND): S.SUSPENDING,
        (S.SUSPENDED, C.UNSUSPEND): S.UNSUSPENDING,
        (S.STOPPED, C.RESET): S.RESETTING,
        (S.COMPLETE, C.RESET): S.RESETTING,
        (S.ABORTED, C.CLEAR): S.CLEARING,
        **{(state, C.STOP): S.STOPPING for state in RUNNING},
        **{(state, C.ABORT): S.ABORTING for state in CLEARED},
    }
)

STATE_COMPLETE: Mapping[State, State] = MappingProxyType(
    {
        S.STARTING: S.EXECUTE,
        S.EXECUTE: S.COMPLETING,  # the order is done (the dual state's SC)
        S.COMPLETING: S.COMPLETE,
        S.RESETTING: S.IDLE,
        S.HOLDING: S.HELD,
        S.UNHOLDING: S.EXECUTE,
        S.SUSPENDING: S.SUSPENDED,
        S.UNSUSPENDING: S.EXECUTE,
        S.STOPPING: S.STOPPED,
        S.ABORTING: S.ABORTED,
        S.CLEARING: S.STOPPED,
    }
)
ACTING = frozenset(STATE_COMPLETE) - {S.EXECUTE}
WAIT = STATES - ACTING - {S.EXECUTE}


def allowed_commands(state: State) -> tuple[Command, ...]:
    return tuple(c for c in Command if (state, c) in TRANSITIONS)


def next_state(state: State, command: Command) -> State:
    """Where ``command`` leads from ``state``; raises InvalidTransition where PackML says no."""
    target = TRANSITIONS.get((state, command))
    if target is None:
        raise InvalidTransition(state, command)
    return target


Listener = Callable[[State, State], None]


class StateMachine:
    """The current state and its changes, by the tables above only."""

    def __init__(self, state: State = State.IDLE) -> None:
        if state not in STATES:
            raise ValueError(f"{state!r} is not a PackML state")
        self.state = state
        self._listeners: list[Listener] = []

    def on_change(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def allowed(self, command: Command) -> bool:
        return (self.state, command) in TRANSITIONS

    def command(self, command: Command) -> State:
        """Apply a command; raises InvalidTransition (and changes nothing) where not allowed."""
        self._set(next_state(self.state, command))
        return self.state

    def complete(self) -> State:
        """The state is complete (SC): an acting state's work is done, or Execute's order."""
        target = STATE_COMPLETE.get(self.state)
        if target is None:
            raise ValueError(f"{self.state.title} is a wait state: it has no state complete")
        self._set(target)
        return self.state

    def _set(self, state: State) -> None:
        before, self.state = self.state, state
        for listener in self._listeners:
            listener(before, state)
