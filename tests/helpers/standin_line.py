"""A small line for the operator screen's tests until the resident daemon serves the screen:
it packs the running order through the real ledger (print, verdict, commit) at a steady pace,
rejects every ``reject_every``-th unit as unreadable with its frame in the real failed-frame
archive, counts in a real ``LineStats``, and reports the quantity reached to the command path.
Hold, resume, stop and abort act at once (no devices to settle)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import cv2
import numpy as np

from edge_agent.contracts import Frame
from edge_agent.ledger import BatchInfo, UnitOutcome
from edge_agent.line.stats import LineStats
from edge_agent.orders.commands import CommandPath
from edge_agent.orders.lifecycle import LineEvent
from edge_agent.orders.model import OrderState
from edge_agent.vision.archive import FailedFrameArchive


class StandInLine:
    def __init__(
        self,
        commands: CommandPath,
        archive_dir: Path,
        *,
        units_per_s: float = 25.0,
        reject_every: int = 5,
    ) -> None:
        self.commands = commands
        self.archive = FailedFrameArchive(archive_dir, 100)
        self.interval_s = 1.0 / units_per_s
        self.reject_every = reject_every
        self.stats: LineStats | None = None
        self._running: str | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StandInLine:
        self.commands.line = self
        self._task = asyncio.create_task(self._run(), name="stand-in-line")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    # --- LineControl ------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    async def hold(self, order_id: str, reason: str) -> None:
        self._running = None

    async def resume_problems(self, order_id: str) -> list[str]:
        return []

    async def finish(self, order_id: str) -> None:
        self._running = None

    async def abort(self, order_id: str) -> None:
        self._running = None

    # --- the line ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            active = self.commands.store.active()
            if active is None or active.state != OrderState.RUNNING:
                self._running = None
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.1)
                continue
            if self._running != active.id:
                self._running = active.id
                self.stats = LineStats()
            await self._unit(active.id)
            await asyncio.sleep(self.interval_s)

    async def _unit(self, order_id: str) -> None:
        store, ledger = self.commands.store, self.commands.ledger
        order = store.get(order_id).order
        batch: BatchInfo = ledger.open_batch(
            order.id, order.product.gtin, order.lot, order.expiry, order.quantity
        )
        (trigger,) = self.commands.conn.execute(
            "SELECT count(*) + 1 FROM units WHERE batch_id = ?", (order_id,)
        ).fetchone()
        taken = ledger.take_for_print(batch)
        if taken is None:
            return
        _, serial = taken
        ledger.mark_printed(batch, serial)
        started = time.monotonic()
        passed = trigger % self.reject_every != 0
        reason = "ok" if passed else "unreadable"
        ledger.commit_outcomes(batch, [UnitOutcome(trigger, passed, reason, serial)])
        assert self.stats is not None
        self.stats.record(passed, reason, (time.monotonic() - started) * 1000.0)
        if not passed:
            self.archive.save(
                Frame(trigger, _frame(serial), started, "stand-in"),
                batch=order_id,
                serial=serial,
                reason=reason,
                read=None,
            )
        (passes,) = self.commands.conn.execute(
            "SELECT count(*) FROM units WHERE batch_id = ? AND verdict = 'pass'", (order_id,)
        ).fetchone()
        if passes >= order.quantity:
            self._running = None
            await self.commands.line_event(order_id, LineEvent.QUANTITY_REACHED)


def _frame(serial: str) -> np.ndarray:
    """A smudged label: grey with the serial, as a camera sees an unreadable print."""
    image = np.full((120, 320), 170, dtype=np.uint8)
    cv2.putText(image, serial, (12, 70), cv2.FONT_HERSHEY_SIMPLEX, 1.1, 40, 2)
    cv2.GaussianBlur(image, (9, 9), 4, dst=image)
    return image
