"""The daemon's exit is bounded step by step: a task that loses its cancellation, or a thread
that never ends, is named in the log and the process still ends."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from edge_agent import shutdown
from edge_agent.app import Agent, UntilIdle
from simulators.runner import SimulatorSet
from tests.helpers.line import make_config, simulators


class Stubborn:
    """A coroutine that swallows every cancellation until released (as a task does when
    ``asyncio.wait_for`` loses the cancel on Python 3.11)."""

    def __init__(self) -> None:
        self.released = False
        self.cancels = 0

    async def run(self, *args: Any) -> None:
        while not self.released:
            try:
                await asyncio.sleep(0.02)
            except asyncio.CancelledError:
                self.cancels += 1


async def test_tasks_that_do_not_end_are_named_and_left_behind() -> None:
    stubborn = Stubborn()
    task = asyncio.create_task(stubborn.run(), name="stubborn")
    polite = asyncio.create_task(asyncio.sleep(3600), name="polite")
    await asyncio.sleep(0.05)  # both under way
    started = time.monotonic()
    with capture_logs() as logs:
        await shutdown.end_tasks([task, polite], step="background tasks", bound_s=0.3)
    took = time.monotonic() - started
    stubborn.released = True
    await asyncio.wait({task})
    assert 0.3 <= took < 2.0
    assert polite.cancelled() and stubborn.cancels == 1
    [overran] = [entry for entry in logs if entry["event"] == "shutdown_step_overran"]
    assert overran["step"] == "background tasks" and overran["waiting"] == ["stubborn"]
    assert "test_shutdown.py" in overran["stacks"]["stubborn"]  # where it waits


async def test_a_step_that_ends_in_time_gives_its_result_and_one_that_does_not_gives_none() -> None:
    async def answer() -> int:
        await asyncio.sleep(0.01)
        return 42

    assert await shutdown.step("quick", answer(), 1.0) == 42
    slow = asyncio.create_task(asyncio.sleep(3600), name="slow")
    with capture_logs() as logs:
        assert await shutdown.within("line stop", slow, 0.1) is None
    assert slow.cancelled()
    assert [entry["step"] for entry in logs] == ["line stop"]


@pytest.mark.slow
async def test_a_background_task_that_ignores_its_cancel_does_not_keep_the_daemon_up(
    agent_config_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    stubborn = Stubborn()
    monkeypatch.setattr("edge_agent.app.IntegrityWatch.run", stubborn.run)
    async with SimulatorSet(simulators()) as sims:
        config = make_config(agent_config_factory, sims, 10)
        with capture_logs() as logs:
            served = await asyncio.wait_for(
                Agent(config).serve(until_idle=UntilIdle(0)), 30 + shutdown.TASKS_END_S
            )
    stubborn.released = True
    await asyncio.sleep(0.1)  # it ends once released
    assert served.ended == "idle", served
    overran = [entry for entry in logs if entry["event"] == "shutdown_step_overran"]
    assert [(entry["step"], entry["waiting"]) for entry in overran] == [
        ("background tasks", ["integrity-check"])
    ]


def test_the_exit_guard_ends_a_process_whose_teardown_hangs() -> None:
    script = textwrap.dedent(
        """
        import threading, time
        from edge_agent.shutdown import ExitGuard

        def hang_forever():
            threading.Event().wait()

        threading.Thread(target=hang_forever, name="hung").start()  # joined at exit: forever
        ExitGuard().arm(0.5, 7, "process teardown")
        """
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    output = done.stdout + done.stderr
    assert done.returncode == 7, output
    assert time.monotonic() - started < 20
    assert "shutdown_stuck" in output and "process teardown" in output
    assert "hang_forever" in output  # the stack of the thread it waited for
