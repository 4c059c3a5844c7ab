"""A station stops on one cancel even when a device call swallows it.

Python 3.11's ``asyncio.wait_for`` (inside pymodbus, for every request) returns the result instead
of raising CancelledError when its inner future completes in the same loop iteration as the
cancel, and a TaskGroup passes a cancellation on to its tasks only once: a station loop that lost
it would run on, and its TaskGroup would wait for it forever. The fake PLC here makes that race
certain: its call, cancelled, returns as if the reply had come in that same iteration."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Self

import pytest

from edge_agent.aggregation.station import CaseStation, LabelPath, StationTimings
from edge_agent.contracts import (
    Frame,
    LogisticLabel,
    PlcState,
    PrintConfirmation,
    Verdict,
)
from tests.helpers.aggregation import aggregation_db, order_spec, plan
from tests.helpers.waiting import bounded, until

pytestmark = pytest.mark.usefixtures("no_leaks")

TIMINGS = StationTimings(heartbeat_s=0.01, follow_s=0.01)


class _Device:
    name = "fake"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class SwallowingPlc(_Device):
    """A PLC whose first ``call`` (``beat`` or ``read_state``) is cancelled while waiting for its
    reply, and returns anyway, the cancellation lost (as 3.11's wait_for does)."""

    def __init__(self, call: str) -> None:
        self.call = call
        self.waiting = False  # the swallowing call is in progress
        self.swallowed = 0
        self.calls = {"beat": 0, "read_state": 0}

    async def _maybe_swallow(self, call: str) -> None:
        self.calls[call] += 1
        if call != self.call or self.swallowed:
            return
        self.waiting = True
        try:
            await asyncio.Event().wait()  # the reply: it comes with the cancel
        except asyncio.CancelledError:
            self.swallowed += 1  # the result is returned, the CancelledError dropped
        finally:
            self.waiting = False

    async def beat(self) -> None:
        await self._maybe_swallow("beat")

    async def read_state(self) -> PlcState:
        await self._maybe_swallow("read_state")
        return PlcState(0, True, 0, 0, 0, 0)

    async def write_verdict(self, trigger: int, verdict: Verdict) -> None:
        return None

    async def recent_rejects(self) -> Sequence[int]:
        return []

    async def request_line_stop(self, reason_code: int) -> None:
        return None

    async def clear_line_stop(self) -> None:
        return None


class SilentCamera(_Device):
    async def frames(self) -> AsyncIterator[Frame]:
        await asyncio.Event().wait()
        yield  # type: ignore[misc]  # never reached: a camera that sends nothing


class SilentPrinter(_Device):
    async def print_label(self, label: LogisticLabel) -> None:
        return None

    async def confirmations(self) -> AsyncIterator[PrintConfirmation]:
        await asyncio.Event().wait()
        yield  # type: ignore[misc]


class NoReader:
    def read(self, image: Any) -> list[Any]:
        raise AssertionError("no frame should be read")


@pytest.mark.parametrize("call", ["beat", "read_state"])
@bounded(60)
async def test_the_case_station_stops_on_one_cancel_a_device_call_swallowed(
    tmp_path: Path, call: str
) -> None:
    with aggregation_db(tmp_path / "state") as setup:
        batch = setup.add_order(order_spec(quantity=8, aggregation=plan(case=4)))
        plc = SwallowingPlc(call)
        labels = LabelPath(SilentPrinter(), SilentCamera(), NoReader(), TIMINGS)  # type: ignore[arg-type]
        station = CaseStation(
            setup.hierarchy,
            batch.id,
            camera=SilentCamera(),
            plc=plc,
            labels=labels,
            reader=NoReader(),  # type: ignore[arg-type]
            timings=TIMINGS,
        )
        station._pending[1] = "case-at-the-gate"  # followed: read_state is called
        task = asyncio.create_task(station.run())
        try:
            await until(lambda: plc.waiting, f"the PLC's {call} in progress")
            task.cancel()  # once, as the runner's TaskGroup does
            done, _ = await asyncio.wait([task], timeout=10.0)
            assert plc.swallowed == 1, "the fake lost the cancellation"
            assert done, "the station ran on after its cancellation was lost in a PLC call"
            assert task.cancelled()
        finally:
            for _ in range(20):  # a failed test must not leave the station running
                if task.done():
                    break
                task.cancel()
                await asyncio.wait([task], timeout=0.5)
