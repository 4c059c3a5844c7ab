"""The REST API application: routers, error mapping, authentication, the OpenAPI document.

Every route is ``async def`` and runs on the agent's event loop, where the state database
connection lives; every change to an order goes through the command path.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from edge_agent.api import errors
from edge_agent.api.auth import Authenticator
from edge_agent.api.deps import ApiServices, CurrentActor
from edge_agent.api.routes import aggregation, audit, line, orders
from edge_agent.api.schemas import ErrorOut
from edge_agent.monitoring.health import Health, health
from edge_agent.monitoring.metrics import CONTENT_TYPE, Metrics
from edge_agent.monitoring.sources import MonitoringSources
from edge_agent.orders.model import WorkOrder

if TYPE_CHECKING:
    from edge_agent.hmi.settings import HmiSettings

TITLE = "Serialization line edge agent"


def create_app(
    services: ApiServices,
    authenticators: Sequence[Authenticator],
    *,
    monitoring: MonitoringSources | None = None,
    metrics_public: bool = True,
    hmi: HmiSettings | None = None,
) -> FastAPI:
    """``monitoring``: what /metrics and /health read (by default the services' own objects);
    ``metrics_public``: /metrics without a token (it holds counts and states, never a secret);
    ``hmi``: the operator screen's settings (served under /hmi), None for no screen."""
    app = FastAPI(
        title=TITLE,
        version=_version(),
        description="Work orders, line state, alarms, close reports and the audit trail of one "
        "packaging line. Every request but /health and /metrics needs "
        "'Authorization: Bearer <token>'.",
        docs_url=None,  # the interactive docs load their scripts from a CDN: not on a line PC
        redoc_url=None,
        separate_input_output_schemas=False,
    )
    app.state.services = services
    # Set by ApiServer when it stops: long-lived answers (the screen's live stream) end then,
    # instead of holding the shutdown until its timeout.
    app.state.stopping = asyncio.Event()
    app.state.authenticators = list(authenticators)
    errors.install(app)
    app.include_router(orders.router)
    app.include_router(line.router)
    app.include_router(audit.router)
    app.include_router(aggregation.router)
    sources = monitoring or MonitoringSources(
        conn=services.commands.conn, line=services.line, alarms=services.alarms
    )
    if sources.version == "0":
        sources = dataclasses.replace(sources, version=app.version)
    _monitoring(app, sources, metrics_public)
    if hmi is not None:
        from edge_agent.hmi import install

        install(app, hmi)
    _document_bodies(app)
    return app


def _monitoring(app: FastAPI, sources: MonitoringSources, public: bool) -> None:
    metrics = Metrics(sources)
    app.state.metrics = metrics

    @app.get(
        "/health",
        response_model=Health,
        responses={503: {"model": Health, "description": "The agent cannot keep records"}},
        tags=["health"],
        summary="Health for monitoring (no token needed); 503 when failing",
        operation_id="health",
    )
    async def health_check() -> JSONResponse:
        found = health(sources)
        return JSONResponse(found.model_dump(mode="json"), status_code=found.http_status)

    async def exposition() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    if public:

        @app.get("/metrics", include_in_schema=False)
        async def metrics_public() -> Response:
            return await exposition()

    else:

        @app.get("/metrics", include_in_schema=False)
        async def metrics_with_token(request: Request, _: CurrentActor) -> Response:
            return await exposition()


def _document_bodies(app: FastAPI) -> None:
    """POST /orders reads its body itself (so a bad order is refused by the command path, with
    every problem, and audited); the document still names WorkOrder as its body schema. Error
    answers refer to ErrorOut by reference (also on routes that answer HTML otherwise)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (WorkOrder, ErrorOut):
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, part in {**body.pop("$defs", {}), model.__name__: body}.items():
                    if components.get(name, part) != part:
                        raise RuntimeError(f"two schemas named {name} in the OpenAPI document")
                    components[name] = part
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def _version() -> str:
    try:
        return version("serialization-edge-agent")
    except PackageNotFoundError:
        return "0"
