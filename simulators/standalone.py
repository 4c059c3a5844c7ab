"""Run a standalone simulator (``python -m simulators...``) until it is asked to stop.

A program must not rely on the signal dispositions it inherits: a shell that starts a job in the
background, ``nohup`` or a service manager may hand it SIGINT ignored, and then Python never
installs its KeyboardInterrupt handler, so Ctrl-C (or ``kill -INT``) would not stop the simulator.
Every entry point therefore installs its own handling: SIGINT and SIGTERM cancel the main
coroutine (its ``finally`` blocks stop the servers), and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_until_signal(main: Coroutine[Any, Any, object]) -> int:
    """Run ``main`` until it returns or SIGINT/SIGTERM arrives; returns the exit status (0)."""
    # Take back the default dispositions first, so a signal that arrives before the loop runs
    # (or after it closed) still stops the program instead of being ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_until_signal(main))
    return 0


async def _until_signal(main: Coroutine[Any, Any, object]) -> None:
    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, task.cancel)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        for sig in STOP_SIGNALS:  # restores the default disposition
            loop.remove_signal_handler(sig)
