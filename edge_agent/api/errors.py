"""Errors mapped to HTTP answers in one place: each answer is an ``ErrorOut`` with a stable code.

OrderInvalid → 422 with every problem; CommandRefused (and other order errors) → 409;
AggregationRefused → 409 with the rule as the problem's key; an unknown order or alarm → 404;
no or a wrong token → 401; a token whose role may not → 403; anything unexpected → 500 with a
reference to the log line, never a traceback or a secret.
"""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge_agent.api.auth import Forbidden, Unauthorized
from edge_agent.api.schemas import ErrorOut, Problem
from edge_agent.errors import AggregationRefused, EdgeAgentError, OrderError, OrderInvalid

log = structlog.get_logger("edge_agent.api")


class NotFound(EdgeAgentError):
    """The order, alarm or report a request names does not exist."""


class TooLarge(EdgeAgentError):
    """A request body over the limit."""


def error_response(
    status: int,
    code: str,
    message: str,
    problems: list[Problem] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorOut(error=code, message=message, problems=problems or [])
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(OrderInvalid, _order_invalid)
    app.add_exception_handler(OrderError, _order_error)
    app.add_exception_handler(AggregationRefused, _aggregation_refused)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(TooLarge, _too_large)
    app.add_exception_handler(Unauthorized, _unauthorized)
    app.add_exception_handler(Forbidden, _forbidden)
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(EdgeAgentError, _agent_error)
    app.add_middleware(InternalErrors)


async def _order_invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OrderInvalid)
    problems = [Problem(key=key, message=message) for key, message in exc.problems]
    return error_response(422, "order_invalid", str(exc), problems)


async def _order_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(409, "command_refused", str(exc))


async def _aggregation_refused(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AggregationRefused)
    problem = Problem(key=str(exc.reason), message=str(exc))  # key: the rule that refused it
    return error_response(409, "aggregation_refused", str(exc), [problem])


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return error_response(404, "not_found", str(exc))


async def _too_large(request: Request, exc: Exception) -> JSONResponse:
    return error_response(413, "too_large", str(exc))


async def _unauthorized(request: Request, exc: Exception) -> JSONResponse:
    return error_response(
        401,
        "unauthorized",
        "give a valid token: 'Authorization: Bearer <token>' (see [[api.tokens]])",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def _forbidden(request: Request, exc: Exception) -> JSONResponse:
    return error_response(403, "forbidden", str(exc))


async def _request_invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        Problem(key=_key(e.get("loc", ())), message=str(e.get("msg"))) for e in exc.errors()
    ]
    lines = "; ".join(f"{p.key}: {p.message}" for p in problems)
    return error_response(422, "request_invalid", f"the request is not valid: {lines}", problems)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 405:
        # Starlette names the methods of the first route matching the path only; a path served
        # by several routes (GET and POST /orders) allows the methods of all of them.
        headers["Allow"] = ", ".join(_methods_at(request))
    code = "request_invalid" if exc.status_code == 400 else "http_error"
    return error_response(exc.status_code, code, str(exc.detail), headers=headers or None)


def _methods_at(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


async def _agent_error(request: Request, exc: Exception) -> JSONResponse:
    # Messages of the agent's own errors are written for people and never hold a secret.
    ref = _log_failure(request.scope, exc)
    return error_response(500, "internal_error", f"{exc} (log reference {ref})")


class InternalErrors:
    """Anything no handler took: logged with its traceback, answered with a bare 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            ref = _log_failure(scope, exc)
            if started:
                return  # the answer is half sent; the client sees the connection close
            response = error_response(
                500,
                "internal_error",
                f"internal error; the agent's log has the details (log reference {ref})",
            )
            await response(scope, receive, send)


def _log_failure(scope: Scope, exc: BaseException) -> str:
    ref = uuid.uuid4().hex[:12]
    log.error(
        "api_request_failed",
        ref=ref,
        method=scope.get("method"),
        path=scope.get("path"),
        exc_info=exc,
    )
    return ref


def _key(loc: Any) -> str:
    parts = [str(p) for p in loc if p != "body"] if isinstance(loc, (list, tuple)) else [str(loc)]
    return ".".join(parts) or "(body)"
