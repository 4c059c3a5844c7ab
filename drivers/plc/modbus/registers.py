"""The Modbus register map shared by the agent and the PLC, as constants and pure helpers.

The same map serves Modbus TCP and Modbus RTU: only the transport differs. What the values mean
(ring slots, verdicts, the gate rule, the reject log, heartbeats) is the PLC contract's, in
``drivers.plc.contract``, shared with OPC UA; this module says where they go in registers.

Every address here is a 0-based PDU address, exactly what goes on the wire. Tools that number
registers from 1 (mbpoll, many HMI/PLC configurators) show each of them +1. 32-bit values take two
registers, high word first. No I/O in this module: the driver and the simulator both build on it,
so they cannot disagree about the layout. README.md next to this file is the same map as tables.
"""

from __future__ import annotations

from collections.abc import Sequence

from drivers.plc import contract

# Re-exported: users of the register map know them from here
from drivers.plc.contract import (
    DEFAULT_RING_SIZE as DEFAULT_RING_SIZE,
)
from drivers.plc.contract import (
    MAX_REJECT_LOG_SIZE as MAX_REJECT_LOG_SIZE,
)
from drivers.plc.contract import (
    MAX_RING_SIZE as MAX_RING_SIZE,
)
from drivers.plc.contract import (
    REJECT_LOG_SIZE as REJECT_LOG_SIZE,
)
from drivers.plc.contract import (
    U16_MAX as U16_MAX,
)
from drivers.plc.contract import (
    U32_MAX as U32_MAX,
)
from drivers.plc.contract import (
    StopCause as StopCause,
)
from drivers.plc.contract import (
    check_reject_log_size as check_reject_log_size,
)
from drivers.plc.contract import (
    check_ring_size as check_ring_size,
)
from drivers.plc.contract import (
    next_heartbeat as next_heartbeat,
)
from drivers.plc.contract import (
    reject_log_index as reject_log_index,
)
from drivers.plc.contract import (
    verdict_slot as verdict_slot,
)
from edge_agent.contracts import AgentLineState, PlcState, Verdict

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
REJECT_LOG_SLOT_WIDTH = 2  # [trigger high, trigger low]

# --- discrete inputs: the PLC writes ----------------------------------------------------------
DI_LINE_RUNNING = 0
DI_AGENT_HEARTBEAT_OK = 1

# Verdict values in HR 102 + 3k: the contract's (0 = none)
VERDICT_NONE = contract.NO_VERDICT
VERDICT_PASS = int(Verdict.PASS)
VERDICT_REJECT = int(Verdict.REJECT)

AgentState = AgentLineState  # HR 10
# IR 11 holds a contract.StopCause


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


def verdict_slot_address(trigger: int, ring_size: int) -> int:
    """First holding register of the trigger's slot: HR 100 + 3*k."""
    return HR_VERDICT_BASE + VERDICT_SLOT_WIDTH * verdict_slot(trigger, ring_size)


def encode_verdict_slot(trigger: int, verdict: int) -> list[int]:
    """The three registers of one slot, written together in one FC16 request."""
    contract.check_verdict(verdict)
    high, low = split_u32(trigger)
    return [high, low, verdict]


def decode_verdict_slot(registers: Sequence[int]) -> tuple[int, int]:
    """(trigger, verdict) held by a slot; the verdict is returned raw, garbage included."""
    if len(registers) != VERDICT_SLOT_WIDTH:
        raise ValueError(f"a verdict slot is {VERDICT_SLOT_WIDTH} registers, got {len(registers)}")
    return join_u32(registers[0], registers[1]), registers[2]


def gate_passes(slot: Sequence[int], trigger: int) -> bool:
    """The contract's gate rule (``contract.gate_passes``) on the three registers of a slot."""
    held_trigger, verdict = decode_verdict_slot(slot)
    return contract.gate_passes(held_trigger, verdict, trigger)


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
    by_slot = [join_u32(ring[at], ring[at + 1]) for at in range(0, len(ring), 2)]
    return contract.reject_log_entries(by_slot, confirms)


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
