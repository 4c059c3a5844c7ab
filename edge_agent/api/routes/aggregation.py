"""Aggregation: containers (bundles, cases, pallets) and manual rework, as the operator screen
and ``edge-agent case`` use them.

A container is named by what its label carries, given in the body or the query (never in the
path, where a serial's ``/`` would be taken apart): the 18 SSCC digits, the GS1 element string
as scanned or bracketed (``(00)...``, ``(01)...(21)...``), or its EPC URI. Every change is one
transaction of the hierarchy with its EPCIS events and an audit row naming the caller; a refused
one changes nothing, is audited as refused and answers 409 with the rule (``problems[0].key``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from edge_agent.aggregation.balance import hierarchy_report
from edge_agent.aggregation.hierarchy import Container, ContainerState, Hierarchy, Item
from edge_agent.api.deps import CurrentActor, ExistingOrder, Services, errors
from edge_agent.api.errors import NotFound
from edge_agent.errors import AggregationRefused, RefusalReason

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
    responses=errors(400, 409, 422),
    summary="Open a closed container again for rework (its label scanned)",
    operation_id="reopen_container",
)
async def reopen(body: ContainerIn, request: Request, actor: CurrentActor) -> ContainerDetail:
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
    responses=errors(400, 409, 422),
    summary="Remove children from an open container; they stay loose with the reason",
    operation_id="remove_from_container",
)
async def remove(body: RemoveIn, request: Request, actor: CurrentActor) -> ContainerDetail:
    hierarchy = hierarchy_of(request)
    box = hierarchy.unpack(body.container, body.children, reason=body.reason, actor=actor)
    return _detail(hierarchy, box)


@router.post(
    "/containers/replace",
    response_model=ContainerDetail,
    responses=errors(400, 409, 422),
    summary="Replace one child by another in an open container",
    operation_id="replace_in_container",
)
async def replace(body: ReplaceIn, request: Request, actor: CurrentActor) -> ContainerDetail:
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
    responses=errors(400, 409, 422),
    summary="A new identifier for a container; answers the new one (print its label)",
    operation_id="relabel_container",
)
async def relabel(body: ReasonIn, request: Request, actor: CurrentActor) -> ContainerDetail:
    hierarchy = hierarchy_of(request)
    return _detail(hierarchy, hierarchy.relabel(body.container, reason=body.reason, actor=actor))


@router.post(
    "/containers/disaggregate",
    response_model=ContainerDetail,
    responses=errors(400, 409, 422),
    summary="Empty a container for good; its children stay loose with the reason",
    operation_id="disaggregate_container",
)
async def disaggregate(body: ReasonIn, request: Request, actor: CurrentActor) -> ContainerDetail:
    hierarchy = hierarchy_of(request)
    box = hierarchy.disaggregate(body.container, reason=body.reason, actor=actor)
    return _detail(hierarchy, box)


@router.post(
    "/containers/scrap",
    response_model=ContainerDetail,
    responses=errors(400, 409, 422),
    summary="Scrap a reserved container whose label is bad: its identifier is never reused",
    operation_id="scrap_container",
)
async def scrap(body: ReasonIn, request: Request, actor: CurrentActor) -> ContainerDetail:
    hierarchy = hierarchy_of(request)
    return _detail(hierarchy, hierarchy.scrap(body.container, reason=body.reason, actor=actor))


@router.post(
    "/units/sample",
    response_model=UnitOut,
    responses=errors(400, 409, 422),
    summary="A unit taken for QA samples: out of its parent, ends sampled",
    operation_id="sample_unit",
)
async def sample(body: UnitIn, request: Request, actor: CurrentActor) -> UnitOut:
    unit = hierarchy_of(request).sample(body.unit, reason=body.reason or "qa_sample", actor=actor)
    return UnitOut.of(unit)


@router.post(
    "/units/destroy",
    response_model=UnitOut,
    responses=errors(400, 409, 422),
    summary="A commissioned unit destroyed: out of its parent, ends destroyed",
    operation_id="destroy_unit",
)
async def destroy(body: UnitIn, request: Request, actor: CurrentActor) -> UnitOut:
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
