"""What every route needs: the agent's services and the authenticated actor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from fastapi import Depends, Path, Request

from edge_agent.aggregation.hierarchy import Hierarchy
from edge_agent.alarms import AlarmBoard
from edge_agent.api.auth import current_actor
from edge_agent.api.errors import NotFound
from edge_agent.api.status import LineStatus
from edge_agent.orders.audit import Actor
from edge_agent.orders.commands import CommandPath
from edge_agent.orders.store import OrderRecord


class Reports(Protocol):
    """Stored close reports (``report_html.StoredReports``)."""

    def load(self, order_id: str) -> dict[str, Any] | None: ...

    def html(self, order_id: str) -> str | None: ...


@dataclass(frozen=True)
class ApiServices:
    commands: CommandPath  # every change to an order goes through it
    alarms: AlarmBoard
    line: LineStatus
    reports: Reports
    hierarchy: Hierarchy | None = None  # None: the routes make one over commands.ledger
    stations: Any = None  # the daemon's StationRunner ([aggregation]), for the station routes


def services(request: Request) -> ApiServices:
    found: ApiServices = request.app.state.services
    return found


async def _services(request: Request) -> ApiServices:
    # async: FastAPI runs sync dependencies in a thread, and the state database connection
    # belongs to the event loop's thread
    return services(request)


Services = Annotated[ApiServices, Depends(_services)]
CurrentActor = Annotated[Actor, Depends(current_actor)]
OrderId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=40,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Order id",
    ),
]


async def existing_order(order_id: OrderId, request: Request, _: CurrentActor) -> OrderRecord:
    """The order the path names; 404 when there is none (orders are never deleted). After the
    token check, so that who has no token learns nothing, not even which orders exist."""
    record = services(request).commands.store.find(order_id)
    if record is None:
        raise NotFound(f"no order {order_id!r}; GET /orders lists the orders")
    return record


ExistingOrder = Annotated[OrderRecord, Depends(existing_order)]


ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorOut"}  # app.py puts ErrorOut there


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries of the error answers a route gives (every one an ErrorOut, as JSON also
    where the route itself answers HTML)."""
    described = {
        400: "The body cannot be parsed (not UTF-8 JSON)",
        401: "No token, or a token nobody issued",
        403: "The token's role may not do this (the message names the role needed)",
        404: "No such order, alarm or report",
        409: "The command is refused (wrong state, reason missing, checks failed)",
        413: "The body is too large",
        422: "The request or the order is not valid; problems lists each one",
        500: "Internal error (the agent's log has the details)",
    }
    return {
        s: {"description": described[s], "content": {"application/json": {"schema": ERROR_SCHEMA}}}
        for s in (401, *statuses, 500)
    }
