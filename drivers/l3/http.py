"""L3 link over HTTP(S) (aiohttp client). The exchange, relative to ``url``:

- ``GET /orders`` → ``{"orders": [order, ...]}``: the orders L3 holds for this line that the
  agent has not acknowledged yet. Each is acknowledged with ``POST /orders/{id}/ack`` once the
  agent has stored it or queued its refusal (so an order is never lost between the two);
- ``POST /serials/requests`` with ``{"request_id", "order_id", "gtin", "count"}`` and the header
  ``Idempotency-Key: <request_id>`` → ``200`` with the page. The same request id must always
  get the same page;
- ``POST /returns``, ``/reports``, ``/refusals`` with the message envelope and
  ``Idempotency-Key: <message_id>`` → any ``2xx`` acknowledges it.

Every other answer (4xx, 5xx, an unreadable body, a timeout, a TLS or connection error) is a
``DeliveryError``: the service retries with backoff and the same ids (``Retry-After`` honoured).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import quote

import aiohttp
import structlog
from pydantic import Field
from yarl import URL

from drivers.l3 import wire
from drivers.upstream.http_capture import _problem, _retry_after
from edge_agent.config.models import L3Section, SecretRef
from edge_agent.contracts import L3Message, LineContext, SerialPage
from edge_agent.errors import ConfigError, DeliveryError

log = structlog.get_logger("drivers.l3.http")


class HttpL3Config(L3Section):
    """``[l3]`` with ``type = "http"``."""

    type: Literal["http"] = Field(description="L3 link over HTTP(S)")
    url: str = Field(
        min_length=8,
        max_length=2000,
        pattern=r"^https?://[^\s]+$",
        description="Base URL of this line's L3 interface (orders, serials, returns below it)",
    )
    token: SecretRef | None = Field(None, description="Bearer token, by reference (env or file)")
    ca_file: Path | None = Field(None, description="PEM CA bundle to trust instead of the system's")
    client_cert: Path | None = Field(None, description="PEM client certificate for mutual TLS")
    client_key: Path | None = Field(None, description="PEM private key of client_cert")


class HttpL3Link:
    Config = HttpL3Config

    def __init__(
        self,
        config: HttpL3Config,
        *,
        context: LineContext | None = None,
        site: str = "",
        line: str = "",
    ) -> None:
        if context is not None:  # the core's way (contracts.L3LinkFactory); site/line: older
            site, line = context.site, context.line
        self.config = config
        self.name = config.name
        self.site, self.line = site, line
        self._base = URL(config.url.rstrip("/"))
        self._session: aiohttp.ClientSession | None = None
        self._headers: dict[str, str] = {"Accept": wire.CONTENT_TYPE}

    async def __aenter__(self) -> Self:
        self._load_token()
        timeout = aiohttp.ClientTimeout(total=self.config.request_timeout_s)
        connector = aiohttp.TCPConnector(ssl=self._ssl())
        self._session = aiohttp.ClientSession(timeout=timeout, connector=connector)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- the contract -------------------------------------------------------------------------

    async def orders(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            body = await self._call("GET", self._base / "orders", what="orders")
            try:
                documents = wire.parse_order_list(body)
            except wire.WireError as exc:
                raise self._error(str(exc)) from exc
            unacknowledged = False
            for document in documents:
                yield document
                # The agent asks for the next one only after it handled this one: acknowledge.
                order_id = document.get("id") if isinstance(document, dict) else None
                if isinstance(order_id, str) and order_id:
                    await self._ack(order_id)
                else:
                    unacknowledged = True  # L3 will offer it again: wait before asking
            if not documents or unacknowledged:
                await asyncio.sleep(self.config.poll_interval_s)

    async def request_serials(
        self, order_id: str, gtin: str, count: int, request_id: str
    ) -> SerialPage:
        body = await self._call(
            "POST",
            self._base / "serials" / "requests",
            what=f"serial request {request_id}",
            json=wire.serial_request(order_id, gtin, count, request_id),
            key=request_id,
        )
        try:
            return wire.parse_page(body)
        except wire.WireError as exc:
            raise self._error(f"serial request {request_id}: {exc}") from exc

    async def deliver(self, message: L3Message) -> None:
        path = wire.HTTP_PATHS[message.kind]
        await self._call(
            "POST",
            self._base / path,
            what=f"{message.kind} {message.id}",
            json=wire.message_document(message),
            key=message.id,
            expect_body=False,
        )

    # --- internals ----------------------------------------------------------------------------

    async def _ack(self, order_id: str) -> None:
        url = URL(f"{self._base}/orders/{quote(order_id, safe='')}/ack", encoded=True)
        try:
            await self._call("POST", url, what=f"order {order_id} ack", json={}, expect_body=False)
        except _NotFound:
            log.warning("l3_ack_unknown_order", link=self.name, order=order_id)

    async def _call(
        self,
        method: str,
        url: URL,
        *,
        what: str,
        json: Any = None,
        key: str | None = None,
        expect_body: bool = True,
    ) -> Any:
        if self._session is None:
            raise self._error(f"{what}: not started (use 'async with')")
        headers = dict(self._headers)
        if key is not None:
            headers["Idempotency-Key"] = key
        data = None if json is None else wire.encode(json)
        if data is not None:
            headers["Content-Type"] = wire.CONTENT_TYPE
        try:
            async with self._session.request(method, url, data=data, headers=headers) as answer:
                if 200 <= answer.status < 300:
                    if not expect_body:
                        return None
                    return wire.decode(await answer.read())
                await self._raise_for(answer, what)
        except wire.WireError as exc:
            raise self._error(f"{what}: answer {exc}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._error(f"{what}: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")

    async def _raise_for(self, answer: aiohttp.ClientResponse, what: str) -> None:
        detail = await _problem(answer)
        if answer.status == 404 and what.endswith(" ack"):
            raise _NotFound
        hint = {401: "check the token", 403: "check the token's permissions", 404: "check the url"}
        note = hint.get(answer.status, "")
        if answer.status == 401 and self._reload_token():
            note = "the token was re-read; retrying with the new one"
        message = f"{what} answered {answer.status}: {detail}" + (f" ({note})" if note else "")
        raise self._error(message, _retry_after(answer.headers.get("Retry-After")))

    def _load_token(self) -> bool:
        if self.config.token is None:
            return False
        try:
            token = self.config.token.resolve().get_secret_value()
        except (ValueError, OSError) as exc:
            raise ConfigError(f"token: {exc}", key="l3.token") from exc
        header = f"Bearer {token}"
        changed = self._headers.get("Authorization") != header
        self._headers["Authorization"] = header
        return changed

    def _reload_token(self) -> bool:
        try:
            return self._load_token()
        except ConfigError as exc:
            log.error("l3_token_unreadable", link=self.name, error=str(exc))
            return False

    def _ssl(self) -> ssl.SSLContext | bool:
        cfg = self.config
        if self._base.scheme != "https":
            if cfg.token is not None:
                log.warning("l3_token_in_clear", link=self.name, url=str(self._base))
            return True
        try:
            context = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
            if cfg.client_cert is not None:
                key = str(cfg.client_key) if cfg.client_key else None
                context.load_cert_chain(str(cfg.client_cert), key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TLS files: {exc}", key="l3.ca_file/client_cert") from exc
        return context

    def _error(self, message: str, retry_after_s: float | None = None) -> DeliveryError:
        return DeliveryError(message, upstream=self.name, retry_after_s=retry_after_s)


class _NotFound(Exception):
    """An acknowledgement of an order L3 does not know (any more): nothing left to do."""
