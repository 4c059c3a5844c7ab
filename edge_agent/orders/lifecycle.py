"""Which command (or line event) moves an order from which state to which.

    store ─► Waiting ──serials in hand──► Ready ──start──► Running ◄──resume── Held
                │                           │              │  │ └──hold / line stop──►┘
                └──────cancel───────────────┴─► Cancelled  │  └─quantity reached / stop─► Completed
                                                            └──────abort (also from Held)──► Aborted
                                                                         Completed ──close──► Closed

One table, used by every command source; a command not in it for the order's state is refused
with the states where it is allowed.
"""

from __future__ import annotations

import enum

from edge_agent.errors import CommandRefused
from edge_agent.orders.model import OrderCommand, OrderState

S, C = OrderState, OrderCommand


class LineEvent(enum.StrEnum):
    """Transitions the line makes by itself, not on a command."""

    SERIALS_READY = "serials_ready"
    QUANTITY_REACHED = "quantity_reached"
    LINE_STOPPED = "line_stopped"


Trigger = OrderCommand | LineEvent

TRANSITIONS: dict[tuple[OrderState, Trigger], OrderState] = {
    (S.WAITING, LineEvent.SERIALS_READY): S.READY,
    (S.WAITING, C.CANCEL): S.CANCELLED,
    (S.READY, C.START): S.RUNNING,
    (S.READY, C.CANCEL): S.CANCELLED,
    (S.RUNNING, C.HOLD): S.HELD,
    (S.RUNNING, LineEvent.LINE_STOPPED): S.HELD,
    (S.RUNNING, LineEvent.QUANTITY_REACHED): S.COMPLETED,
    (S.RUNNING, C.STOP): S.COMPLETED,
    (S.RUNNING, C.ABORT): S.ABORTED,
    (S.HELD, C.RESUME): S.RUNNING,
    (S.HELD, C.STOP): S.COMPLETED,
    (S.HELD, C.ABORT): S.ABORTED,
    (S.HELD, LineEvent.LINE_STOPPED): S.HELD,  # a second alarm while held
    (S.COMPLETED, C.CLOSE): S.CLOSED,
}

# Commands whose audit record must say why.
NEEDS_REASON = frozenset({C.HOLD, C.ABORT, C.CANCEL})


def next_state(order_id: str, state: OrderState, trigger: Trigger) -> OrderState:
    """The state ``trigger`` leads to from ``state``; raises CommandRefused if it is not allowed."""
    try:
        return TRANSITIONS[(state, trigger)]
    except KeyError:
        allowed = sorted(s for (s, t) in TRANSITIONS if t == trigger)
        where = ", ".join(allowed) if allowed else "no state"
        raise CommandRefused(
            f"order {order_id} is {state}; '{trigger}' is allowed only when it is {where}",
            order_id=order_id,
            state=state,
        ) from None


def allowed_commands(state: OrderState) -> list[OrderCommand]:
    return [t for (s, t) in TRANSITIONS if s == state and isinstance(t, OrderCommand)]
