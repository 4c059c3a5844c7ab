"""Aggregation: containers (bundles, cases, pallets) and manual rework, as the operator screen
and ``edge-agent case`` use them.

A container is named by what its label carries, given in the body or the query (never in the
path, where a serial's ``/`` would be taken apart): the 18 SSCC digits, the GS1 element string
as scanned or bracketed (``(00)...``, ``(01)...(21)...``), or its EPC URI. Every change is one
transaction of the hierarchy with its EPCIS events and an audit row naming the caller; a refused
one changes nothing, is audited as refused and answers 409 with the rule (``problems[0].key``).

Roles: opening, adding to and closing a container (manual aggregation) is an operator's work;
rework (reopen, remove, replace, relabel, disaggregate, scrap) and taking units out for QA
samples or destruction need a supervisor, as on the operator screen: a token of another role
gets 403 naming the role needed, audited as refused.

The stations (``/aggregation/stations``, with ``[aggregation]`` in the daemon): their state,
the count of the last, partial case, the close of the last, partial pallet and the release of a
pallet station that holds on failed labels.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from edge_agent.aggregation.balance import hierarchy_report
from edge_agent.aggregation.hierarchy import Container, ContainerState, Hierarchy, Item
from edge_agent.api.auth import Forbidden, require_role
from edge_agent.api.deps import CurrentActor, ExistingOrder, Services, errors
from edge_agent.api.errors import NotFound
from edge_agent.db import write
from edge_agent.errors import AggregationRefused, CommandRefused, EdgeAgentError, RefusalReason
from edge_agent.orders import audit
from edge_agent.orders.audit import Actor, Role

router = APIRouter(tags=["aggregation"])

Ref = Field(..., min_length=1, max_length=200, description="SSCC, GS1 element string or EPC URI")
Reason = Field(..., min_length=1, max_length=500, description="Why (kept in the audit trail)")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenIn(_In):
    order_id: str = Field(..., min_length=1, max_length=40)
    level: Literal["bundle", "case", "pallet"] = "case"


class ContainerIn(_In):
    container: str = Ref


class ChildrenIn(ContainerIn):
    children: list[str] = Field(..., min_length=1, max_length=100_000)
    close: bool = Field(False, description="add: close the container in the same transaction")


class RemoveIn(ContainerIn):
    children: list[str] = Field(..., min_length=1, max_length=100_000)
    reason: str = Reason


class ReplaceIn(ContainerIn):
    old: str = Ref
    new: str = Ref
    reason: str = Reason


class ReasonIn(ContainerIn):
    reason: str = Reason


class UnitIn(_In):
    unit: str = Ref
    reason: str | None = Field(None, max_length=500, description="Why (sample: qa_sample)")


class ContainerOut(BaseModel):
    epc: str
    code: str
    hri: str = Field(..., description="The identifier as people read it: (00)... or (01)...(21)...")
    order_id: str
    level: str
    identifier: str
    state: ContainerState
    reason: str | None
    children: int
    parent: str | None

    @classmethod
    def of(cls, box: Container) -> ContainerOut:
        return cls(**box.to_json())


class ContainerDetail(ContainerOut):
    child_epcs: list[str]
    capacity: int


class UnitOut(BaseModel):
    epc: str
    order_id: str
    state: str

    @classmethod
    def of(cls, item: Item) -> UnitOut:
        return cls(epc=item.epc, order_id=item.order_id, state=item.state)


class HierarchyOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    order_id: str
    hierarchy_balanced: bool
    hierarchy_problems: list[str]
    aggregation: dict[str, Any] | None
    loose: dict[str, str] = Field(..., description="EPC → why it is in no parent")
    open: list[ContainerOut]


def hierarchy_of(request: Request) -> Hierarchy:
    """The agent's hierarchy (``ApiServices.hierarchy``), else one over the ledger."""
    services = request.app.state.services
    found: Hierarchy | None = getattr(services, "hierarchy", None)
    if found is None:
        found = getattr(request.app.state, "hierarchy", None)
        if found is None:
            found = Hierarchy(services.commands.ledger)
            request.app.state.hierarchy = found
    return found


