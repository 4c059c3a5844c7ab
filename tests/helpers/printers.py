"""Shared helpers for the printer driver tests (ascii, zipher, rci, zpl) against their simulators."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable

from edge_agent.contracts import PrintConfirmation, PrintJob, PrintRecord
from simulators.line import SimLine
from tests.helpers.waiting import STEP_S
from tests.helpers.waiting import until as _until

JOB = PrintJob(name="batch-1", gtin="09506000134352", lot="LOT42", expiry="271231")


def rec(seq: int) -> PrintRecord:
    return PrintRecord(seq, f"SN{seq:05d}")


def confirmed(*seqs: int) -> list[PrintConfirmation]:
    return [PrintConfirmation(seq, rec(seq).serial) for seq in seqs]


class Gate:
    """A run permit on the SimLine: records stay queued in the printer while it is shut."""

    def __init__(self, line: SimLine) -> None:
        self._line = line
        self.is_open = False
        line.add_run_permit(lambda: self.is_open)

    def open(self) -> None:
        self.is_open = True
        self._line.notify_run_state()


async def until(predicate: Callable[[], bool], what: str = "") -> None:
    """Synchronise with the simulator (``helpers.waiting.until`` within ``STEP_S``)."""
    await _until(predicate, what, within=STEP_S, every=0.002)


async def take(it: AsyncIterator[PrintConfirmation], n: int) -> list[PrintConfirmation]:
    async with asyncio.timeout(STEP_S):
        return [await anext(it) for _ in range(n)]


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` split at ``cuts`` (any integers, taken modulo the length), in order."""
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]
