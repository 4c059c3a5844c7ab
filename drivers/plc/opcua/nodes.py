"""The OPC UA node set of the PLC contract, as config-overridable node ids and pure helpers.

The PLC contract (``drivers.plc.contract``: what slots, verdicts, the gate rule and the reject log
mean) expressed as typed OPC UA variables, as the Modbus register map expresses it in registers.
The verdict ring is one ``UInt32[2]`` array node per slot, ``[trigger, verdict]``, so one slot is
always one Write of one node (atomic on every server). The PLC's state is read in
one Read service call; the reject log is one ``UInt32[32]`` array read together with its counter.
No I/O here: the driver, the simulator and the tests build on the same definitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from asyncua import ua
from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.plc import contract
from drivers.plc.contract import REJECT_LOG_SIZE as REJECT_LOG_SIZE
from drivers.plc.contract import U16_MAX as U16_MAX
from drivers.plc.contract import U32_MAX as U32_MAX
from edge_agent.contracts import PlcState, Verdict

DEFAULT_NAMESPACE_URI = "urn:edge-agent:plc-contract"
# The contract's verdict values, by the names the node set's users know
VERDICT_NONE, VERDICT_PASS, VERDICT_REJECT = contract.NO_VERDICT, Verdict.PASS, Verdict.REJECT

UInt16, UInt32, Boolean = ua.VariantType.UInt16, ua.VariantType.UInt32, ua.VariantType.Boolean


class NodeIds(BaseModel):
    """Node ids of the contract. Without ``ns=``/``nsu=`` they live in ``namespace_uri``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # the agent writes
    agent_heartbeat: str = Field("s=Agent.Heartbeat", description="UInt16 agent heartbeat")
    stop_reason: str = Field("s=Agent.StopReason", description="UInt16 line-stop reason code")
    line_stop_request: str = Field("s=Agent.LineStopRequest", description="Boolean stop request")
    agent_state: str = Field(
        "s=Agent.State", description="UInt16 agent line state: 0 idle, 1 running, 2 stopped, 3 done"
    )
    agent_missing_confirms: str = Field(
        "s=Agent.MissingConfirms", description="UInt16 reject confirms missing in a row"
    )
    agent_units: str = Field("s=Agent.Units", description="UInt32 units the agent decided")
    agent_passed: str = Field("s=Agent.Passed", description="UInt32 units the agent passed")
    agent_rejected: str = Field("s=Agent.Rejected", description="UInt32 units the agent rejected")
    agent_last_trigger: str = Field(
        "s=Agent.LastTrigger", description="UInt32 trigger count of the last verdict written"
    )
    verdict_slot: str = Field(
        "s=Agent.Verdict[{k}]",
        description="UInt32[2] verdict slot k = [trigger, verdict]; '{k}' is the slot number",
    )
    # the PLC writes
    plc_heartbeat: str = Field("s=Plc.Heartbeat", description="UInt16 PLC heartbeat")
    line_state: str = Field("s=Plc.LineState", description="UInt16 0 stopped, 1 running")
    trigger_count: str = Field("s=Plc.TriggerCount", description="UInt32 last trigger count")
    passed: str = Field("s=Plc.Passed", description="UInt32 units passed at the gate")
    rejected: str = Field("s=Plc.Rejected", description="UInt32 units rejected at the gate")
    reject_confirms: str = Field("s=Plc.RejectConfirms", description="UInt32 confirmed rejects")
    ring_size: str = Field("s=Plc.RingSize", description="UInt16 verdict ring size N")
    stop_cause: str = Field("s=Plc.StopCause", description="UInt16 cause of the last stop")
    reject_log: str = Field("s=Plc.RejectLog", description="UInt32[32] reject log ring")
    agent_heartbeat_ok: str = Field("s=Plc.AgentHeartbeatOk", description="Boolean watchdog OK")

    @field_validator("verdict_slot")
    @classmethod
    def _has_k(cls, value: str) -> str:
        if "{k}" not in value:
            raise ValueError("verdict_slot needs '{k}' where the slot number goes")
        return value


# The state block: read in one Read call, in this order.
STATE_FIELDS = (
    "plc_heartbeat",
    "line_state",
    "trigger_count",
    "passed",
    "rejected",
    "reject_confirms",
    "ring_size",
    "stop_cause",
)

