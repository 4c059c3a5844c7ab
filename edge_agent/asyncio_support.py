"""asyncio helpers every long-running loop of the core shares."""

from __future__ import annotations

import asyncio


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
