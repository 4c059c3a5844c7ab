"""The Modbus register map shared by the agent and the PLC, as constants and pure helpers.

The same map serves Modbus TCP and Modbus RTU: only the transport differs.

Every address here is a 0-based PDU address, exactly what goes on the wire. Tools that number
registers from 1 (mbpoll, many HMI/PLC configurators) show each of them +1. 32-bit values take two
registers, high word first. No I/O in this module: the driver and the simulator both build on it,
so they cannot disagree about the layout. README.md next to this file is the same map as tables.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from edge_agent.contracts import AgentLineState, PlcState

U16_MAX = 0xFFFF
U32_MAX = 0xFFFF_FFFF

# --- holding registers: the agent writes, the PLC reads -----------------------------------
HR_AGENT_HEARTBEAT = 0
HR_STOP_REASON = 1
HR_STATUS_BASE = 10  # HR 10..19: the agent's line state and counters, one FC16 per beat
HR_STATUS_COUNT = 10
HR_VERDICT_BASE = 100
VERDICT_SLOT_WIDTH = 3  # [trigger high, trigger low, verdict]

# --- coils: the agent writes ----------------------------------------------------------------
COIL_LINE_STOP = 0

# --- input registers: the PLC writes, the agent reads ---------------------------------------
IR_PLC_HEARTBEAT = 0
IR_LINE_STATE = 1
IR_TRIGGER_COUNT = 2  # u32: 2-3
IR_PASSED = 4  # u32: 4-5
IR_REJECTED = 6  # u32: 6-7
IR_REJECT_CONFIRMS = 8  # u32: 8-9
IR_RING_SIZE = 10
IR_STOP_CAUSE = 11
IR_REJECT_LOG_SIZE = 12
IR_STATE_COUNT = 13  # IR 0..12 are read in one request
IR_REJECT_LOG_BASE = 200
REJECT_LOG_SIZE = 32  # the default; the PLC announces its own in IR 12
MAX_REJECT_LOG_SIZE = 1024
REJECT_LOG_SLOT_WIDTH = 2  # [trigger high, trigger low]

# --- discrete inputs: the PLC writes ----------------------------------------------------------
DI_LINE_RUNNING = 0
DI_AGENT_HEARTBEAT_OK = 1

DEFAULT_RING_SIZE = 32
VERDICT_NONE = 0
VERDICT_PASS = 1
VERDICT_REJECT = 2
MAX_RING_SIZE = 1024  # keeps HR 100 + 3*N well inside a PLC's register space


AgentState = AgentLineState  # HR 10


class StopCause(enum.IntEnum):
    """IR 11: why the PLC last stopped the line."""

    NONE = 0
    HEARTBEAT_LOST = 1
    AGENT_REQUEST = 2
    LINK_DROPPED = 3


def _check(value: int, top: int, what: str) -> None:
    if not 0 <= value <= top:
        raise ValueError(f"{what} {value} does not fit 0..{top}")


def split_u32(value: int) -> tuple[int, int]:
    """(high word, low word) of an unsigned 32-bit value."""
    _check(value, U32_MAX, "u32 value")
    return value >> 16, value & U16_MAX


def join_u32(high: int, low: int) -> int:
    _check(high, U16_MAX, "high word")
    _check(low, U16_MAX, "low word")
    return (high << 16) | low


def next_heartbeat(value: int) -> int:
    """The next agent heartbeat value; u16 so it wraps at 65536."""
    return (value + 1) & U16_MAX


def check_ring_size(ring_size: int) -> None:
    if not 1 <= ring_size <= MAX_RING_SIZE:
        raise ValueError(f"ring size {ring_size} outside 1..{MAX_RING_SIZE}")


def verdict_slot(trigger: int, ring_size: int) -> int:
    """Ring slot k of a trigger count."""
    _check(trigger, U32_MAX, "trigger count")
    check_ring_size(ring_size)
    return trigger % ring_size


def verdict_slot_address(trigger: int, ring_size: int) -> int:
    """First holding register of the trigger's slot: HR 100 + 3*k."""
    return HR_VERDICT_BASE + VERDICT_SLOT_WIDTH * verdict_slot(trigger, ring_size)


