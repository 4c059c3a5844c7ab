"""Why the line stops: one table of stop reasons and the codes the PLC receives for them.

The code goes to the PLC with the line-stop request (Modbus HR 1, OPC UA ``Agent.StopReason``)
so the PLC and its HMI can show the cause. This enum is the only place a code is defined; the
README's PLC contract lists the same table.
"""

from __future__ import annotations

import enum


class StopReason(enum.StrEnum):
    """A line-stop reason; ``code`` is its wire value in the PLC contract."""

    code: int

    def __new__(cls, value: str, code: int = 99) -> StopReason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.code = code
        return member

    REPEATED_REJECTS = "repeated_rejects", 10
    STORAGE_ERROR = "storage_error", 11
    PLC_HEARTBEAT_LOST = "plc_heartbeat_lost", 12
    REJECT_CONFIRM_MISSING = "reject_confirm_missing", 13
    DEVICE_ERROR = "device_error", 14
    REJECT_LOG_OVERRUN = "reject_log_overrun", 15
    SERIALS_EXHAUSTED = "serials_exhausted", 16
    OUTBOX_FULL = "outbox_full", 17
    PRINTER_LINK_LOST = "printer_link_lost", 18
    SHUTDOWN = "shutdown", 19
    OPERATOR_HOLD = "operator_hold", 20
    OPERATOR_STOP = "operator_stop", 21
    OPERATOR_ABORT = "operator_abort", 22
    OTHER = "other", 99

    @classmethod
    def by_code(cls, code: int) -> StopReason:
        for reason in cls:
            if reason.code == code:
                return reason
        return cls.OTHER

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    StopReason.REPEATED_REJECTS: "max_consecutive_rejects rejects in a row (repeated doubt)",
    StopReason.STORAGE_ERROR: "the state database could not record a unit (disk full, I/O error)",
    StopReason.PLC_HEARTBEAT_LOST: "the PLC heartbeat stopped moving",
    StopReason.REJECT_CONFIRM_MISSING: "max_missing_confirms rejects in a row were not confirmed",
    StopReason.DEVICE_ERROR: "printer, camera or PLC link failed",
    StopReason.REJECT_LOG_OVERRUN: "more rejects confirmed than the reject log holds",
    StopReason.SERIALS_EXHAUSTED: "no serial left for the batch",
    StopReason.OUTBOX_FULL: "the outbox reached its stop level (undelivered events are kept)",
    StopReason.PRINTER_LINK_LOST: "printer link lost (in-process reconnect under way, or failed)",
    StopReason.SHUTDOWN: "the agent was told to stop (SIGTERM from the service manager, Ctrl-C)",
    StopReason.OPERATOR_HOLD: "operator hold",
    StopReason.OPERATOR_STOP: "operator stop",
    StopReason.OPERATOR_ABORT: "operator abort",
    StopReason.OTHER: "any other stop",
}