def supervisor_only(request: Request, actor: Actor, action: str, ref: str) -> None:
    """Rework is a supervisor's: anyone else is refused (403), and the refusal audited."""
    try:
        require_role(actor, Role.SUPERVISOR, action.replace("_", " "))
    except Forbidden as exc:
        conn = request.app.state.services.commands.conn
        with write(conn):
            audit.append(
                conn,
                actor,
                action,
                outcome="refused",
                detail={"parent": ref, "message": str(exc)},
            )
        raise


@router.get(
    "/containers",
    response_model=list[ContainerOut],
    responses=errors(422),
    summary="List an order's containers",
    operation_id="list_containers",
)
async def list_containers(
    request: Request,
    _: CurrentActor,
    order_id: Annotated[str, Query(min_length=1, max_length=40)],
    level: Annotated[Literal["bundle", "case", "pallet"] | None, Query()] = None,
    state: Annotated[list[ContainerState] | None, Query()] = None,
) -> list[ContainerOut]:
    boxes = hierarchy_of(request).containers(order_id, level=level, states=state)
    return [ContainerOut.of(b) for b in boxes]


@router.get(
    "/containers/detail",
    response_model=ContainerDetail,
    responses=errors(404, 422),
    summary="One container, scanned or typed: state, children, parent",
    operation_id="show_container",
)
async def show_container(
    request: Request, _: CurrentActor, code: Annotated[str, Query(min_length=1, max_length=200)]
) -> ContainerDetail:
    hierarchy = hierarchy_of(request)
    try:
        box = hierarchy.container(code)
    except AggregationRefused as exc:
        raise NotFound(str(exc)) from None
    return _detail(hierarchy, box)


@router.post(
    "/containers",
    status_code=201,
    response_model=ContainerOut,
    responses=errors(400, 409, 422),
    summary="Open a new container: its identifier is allocated (print its label, then add)",
    operation_id="open_container",
)
async def open_container(body: OpenIn, request: Request, actor: CurrentActor) -> ContainerOut:
    return ContainerOut.of(
        hierarchy_of(request).open_container(body.order_id, body.level, actor=actor)
    )


@router.post(
    "/containers/open",
    response_model=ContainerDetail,
    responses=errors(400, 403, 409, 422),
    summary="Open a closed container again for rework (its label scanned)",
    operation_id="reopen_container",
)
async def reopen(body: ContainerIn, request: Request, actor: CurrentActor) -> ContainerDetail:
    supervisor_only(request, actor, "container_reopen", body.container)
    hierarchy = hierarchy_of(request)
    return _detail(hierarchy, hierarchy.reopen(body.container, actor=actor))


@router.post(
    "/containers/add",
    response_model=ContainerDetail,
    responses=errors(400, 409, 422),
    summary="Add children (all or none)",
    operation_id="add_to_container",
)
async def add(body: ChildrenIn, request: Request, actor: CurrentActor) -> ContainerDetail:
    hierarchy = hierarchy_of(request)
    box = hierarchy.pack(body.container, body.children, close=body.close, actor=actor)
    return _detail(hierarchy, box)


@router.post(
    "/containers/remove",
    response_model=ContainerDetail,
    responses=errors(400, 403, 409, 422),
    summary="Remove children from an open container; they stay loose with the reason",
    operation_id="remove_from_container",
)
async def remove(body: RemoveIn, request: Request, actor: CurrentActor) -> ContainerDetail:
    supervisor_only(request, actor, "container_remove", body.container)
    hierarchy = hierarchy_of(request)
    box = hierarchy.unpack(body.container, body.children, reason=body.reason, actor=actor)
    return _detail(hierarchy, box)


