"""Unit tracking: which serial is on the unit in front of the camera.

The printer prints records in order and confirms each one; the camera sees the units in the same
order. So the serials the printer confirmed form a FIFO, and each frame belongs to its head. A
frame is matched against that FIFO by what it reads:

* the head's serial            → the unit at this position, as expected;
* a serial deeper in the FIFO  → the units before it passed the camera without a frame: their
                                 serials are settled as ``no_frame`` (the PLC rejected them, since
                                 no verdict was written);
* a serial already settled     → a stale or re-circulated unit: the FIFO is left alone;
* no read / unknown content    → the head's unit with a bad print: the head is consumed.

Repeated mismatches reject unit after unit, which stops the line (repeated doubt).

A frame is taken for a decision only once per trigger count (``SeenTriggers``): a second frame
with the same count (a camera re-sending its image) belongs to a unit that has, or is getting,
its one verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Position:
    """The serial assigned to one frame, plus serials skipped to reach it."""

    serial: str | None
    skipped: list[str] = field(default_factory=list)


class PrintedQueue:
    def __init__(self) -> None:
        self._serials: deque[str] = deque()
        self._changed = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._serials)

    def __contains__(self, serial: object) -> bool:
        return serial in self._serials

    def snapshot(self) -> list[str]:
        return list(self._serials)

    async def push(self, serial: str) -> None:
        async with self._changed:
            self._serials.append(serial)
            self._changed.notify_all()

    async def wait_for(self, serial: str | None, within_s: float) -> None:
        """Wait until ``serial`` (or, for None, any serial) is queued, at most ``within_s``."""

        def ready() -> bool:
            return serial in self._serials if serial is not None else bool(self._serials)

        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(ready), within_s)

    def take_head(self) -> Position:
        return Position(self._serials.popleft() if self._serials else None)

    def take_through(self, serial: str) -> Position:
        """Consume up to and including ``serial``; the ones before it were never seen."""
        skipped = []
        while self._serials and self._serials[0] != serial:
            skipped.append(self._serials.popleft())
        self._serials.popleft()
        return Position(serial, skipped)

    def drain(self) -> list[str]:
        serials = list(self._serials)
        self._serials.clear()
        return serials


class SeenTriggers:
    """The newest ``size`` trigger counts whose frame was taken for a decision.

    Bounded, and by count rather than by value, so a wrapping u32 counter needs no special case.
    The window is far wider than any PLC's verdict ring: a repeat older than that is stale anyway.
    """

    SIZE = 4096

    def __init__(self, size: int = SIZE) -> None:
        self.size = size
        self._seen: set[int] = set()
        self._order: deque[int] = deque()

    def __contains__(self, trigger: object) -> bool:
        return trigger in self._seen

    def add(self, trigger: int) -> bool:
        """Remember ``trigger``; False when it was there already (a repeated frame)."""
        if trigger in self._seen:
            return False
        self._seen.add(trigger)
        self._order.append(trigger)
        if len(self._order) > self.size:
            self._seen.discard(self._order.popleft())
        return True