# Variable types, for the simulator and for documentation.
TYPES: dict[str, tuple[ua.VariantType, int | None]] = {  # field -> (type, array length)
    "agent_heartbeat": (UInt16, None),
    "stop_reason": (UInt16, None),
    "line_stop_request": (Boolean, None),
    "verdict_slot": (UInt32, 2),
    "plc_heartbeat": (UInt16, None),
    "line_state": (UInt16, None),
    "trigger_count": (UInt32, None),
    "passed": (UInt32, None),
    "rejected": (UInt32, None),
    "reject_confirms": (UInt32, None),
    "ring_size": (UInt16, None),
    "stop_cause": (UInt16, None),
    "reject_log": (UInt32, REJECT_LOG_SIZE),  # default length; the PLC may use 1..1024
    "agent_heartbeat_ok": (Boolean, None),
    "agent_state": (UInt16, None),
    "agent_missing_confirms": (UInt16, None),
    "agent_units": (UInt32, None),
    "agent_passed": (UInt32, None),
    "agent_rejected": (UInt32, None),
    "agent_last_trigger": (UInt32, None),
}
# The agent's status block: written in one Write call with every heartbeat.
STATUS_FIELDS = (
    "agent_state",
    "agent_missing_confirms",
    "agent_units",
    "agent_passed",
    "agent_rejected",
    "agent_last_trigger",
)
AGENT_WRITES = (
    "agent_heartbeat",
    "stop_reason",
    "line_stop_request",
    "verdict_slot",
    *STATUS_FIELDS,
)


def node_id(text: str, ns_index: int, namespace_array: Sequence[str] = ()) -> ua.NodeId:
    """Parse a configured node id: ``s=...``/``i=...`` in the contract namespace, or with an
    explicit ``ns=<index>;`` or ``nsu=<uri>;`` prefix."""
    if text.startswith("nsu="):
        uri, sep, rest = text[4:].partition(";")
        if not sep or uri not in namespace_array:
            raise ValueError(f"node id {text!r}: namespace {uri!r} not on the server")
        return ua.NodeId.from_string(f"ns={list(namespace_array).index(uri)};{rest}")
    if text.startswith("ns="):
        return ua.NodeId.from_string(text)
    return ua.NodeId.from_string(f"ns={ns_index};{text}")


def slot_node_text(template: str, k: int) -> str:
    return template.replace("{k}", str(k))


def verdict_slot(trigger: int, ring_size: int) -> int:
    return contract.verdict_slot(trigger, ring_size)


def encode_verdict(trigger: int, verdict: int) -> ua.DataValue:
    """The value of one slot: ``UInt32[2] = [trigger, verdict]``, written in one Write."""
    contract.check_verdict(verdict)
    if not 0 <= trigger <= U32_MAX:
        raise ValueError(f"trigger count {trigger} does not fit 0..{U32_MAX}")
    return datavalue([trigger, verdict], UInt32)


def datavalue(value: Any, variant_type: ua.VariantType) -> ua.DataValue:
    """A DataValue without timestamps: some PLCs (S7-1500) refuse writes that carry them."""
    return ua.DataValue(Value=ua.Variant(value, variant_type))


def gate_passes(slot: Sequence[int] | None, trigger: int) -> bool:
    """The contract's gate rule (``contract.gate_passes``) on the value of a slot node; a value
    that is not a ``[trigger, verdict]`` pair is garbage, and rejects."""
    if slot is None or len(slot) != 2:
        return False
    return contract.gate_passes(int(slot[0]), int(slot[1]), trigger)


def reject_log_index(confirm_number: int, size: int = REJECT_LOG_SIZE) -> int:
    """Slot j = (n - 1) mod size of the n-th confirmed reject (n counts from 1)."""
    return contract.reject_log_index(confirm_number, size)


def decode_reject_log(ring: Sequence[int], confirms: int) -> list[int]:
    """Trigger counts of the valid entries of the ``UInt32[size]`` log, oldest first; the
    array's length is the log size (32 unless the PLC says otherwise)."""
    return contract.reject_log_entries(ring, confirms)


def encode_status(status: Any) -> list[ua.DataValue]:
    """The STATUS_FIELDS values of a ``LineStatus``; counters wrap at 2**32."""
    return [
        datavalue(int(status.state) & U16_MAX, UInt16),
        datavalue(min(int(status.missing_confirms), U16_MAX), UInt16),
        *(
            datavalue(int(v) & U32_MAX, UInt32)
            for v in (status.units, status.passed, status.rejected, status.last_trigger)
        ),
    ]


def decode_state(values: Sequence[Any]) -> PlcState:
    """PlcState from the values of STATE_FIELDS, read in one call."""
    if len(values) != len(STATE_FIELDS):
        raise ValueError(f"state block is {len(STATE_FIELDS)} values, got {len(values)}")
    v = dict(zip(STATE_FIELDS, values, strict=True))
    for name, value in v.items():
        if not isinstance(value, int):  # bool is an int: a Boolean line state is accepted
            raise ValueError(f"{name} is {value!r}, expected an integer")
    return PlcState(
        heartbeat=int(v["plc_heartbeat"]),
        running=int(v["line_state"]) == 1,
        trigger_count=int(v["trigger_count"]),
        passed=int(v["passed"]),
        rejected=int(v["rejected"]),
        reject_confirms=int(v["reject_confirms"]),
        stop_cause=int(v["stop_cause"]),
        extra={"ring_size": int(v["ring_size"])},
    )
