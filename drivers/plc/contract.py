"""The PLC contract's meaning, whatever the wire (README "What the contract holds").

Modbus (``drivers.plc.modbus.registers``) and OPC UA (``drivers.plc.opcua.nodes``) each say where
these values go on their wire; what the values mean lives here once, as pymodbus keeps the
meaning of a request (``pdu``) apart from its framing. The drivers and the PLC simulators
(``simulators.plc.gate``) build on this module, so no transport can disagree about a slot number,
a verdict value or the gate rule. No I/O here.

- **Verdict ring**: the unit with trigger count ``n`` uses slot ``k = n mod N`` of an ``N``-slot
  ring; a slot holds (trigger, verdict) and is always written whole. Verdict values are those of
  ``edge_agent.contracts.Verdict``; 0 means no verdict, which the gate rejects.
- **Gate rule** (fail-safe): a unit passes only if its slot holds exactly its trigger with a
  pass verdict; anything else (no verdict, a stale trigger, reject, garbage) rejects.
- **Reject log**: the n-th confirmed reject (n from 1) is stored in slot ``(n - 1) mod M``; the
  valid entries are the last ``min(confirms, M)``, oldest first.
- **Heartbeats**: u16 counters that wrap; the agent advances its own, each side watches the
  other's move.
- **Stop request and cause**: a line-stop reason code is 1..65535 (0 = none); the PLC reports
  why it last stopped the line (``StopCause``).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from edge_agent.contracts import AgentLineState, Verdict

__all__ = [
    "DEFAULT_RING_SIZE",
    "MAX_REJECT_LOG_SIZE",
    "MAX_RING_SIZE",
    "NO_VERDICT",
    "REJECT_LOG_SIZE",
    "U16_MAX",
    "U32_MAX",
    "VERDICT_VALUES",
    "AgentLineState",
    "StopCause",
    "Verdict",
    "check_reject_log_size",
    "check_ring_size",
    "check_stop_reason",
    "check_verdict",
    "gate_passes",
    "next_heartbeat",
    "reject_log_entries",
    "reject_log_index",
    "verdict_slot",
]

U16_MAX = 0xFFFF
U32_MAX = 0xFFFF_FFFF

NO_VERDICT = 0  # what a slot holds before the agent wrote it: the gate rejects
VERDICT_VALUES = frozenset({NO_VERDICT, *(int(v) for v in Verdict)})

DEFAULT_RING_SIZE = 32
MAX_RING_SIZE = 1024  # keeps a ring inside any PLC's register or node space
REJECT_LOG_SIZE = 32  # the default; the PLC announces its own
MAX_REJECT_LOG_SIZE = 1024


class StopCause(enum.IntEnum):
    """Why the PLC last stopped the line (Modbus IR 11, OPC UA ``Plc.StopCause``)."""

    NONE = 0
    HEARTBEAT_LOST = 1
    AGENT_REQUEST = 2
    LINK_DROPPED = 3


def _check(value: int, top: int, what: str) -> None:
    if not 0 <= value <= top:
        raise ValueError(f"{what} {value} does not fit 0..{top}")


def check_verdict(verdict: int) -> None:
    if verdict not in VERDICT_VALUES:
        raise ValueError(f"verdict {verdict} is not 0, 1 or 2")


def check_ring_size(ring_size: int) -> None:
    if not 1 <= ring_size <= MAX_RING_SIZE:
        raise ValueError(f"ring size {ring_size} outside 1..{MAX_RING_SIZE}")


def check_reject_log_size(size: int) -> None:
    if not 1 <= size <= MAX_REJECT_LOG_SIZE:
        raise ValueError(f"reject log size {size} outside 1..{MAX_REJECT_LOG_SIZE}")


def check_stop_reason(reason_code: int) -> None:
    """A line-stop request carries a reason 1..65535 (0 means no request)."""
    if not 1 <= reason_code <= U16_MAX:
        raise ValueError(f"line-stop reason code {reason_code} not in 1..65535")


def verdict_slot(trigger: int, ring_size: int) -> int:
    """Ring slot k of a trigger count."""
    _check(trigger, U32_MAX, "trigger count")
    check_ring_size(ring_size)
    return trigger % ring_size


def gate_passes(held_trigger: object, verdict: object, trigger: int) -> bool:
    """The PLC rule at the reject gate: pass only on an explicit pass for exactly this unit.

    ``held_trigger`` and ``verdict`` are what the unit's slot holds, as read (garbage included).
    Everything but (``trigger``, pass) rejects, so a late or lost verdict can only ever cost a
    good unit, never let a bad one through.
    """
    return held_trigger == trigger and verdict == Verdict.PASS


def reject_log_index(confirm_number: int, size: int = REJECT_LOG_SIZE) -> int:
    """Slot j of the n-th confirmed reject (n counts from 1) in a log of ``size`` slots."""
    if confirm_number < 1:
        raise ValueError(f"confirm numbers start at 1, got {confirm_number}")
    check_reject_log_size(size)
    return (confirm_number - 1) % size


def reject_log_entries(triggers_by_slot: Sequence[int], confirms: int) -> list[int]:
    """Trigger counts of the valid entries of a whole log (one trigger per slot, so its length
    is the log size) after ``confirms`` confirmed rejects, oldest first: only the last
    ``min(confirms, size)`` have been written."""
    size = len(triggers_by_slot)
    check_reject_log_size(size)
    valid = min(confirms, size)
    return [
        int(triggers_by_slot[reject_log_index(number, size)])
        for number in range(confirms - valid + 1, confirms + 1)
    ]


def next_heartbeat(value: int) -> int:
    """The next agent heartbeat value; u16 so it wraps at 65536."""
    return (value + 1) & U16_MAX
