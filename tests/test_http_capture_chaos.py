"""The epcis-http forwarder under the outbox's forwarder loop, against a capture server that
fails in every way it can: the issue's oracle (every event at least once, de-duplicated set ==
the ledger's, payloads intact, per-batch order) and a fresh event through within 60 s."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from drivers.upstream.http_capture import HttpCaptureForwarder
from edge_agent.db import open_db
from edge_agent.outbox.forwarding import ForwarderLoop
from edge_agent.outbox.store import OutboxStore
from simulators.upstream.capture_server import CaptureServerSim
from tests.helpers.outbox import add_events, check_oracle
from tests.helpers.waiting import until

pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.fixture
def conn(tmp_path: Path) -> Any:
    c = open_db(tmp_path / "state")
    yield c
    c.close()


@contextlib.asynccontextmanager
async def running(loop: ForwarderLoop) -> AsyncIterator[None]:
    task = asyncio.create_task(loop.run())
    try:
        yield
    finally:
        loop.stop()  # before cancelling: a cancel can be swallowed inside aiohttp (3.11)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def received(sim: CaptureServerSim) -> list[SimpleNamespace]:
    return [SimpleNamespace(event_id=e["eventID"], payload=json.dumps(e)) for e in sim.captured]


async def test_500s_timeouts_and_lost_jobs_then_recovery(conn: Any, capture_sim: Any) -> None:
    for batch in ("B1", "B2"):
        add_events(conn, 150, batch=batch)
    sim: CaptureServerSim = capture_sim
    config = HttpCaptureForwarder.Config.model_validate(
        sim.driver_config(max_events_per_document=40, poll_interval_s=0.01, request_timeout_s=1)
    )
    store = OutboxStore(conn, ["l3"])
    loop = ForwarderLoop(
        store,
        HttpCaptureForwarder("l3", config),
        "l3",
        batch_size=100,
        backoff_initial_s=0.05,
        backoff_max_s=0.3,
    )
    faults = sim.faults
    async with running(loop):
        # each fault in turn, with fresh events arriving while it lasts
        faults.fail_captures, faults.fail_after, faults.retry_after_s = 4, 2, 0
        await until(lambda: faults.fail_captures == 0, within=30, every=0.05)
        faults.fail_polls, faults.garbage_polls = 3, 2
        add_events(conn, 60, batch="B1", start=150)
        await until(lambda: faults.garbage_polls == 0, within=30, every=0.05)
        faults.delay_s = 1.5  # every answer later than the forwarder's 1 s timeout
        add_events(conn, 60, batch="B2", start=150)
        await asyncio.sleep(2.5)
        timeouts = loop.failures
        faults.delay_s = 0.0
        await until(lambda: not store.pending("l3", 1), within=60, every=0.05)
        check_oracle(conn, received(sim))
        # after the faults: a fresh event goes through within 60 s
        [fresh] = add_events(conn, 1, batch="B3", start=1000)
        await until(lambda: fresh in sim.events, within=60, every=0.05)
    await asyncio.sleep(faults.job_s or 0)  # abandoned jobs complete too: still the same set
    check_oracle(conn, received(sim))
    assert timeouts > 0 and sim.duplicates > 0  # the faults did bite
    assert [r[2] for r in sim.requests].count(500) == 4
    assert loop.dead == 0
