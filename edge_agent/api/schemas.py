"""Request and response bodies of the REST API. Every response is one of these models, so the
served OpenAPI document describes exactly what the agent sends."""

from __future__ import annotations

import enum
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edge_agent.alarms import Alarm
from edge_agent.api.status import Counters, DeviceLink, LineMode
from edge_agent.orders.audit import AuditRow, ChainCheck
from edge_agent.orders.lifecycle import allowed_commands
from edge_agent.orders.model import OrderCommand, OrderState
from edge_agent.orders.store import Hold, OrderRecord


class CommandName(enum.StrEnum):
    """The order commands a client sends (``store`` is submitting an order)."""

    START = OrderCommand.START.value
    HOLD = OrderCommand.HOLD.value
    RESUME = OrderCommand.RESUME.value
    STOP = OrderCommand.STOP.value
    ABORT = OrderCommand.ABORT.value
    CANCEL = OrderCommand.CANCEL.value
    CLOSE = OrderCommand.CLOSE.value


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- errors ----------------------------------------------------------------------------------


class Problem(Out):
    key: str = Field(description="Key path of the problem in the request, e.g. product.gtin")
    message: str


class ErrorOut(Out):
    """Every error answer: a stable code, a sentence for people, and the problems found."""

    error: str = Field(
        description="order_invalid, request_invalid, command_refused, not_found, unauthorized, "
        "too_large, http_error or internal_error"
    )
    message: str
    problems: list[Problem] = Field(default_factory=list)


# --- orders ----------------------------------------------------------------------------------


class OrderOut(Out):
    id: str
    state: OrderState
    description: str
    gtin: str
    lot: str
    expiry: str
    quantity: int
    market: str
    serial_source: str
    source: str = Field(description="Where the order came from: api, inbox, l3, ...")
    received_at: float
    started_at: float | None
    completed_at: float | None
    ended_at: float | None
    allowed_commands: list[OrderCommand] = Field(description="Commands its state allows now")

    @classmethod
    def of(cls, record: OrderRecord) -> OrderOut:
        order = record.order
        return cls(
            id=order.id,
            state=record.state,
            description=order.product.description,
            gtin=order.product.gtin,
            lot=order.lot,
            expiry=order.expiry,
            quantity=order.quantity,
            market=order.market,
            serial_source=order.serials.source,
            source=record.source,
            received_at=record.received_at,
            started_at=record.started_at,
            completed_at=record.completed_at,
            ended_at=record.ended_at,
            allowed_commands=allowed_commands(record.state),
        )


class HoldOut(Out):
    id: int
    reason: str
    detail: dict[str, Any]
    held_at: float
    resumed_at: float | None
    resumed_by: str | None

    @classmethod
    def of(cls, hold: Hold) -> HoldOut:
        detail = json.loads(hold.detail or "{}")
        return cls(
            id=hold.id,
            reason=hold.reason,
            detail=detail if isinstance(detail, dict) else {"detail": detail},
            held_at=hold.held_at,
            resumed_at=hold.resumed_at,
            resumed_by=hold.resumed_by,
        )


class AlarmOut(Out):
    id: int
    kind: str
    message: str
    order_id: str | None
    raised_at: float
    count: int = Field(description="How often it was raised while active")
    cleared_at: float | None
    acknowledged_at: float | None
    acknowledged_by: str | None
    active: bool

    @classmethod
    def of(cls, alarm: Alarm) -> AlarmOut:
        return cls.model_validate(alarm.as_dict())


class AuditRowOut(Out):
    seq: int
    at: float
    actor: str
    source: str
    action: str
    order_id: str | None
    reason: str | None
    outcome: str = Field(description="done or refused")
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, row: AuditRow) -> AuditRowOut:
        return cls.model_validate(row.__dict__)


class OrderDetail(OrderOut):
    spec: dict[str, Any] = Field(description="The order as stored (an inline serial list by count)")
    holds: list[HoldOut]
    alarms: list[AlarmOut]
    audit: list[AuditRowOut]
    report_available: bool = Field(description="Its close report can be fetched")


class CommandIn(Out):
    reason: str | None = Field(
        None,
        max_length=500,
        description="Why, for the audit trail: required for hold, abort and cancel, and for a "
        "close that does not balance",
    )


# --- line, alarms, audit -----------------------------------------------------------------------


class LineOut(Out):
    state: LineMode
    order: OrderOut | None = Field(description="The order on the line (running or held)")
    counters: Counters
    devices: list[DeviceLink]
    alarms: list[AlarmOut] = Field(description="Alarms active or not yet acknowledged")


class ChainOut(Out):
    ok: bool = Field(description="Every row links to the one before and matches its hash")
    rows: int
    head: str = Field(description="Hash of the newest row")
    problems: list[str]

    @classmethod
    def of(cls, check: ChainCheck) -> ChainOut:
        return cls(ok=check.ok, rows=check.rows, head=check.head, problems=check.problems)


class HealthOut(Out):
    status: str = "ok"
    version: str


# --- close report ----------------------------------------------------------------------------


class ReportPart(BaseModel):
    model_config = ConfigDict(extra="allow")  # a later report version may add fields


class Reconciliation(ReportPart):
    batch_id: str
    target_quantity: int
    batch_state: str
    units: int
    passed: int
    rejected: int
    rejected_by_reason: dict[str, int]
    serials_allocated: int
    serials_commissioned: int
    serials_rejected: int
    serials_unused: int
    serials_returned: int
    serials_in_flight: int
    duplicates: int
    serials_sampled: int = 0
    serials_destroyed: int = 0
    aggregation: dict[str, Any] | None = Field(
        None, description="The packaging hierarchy's figures (None: the order has no plan)"
    )
    hierarchy_balanced: bool = True
    hierarchy_problems: list[str] = Field(default_factory=list)
    problems: list[str]
    balanced: bool


class TimelineBucket(ReportPart):
    minute_start: float
    units: int
    passed: int
    rejected: int


class ReportHold(ReportPart):
    reason: str
    held_at: float
    resumed_at: float | None
    resumed_by: str | None
    duration_s: float


class ReportAlarm(ReportPart):
    kind: str
    message: str
    raised_at: float
    cleared_at: float | None
    acknowledged_at: float | None
    acknowledged_by: str | None
    count: int
    duration_s: float


class AuditHead(ReportPart):
    rows: int
    head: str
    chain_ok: bool


class CloseReport(ReportPart):
    """The close report of an ended order (closed, aborted or cancelled)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    report_version: int
    order_id: str
    state: OrderState
    closed_at: float
    closed_by: str
    reason: str | None
    order: dict[str, Any]
    received_at: float
    started_at: float | None
    completed_at: float | None
    reconciliation: Reconciliation
    balanced: bool
    problems: list[str]
    yield_: float = Field(alias="yield", description="Serials commissioned / order quantity")
    timeline: list[TimelineBucket]
    holds: list[ReportHold]
    alarms: list[ReportAlarm]
    audit: AuditHead
    serials_returned: int = 0
