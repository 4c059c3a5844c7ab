"""The line: state, order on the line, counters, device links; alarms and acknowledging them."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from edge_agent.alarms import Alarm
from edge_agent.api.deps import ApiServices, CurrentActor, Services, errors
from edge_agent.api.errors import NotFound
from edge_agent.api.schemas import AlarmOut, LineOut, OrderOut
from edge_agent.api.status import Counters
from edge_agent.db import write
from edge_agent.orders import audit

router = APIRouter(tags=["line"])


@router.get(
    "/line",
    response_model=LineOut,
    responses=errors(),
    summary="Line state, order on the line, counters, devices, open alarms",
    operation_id="line_status",
)
async def line(actor: CurrentActor, services: Services) -> LineOut:
    snapshot = services.line.snapshot()
    record = services.commands.store.find(snapshot.order_id) if snapshot.order_id else None
    return LineOut(
        state=snapshot.state,
        order=OrderOut.of(record) if record is not None else None,
        counters=snapshot.counters,
        devices=snapshot.devices,
        alarms=[AlarmOut.of(a) for a in _open_alarms(services)],
    )


@router.get(
    "/line/counters",
    response_model=Counters,
    responses=errors(),
    summary="Counters of the order on the line",
    operation_id="line_counters",
)
async def counters(actor: CurrentActor, services: Services) -> Counters:
    return services.line.snapshot().counters


@router.get(
    "/alarms",
    response_model=list[AlarmOut],
    responses=errors(422),
    summary="Alarms",
    operation_id="list_alarms",
)
async def alarms(
    actor: CurrentActor,
    services: Services,
    which: Annotated[
        Literal["open", "active", "unacknowledged"],
        Query(
            description="open = active or not yet acknowledged; active = not cleared; "
            "unacknowledged = nobody acknowledged it yet"
        ),
    ] = "open",
    order_id: Annotated[
        str | None, Query(max_length=40, description="Only this order's alarms")
    ] = None,
) -> list[AlarmOut]:
    board = services.alarms
    found = board.for_order(order_id) if order_id is not None else _open_alarms(services)
    return [AlarmOut.of(a) for a in found if _matches(a, which)]


@router.post(
    "/alarms/{alarm_id}/acknowledge",
    response_model=AlarmOut,
    responses=errors(404, 422),
    summary="Acknowledge an alarm",
    operation_id="acknowledge_alarm",
)
async def acknowledge(
    alarm_id: Annotated[int, Path(ge=1, le=2**62)], actor: CurrentActor, services: Services
) -> AlarmOut:
    board = services.alarms
    alarm = board.get(alarm_id)
    if alarm is None:
        raise NotFound(f"no alarm {alarm_id}; GET /alarms lists them")
    if alarm.acknowledged_at is not None:
        return AlarmOut.of(alarm)  # acknowledged already: nothing changes, nothing to record
    conn = services.commands.conn
    with write(conn):  # the acknowledgement and its audit record commit together
        done = board.acknowledge(alarm_id, str(actor))
        audit.append(
            conn,
            actor,
            "acknowledge",
            order_id=alarm.order_id,
            detail={"alarm": alarm_id, "kind": alarm.kind},
        )
    return AlarmOut.of(done)


def _open_alarms(services: ApiServices) -> list[Alarm]:
    board = services.alarms
    found = {a.id: a for a in board.active()} | {a.id: a for a in board.unacknowledged()}
    return [found[k] for k in sorted(found)]


def _matches(alarm: Alarm, which: str) -> bool:
    if which == "active":
        return alarm.active
    if which == "unacknowledged":
        return alarm.acknowledged_at is None
    return alarm.active or alarm.acknowledged_at is None
