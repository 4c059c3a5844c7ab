"""A simulated EPCIS 2.0 capture interface: a real aiohttp web server on loopback.

``POST /capture`` takes an EPCISDocument, checks its structure and answers ``202 Accepted`` with
the ``Location`` of a capture job; ``GET /capture/{id}`` reports the job (``running``, then
``success`` and ``errors``), ``GET /capture`` lists the jobs, ``GET /events`` returns the captured
events once each. Events of successful jobs are recorded in arrival order
(``captured``, duplicates included) and de-duplicated by eventID (``events``): the view a level-3
repository would keep. Faults are set on ``.faults`` while it runs (500s, refusals, failed jobs,
slow answers). Standalone::

    python -m simulators.upstream.capture_server --port 8090 [--token-env CAPTURE_TOKEN]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

from aiohttp import web

from simulators.standalone import run_until_signal

_EVENT_TYPES = frozenset(
    {
        "ObjectEvent",
        "AggregationEvent",
        "TransactionEvent",
        "TransformationEvent",
        "AssociationEvent",
    }
)


@dataclass
class CaptureFaults:
    """Misbehaviour on demand; counters count down as they are used."""

    fail_captures: int = 0  # next N POST /capture answer 500
    fail_after: int = 0  # ... but only after this many more captures went through
    retry_after_s: int | None = None  # sent with those 500s as Retry-After
    refuse_captures: int = 0  # next N POST /capture answer 400 (as for an invalid document)
    fail_jobs: int = 0  # next N capture jobs finish with success=false
    fail_event_ids: set[str] = field(default_factory=set)  # jobs holding any of these fail
    fail_polls: int = 0  # next N GET /capture/{id} answer 503
    garbage_polls: int = 0  # next N GET /capture/{id} answer 200 with a body that is not JSON
    odd_polls: int = 0  # next N GET /capture/{id} answer a JSON object without running/success
    delay_s: float = 0.0  # every answer waits this long (slow server, client timeouts)
    capture_limit: int | None = None  # documents with more events answer 413
    running_polls: int = 1  # polls that see a job still running before it finishes ...
    job_s: float | None = 0.5  # ... or it finishes on its own after this (None: never)


@dataclass
class _Job:
    id: str
    created: str
    events: list[dict[str, Any]]
    fail_reason: str | None
    polls: int = 0
    finished: str | None = None
    timer: asyncio.TimerHandle | None = None


class CaptureServerSim:
    def __init__(self, *, token: str | None = None, ssl_context: ssl.SSLContext | None = None):
        self.token = token
        self.ssl_context = ssl_context  # serve HTTPS (set verify_mode to demand client certs)
        self.faults = CaptureFaults()
        self.documents: list[dict[str, Any]] = []  # every document accepted for a job
        self.captured: list[dict[str, Any]] = []  # events of successful jobs, duplicates kept
        self.events: dict[str, dict[str, Any]] = {}  # event_key() -> first captured copy
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.authorizations: list[str | None] = []
        self._jobs: dict[str, _Job] = {}
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.host = "127.0.0.1"
        self.port = 0

    # --- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def from_section(cls, line: Any, section: Any) -> CaptureServerSim:
        return cls(token=getattr(section, "token", None))

    def driver_config(self, **overrides: Any) -> dict[str, Any]:
        """The agent's forwarder table that talks to this server (the token is not included:
        it is given by reference, e.g. ``{"token": {"env": "CAPTURE_TOKEN"}}``)."""
        return {"type": "epcis-http", "url": self.url, **overrides}

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def duplicates(self) -> int:
        return len(self.captured) - len(self.events)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/capture", self._capture)
        app.router.add_get("/capture/{job_id}", self._job)
        app.router.add_get("/capture", self._jobs_list)
        app.router.add_get("/events", self._events)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=self.ssl_context)
        await site.start()
        self.host, self.port = self._runner.addresses[0][:2]

    async def stop(self) -> None:
        for job in self._jobs.values():
            if job.timer is not None:
                job.timer.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- handlers ----------------------------------------------------------------------------

    async def _answer(
        self, request: web.Request, response: web.StreamResponse
    ) -> web.StreamResponse:
        if self.faults.delay_s:
            await asyncio.sleep(self.faults.delay_s)
        self.requests.append((request.method, request.path, response.status))
        return response

    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization")
        self.authorizations.append(header)
        return self.token is None or header == f"Bearer {self.token}"

    async def _capture(self, request: web.Request) -> web.StreamResponse:
        faults = self.faults
        if not self._authorised(request):
            return await self._answer(request, _problem(401, "Unauthorized", "bad or no token"))
        if faults.fail_captures and faults.fail_after:
            faults.fail_after -= 1
        elif faults.fail_captures:
            faults.fail_captures -= 1
            response = _problem(500, "Internal Server Error", "simulated failure")
            if faults.retry_after_s is not None:
                response.headers["Retry-After"] = str(faults.retry_after_s)
            return await self._answer(request, response)
        try:
            document = await request.json()
        except ValueError:
            return await self._answer(request, _problem(400, "ValidationException", "not JSON"))
        problem = check_document(document)
        limit = faults.capture_limit
        if (
            problem is None
            and limit is not None
            and len(document["epcisBody"]["eventList"]) > limit
        ):
            detail = f"more than {limit} events"
            response = _problem(413, "CaptureLimitExceededException", detail)
            return await self._answer(request, response)
        if problem is None and faults.refuse_captures:
            faults.refuse_captures -= 1
            problem = "simulated refusal"
        if problem is not None:
            return await self._answer(request, _problem(400, "ValidationException", problem))
        events = document["epcisBody"]["eventList"]
        job = _Job(str(next(self._ids)), _now(), events, self._job_failure(events))
        self._jobs[job.id] = job
        if faults.job_s is not None:
            # A repository finishes a job whether or not anybody polls it.
            job.timer = asyncio.get_running_loop().call_later(faults.job_s, self._finish, job)
        self.documents.append(document)
        response = web.Response(status=202, headers={"Location": f"/capture/{job.id}"})
        return await self._answer(request, response)

    def _job_failure(self, events: list[dict[str, Any]]) -> str | None:
        if self.faults.fail_jobs:
            self.faults.fail_jobs -= 1
            return "simulated job failure"
        bad = [key for key in map(event_key, events) if key in self.faults.fail_event_ids]
        return f"events refused: {', '.join(bad)}" if bad else None

    async def _job(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return await self._answer(request, _problem(401, "Unauthorized", "bad or no token"))
        if self.faults.fail_polls:
            self.faults.fail_polls -= 1
            return await self._answer(request, _problem(503, "Service Unavailable", "simulated"))
        if self.faults.garbage_polls:
            self.faults.garbage_polls -= 1
            return await self._answer(request, web.Response(text="<html>proxy error</html>"))
        if self.faults.odd_polls:
            self.faults.odd_polls -= 1
            return await self._answer(request, web.json_response({"status": "DONE"}))
        job = self._jobs.get(request.match_info["job_id"])
        if job is None:
            return await self._answer(request, _problem(404, "NoSuchResourceException", "no job"))
        job.polls += 1
        if job.finished is None and job.polls > self.faults.running_polls:
            self._finish(job)
        return await self._answer(request, web.json_response(_job_resource(job)))

    async def _jobs_list(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return await self._answer(request, _problem(401, "Unauthorized", "bad or no token"))
        jobs = [_job_resource(job) for job in self._jobs.values()]
        return await self._answer(request, web.json_response(jobs))

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Every captured event once (by eventID), in capture order: a minimal query interface
        for integrators to look at what arrived (no query parameters, no paging)."""
        if not self._authorised(request):
            return await self._answer(request, _problem(401, "Unauthorized", "bad or no token"))
        body = {
            "@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"],
            "type": "EPCISQueryDocument",
            "schemaVersion": "2.0",
            "creationDate": _now(),
            "epcisBody": {
                "queryResults": {
                    "queryName": "SimpleEventQuery",
                    "resultsBody": {"eventList": list(self.events.values())},
                }
            },
        }
        return await self._answer(request, web.json_response(body))

    def _finish(self, job: _Job) -> None:
        if job.finished is not None:
            return
        if job.timer is not None:
            job.timer.cancel()
        job.finished = _now()
        if job.fail_reason is None:
            for event in job.events:
                self.captured.append(event)
                self.events.setdefault(event_key(event), event)


