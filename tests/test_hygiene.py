"""The ``no_leaks`` check (tests/helpers/hygiene.py) finds what a test leaves running."""

from __future__ import annotations

import asyncio
import socket
import threading

from tests.helpers.hygiene import Snapshot


async def test_a_clean_test_leaves_nothing() -> None:
    before = Snapshot()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
    task = asyncio.create_task(asyncio.sleep(0))
    await task
    assert await before.leftovers() == []


async def test_tasks_threads_and_sockets_left_behind_are_found() -> None:
    before = Snapshot()
    task = asyncio.create_task(asyncio.sleep(3600), name="forgotten-reader")
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="forgotten-worker", daemon=True)
    thread.start()
    sock = socket.socket()
    try:
        found = await before.leftovers()
    finally:
        stop.set()
        thread.join()
        sock.close()
    assert task.cancelled() or task.cancelling(), "a pending task is cancelled by the check"
    assert any("forgotten-reader" in line for line in found), found
    assert "thread left running: forgotten-worker" in found
    assert "1 socket(s) left open" in found
