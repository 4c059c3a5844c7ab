"""The L3 site server's HTTP interface (aiohttp server), the protocol of ``drivers/l3/http.py``:
``GET /orders``, ``POST /orders/{id}/ack``, ``POST /serials/requests``, ``POST /returns``,
``/reports``, ``/refusals``. It can fail (503), be slow, lose answers and go away (the port
closes) and come back on the same port."""

from __future__ import annotations

import asyncio
import ssl
from http import HTTPStatus
from typing import Any

from aiohttp import web

from drivers.l3 import wire
from simulators.l3.site import L3Site


class L3HttpServer:
    def __init__(
        self,
        site: L3Site,
        *,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.site = site
        self.token = token
        self.ssl_context = ssl_context
        self.host = "127.0.0.1"
        self.port = 0
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.idempotency_keys: list[str | None] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/orders", self._orders)
        app.router.add_post("/orders/{order_id}/ack", self._ack)
        app.router.add_post("/serials/requests", self._serials)
        for kind, path in wire.HTTP_PATHS.items():
            app.router.add_post(f"/{path}", self._message_handler(kind))
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, ssl_context=self.ssl_context).start()
        self.host, self.port = self._runner.addresses[0][:2]

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # --- handlers ----------------------------------------------------------------------------

    async def _answer(self, request: web.Request, response: web.Response) -> web.Response:
        if self.site.faults.delay_s:
            await asyncio.sleep(self.site.faults.delay_s)
        self.requests.append((request.method, request.path, response.status))
        return response

    def _refused(self, request: web.Request) -> web.Response | None:
        if self.token is not None and request.headers.get("Authorization") != (
            f"Bearer {self.token}"
        ):
            return _problem(401, "bad or no token")
        return None

    def _unavailable(self) -> web.Response:
        response = _problem(503, "simulated failure")
        if self.site.faults.retry_after_s is not None:
            response.headers["Retry-After"] = str(self.site.faults.retry_after_s)
        return response

    async def _orders(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return await self._answer(request, refused)
        if self.site.take_fault("fail_orders"):
            return await self._answer(request, self._unavailable())
        body = {"orders": self.site.pending_orders()}
        return await self._answer(request, web.json_response(body))

    async def _ack(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return await self._answer(request, refused)
        if not self.site.acknowledge_order(request.match_info["order_id"]):
            return await self._answer(request, _problem(404, "no such order pending"))
        return await self._answer(request, web.Response(status=204))

    async def _serials(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return await self._answer(request, refused)
        self.idempotency_keys.append(request.headers.get("Idempotency-Key"))
        if self.site.take_fault("fail_requests"):
            return await self._answer(request, self._unavailable())
        try:
            wanted = wire.parse_serial_request(wire.decode(await request.read()))
        except wire.WireError as exc:
            return await self._answer(request, _problem(400, str(exc)))
        page = self.site.serve(wanted)
        if self.site.take_fault("lose_answers"):
            return await self._lose(request)
        if self.site.take_fault("garbage_answers"):
            return await self._answer(request, web.Response(text="<html>proxy error</html>"))
        return await self._answer(request, web.json_response(wire.page_document(page)))

    def _message_handler(self, kind: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            if (refused := self._refused(request)) is not None:
                return await self._answer(request, refused)
            self.idempotency_keys.append(request.headers.get("Idempotency-Key"))
            if self.site.take_fault("fail_messages"):
                return await self._answer(request, self._unavailable())
            try:
                document = wire.parse_message(wire.decode(await request.read()))
            except wire.WireError as exc:
                return await self._answer(request, _problem(400, str(exc)))
            if document["kind"] != kind:
                return await self._answer(request, _problem(400, f"this path takes {kind}"))
            fresh = self.site.receive(document)
            if self.site.take_fault("lose_message_answers"):
                return await self._lose(request)
            body = {"message_id": document["message_id"], "status": "ok", "duplicate": not fresh}
            return await self._answer(request, web.json_response(body))

        return handle

    async def _lose(self, request: web.Request) -> web.Response:
        """Served, but the answer never reaches the agent: the connection is cut."""
        self.requests.append((request.method, request.path, 0))
        transport = request.transport
        if transport is not None:
            transport.abort()
        return web.Response(status=204)  # never written: the connection is gone


def _problem(status: int, detail: str) -> web.Response:
    body = {"title": HTTPStatus(status).phrase, "status": status, "detail": detail}
    return web.json_response(body, status=status, content_type="application/problem+json")