def event_key(event: dict[str, Any]) -> str:
    """What de-duplicates an event: its eventID (optional in EPCIS: else its whole content)."""
    event_id = event.get("eventID")
    return event_id if isinstance(event_id, str) else json.dumps(event, sort_keys=True)


def check_document(document: Any) -> str | None:
    """What is structurally wrong with an EPCISDocument for capture, or None. Deliberately not the
    full GS1 JSON Schema (that is what the agent's tests check): a repository's first gate."""
    if not isinstance(document, dict):
        return "the body is not a JSON object"
    for key in ("@context", "type", "schemaVersion", "creationDate", "epcisBody"):
        if key not in document:
            return f"'{key}' is missing"
    if document["type"] != "EPCISDocument":
        return f"type is {document['type']!r}, not 'EPCISDocument'"
    body = document["epcisBody"]
    if not isinstance(body, dict) or not isinstance(body.get("eventList"), list):
        return "epcisBody.eventList is missing or not a list"
    for index, event in enumerate(body["eventList"]):
        where = f"eventList[{index}]"
        if not isinstance(event, dict):
            return f"{where} is not an object"
        event_type = event.get("type")
        if not isinstance(event_type, str) or event_type not in _EVENT_TYPES:
            return f"{where}.type {event.get('type')!r} is not an EPCIS event type"
        for key in ("eventTime", "eventTimeZoneOffset"):
            if not isinstance(event.get(key), str):
                return f"{where}.{key} is missing"
        if event_type in ("ObjectEvent", "AggregationEvent") and "action" not in event:
            return f"{where}.action is missing"
    return None


