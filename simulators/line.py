"""The simulated conveyor that ties the device simulators together.

A real line moves physical units from the printer past the camera to the reject gate. In the
simulation the printer simulator puts a ``SimUnit`` on the ``SimLine`` when it prints; after the
transit time the unit reaches the camera photo-eye, which assigns the next trigger count. Trigger
listeners that count units (the PLC simulator: it schedules the reject gate) run before the others
(the camera simulator: it renders and sends the frame), whichever was created first.

The line runs only while every registered ``run_permit`` says so (the PLC simulator stops it on
heartbeat loss or a line-stop request). Pacing: ``units_per_min`` limits the print rate; ``None``
runs as fast as records arrive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class SimUnit:
    """What was physically printed on one unit."""

    serial: str  # AI 21 as printed
    gtin: str  # AI 01
    lot: str  # AI 10
    expiry: str  # AI 17, YYMMDD
    printed_at: float  # time.monotonic()

    def hri(self) -> str:
        """The printed content in bracketed human-readable form, AIs 01, 17, 10, 21."""
        return f"(01){self.gtin}(17){self.expiry}(10){self.lot}(21){self.serial}"


TriggerListener = Callable[[int, SimUnit], Awaitable[None] | None]


class SimLine:
    def __init__(self, units_per_min: float | None = 300.0, transit_s: float = 0.0) -> None:
        self.units_per_min = units_per_min
        self.transit_s = transit_s
        self.trigger_count = 0
        self._listeners: list[TriggerListener] = []
        self._counters = 0  # listeners at the front of _listeners registered with counts=True
        self._permits: list[Callable[[], bool]] = []
        self._settlers: list[Callable[[], Awaitable[None]]] = []
        self._next_slot_at = 0.0
        self._running_changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- wiring -----------------------------------------------------------------------------

    def on_trigger(self, listener: TriggerListener, *, counts: bool = False) -> None:
        """Call ``listener`` for every unit reaching the photo-eye; ``counts``: it counts the
        trigger (a PLC) and must see it before any camera does."""
        if counts:
            self._listeners.insert(self._counters, listener)
            self._counters += 1
        else:
            self._listeners.append(listener)

    def on_settle(self, settler: Callable[[], Awaitable[None]]) -> None:
        """``settled()`` also waits for ``settler`` (e.g. a PLC's units still before the gate)."""
        self._settlers.append(settler)

    def add_run_permit(self, permit: Callable[[], bool]) -> None:
        self._permits.append(permit)

    def running(self) -> bool:
        return all(permit() for permit in self._permits)

    def notify_run_state(self) -> None:
        """A permit holder calls this when its answer may have changed."""
        self._running_changed.set()

    # --- printer side -----------------------------------------------------------------------

    async def next_slot(self) -> None:
        """Wait until the line runs and the next unit position is under the print head."""
        while not self.running():
            self._running_changed.clear()
            if self.running():
                break
            await self._running_changed.wait()
        if self.units_per_min:
            period = 60.0 / self.units_per_min
            now = time.monotonic()
            if self._next_slot_at > now:
                await asyncio.sleep(self._next_slot_at - now)
            self._next_slot_at = max(now, self._next_slot_at) + period

    def unit_printed(self, unit: SimUnit) -> None:
        """The printer put a unit on the conveyor; it reaches the camera after the transit time."""
        if self.transit_s > 0:
            asyncio.get_running_loop().call_later(self.transit_s, self._spawn_arrival, unit)
        else:
            self._spawn_arrival(unit)

    def _spawn_arrival(self, unit: SimUnit) -> None:
        task = asyncio.get_running_loop().create_task(self._arrive(unit))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _arrive(self, unit: SimUnit) -> None:
        self.trigger_count += 1
        trigger = self.trigger_count
        for listener in self._listeners:
            result = listener(trigger, unit)
            if result is not None:
                await result

    async def drain(self) -> None:
        """Wait until every unit on the conveyor has reached the camera."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def settled(self) -> None:
        """Wait until every unit has reached the camera and every device is done with it (the
        PLC simulators: decided at the gate)."""
        await self.drain()
        for settler in self._settlers:
            await settler()
