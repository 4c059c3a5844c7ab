"""The forwarder loop: one per configured forwarder, beside the line, never in its way.

Each loop reads its forwarder's oldest pending events (in outbox order, so per batch in order),
hands them to ``deliver``, and durably records what was delivered or dead-lettered before it
asks for more. A ``DeliveryError`` (upstream away, 5xx, timeout) backs off
(``edge_agent.supervisor``: capped, equal jitter), honouring the upstream's ``retry_after_s``;
the loop logs once when upstream goes away and once when it comes back. An upstream failure
never stops the line: it is logged and retried. A storage failure does (the state database
cannot record what was delivered, or cannot prune): the loop reports it once through
``on_storage_error``, which stops the line with ``storage_error``, and keeps retrying with
back-off (a re-sent event keeps its eventID). The quota guard stops the line before the
database grows too big for the disk.
"""

from __future__ import annotations

import asyncio
import math
import random
import sqlite3
from collections.abc import Callable
from typing import Any

import structlog

from edge_agent.contracts import Delivery, Forwarder
from edge_agent.crashpoints import crash_point
from edge_agent.errors import DeliveryError, LineStopped
from edge_agent.outbox.store import OutboxStore, free_bytes, used_bytes
from edge_agent.stops import StopReason
from edge_agent.supervisor import Supervisor

log = structlog.get_logger("edge_agent.outbox")

_IDLE_POLL_S = 0.1  # how often an idle forwarder looks for new events
_MB = 1024 * 1024