def encode_verdict_slot(trigger: int, verdict: int) -> list[int]:
    """The three registers of one slot, written together in one FC16 request."""
    if verdict not in (VERDICT_NONE, VERDICT_PASS, VERDICT_REJECT):
        raise ValueError(f"verdict {verdict} is not 0, 1 or 2")
    high, low = split_u32(trigger)
    return [high, low, verdict]


def decode_verdict_slot(registers: Sequence[int]) -> tuple[int, int]:
    """(trigger, verdict) held by a slot; the verdict is returned raw, garbage included."""
    if len(registers) != VERDICT_SLOT_WIDTH:
        raise ValueError(f"a verdict slot is {VERDICT_SLOT_WIDTH} registers, got {len(registers)}")
    return join_u32(registers[0], registers[1]), registers[2]


def gate_passes(slot: Sequence[int], trigger: int) -> bool:
    """The PLC rule at the reject gate: pass only on an explicit pass for exactly this unit.

    Everything else (no verdict, a stale trigger, reject, garbage) rejects, so a late or lost
    verdict can only ever cost a good unit, never let a bad one through.
    """
    held_trigger, verdict = decode_verdict_slot(slot)
    return held_trigger == trigger and verdict == VERDICT_PASS


def check_reject_log_size(size: int) -> None:
    if not 1 <= size <= MAX_REJECT_LOG_SIZE:
        raise ValueError(f"reject log size {size} outside 1..{MAX_REJECT_LOG_SIZE}")


def reject_log_index(confirm_number: int, size: int = REJECT_LOG_SIZE) -> int:
    """Ring slot j of the n-th reject confirm (n counts from 1) in a log of ``size`` slots."""
    if confirm_number < 1:
        raise ValueError(f"confirm numbers start at 1, got {confirm_number}")
    check_reject_log_size(size)
    return (confirm_number - 1) % size


def reject_log_address(confirm_number: int, size: int = REJECT_LOG_SIZE) -> int:
    """First input register of the log entry of the n-th confirm: IR 200 + 2*j."""
    return IR_REJECT_LOG_BASE + REJECT_LOG_SLOT_WIDTH * reject_log_index(confirm_number, size)


def decode_reject_log(ring: Sequence[int], confirms: int) -> list[int]:
    """Trigger counts of the valid reject-log entries, oldest first.

    ``ring`` is the whole log (IR 200.. 200 + 2*size - 1, so its length gives the size),
    ``confirms`` the reject-confirm counter (IR 8-9); only the last min(confirms, size) entries
    have been written.
    """
    if not ring or len(ring) % REJECT_LOG_SLOT_WIDTH:
        raise ValueError(f"a reject log is 2 registers per slot, got {len(ring)}")
    size = len(ring) // REJECT_LOG_SLOT_WIDTH
    valid = min(confirms, size)
    triggers: list[int] = []
    for number in range(confirms - valid + 1, confirms + 1):
        at = REJECT_LOG_SLOT_WIDTH * reject_log_index(number, size)
        triggers.append(join_u32(ring[at], ring[at + 1]))
    return triggers


def encode_status(
    state: int, missing_confirms: int, units: int, passed: int, rejected: int, last_trigger: int
) -> list[int]:
    """HR 10..19 as written by the agent: state, missing confirms in a row, then u32 counters
    (units decided, passed, rejected, last trigger with a verdict). Counters wrap at 2**32."""
    words = [state & U16_MAX, min(missing_confirms, U16_MAX)]
    for value in (units, passed, rejected, last_trigger):
        words.extend(split_u32(value & U32_MAX))
    return words


def decode_state(registers: Sequence[int]) -> PlcState:
    """PlcState from IR 0..12 read in one request."""
    if len(registers) != IR_STATE_COUNT:
        raise ValueError(f"state block is {IR_STATE_COUNT} registers, got {len(registers)}")

    def u32(at: int) -> int:
        return join_u32(registers[at], registers[at + 1])

    return PlcState(
        heartbeat=registers[IR_PLC_HEARTBEAT],
        running=registers[IR_LINE_STATE] == 1,
        trigger_count=u32(IR_TRIGGER_COUNT),
        passed=u32(IR_PASSED),
        rejected=u32(IR_REJECTED),
        reject_confirms=u32(IR_REJECT_CONFIRMS),
        stop_cause=registers[IR_STOP_CAUSE],
        extra={
            "ring_size": registers[IR_RING_SIZE],
            "reject_log_size": registers[IR_REJECT_LOG_SIZE],
        },
    )