def _job_resource(job: _Job) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "captureID": job.id,
        "createdAt": job.created,
        "running": job.finished is None,
        "success": job.finished is not None and job.fail_reason is None,
        "captureErrorBehaviour": "rollback",
        "errors": [],
    }
    if job.finished is not None:
        resource["finishedAt"] = job.finished
        if job.fail_reason is not None:
            resource["errors"] = [
                {
                    "type": "epcisException:ValidationException",
                    "title": "Capture failed",
                    "status": 400,
                    "detail": job.fail_reason,
                }
            ]
    return resource


def _problem(status: int, title: str, detail: str) -> web.Response:
    return web.json_response(
        {"type": f"epcisException:{title}", "title": title, "status": status, "detail": detail},
        status=status,
        content_type="application/problem+json",
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


async def _run(args: argparse.Namespace) -> None:
    token = os.environ.get(args.token_env) if args.token_env else None
    sim = CaptureServerSim(token=token)
    sim.faults.fail_captures = args.fail_captures
    sim.faults.fail_jobs = args.fail_jobs
    sim.faults.delay_s = args.delay
    await sim.start(host=args.host, port=args.port)
    print(f"EPCIS capture server on {sim.url}/capture", flush=True)
    try:
        while True:
            await asyncio.sleep(5)
            print(f"captured {len(sim.captured)} events, {len(sim.events)} unique", flush=True)
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--token-env", help="environment variable holding the expected token")
    parser.add_argument("--fail-captures", type=int, default=0, help="answer the first N with 500")
    parser.add_argument("--fail-jobs", type=int, default=0, help="fail the first N capture jobs")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before every answer")
    run_until_signal(_run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
