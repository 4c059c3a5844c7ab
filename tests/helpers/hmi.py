"""The operator screen on a real API server for tests: users in a file, a login over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from edge_agent.api.app import create_app
from edge_agent.api.server import ApiServer
from edge_agent.api.status import LineStatus
from edge_agent.app import Agent
from edge_agent.errors import LineStopped
from edge_agent.hmi.settings import HmiSettings
from edge_agent.hmi.users import UserFile
from edge_agent.monitoring.sources import MonitoringSources
from edge_agent.orders.audit import Role
from edge_agent.stops import StopReason
from tests.helpers.api import Rig, services
from tests.helpers.waiting import until

PASSWORDS = {"anna": "anna-operator-pw", "sam": "sam-supervisor-pw"}
ROLES = {"anna": Role.OPERATOR, "sam": Role.SUPERVISOR}

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


_made: dict[str, str] = {}  # the file's text, hashed once per test session (argon2 is slow)


def users_file(folder: Path) -> UserFile:
    """anna (operator) and sam (supervisor) with their PASSWORDS."""
    users = UserFile(folder / "hmi-users.json")
    if "text" not in _made:
        for name, password in PASSWORDS.items():
            users.add(name, ROLES[name], password)
        _made["text"] = users.path.read_text()
    else:
        users.path.write_text(_made["text"])
    return users


@contextlib.asynccontextmanager
async def serving_hmi(
    rig: Rig,
    settings: HmiSettings,
    *,
    line_status: LineStatus | None = None,
    monitoring: MonitoringSources | None = None,
) -> AsyncIterator[ApiServer]:
    app = create_app(services(rig, line_status), [], monitoring=monitoring, hmi=settings)
    async with ApiServer(app, host="127.0.0.1", port=0) as server:
        rig.url = server.url
        yield server


def browser(rig: Rig) -> httpx.AsyncClient:
    """A client that keeps cookies and does not follow redirects (tests look at them)."""
    return httpx.AsyncClient(base_url=rig.url, timeout=10.0, follow_redirects=False)


def csrf_of(page: httpx.Response) -> str:
    found = _CSRF.search(page.text)
    assert found, f"no CSRF token in {page.url}"
    return found.group(1)


async def login(client: httpx.AsyncClient, name: str, password: str | None = None) -> str:
    """Log in; returns the CSRF token of the new session's pages."""
    token = csrf_of(await client.get("/hmi/login"))
    answer = await client.post(
        "/hmi/login",
        data={"name": name, "password": password or PASSWORDS[name], "csrf": token},
    )
    assert answer.status_code == 303, answer.text
    page = await client.get("/hmi/line")
    assert page.status_code == 200, (page.status_code, page.headers.get("location"))
    return csrf_of(page)


async def post(client: httpx.AsyncClient, path: str, csrf: str, **fields: Any) -> httpx.Response:
    return await client.post(path, data={"csrf": csrf, **fields})


@contextlib.asynccontextmanager
async def daemon(config: Any) -> AsyncIterator[Agent]:
    """The resident daemon in the test's loop, ready; stopped as a signal stops it."""
    agent = Agent(config)
    ready = asyncio.Event()
    task = asyncio.create_task(agent.serve(ready))
    await until(lambda: ready.is_set() or task.done(), "the daemon to be ready", within=30)
    if task.done():
        task.result()  # raises why it ended
    try:
        yield agent
    finally:
        agent.request_stop(LineStopped(StopReason.SHUTDOWN, "test over"))
        await asyncio.wait_for(task, 30)