class ForwarderLoop:
    def __init__(
        self,
        store: OutboxStore,
        forwarder: Forwarder,
        name: str,
        *,
        batch_size: int = 200,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        on_alarm: Callable[[str], None] | None = None,
        on_storage_error: Callable[[Exception], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.forwarder = forwarder
        self.name = name
        self.batch_size = batch_size
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.on_alarm = on_alarm or (lambda _msg: None)
        self.on_storage_error = on_storage_error or (lambda _exc: None)
        self.storage_failed = False  # reported once until a delivery is recorded again
        self.rng = rng or random.Random()
        self.upstream = Supervisor(
            name,
            first_s=backoff_initial_s,
            max_s=backoff_max_s,
            rng=self.rng,
            key="forwarder",
            lost_event="upstream_unavailable",
            still_event="upstream_still_unavailable",
            back_event="upstream_recovered",
            logger=log,
        )
        self.delivered = 0
        self.dead = 0
        self.stopping = False

    @property
    def failures(self) -> int:
        """Failed attempts in a row (storage failures included)."""
        return self.upstream.failures

    @failures.setter
    def failures(self, value: int) -> None:
        self.upstream.failures = value

    @property
    def down_since(self) -> float | None:
        """``time.monotonic()`` when the upstream went away; None while it works."""
        return self.upstream.down_since

    def stop(self) -> None:
        """Ask the loop to end; call before cancelling its task. Python 3.11's ``wait_for``
        (inside aiomqtt and aiohttp) can swallow a cancellation (see line.runtime), and a
        TaskGroup may already have uncancelled the task, so a flag is the reliable signal."""
        self.stopping = True

    def _raise_if_stopping(self) -> None:
        task = asyncio.current_task()
        if self.stopping or (task is not None and task.cancelling()):
            raise asyncio.CancelledError

    def idle(self) -> bool:
        """No event is waiting for this forwarder (or none can be read: nothing to wait for)."""
        try:
            return not self.store.pending(self.name, 1)
        except sqlite3.Error as exc:
            self._report_storage(exc)
            return True

    async def run(self) -> None:
        while True:
            self._raise_if_stopping()
            try:
                async with self.forwarder:
                    await self._forward()
            except asyncio.CancelledError:
                raise
            except DeliveryError as exc:
                await self._failed(exc)
            except sqlite3.Error as exc:  # the outbox itself failed: a storage stop
                self._report_storage(exc)
                await self.upstream.pause()
            except Exception as exc:  # a forwarder bug must never take the line down
                log.exception("forwarder_failed", forwarder=self.name, error=repr(exc))
                await self._failed(DeliveryError(repr(exc), upstream=self.name))

    async def _forward(self) -> None:
        while True:
            self._raise_if_stopping()
            events = self.store.pending(self.name, self.batch_size)
            if not events:
                await asyncio.sleep(_IDLE_POLL_S)
                continue
            try:
                result = await self.forwarder.deliver(events)
            except DeliveryError as exc:
                await self._failed(exc)
                continue
            crash_point("forward_delivered")
            self._record(events, result)
            crash_point("forward_marked")

    def _record(self, events: Any, result: Delivery) -> None:
        done, dead = self.store.mark(self.name, events, result.delivered, result.rejected)
        self.storage_failed = False
        self.delivered += done
        self.dead += dead
        if done:
            self.upstream.recovered()  # logged once if it was away; the backoff starts over
        for event_id, why in result.rejected.items():
            log.error("dead_letter", forwarder=self.name, event_id=event_id, reason=why)
        if result.rejected:
            self.on_alarm(
                f"outbox: {len(result.rejected)} event(s) rejected by {self.name} as invalid; "
                "see `edge-agent outbox status`"
            )

    def _report_storage(self, exc: sqlite3.Error) -> None:
        if self.storage_failed:
            return
        self.storage_failed = True
        log.error("outbox_storage_failed", forwarder=self.name, error=str(exc))
        self.on_storage_error(exc)

    async def _failed(self, exc: DeliveryError) -> None:
        self.upstream.lost(exc)  # logged once per outage
        await self.upstream.pause(exc.retry_after_s)

    def delay(self, retry_after_s: float | None) -> float:
        """The wait after the failures so far (the supervisor's backoff); the upstream's
        Retry-After is a floor, capped at four times ``backoff_max_s``."""
        return self.upstream.backoff.delay(retry_after_s)


class QuotaGuard:
    """Watches the state database's size: an alarm at one level, a line stop at the next.

    Undelivered events are never dropped to make room. Delivered ones are kept only for
    ``retention_days`` as a courtesy (replay, audit): from the alarm level on, they are pruned
    early, oldest first. If the database still reaches the stop level (upstream away too long),
    the line stops (LineStopped 'outbox_full') until deliveries free space again.

    Without fixed levels (``quota_alarm_mb`` / ``quota_stop_mb`` unset, the default) the
    database may use the disk: delivered events are pruned early once the filesystem's free
    space is below ``free_alarm_mb`` (``[agent] disk_free_alarm_mb``, where ``DiskGuard`` raises
    its alarm), and the line stops at ``DiskGuard``'s stop level. A fixed stop level alone gets
    an alarm level at half of it.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        alarm_mb: float | None,
        stop_mb: float | None,
        store: OutboxStore | None = None,
        on_alarm: Callable[[str], None] | None = None,
        interval_s: float = 1.0,
        free_alarm_mb: float = 0.0,
    ) -> None:
        self.conn = conn
        self.store = store
        if alarm_mb is None and stop_mb is not None:
            alarm_mb = stop_mb / 2
        self.alarm_bytes = None if alarm_mb is None else alarm_mb * _MB
        self.stop_bytes = math.inf if stop_mb is None else stop_mb * _MB
        self.free_alarm_bytes = free_alarm_mb * _MB
        self.on_alarm = on_alarm or (lambda _msg: None)
        self.interval_s = interval_s
        self._alarmed = False

    def _alarm_level(self, size: int) -> float:
        if self.alarm_bytes is not None:
            return self.alarm_bytes
        if not self.free_alarm_bytes:
            return math.inf
        return size + free_bytes(self.conn) - self.free_alarm_bytes

    def check(self) -> None:
        size = used_bytes(self.conn)
        alarm = self._alarm_level(size)
        if size >= alarm and self.store is not None:
            pruned = self.store.prune(0)
            if pruned:
                log.warning("outbox_pruned_early", events=pruned, reason="quota alarm level")
                self._shrink_wal()
                size = used_bytes(self.conn)
        if size >= self.stop_bytes:
            raise LineStopped(
                StopReason.OUTBOX_FULL,
                f"state database {size / _MB:.1f} MB is at the stop level "
                f"{self.stop_bytes / _MB:g} MB; restore the upstream link so the outbox drains "
                "(`edge-agent outbox status`), free disk or raise upstream.quota_stop_mb; "
                "no event was dropped",
            )
        if self.alarm_bytes is None:  # following the disk: the disk guard raises the alarm
            return
        if size >= alarm and not self._alarmed:
            self._alarmed = True
            message = (
                f"outbox: state database {size / _MB:.1f} MB passed the alarm level "
                f"{alarm / _MB:g} MB"
            )
            log.error("outbox_quota_alarm", size_mb=round(size / _MB, 1))
            self.on_alarm(message)
        elif size < alarm:
            self._alarmed = False

    def _shrink_wal(self) -> None:
        """Checkpoint and cut the WAL file, without waiting: with a reader active it is left
        for the next check (a blocking wait here would stall the line's event loop)."""
        self.conn.execute("PRAGMA busy_timeout=0")
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.OperationalError:
            pass
        finally:
            self.conn.execute("PRAGMA busy_timeout=5000")

    async def run(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(self.interval_s)


async def prune_periodically(
    store: OutboxStore,
    retention_days: float,
    interval_s: float = 3600.0,
    on_storage_error: Callable[[Exception], None] | None = None,
) -> None:
    while True:
        try:
            pruned = store.prune(retention_days)
            if pruned:
                log.info("outbox_pruned", events=pruned, retention_days=retention_days)
        except sqlite3.Error as exc:  # the database cannot write: a storage stop
            log.error("outbox_prune_failed", error=str(exc))
            if on_storage_error is not None:
                on_storage_error(exc)
        except Exception as exc:  # a prune bug is retried next time; never a line stop
            log.error("outbox_prune_failed", error=repr(exc))
        await asyncio.sleep(interval_s)