@router.post(
    "/containers/replace",
    response_model=ContainerDetail,
    responses=errors(400, 403, 409, 422),
    summary="Replace one child by another in an open container",
    operation_id="replace_in_container",
)
async def replace(body: ReplaceIn, request: Request, actor: CurrentActor) -> ContainerDetail:
    supervisor_only(request, actor, "container_replace", body.container)
    hierarchy = hierarchy_of(request)
    box = hierarchy.replace(body.container, body.old, body.new, reason=body.reason, actor=actor)
    return _detail(hierarchy, box)


@router.post(
    "/containers/close",
    response_model=ContainerDetail,
    responses=errors(400, 409, 422),
    summary="Close an open container (full, or partial where the plan allows)",
    operation_id="close_container",
)
async def close(body: ContainerIn, request: Request, actor: CurrentActor) -> ContainerDetail:
    hierarchy = hierarchy_of(request)
    return _detail(hierarchy, hierarchy.close_container(body.container, actor=actor))


@router.post(
    "/containers/relabel",
    response_model=ContainerDetail,
    responses=errors(400, 403, 409, 422),
    summary="A new identifier for a container; answers the new one (print its label)",
    operation_id="relabel_container",
)
async def relabel(body: ReasonIn, request: Request, actor: CurrentActor) -> ContainerDetail:
    supervisor_only(request, actor, "container_relabel", body.container)
    hierarchy = hierarchy_of(request)
    return _detail(hierarchy, hierarchy.relabel(body.container, reason=body.reason, actor=actor))


@router.post(
    "/containers/disaggregate",
    response_model=ContainerDetail,
    responses=errors(400, 403, 409, 422),
    summary="Empty a container for good; its children stay loose with the reason",
    operation_id="disaggregate_container",
)
async def disaggregate(body: ReasonIn, request: Request, actor: CurrentActor) -> ContainerDetail:
    supervisor_only(request, actor, "container_disaggregate", body.container)
    hierarchy = hierarchy_of(request)
    box = hierarchy.disaggregate(body.container, reason=body.reason, actor=actor)
    return _detail(hierarchy, box)


@router.post(
    "/containers/scrap",
    response_model=ContainerDetail,
    responses=errors(400, 403, 409, 422),
    summary="Scrap a reserved container whose label is bad: its identifier is never reused",
    operation_id="scrap_container",
)
async def scrap(body: ReasonIn, request: Request, actor: CurrentActor) -> ContainerDetail:
    supervisor_only(request, actor, "container_scrap", body.container)
    hierarchy = hierarchy_of(request)
    return _detail(hierarchy, hierarchy.scrap(body.container, reason=body.reason, actor=actor))


@router.post(
    "/units/sample",
    response_model=UnitOut,
    responses=errors(400, 403, 409, 422),
    summary="A unit taken for QA samples: out of its parent, ends sampled",
    operation_id="sample_unit",
)
async def sample(body: UnitIn, request: Request, actor: CurrentActor) -> UnitOut:
    supervisor_only(request, actor, "unit_sample", body.unit)
    unit = hierarchy_of(request).sample(body.unit, reason=body.reason or "qa_sample", actor=actor)
    return UnitOut.of(unit)


@router.post(
    "/units/destroy",
    response_model=UnitOut,
    responses=errors(400, 403, 409, 422),
    summary="A commissioned unit destroyed: out of its parent, ends destroyed",
    operation_id="destroy_unit",
)
async def destroy(body: UnitIn, request: Request, actor: CurrentActor) -> UnitOut:
    supervisor_only(request, actor, "unit_destroy", body.unit)
    if not body.reason:
        raise AggregationRefused(RefusalReason.REASON_MISSING, "destroying a unit needs a reason")
    return UnitOut.of(hierarchy_of(request).destroy(body.unit, reason=body.reason, actor=actor))


