"""Forwarder to an EPCIS 2.0 capture interface over HTTP(S) (see README.md next to this file).

``POST {url}/capture`` with an EPCISDocument answers ``202 Accepted`` and a ``Location`` naming a
capture job; the job is polled until it is no longer ``running``. An event is delivered only when
its job reports ``success`` (a 202 is a promise, not a delivery).

What an answer means for the events (never drop: only answers that blame the events themselves
dead-letter them; everything that may be the agent's or the network's fault is retried):

- job ``success: true`` → delivered;
- ``400``/``409``/``413``/``422`` on capture, or a job that finished with ``success: false`` →
  the document was refused. A document of several events is split in halves and each half sent
  again, so one bad event does not dead-letter its neighbours; a single refused event is rejected
  (dead letter) with the server's reason;
- ``401``/``403`` (credentials), ``404``/``405`` (wrong URL), ``408``, ``429``, other 4xx, 5xx,
  timeouts, connection and TLS errors, a lost job → :class:`DeliveryError` (the forwarder loop
  backs off, honouring ``Retry-After``).

Documents are captured with ``GS1-Capture-Error-Behaviour: rollback``: a failed job captured
nothing, so re-sending a half never half-duplicates a document.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Sequence
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal, Self

import aiohttp
import structlog
from pydantic import BaseModel, ConfigDict, Field
from yarl import URL

from edge_agent import epcis, tls
from edge_agent.config.models import SecretRef
from edge_agent.contracts import Delivery, LineContext, OutboxEvent
from edge_agent.errors import ConfigError, DeliveryError
from edge_agent.supervisor import Backoff

log = structlog.get_logger(__name__)

# Refusals of the document's content: the same bytes will be refused again.
_REFUSED = frozenset({400, 409, 413, 422})
_MEDIA_TYPE = "application/ld+json"
_MAX_POLL_S = 5.0  # longest wait between two polls of a capture job


class _Refused(Exception):
    def __init__(self, reason: str, *, too_large: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.too_large = too_large


class HttpCaptureForwarder:
    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        type: Literal["epcis-http"] = Field(description='Forwarder selector; always "epcis-http".')
        name: str | None = Field(
            None, min_length=1, max_length=40, description="Forwarder name; defaults to the type."
        )
        url: str = Field(
            min_length=8,
            max_length=2000,
            pattern=r"^https?://[^\s]+$",
            description="Base URL of the EPCIS 2.0 REST interface; documents go to {url}/capture.",
        )
        token: SecretRef | None = Field(
            None, description="Bearer token for the Authorization header, by reference."
        )
        ca_file: Path | None = Field(
            None, description="PEM file of CA certificates to trust (default: the system's)."
        )
        client_cert: Path | None = Field(
            None, description="PEM client certificate for mutual TLS (key inside or in client_key)."
        )
        client_key: Path | None = Field(None, description="PEM private key of client_cert.")
        max_events_per_document: int = Field(
            500, ge=1, le=10_000, description="Events per EPCISDocument (one capture job each)."
        )
        request_timeout_s: float = Field(
            30.0, gt=0, le=600, allow_inf_nan=False, description="Limit for one HTTP request."
        )
        poll_interval_s: float = Field(
            0.2,
            gt=0,
            le=60,
            allow_inf_nan=False,
            description="First wait before polling a capture job; doubles up to 5 s.",
        )
        job_timeout_s: float = Field(
            120.0,
            gt=0,
            le=3600,
            allow_inf_nan=False,
            description="A job still running after this is a transient failure; its events are "
            "sent again later (the receiver de-duplicates by eventID).",
        )

    def __init__(
        self,
        name: str,
        config: HttpCaptureForwarder.Config,
        *,
        context: LineContext | None = None,  # contracts.ForwarderFactory; names nothing here
    ) -> None:
        self.name = name
        self.config = config
        self._base = URL(config.url.rstrip("/"))
        self._session: aiohttp.ClientSession | None = None
        # Learned from 413 answers (the server's capture limit), kept while the object lives.
        self._document_limit = config.max_events_per_document
        self._headers: dict[str, str] = {}

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._headers = {
            "Content-Type": _MEDIA_TYPE,
            "Accept": "application/json, application/ld+json",
            "GS1-EPCIS-Version": "2.0.0",
            "GS1-CBV-Version": "2.0.0",
            "GS1-Capture-Error-Behaviour": "rollback",
        }
        try:
            self._load_token()
            ssl_context = self._ssl_context()
        except ConfigError as exc:  # logged once by the forwarder loop, which retries
            raise DeliveryError(f"{exc.key}: {exc.detail}", upstream=self.name) from exc
        connector = aiohttp.TCPConnector(ssl=ssl_context, limit=4)
        timeout = aiohttp.ClientTimeout(total=self.config.request_timeout_s)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self

    async def preflight(self) -> None:
        """The token and TLS files, read as ``async with`` reads them (``contracts.Preflight``)."""
        self._load_token()
        if self._base.scheme == "https":
            self._tls(self.config)

    def _load_token(self) -> bool:
        """(Re)read the token; True when it changed (a rotated token file, a new variable)."""
        if self.config.token is None:
            return False
        token = self.config.token.resolve_for("token")
        header = f"Bearer {token}"
        changed = self._headers.get("Authorization") != header
        self._headers["Authorization"] = header
        return changed

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _ssl_context(self) -> ssl.SSLContext | bool:
        if self._base.scheme == "https":
            return self._tls(self.config)
        if self.config.token is not None:
            log.warning("upstream.token_in_clear", forwarder=self.name, url=str(self._base))
        return True

    def _tls(self, cfg: HttpCaptureForwarder.Config) -> ssl.SSLContext:
        return tls.client_context(
            ca_file=cfg.ca_file,
            cert_file=cfg.client_cert,
            key_file=cfg.client_key,
            keys=("ca_file", "client_cert", "client_key"),
        )

    # --- delivery ----------------------------------------------------------------------------

    async def deliver(self, events: Sequence[OutboxEvent]) -> Delivery:
        """Capture ``events`` in order, one document per ``max_events_per_document`` (or fewer
        once a ``413`` taught us the server's capture limit).

        If a transient failure comes after some documents succeeded, the progress is returned
        (the rest stays pending); with no progress at all the failure is raised."""
        done = Delivery()
        try:
            await self._capture_splitting(list(events), done)
        except DeliveryError:
            if done.delivered or done.rejected:
                log.warning("upstream.partial", forwarder=self.name, delivered=len(done.delivered))
                return done
            raise
        return done

    async def _capture_splitting(self, events: list[OutboxEvent], done: Delivery) -> None:
        if not events:
            return
        while len(events) > self._document_limit:  # the limit was learned meanwhile
            size = self._document_limit
            await self._capture_splitting(events[:size], done)
            events = events[size:]
        try:
            await self._capture(events)
        except _Refused as refused:
            if len(events) == 1:
                event = events[0]
                log.error(
                    "upstream.rejected",
                    forwarder=self.name,
                    event_id=event.event_id,
                    batch=event.batch_id,
                    reason=refused.reason,
                )
                done.rejected[event.event_id] = refused.reason
                return
            # Find the refused events: halves in order keep per-batch order for the rest.
            half = len(events) // 2
            if refused.too_large and half < self._document_limit:
                log.warning("upstream.capture_limit", forwarder=self.name, events=half)
                self._document_limit = half
            await self._capture_splitting(events[:half], done)
            await self._capture_splitting(events[half:], done)
            return
        done.delivered.extend(event.event_id for event in events)

    async def _capture(self, events: list[OutboxEvent]) -> None:
        body = json.dumps(
            epcis.document_from_payloads(event.payload for event in events),
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()
        job_url = await self._post(body, len(events))
        await self._await_job(job_url)

    async def _post(self, body: bytes, count: int) -> URL:
        url = self._base / "capture"
        async with self._request("POST", url, data=body) as response:
            if response.status in (200, 201, 202):
                location = response.headers.get("Location")
                if not location:
                    # Accepted without a job to watch: cannot prove delivery, so it is not one.
                    raise self._error(f"capture answered {response.status} without a Location")
                log.debug("upstream.captured", forwarder=self.name, events=count, job=location)
                return url.join(URL(location))
            await self._raise_for(response, "capture")
        raise AssertionError("unreachable")

    async def _await_job(self, job_url: URL) -> None:
        """Poll the capture job until it is done, the waits growing as the supervisor's backoff
        does (``poll_interval_s`` doubling up to 5 s, jittered), within ``job_timeout_s``."""
        deadline = time.monotonic() + self.config.job_timeout_s
        first = self.config.poll_interval_s
        polls = Backoff(first, max(first, _MAX_POLL_S))
        wait = polls.next_delay()
        while True:
            await asyncio.sleep(wait)
            job = await self._poll(job_url)
            if job is not None and job.get("running") is not True:
                success = job.get("success")
                if success is True:
                    return
                if success is False:
                    raise _Refused(_job_errors(job))
                # Only a job that says it failed may dead-letter events; anything else is doubt.
                raise self._error(f"capture job {job_url}: neither running nor a success flag")
            wait = polls.next_delay()
            if time.monotonic() + wait > deadline:
                raise self._error(f"capture job {job_url} still running after the job timeout")

    async def _poll(self, job_url: URL) -> dict[str, Any] | None:
        """The job resource, or None when the server answered a transient 5xx (poll again)."""
        async with self._request("GET", job_url) as response:
            if response.status == 200:
                try:
                    job = await response.json(content_type=None)
                except (ValueError, aiohttp.ClientError, TimeoutError) as exc:
                    raise self._error(f"capture job {job_url}: unreadable answer") from exc
                if not isinstance(job, dict):
                    raise self._error(f"capture job {job_url}: answer is not a JSON object")
                return job
            if response.status >= 500:
                return None
            # A job the server no longer knows: its outcome is unknown, so send again later.
            raise self._error(f"capture job {job_url} answered {response.status}")

    def _request(self, method: str, url: URL, data: bytes | None = None) -> _Call:
        if self._session is None:
            raise self._error("not started (use 'async with')")
        return _Call(self, self._session.request(method, url, data=data, headers=self._headers))

    async def _raise_for(self, response: aiohttp.ClientResponse, what: str) -> None:
        detail = await _problem(response)
        status = response.status
        if status in _REFUSED:
            raise _Refused(f"{what} refused with {status}: {detail}", too_large=status == 413)
        hint = {
            401: "check the token",
            403: "check the token's permissions",
            404: "check the url",
            405: "check the url",
        }.get(status, "")
        if status == 401 and self._reload_token():
            hint = "the token was re-read; retrying with the new one"
        retry_after = _retry_after(response.headers.get("Retry-After"))
        message = f"{what} answered {status}: {detail}" + (f" ({hint})" if hint else "")
        raise self._error(message, retry_after)

    def _reload_token(self) -> bool:
        try:
            return self._load_token()
        except ConfigError as exc:
            log.error("upstream.token_unreadable", forwarder=self.name, error=str(exc))
            return False

    def _error(self, message: str, retry_after_s: float | None = None) -> DeliveryError:
        return DeliveryError(message, upstream=self.name, retry_after_s=retry_after_s)


class _Call:
    """``async with`` around one request that maps transport failures to DeliveryError once."""

    def __init__(self, owner: HttpCaptureForwarder, request: Any) -> None:
        self._owner = owner
        self._request = request
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        try:
            self._response = await self._request
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._owner._error(f"{type(exc).__name__}: {exc}") from exc
        return self._response

    async def __aexit__(self, *exc: object) -> None:
        if self._response is not None:
            self._response.release()


async def _problem(response: aiohttp.ClientResponse) -> str:
    """A short reason from an RFC 7807 problem body (what EPCIS 2.0 servers answer) or text."""
    try:
        text = (await response.text())[:2000]
    except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
        return response.reason or "no detail"
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:300] or (response.reason or "no detail")
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("title", "detail", "type") if body.get(k)]
        if parts:
            return "; ".join(parts)[:300]
    return text.strip()[:300]


def _job_errors(job: dict[str, Any]) -> str:
    errors = job.get("errors")
    if isinstance(errors, dict):
        errors = [errors]
    if isinstance(errors, list) and errors:
        parts = []
        for error in errors[:3]:
            if isinstance(error, dict):
                parts.append("; ".join(str(error[k]) for k in ("title", "detail") if error.get(k)))
            else:
                parts.append(str(error))
        return "capture job failed: " + " | ".join(p for p in parts if p)[:300]
    return "capture job failed without errors"


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())
