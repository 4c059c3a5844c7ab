"""The daemon's way out: every step of the exit is bounded, and a step that overruns is named.

A task that loses its cancellation (see ``asyncio_support``) or a device call that never
returns must not keep the process from ending: systemd would kill it at ``TimeoutStopSec``
without a word of why, and a supervisor waiting for the exit status would wait forever. So
each step of the exit gets a bound; a step that overruns is logged with the stack of what it
waits on, and the exit goes on. ``ExitGuard`` is the last bound, for what no coroutine can
bound: the interpreter's own teardown (executor threads are joined at exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Collection
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("edge_agent.shutdown")

T = TypeVar("T")

TASKS_END_S = 5.0  # cancelled background tasks: how long they get to end
LINE_SETTLE_S = 5.0  # the line's stop path, beyond its device waits (units in flight settle)
RESOURCES_CLOSE_S = 10.0  # the API server (bounded by its own timeout), OPC UA, the writer
TEARDOWN_S = 15.0  # from ``serve``'s return to the process's end


def task_stack(task: asyncio.Task[Any]) -> str:
    """Where a task waits now (its coroutine's stack), for the log of a step that overran."""
    buffer = io.StringIO()
    task.print_stack(limit=12, file=buffer)
    return buffer.getvalue()


def _overran(step: str, bound_s: float, tasks: Collection[asyncio.Task[Any]]) -> None:
    log.error(
        "shutdown_step_overran",
        step=step,
        bound_s=bound_s,
        waiting=sorted(task.get_name() for task in tasks),
        stacks={task.get_name(): task_stack(task) for task in tasks},
        detail="the exit goes on without it",
    )


async def end_tasks(tasks: Collection[asyncio.Task[Any]], *, step: str, bound_s: float) -> None:
    """Cancel ``tasks`` and wait at most ``bound_s`` for them to end; one that does not is
    logged and left behind (the process ends anyway)."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=bound_s)
    for task in done:  # retrieved: an error of a task ended here is not "never retrieved"
        if not task.cancelled():
            task.exception()
    if pending:
        _overran(step, bound_s, pending)


async def within(step: str, task: asyncio.Task[T], bound_s: float) -> T | None:
    """The result of ``task`` if it ends within ``bound_s``; otherwise it is logged, cancelled
    (given ``TASKS_END_S`` more to end) and None returned. Errors of the task are raised."""
    done, _ = await asyncio.wait({task}, timeout=bound_s)
    if done:
        return task.result()
    _overran(step, bound_s, [task])
    await end_tasks([task], step=f"{step} (cancelled)", bound_s=TASKS_END_S)
    return None


async def step(name: str, work: Awaitable[T], bound_s: float) -> T | None:
    """``work`` as a task of its own, bounded as ``within`` bounds it."""
    return await within(name, asyncio.ensure_future(work), bound_s)


class ExitGuard:
    """A daemon thread that ends the process with ``code`` if it is still alive ``bound_s``
    after ``arm``: first it logs ``shutdown_stuck`` with the stack of every thread."""

    def __init__(self) -> None:
        self._deadline = 0.0
        self._step = ""
        self.code = 1
        self._thread: threading.Thread | None = None

    def arm(self, bound_s: float, code: int, step: str) -> None:
        """(Re)start the bound: the process ends within ``bound_s`` from now."""
        self.code, self._step = code, step
        self._deadline = time.monotonic() + bound_s
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="exit-guard", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while True:
            left = self._deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, 0.5))
        names = {thread.ident: thread.name for thread in threading.enumerate()}
        stacks = {
            f"{names.get(ident, '?')} ({ident})": "".join(traceback.format_stack(frame))
            for ident, frame in sys._current_frames().items()
        }
        log.error(
            "shutdown_stuck",
            step=self._step,
            exit_code=self.code,
            detail="the exit did not end in time; the process ends now without it",
            stacks=stacks,
        )
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(self.code)