@router.get(
    "/orders/{order_id}/hierarchy",
    response_model=HierarchyOut,
    responses=errors(404, 422),
    summary="An order's hierarchy: balance, loose children with reasons, open containers",
    operation_id="order_hierarchy",
    tags=["orders"],
)
async def order_hierarchy(
    record: ExistingOrder, request: Request, services: Services
) -> HierarchyOut:
    hierarchy = hierarchy_of(request)
    conn = services.commands.conn
    report = hierarchy_report(conn, record.id)
    still_open = hierarchy.containers(
        record.id, states=[ContainerState.RESERVED, ContainerState.OPEN]
    )
    return HierarchyOut(
        order_id=record.id,
        loose=hierarchy.loose(record.id),
        open=[ContainerOut.of(b) for b in still_open],
        **report,
    )


def _detail(hierarchy: Hierarchy, box: Container) -> ContainerDetail:
    return ContainerDetail(
        **box.to_json(), child_epcs=hierarchy.children(box.epc), capacity=hierarchy.capacity(box)
    )


# --- the stations ------------------------------------------------------------------------------


class StationOut(BaseModel):
    running: bool = Field(..., description="Its devices are connected and it decides")
    capacity: int | None = None
    stats: dict[str, Any] | None = None


class CaseStationOut(StationOut):
    last_case: int | None = Field(None, description="Units announced for the next (last) case")


class PalletStationOut(StationOut):
    scanned: list[str] = Field(default_factory=list, description="Cases on the pallet being built")
    held: str | None = Field(None, description="Why it holds for a person, while it does")


class StationsOut(BaseModel):
    order_id: str | None = Field(..., description="The order the stations work on")
    case: CaseStationOut | None
    pallet: PalletStationOut | None
    bundle: CaseStationOut | None = Field(None, description="The bundle station, when configured")


class LastCaseIn(_In):
    count: int = Field(
        ..., ge=1, le=100_000, description="Units (or bundles) in the last, partial case or bundle"
    )


class PalletCloseOut(BaseModel):
    closed: ContainerOut | None = Field(None, description="The pallet closed, when it is")
    detail: str


PALLET_CLOSE_WAIT_S = 20.0  # still printing after this: 202, and it goes on (clients wait 30 s)


def _runner(request: Request) -> Any:
    runner = getattr(request.app.state.services, "stations", None)
    if runner is None:
        raise NotFound(
            "no aggregation stations run in this agent: add [aggregation.case_station] and/or "
            "[aggregation.pallet_station] to its config"
        )
    return runner


def _station(request: Request, name: str) -> Any:
    station = getattr(_runner(request), f"{name}_station")
    if station is None:
        raise CommandRefused(
            f"the {name} station is not running (no order for it, or its devices are down: "
            "GET /aggregation/stations, and the alarms)",
        )
    return station


@router.get(
    "/aggregation/stations",
    response_model=StationsOut,
    responses=errors(404),
    summary="The case and pallet stations: order, state, the pallet being built, a hold",
    operation_id="stations",
)
async def stations(request: Request, _: CurrentActor) -> StationsOut:
    runner = _runner(request)
    section = runner.section
    case = pallet = bundle = None
    if section.case_station is not None:
        case = _boxing_out(runner.case_station)
    if section.bundle_station is not None:
        bundle = _boxing_out(runner.bundle_station)
    if section.pallet_station is not None:
        p = runner.pallet_station
        pallet = PalletStationOut(running=p is not None)
        if p is not None:
            pallet = PalletStationOut(
                running=True,
                capacity=p.capacity,
                stats=p.stats.to_json(),
                scanned=[runner.hierarchy.container(epc).code for epc in p.scanned()],
                held=p.held,
            )
    return StationsOut(order_id=runner.order_id, case=case, pallet=pallet, bundle=bundle)


