"""asyncio helpers every long-running loop of the core shares."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
# Opt out of uvloop (diagnosis, a platform without it): EDGE_AGENT_EVENT_LOOP=asyncio
EVENT_LOOP_ENV = "EDGE_AGENT_EVENT_LOOP"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop the agent, its commands and the simulators run on: uvloop (libuv) when it
    is installed, asyncio's own otherwise. The per-unit path is mostly event-loop work (sockets,
    futures, wake-ups from the decode and writer threads), and uvloop does it with about a tenth
    less CPU per unit than asyncio's selector loop."""
    if os.environ.get(EVENT_LOOP_ENV, "").strip().lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
            return factory
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the agent's event loop (``loop_factory``)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


def raise_if_cancel_lost() -> None:
    """Re-raise a cancellation that was requested but swallowed on the way.

    On Python 3.11 ``asyncio.wait_for`` (used inside pymodbus for every request, and by
    ``PrintedQueue.wait_for``) returns the result instead of raising CancelledError when its
    inner future completes in the same loop iteration as the cancel. A task of a TaskGroup that
    loses its cancellation that way loops on forever, and the TaskGroup (which passes a
    cancellation to its tasks only once) waits for it forever: the line stop, the batch end or the
    station stop never completes. Every loop that calls a device checks this after the call.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
