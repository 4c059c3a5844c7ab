"""The agent, its commands, the simulators and the async tests share one event loop choice."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from edge_agent import asyncio_support

uvloop = pytest.importorskip("uvloop")


async def test_the_tests_run_on_the_agents_loop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


def test_the_agent_runs_on_uvloop_and_can_be_told_to_use_asyncios_own() -> None:
    script = (
        "import asyncio; from edge_agent import asyncio_support\n"
        "async def kind(): return type(asyncio.get_running_loop()).__module__\n"
        "print(asyncio_support.run(kind()))"
    )

    def kind(env: dict[str, str]) -> str:
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
        )
        return done.stdout.strip()

    assert kind({}) == "uvloop"
    assert kind({asyncio_support.EVENT_LOOP_ENV: "asyncio"}) == "asyncio.unix_events"
