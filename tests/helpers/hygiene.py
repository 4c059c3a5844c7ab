"""A test must leave nothing running: the ``no_leaks`` fixture (pymodbus's ``is_dirty`` idea).

After the test and every fixture it used have finished, the fixture fails the test if asyncio
tasks are still pending on its event loop, threads it started are still alive, or sockets it
opened are still open. A device driver that forgets a reader task, a poll task, a client socket
or a worker thread on ``__aexit__`` is found here, not months later as a slow leak in the field.
Use it with ``pytestmark = pytest.mark.usefixtures("no_leaks")``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import threading
import time
from collections.abc import AsyncIterator

import pytest_asyncio

SETTLE_S = 2.0  # how long what is closing may take to be gone (a socket's close, a thread's end)


def open_sockets() -> set[str]:
    """This process's open sockets, by inode (Linux ``/proc/self/fd``)."""
    found: set[str] = set()
    with contextlib.suppress(FileNotFoundError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                if target.startswith("socket:"):
                    found.add(target)
    return found


def _pending_tasks() -> list[asyncio.Task[object]]:
    current = asyncio.current_task()
    return [task for task in asyncio.all_tasks() if task is not current and not task.done()]


async def _settled(check: object) -> None:
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline and check():  # type: ignore[operator]
        gc.collect()  # an unreferenced transport closes its socket when collected
        await asyncio.sleep(0.02)


class Snapshot:
    """What runs before a test, to tell afterwards what the test left behind."""

    def __init__(self) -> None:
        self.threads = set(threading.enumerate())
        self.sockets = open_sockets()

    def new_threads(self) -> list[threading.Thread]:
        # The loop's default executor ("asyncio_N": name lookups, serial opens) is the loop's,
        # shut down with it; any other thread is the test's
        return [
            t
            for t in threading.enumerate()
            if t not in self.threads and t.is_alive() and not t.name.startswith("asyncio_")
        ]

    def new_sockets(self) -> set[str]:
        return open_sockets() - self.sockets

    async def leftovers(self) -> list[str]:
        """What is still running after a grace period; pending tasks are cancelled."""
        await _settled(_pending_tasks)
        tasks = _pending_tasks()
        for task in tasks:
            task.cancel()
        await _settled(lambda: self.new_threads() or self.new_sockets())
        found = [f"task left running: {task.get_name()} {task.get_coro()!r}" for task in tasks]
        found += [f"thread left running: {thread.name}" for thread in self.new_threads()]
        sockets = self.new_sockets()
        found += [f"{len(sockets)} socket(s) left open"] if sockets else []
        return found


@pytest_asyncio.fixture
async def no_leaks() -> AsyncIterator[None]:
    before = Snapshot()
    yield
    problems = await before.leftovers()
    assert not problems, "the test left things behind:\n" + "\n".join(problems)
