"""The REST API application: routers, error mapping, authentication, the OpenAPI document.

Every route is ``async def`` and runs on the agent's event loop, where the state database
connection lives; every change to an order goes through the command path.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI

from edge_agent.api import errors
from edge_agent.api.auth import Authenticator
from edge_agent.api.deps import ApiServices
from edge_agent.api.routes import aggregation, audit, line, orders
from edge_agent.api.schemas import ErrorOut, HealthOut
from edge_agent.orders.model import WorkOrder

TITLE = "Serialization line edge agent"


def create_app(services: ApiServices, authenticators: Sequence[Authenticator]) -> FastAPI:
    app = FastAPI(
        title=TITLE,
        version=_version(),
        description="Work orders, line state, alarms, close reports and the audit trail of one "
        "packaging line. Every request but /health needs 'Authorization: Bearer <token>'.",
        docs_url=None,  # the interactive docs load their scripts from a CDN: not on a line PC
        redoc_url=None,
        separate_input_output_schemas=False,
    )
    app.state.services = services
    app.state.authenticators = list(authenticators)
    errors.install(app)
    app.include_router(orders.router)
    app.include_router(line.router)
    app.include_router(audit.router)
    app.include_router(aggregation.router)

    @app.get(
        "/health",
        response_model=HealthOut,
        tags=["health"],
        summary="Liveness (no token needed)",
        operation_id="health",
    )
    async def health() -> HealthOut:
        return HealthOut(version=app.version)

    _document_bodies(app)
    return app


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
