"""``until``: wait for a condition of the system under test, bounded; the tests' only poll."""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Awaitable, Callable

STEP_S = 3.0  # a bound for anything that should happen "now"; only reached when broken


async def until(
    condition: Callable[[], object | Awaitable[object]],
    what: str = "",
    *,
    within: float = 15.0,
    every: float = 0.005,
) -> None:
    """Poll ``condition`` (a plain or an async callable) until it is true; fail the test with
    ``what`` after ``within`` seconds. Polling: simulators and drivers expose counters, not
    change events, and tests should not need any."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what or condition}")
        await asyncio.sleep(every)


def bounded(
    seconds: float,
) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., Awaitable[None]]]:
    """Decorate an async test: it fails with a TimeoutError (and the traceback of the await it
    was stuck in) after ``seconds`` instead of hanging the suite."""

    def wrap(test: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        @functools.wraps(test)
        async def run(*args: object, **kwargs: object) -> None:
            async with asyncio.timeout(seconds):
                await test(*args, **kwargs)

        return run

    return wrap