def _boxing_out(station: Any) -> CaseStationOut:
    """A case (or bundle) station's state."""
    if station is None:
        return CaseStationOut(running=False)
    return CaseStationOut(
        running=True,
        capacity=station.capacity,
        stats=station.stats.to_json(),
        last_case=station.expected_next,
    )


@router.post(
    "/aggregation/stations/case/last",
    response_model=CaseStationOut,
    responses=errors(400, 404, 409, 422),
    summary="Announce the last, partial case of the order: the next case holds count units",
    operation_id="last_case",
)
async def last_case(body: LastCaseIn, request: Request, actor: CurrentActor) -> CaseStationOut:
    return _expect(request, actor, "case", body.count)


@router.post(
    "/aggregation/stations/bundle/last",
    response_model=CaseStationOut,
    responses=errors(400, 404, 409, 422),
    summary="Announce the last, partial bundle of the order: the next bundle holds count units",
    operation_id="last_bundle",
)
async def last_bundle(body: LastCaseIn, request: Request, actor: CurrentActor) -> CaseStationOut:
    return _expect(request, actor, "bundle", body.count)


def _expect(request: Request, actor: Actor, name: str, count: int) -> CaseStationOut:
    station = _station(request, name)
    try:
        station.expect(count)
    except (ValueError, EdgeAgentError) as exc:
        raise CommandRefused(str(exc)) from None
    _audit(request, actor, f"station_last_{name}", station.order_id, {"count": count})
    return CaseStationOut(
        running=True, capacity=station.capacity, stats=station.stats.to_json(),
        last_case=station.expected_next,
    )  # fmt: skip


@router.post(
    "/aggregation/stations/pallet/close",
    response_model=PalletCloseOut,
    responses={
        **errors(400, 404, 409, 422),
        202: {"description": "Still closing (its label prints, or it holds)"},
    },
    summary="Close the pallet being built now (the last, partial one, where the plan allows)",
    operation_id="close_pallet",
)
async def close_pallet(request: Request, actor: CurrentActor) -> Any:
    from fastapi.responses import JSONResponse

    station = _station(request, "pallet")
    # A pallet closed now is short of its plan: a supervisor's decision, as on the screen
    supervisor_only(request, actor, "station_close_pallet", station.order_id or "")
    _audit(
        request, actor, "station_close_pallet", station.order_id, {"cases": len(station.scanned())}
    )
    closing = asyncio.ensure_future(station.close_pallet(partial=True))
    done, _ = await asyncio.wait([asyncio.shield(closing)], timeout=PALLET_CLOSE_WAIT_S)
    if not done:
        request.app.state.closing_pallet = closing  # kept: it goes on until it is closed
        detail = station.held or "the pallet label is still printing"
        body = PalletCloseOut(closed=None, detail=f"still closing: {detail}")
        return JSONResponse(body.model_dump(), status_code=202)
    try:
        box = closing.result()
    except EdgeAgentError as exc:
        raise CommandRefused(str(exc)) from None
    if box is None:
        return PalletCloseOut(closed=None, detail="no case is scanned onto the pallet")
    return PalletCloseOut(closed=ContainerOut.of(box), detail=f"pallet {box.code} closed")


@router.post(
    "/aggregation/stations/pallet/release",
    response_model=PalletStationOut,
    responses=errors(404, 409),
    summary="Clear the pallet station's hold after failed labels: it prints a new label",
    operation_id="release_pallet_station",
)
async def release_pallet_station(request: Request, actor: CurrentActor) -> PalletStationOut:
    station = _station(request, "pallet")
    if not station.release():
        raise CommandRefused("the pallet station does not hold")
    _audit(request, actor, "station_release_pallet", station.order_id, {})
    return PalletStationOut(running=True, capacity=station.capacity, held=None)


def _audit(
    request: Request, actor: Actor, action: str, order_id: str, detail: dict[str, Any]
) -> None:
    conn = request.app.state.services.commands.conn
    with write(conn):
        audit.append(conn, actor, action, order_id=order_id, detail=detail)
