"""Orders: submit, list, show, commands, close report."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse

from edge_agent.api.deps import CurrentActor, ExistingOrder, Services, errors
from edge_agent.api.errors import NotFound, TooLarge
from edge_agent.api.schemas import (
    AlarmOut,
    AuditRowOut,
    CloseReport,
    CommandIn,
    CommandName,
    HoldOut,
    OrderDetail,
    OrderOut,
)
from edge_agent.orders import audit
from edge_agent.orders.model import TERMINAL_STATES, OrderCommand, OrderState
from edge_agent.orders.store import OrderRecord

MAX_ORDER_BYTES = 64 * 1024 * 1024  # an inline list of a few million serials
AUDIT_ROWS_SHOWN = 1000

router = APIRouter(prefix="/orders", tags=["orders"])

EXAMPLE_ORDER = {
    "id": "WO-2026-0001",
    "product": {"gtin": "09506000134352", "description": "Tablets 20 mg, 30 pcs"},
    "lot": "L2611A",
    "expiry": "491231",
    "quantity": 500,
    "serials": {"source": "generate", "length": 12},
    "market": "DE",
}
_WORK_ORDER_BODY = {
    "requestBody": {
        "required": True,
        "description": "A work order (the format in README 'Work orders')",
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/WorkOrder"},
                "example": EXAMPLE_ORDER,
            }
        },
    }
}
_ORDER_ID = {"order_id": "$response.body#/id"}
_LINKS = {  # what a client (or a test generator) can do next with the order it got back
    "links": {
        "show": {"operationId": "show_order", "parameters": _ORDER_ID},
        "command": {"operationId": "order_command", "parameters": _ORDER_ID},
        "report": {"operationId": "close_report", "parameters": _ORDER_ID},
    }
}


@router.post(
    "",
    status_code=201,
    response_model=OrderOut,
    responses={201: _LINKS, **errors(409, 413, 422)},
    openapi_extra=_WORK_ORDER_BODY,
    summary="Submit a work order",
    operation_id="submit_order",
)
async def submit(request: Request, actor: CurrentActor, services: Services) -> OrderOut:
    data = await _json_object(request)
    record = await services.commands.submit(data, source=actor.source, actor=actor)
    return OrderOut.of(record)


@router.get(
    "",
    response_model=list[OrderOut],
    responses=errors(422),
    summary="List orders",
    operation_id="list_orders",
)
async def list_orders(
    actor: CurrentActor,
    services: Services,
    state: Annotated[
        list[OrderState] | None, Query(description="Only orders in these states")
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=10_000, description="At most this many, newest first")
    ] = 500,
) -> list[OrderOut]:
    # The newest ids first, then only those orders read in full (an order's spec may hold a
    # long serial list: the limit bounds the work, not only the answer).
    where, args = "", list[Any]()
    if state:
        where = f"WHERE state IN ({','.join('?' * len(state))})"
        args = [str(s) for s in state]
    ids = services.commands.conn.execute(
        f"SELECT id FROM orders {where} ORDER BY queue DESC LIMIT ?", (*args, limit)
    ).fetchall()
    return [OrderOut.of(services.commands.store.get(order_id)) for (order_id,) in ids]


@router.get(
    "/{order_id}",
    response_model=OrderDetail,
    responses=errors(404, 422),
    summary="Show an order: state, holds, alarms, audit rows",
    operation_id="show_order",
)
async def show(record: ExistingOrder, actor: CurrentActor, services: Services) -> OrderDetail:
    conn = services.commands.conn
    rows = audit.rows(conn, order_id=record.id, limit=AUDIT_ROWS_SHOWN)
    return OrderDetail(
        **OrderOut.of(record).model_dump(),
        spec=_spec(record),
        holds=[HoldOut.of(h) for h in services.commands.store.holds(record.id)],
        alarms=[AlarmOut.of(a) for a in services.alarms.for_order(record.id)],
        audit=[AuditRowOut.of(r) for r in rows],
        report_available=record.state in TERMINAL_STATES
        and services.reports.load(record.id) is not None,
    )


@router.post(
    "/{order_id}/commands/{command}",
    response_model=OrderOut,
    responses={200: _LINKS, **errors(400, 404, 409, 422)},
    summary="Send an order command",
    operation_id="order_command",
)
async def command(
    record: ExistingOrder,
    command: CommandName,
    actor: CurrentActor,
    services: Services,
    body: CommandIn | None = None,
) -> OrderOut:
    reason = body.reason if body is not None else None
    done = await services.commands.command(
        record.id, OrderCommand(command.value), actor, reason=reason
    )
    return OrderOut.of(done)


@router.get(
    "/{order_id}/report",
    response_model=CloseReport,
    response_model_by_alias=True,
    responses=errors(404, 422),
    summary="Close report (JSON)",
    operation_id="close_report",
)
async def report(record: ExistingOrder, actor: CurrentActor, services: Services) -> Any:
    found = services.reports.load(record.id)
    if found is None:
        raise NotFound(_no_report(record))
    return CloseReport.model_validate(found)


@router.get(
    "/{order_id}/report.html",
    response_class=HTMLResponse,
    responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}, **errors(404, 422)},
    summary="Close report (printable HTML)",
    operation_id="close_report_html",
)
async def report_html(
    record: ExistingOrder, actor: CurrentActor, services: Services
) -> HTMLResponse:
    page = services.reports.html(record.id)
    if page is None:
        raise NotFound(_no_report(record))
    return HTMLResponse(page)


def _no_report(record: OrderRecord) -> str:
    if record.state in TERMINAL_STATES:
        return f"order {record.id} is {record.state} but its close report is missing"
    return f"order {record.id} is {record.state}: its close report is made when it ends"


def _spec(record: OrderRecord) -> dict[str, Any]:
    order = record.order
    spec = order.model_dump(mode="json", exclude={"serials": {"serials"}})
    if order.serials.serials is not None:
        spec["serials"]["count"] = len(order.serials.serials)
    return spec


async def _json_object(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_ORDER_BYTES:
        raise TooLarge(_too_large(int(declared)))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_ORDER_BYTES:
            raise TooLarge(_too_large(size))
        chunks.append(chunk)
    try:
        # a big order takes a while to parse: not on the loop that runs the line
        data = await asyncio.to_thread(json.loads, b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _body_problem(f"the body is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _body_problem("an order is a JSON object")
    return data


def _body_problem(message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body",), "msg": message, "type": "json_invalid"}])


def _too_large(size: int) -> str:
    return (
        f"the order is {size} bytes, more than {MAX_ORDER_BYTES}; send its serials in pages "
        "(serials.source = 'l3') instead of inline"
    )
