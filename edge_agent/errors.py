"""One exception tree for the whole agent.

Drivers map transport and library exceptions to these at their boundary (``raise ... from exc``),
so the core never needs to know which vendor library failed.
"""

from __future__ import annotations

import enum

from edge_agent.redaction import redact_url
from edge_agent.stops import StopReason


class EdgeAgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(EdgeAgentError):
    """A configuration file is wrong. Carries where, what was found and what is expected."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        line: int | None = None,
    ) -> None:
        self.file = file
        self.key = key
        self.line = line
        self.detail = message
        where = file or "<config>"
        if line is not None:
            where += f":{line}"
        if key:
            where += f": {key}"
        super().__init__(f"{where}: {message}")


class Gs1Error(EdgeAgentError):
    """A GS1 element string, AI or value is invalid. ``position`` is a character offset when known."""

    def __init__(self, message: str, *, ai: str | None = None, position: int | None = None) -> None:
        self.ai = ai
        self.position = position
        super().__init__(message)


class DeviceError(EdgeAgentError):
    """Something went wrong talking to a device; ``device`` names it as the config does."""

    def __init__(self, device: str, message: str) -> None:
        self.device = device
        # Device messages often quote an address; a URL may carry a password (rtsp://u:p@cam).
        super().__init__(f"{device}: {redact_url(message)}")


class DeviceConnectionError(DeviceError):
    """The device cannot be reached or the link dropped."""


class DeviceTimeout(DeviceError):
    """The device did not answer in time."""


class ProtocolError(DeviceError):
    """The device sent something the protocol does not allow (garbage, bad frame, bad reply)."""


class DeviceFault(DeviceError):
    """The device reports a fault of its own (ink out, head fault...). ``code`` is the device's code."""

    def __init__(self, device: str, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(device, f"fault {code}: {reason}")


class PrinterBusy(DeviceFault):
    """The printer refused a record because its buffer is full. The record was not taken, so
    the same record may be sent again once the printer has room. ``code`` is ``BUFFER_FULL``."""

    CODE = "BUFFER_FULL"

    def __init__(self, device: str, reason: str) -> None:
        super().__init__(device, self.CODE, reason)


class LedgerError(EdgeAgentError):
    """The serial ledger refused an operation or the state database is unusable."""


class StateRefused(LedgerError):
    """The agent will not use this state database: it cannot prove it is its own (empty, foreign,
    another database's log) or the file is damaged or unusable. A person must act: the message
    names the files and the recovery step; the command exits 2 and the service is not restarted."""


class StorageFull(LedgerError):
    """The state database cannot be written for lack of space (or an I/O error): not damage; the
    line stops until space is freed."""


class OutboxError(EdgeAgentError):
    """The event outbox cannot accept or deliver events."""


class DeliveryError(OutboxError):
    """An upstream could not take events now (unreachable, 5xx, timeout); retry after backoff."""

    def __init__(self, message: str, *, upstream: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{upstream}: {message}")
        self.upstream = upstream
        self.retry_after_s = retry_after_s


class LineStopped(EdgeAgentError):
    """The line was stopped on purpose (repeated doubt, lost link, storage full)."""

    def __init__(self, reason: StopReason, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"line stopped: {reason}" + (f" ({detail})" if detail else ""))


class OrderError(EdgeAgentError):
    """A work order or an order command was refused; the message says why and what to do."""


class OrderInvalid(OrderError):
    """An order failed validation; ``problems`` holds (key path, message) pairs, all of them."""

    def __init__(self, order_id: str | None, source: str, problems: list[tuple[str, str]]) -> None:
        self.order_id = order_id
        self.source = source
        self.problems = problems
        who = f"order {order_id}" if order_id else "order"
        lines = [f"{who} from {source}: {key}: {message}" for key, message in problems]
        super().__init__("\n".join(lines))


class CommandRefused(OrderError):
    """A command is not allowed now (wrong state, missing reason, recovery checks failed)."""

    def __init__(self, message: str, *, order_id: str | None = None, state: str | None = None):
        self.order_id = order_id
        self.state = state
        super().__init__(message)


class RefusalReason(enum.StrEnum):
    """Why the hierarchy refused an aggregation operation (``AggregationRefused.reason``)."""

    NO_PLAN = "no_plan"  # the order has no aggregation plan, or not this level
    UNKNOWN_ORDER = "unknown_order"
    UNKNOWN_CODE = "unknown_code"  # not a unit or container known on this line, or unreadable
    NOT_COMMISSIONED = "not_commissioned"  # rejected, sampled, destroyed, unused, in flight
    ALREADY_PACKED = "already_packed"  # the child is in a parent already
    NOT_IN_PARENT = "not_in_parent"  # unpack / replace of a child the parent does not hold
    DUPLICATE = "duplicate"  # the same child twice in one request
    WRONG_LEVEL = "wrong_level"  # not the level the plan puts below the parent
    WRONG_GTIN = "wrong_gtin"
    WRONG_LOT = "wrong_lot"
    OTHER_ORDER = "other_order"  # a child of another order
    CAPACITY = "capacity"  # more children than the level's capacity
    PARTIAL_REFUSED = "partial_refused"  # closing a partial parent the plan does not allow
    EMPTY = "empty"  # closing a parent with no children
    CONTAINER_STATE = "container_state"  # the parent is not in a state that allows this
    CHILD_NOT_CLOSED = "child_not_closed"  # a bundle or case packed before it was closed
    IDENTIFIERS_EXHAUSTED = "identifiers_exhausted"
    IDENTIFIER_USED = "identifier_used"  # an identifier from L3 was used before
    ORDER_STATE = "order_state"  # the order has ended: its hierarchy is settled
    REASON_MISSING = "reason_missing"


class AggregationRefused(EdgeAgentError):
    """The hierarchy refused an operation; nothing changed. ``reason`` says which rule, the
    message what was refused, why and what to do."""

    def __init__(self, reason: RefusalReason, message: str, *, order_id: str | None = None) -> None:
        self.reason = reason
        self.order_id = order_id
        super().__init__(message)
