"""The L3 service: the agent's side of the link to the site server, run as one task.

Three loops share one link:

- **orders**: every order document L3 sends goes through the command path (``submit``, actor
  ``Actor(<link>, "l3")``). A refused one is answered with an ``order_refused`` message that
  carries the problems, so L3 learns why; an order L3 sends again unchanged (a redelivery after
  a crash or a lost acknowledgement) is recognised and ignored.
- **serial pages**: each order whose serials come from L3 is kept supplied: when its serials in
  hand (allocated, not yet sent) fall below ``low_water`` a page is asked for, never more than
  the order still needs. The request row is durable before the request is sent and a retry
  carries the same id, so one need never yields two pages. The page's serials are checked and
  allocated to the order's ledger batch in the transaction that marks the request done; a page
  breaking a rule (a serial used before, more serials than asked for, a bad serial) is refused
  whole and alarmed. The first page moves the order Waiting → Ready.
- **messages**: returns, close reports and refusals queued in ``l3_messages`` go out in order,
  each retried with its stable id until L3 acknowledges it. An acknowledged return moves its
  serials unused → returned in the transaction that marks it delivered.

Every wait on L3 is bounded; failures back off (``edge_agent.supervisor.Backoff``: capped, equal
jitter; L3's Retry-After is a floor up to ``backoff_max_s``). An outage raises one
``l3_unreachable`` alarm, cleared when every loop is through again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import sqlite3
import time
from collections.abc import Awaitable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import structlog

from edge_agent import gs1
from edge_agent.aggregation import supply
from edge_agent.alarms import AlarmBoard, AlarmKind
from edge_agent.config.models import L3Section
from edge_agent.contracts import L3Link, L3Message, SerialPage
from edge_agent.crashpoints import crash_point
from edge_agent.db import write
from edge_agent.errors import (
    AggregationRefused,
    CommandRefused,
    DeliveryError,
    EdgeAgentError,
    LedgerError,
)
from edge_agent.l3 import messages, requests
from edge_agent.l3.messages import MessageKind
from edge_agent.l3.requests import RequestState, SerialRequest
from edge_agent.ledger import BatchInfo, SerialState
from edge_agent.orders.audit import Actor
from edge_agent.orders.commands import CommandPath
from edge_agent.orders.lifecycle import LineEvent
from edge_agent.orders.model import OrderState
from edge_agent.orders.store import OrderRecord
from edge_agent.orders.validation import parse_order
from edge_agent.supervisor import Backoff

log = structlog.get_logger("edge_agent.l3")

T = TypeVar("T")

# Orders that may still print, so still need serials.
SUPPLIED_STATES = frozenset(
    {OrderState.WAITING, OrderState.READY, OrderState.RUNNING, OrderState.HELD}
)
_USED_UP = (SerialState.COMMISSIONED, SerialState.SENT, SerialState.PRINTED)


class Health:
    """One outage of the link, seen by any loop: one alarm while it lasts, cleared when every
    loop that failed is through again (or has nothing left to do)."""

    def __init__(self, alarms: AlarmBoard, link: str) -> None:
        self.alarms, self.link = alarms, link
        self.errors: dict[str, str] = {}
        self.outage_since: float | None = None
        self.last_contact: float | None = None
        self.last_error: str | None = None

    def failed(self, activity: str, error: str) -> None:
        self.errors[activity] = error
        self.last_error = error
        if self.outage_since is not None:
            log.debug("l3_still_unreachable", link=self.link, activity=activity, error=error)
            return
        self.outage_since = time.time()
        log.warning("l3_unreachable", link=self.link, activity=activity, error=error)
        self.alarms.raise_(
            AlarmKind.L3_UNREACHABLE,
            f"L3 link {self.link} does not answer ({activity}: {error}); orders, serial pages "
            "and returns wait and are retried",
        )

    def ok(self, activity: str) -> None:
        """A successful exchange with L3."""
        self.last_contact = time.time()
        self.through(activity)

    def through(self, activity: str) -> None:
        """This loop no longer sees a failure (it succeeded, or has nothing left to try)."""
        self.errors.pop(activity, None)
        if self.errors or self.outage_since is None:
            return
        log.info("l3_recovered", link=self.link, down_s=round(time.time() - self.outage_since, 1))
        self.outage_since = None
        self.alarms.clear(AlarmKind.L3_UNREACHABLE)


@dataclass(frozen=True)
class L3Status:
    """What the API shows about the link."""

    link: str
    type: str
    reachable: bool
    outage_since: float | None
    last_contact: float | None
    last_error: str | None
    pending_messages: int
    pending_requests: int
    orders_received: int
    orders_refused: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Backoff(Exception):
    """A round found nothing usable (L3 answered an empty page): wait before the next one."""


class L3Service:
    def __init__(
        self,
        command_path: CommandPath,
        link: L3Link,
        conn: sqlite3.Connection,
        *,
        settings: L3Section,
        rng: random.Random | None = None,
    ) -> None:
        self.commands = command_path
        self.link = link
        self.conn = conn
        self.settings = settings
        self.rng = rng or random.Random()
        self.source = f"l3:{link.name}"
        self.actor = Actor(link.name, "l3")
        self.health = Health(command_path.alarms, link.name)
        self.orders_received = 0
        self.orders_refused = 0
        self._handled: set[str] = set()  # digests of documents handled by this process
        self._serials_wake = asyncio.Event()
        self._messages_wake = asyncio.Event()
        self._stopping = False
        # A wait on one L3 call: the driver's own timeout, with room for its internal retry.
        self._guard_s = settings.request_timeout_s * 2 + 1

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled (or ``stop``). Never raises for L3 trouble or bad input."""
        async with self.link, asyncio.TaskGroup() as group:
            group.create_task(self._orders_loop(), name=f"{self.link.name}-orders")
            group.create_task(self._serials_loop(), name=f"{self.link.name}-serials")
            group.create_task(self._messages_loop(), name=f"{self.link.name}-messages")

    def stop(self) -> None:
        """Ask the loops to end; call before cancelling the task (Python 3.11's ``wait_for``
        inside aiohttp and aiomqtt can swallow a cancellation, a flag cannot be lost)."""
        self._stopping = True
        self.wake()

    def wake(self) -> None:
        """Something changed (serials used, a message queued): look again now."""
        self._serials_wake.set()
        self._messages_wake.set()

    def status(self) -> L3Status:
        return L3Status(
            link=self.link.name,
            type=self.settings.type,
            reachable=self.health.outage_since is None,
            outage_since=self.health.outage_since,
            last_contact=self.health.last_contact,
            last_error=self.health.last_error,
            pending_messages=messages.pending_count(self.conn),
            pending_requests=requests.pending_count(self.conn),
            orders_received=self.orders_received,
            orders_refused=self.orders_refused,
        )

    def _check_stopping(self) -> None:
        task = asyncio.current_task()
        if self._stopping or (task is not None and task.cancelling()):
            raise asyncio.CancelledError

    def _backoff(self) -> Backoff:
        s = self.settings
        return Backoff(
            s.backoff_initial_s, s.backoff_max_s, rng=self.rng, retry_after_cap_s=s.backoff_max_s
        )

    async def _wait(self, event: asyncio.Event, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await event.wait()
        except TimeoutError:
            pass
        event.clear()

    async def _bounded(self, call: Awaitable[T], what: str) -> T:
        """One L3 call with a hard time limit; anything but success is a DeliveryError."""
        try:
            async with asyncio.timeout(self._guard_s):
                return await call
        except DeliveryError:
            raise
        except TimeoutError as exc:
            raise DeliveryError(
                f"{what}: no answer within {self._guard_s:g} s", upstream=self.link.name
            ) from exc
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # a driver bug must not take the service down
            log.exception("l3_driver_error", link=self.link.name, call=what)
            raise DeliveryError(f"{what}: {exc!r}", upstream=self.link.name) from exc

    # --- orders -------------------------------------------------------------------------------

    async def _orders_loop(self) -> None:
        backoff = self._backoff()
        loop = asyncio.get_running_loop()
        # A link that has run this long since (re)starting without failing is through: that is
        # how an order feed that has no orders to send shows it works again.
        settle_s = self.settings.request_timeout_s + self.settings.poll_interval_s
        while True:
            self._check_stopping()
            settled = loop.call_later(settle_s, self.health.through, "orders")
            feed = self.link.orders()
            try:
                async for data in feed:
                    settled.cancel()
                    self.health.ok("orders")
                    backoff.reset()
                    await self._take_order(data)
                    self._check_stopping()
                return  # the link closed
            except DeliveryError as exc:
                settled.cancel()
                self.health.failed("orders", str(exc))
                await asyncio.sleep(backoff.next_delay(exc.retry_after_s))
            except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                settled.cancel()
                raise
            except Exception as exc:  # storage trouble, a driver bug: retry, never die
                settled.cancel()
                log.exception("l3_orders_failed", link=self.link.name)
                self.health.failed("orders", repr(exc))
                await asyncio.sleep(backoff.next_delay())
            finally:
                # Closed here, not by the garbage collector: an order not handled is never
                # acknowledged, and L3 offers it again.
                close = getattr(feed, "aclose", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        await close()

    async def _take_order(self, data: Any) -> None:
        """Store the order, or tell L3 why not. An exception here means the document was not
        handled (storage trouble): the link then offers it again."""
        digest = _digest(data)
        if digest in self._handled:
            return
        self.orders_received += 1
        if not isinstance(data, Mapping):
            self._refuse(data, digest, None, [("(order)", "an order is a JSON object")])
            return
        if self._redelivered(data):
            log.info("l3_order_redelivered", link=self.link.name, order=data.get("id"))
            self._handled.add(digest)
            return
        try:
            record = await self.commands.submit(data, source=self.source, actor=self.actor)
        except CommandRefused as exc:
            self._refuse(data, digest, exc.order_id, [("(order)", str(exc))])
            return
        except EdgeAgentError as exc:  # OrderInvalid, a ledger refusal (batch id used before)
            problems = getattr(exc, "problems", None) or [("(order)", str(exc))]
            self._refuse(data, digest, getattr(exc, "order_id", None), problems)
            return
        self._handled.add(digest)
        log.info("l3_order_stored", link=self.link.name, order=record.id, state=record.state)
        self._serials_wake.set()

    def _redelivered(self, data: Mapping[str, Any]) -> bool:
        """L3 sent this very order before and it is stored: a redelivery, not a new order."""
        order_id = data.get("id")
        if not isinstance(order_id, str):
            return False
        record = self.commands.store.find(order_id)
        if record is None or record.source != self.source:
            return False
        try:
            return record.order == parse_order(data, self.source)
        except EdgeAgentError:
            return False

    def _refuse(
        self, data: Any, digest: str, order_id: str | None, problems: list[tuple[str, str]]
    ) -> None:
        order_id = order_id or (data.get("id") if isinstance(data, Mapping) else None)
        if not isinstance(order_id, str) or not order_id:
            order_id = f"unidentified-{digest[:12]}"
        payload = {
            "order_id": order_id,
            "source": self.source,
            "problems": [{"key": key, "message": message} for key, message in problems],
            "refused_at": time.time(),
        }
        messages.queue(self.conn, MessageKind.ORDER_REFUSED, order_id, payload, key=digest[:12])
        first = "; ".join(f"{k}: {m}" for k, m in problems[:3])
        self.commands.alarms.raise_(
            AlarmKind.ORDER_REJECTED,
            f"order {order_id} from L3 ({self.link.name}) refused: {first}",
            order_id=order_id,
        )
        self.orders_refused += 1
        self._handled.add(digest)
        log.warning("l3_order_refused", link=self.link.name, order=order_id, problems=problems)
        self._messages_wake.set()

    # --- serial pages -------------------------------------------------------------------------

    async def _serials_loop(self) -> None:
        backoff = self._backoff()
        while True:
            self._check_stopping()
            try:
                await self._serials_round()
            except DeliveryError as exc:
                await asyncio.sleep(backoff.next_delay(exc.retry_after_s))
                continue
            except _Backoff:
                await asyncio.sleep(backoff.next_delay())
                continue
            except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:
                log.exception("l3_serials_failed", link=self.link.name)
                self.health.failed("serials", repr(exc))
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            await self._wait(self._serials_wake, self.settings.check_interval_s)

    async def _serials_round(self) -> None:
        # Requests left pending by a crash or a failure go first, with their own id.
        asked = False
        for request in requests.pending(self.conn):
            asked = True
            await self._fetch(request)
        for record in self._supplied_orders():
            await self._promote(record)
            count = self._shortfall(record)
            if count == 0:
                continue
            asked = True
            request = requests.create(self.conn, record.id, record.order.product.gtin, count)
            log.info(
                "l3_serials_requested", order=record.id, count=count, request=request.request_id
            )
            await self._fetch(request)
            await self._promote(self.commands.store.get(record.id))
        asked = await self._identifiers_round() or asked
        if not asked:
            self.health.through("serials")

    async def _identifiers_round(self) -> bool:
        """Pages of case and pallet identifiers for orders whose plan takes them from L3
        (``edge_agent.aggregation.supply``). True when one was asked for."""
        asked = False
        prefix_length = self.commands.ledger.company_prefix_length
        for record in self._supplied_orders(identifiers=True):
            for level in supply.l3_levels(record.order):
                key = supply.page_key(record.order, level, prefix_length)
                if requests.exhausted(self.conn, record.id, key):
                    continue
                count = supply.shortfall(
                    self.conn,
                    record.order,
                    level,
                    low_water=self.settings.low_water,
                    page_size=self.settings.page_size,
                )
                if count == 0:
                    continue
                asked = True
                request = requests.create(self.conn, record.id, key, count)
                log.info(
                    "l3_identifiers_requested",
                    order=record.id,
                    level=level.level,
                    count=count,
                    request=request.request_id,
                )
                await self._fetch(request)
        return asked

    def _supplied_orders(self, *, identifiers: bool = False) -> list[OrderRecord]:
        """Orders that may still print and take their serials from L3 (read by state, not by
        loading every order the line ever ran)."""
        marks = ",".join("?" * len(SUPPLIED_STATES))
        rows = self.conn.execute(
            f"SELECT id FROM orders WHERE state IN ({marks}) ORDER BY queue",
            tuple(SUPPLIED_STATES),
        ).fetchall()
        found = [self.commands.store.find(order_id) for (order_id,) in rows]
        if identifiers:
            return [r for r in found if r is not None and supply.l3_levels(r.order)]
        return [r for r in found if r is not None and r.order.serials.source == "l3"]

    def _in_hand(self, order_id: str) -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT state, count(*) FROM serials WHERE batch_id = ? GROUP BY state", (order_id,)
        ).fetchall()
        return {state: int(n) for state, n in rows}

    def _shortfall(self, record: OrderRecord) -> int:
        """Serials to ask for now: 0 while the order holds ``low_water`` (or all it still
        needs), else a page, never more than the order still needs."""
        if requests.exhausted(self.conn, record.id, record.order.product.gtin):
            return 0
        counts = self._in_hand(record.id)
        unsent = counts.get(SerialState.ALLOCATED, 0)
        remaining = record.order.quantity - sum(counts.get(s, 0) for s in _USED_UP)
        if unsent >= min(self.settings.low_water, remaining):
            return 0
        return min(self.settings.page_size, remaining - unsent)

    async def _promote(self, record: OrderRecord) -> None:
        """A Waiting order with serials in hand is Ready (also after a crash between the page
        and this step)."""
        if record.state != OrderState.WAITING:
            return
        unsent = self._in_hand(record.id).get(SerialState.ALLOCATED, 0)
        if unsent == 0:
            return
        try:
            await self.commands.line_event(
                record.id, LineEvent.SERIALS_READY, detail=f"{unsent} serials from L3"
            )
        except CommandRefused as exc:  # cancelled meanwhile
            log.info("l3_serials_ready_refused", order=record.id, detail=str(exc))

    async def _fetch(self, request: SerialRequest) -> None:
        try:
            page = await self._bounded(
                self.link.request_serials(
                    request.order_id, request.gtin, request.count, request.request_id
                ),
                f"serial page {request.request_id}",
            )
        except DeliveryError as exc:
            requests.failed(self.conn, request.request_id, str(exc))
            self.health.failed("serials", str(exc))
            raise
        crash_point("l3_page_received")
        self.health.ok("serials")
        state = self._accept(request, page)
        if state == RequestState.REFUSED or not (page.serials or page.exhausted):
            raise _Backoff  # a refused or empty page: do not ask again at once

    def _accept(self, request: SerialRequest, page: SerialPage) -> RequestState:
        """The page's serials go to the order's ledger batch and the request is done, in one
        transaction; or the page is refused whole, or (order ended) discarded and returned."""
        record = self.commands.store.find(request.order_id)
        serials = list(page.serials)
        problems = page_problems(page, request)
        state = RequestState.DONE
        with write(self.conn):
            batch = self._batch(request.order_id)
            if problems:
                state = RequestState.REFUSED
            elif record is None or record.state not in SUPPLIED_STATES or batch is None:
                state = RequestState.DISCARDED
                problems = [f"order is {record.state if record else 'unknown'}"]
                if serials:  # L3 counts them as handed out: give them back
                    payload = {
                        "order_id": request.order_id,
                        "gtin": request.gtin,
                        "serials": serials,
                        "request_id": request.request_id,
                    }
                    messages.queue(
                        self.conn,
                        MessageKind.SERIAL_RETURN,
                        request.order_id,
                        payload,
                        key=request.request_id,
                    )
            else:
                try:
                    self._store_page(record, request, serials)
                except (LedgerError, AggregationRefused) as exc:
                    state, problems = RequestState.REFUSED, [str(exc)]
            requests.finish(
                self.conn,
                request.request_id,
                state,
                serials=serials,
                exhausted=page.exhausted,
                detail={"problems": problems} if problems else None,
            )
        self._report(request, page, state, problems, record)
        return state

    def _store_page(self, record: OrderRecord, request: SerialRequest, serials: list[str]) -> None:
        """Unit serials to the ledger batch; a packaging level's identifiers to its pool."""
        level = supply.level_of(
            record.order, request.gtin, self.commands.ledger.company_prefix_length
        )
        if level is None:
            batch = self._batch(request.order_id)
            assert batch is not None
            self.commands.ledger.allocate(batch, serials, "l3_page")
            return
        supply.store_page(
            self.conn, record.order, level, serials, self.commands.ledger.company_prefix_length
        )

    def _report(
        self,
        request: SerialRequest,
        page: SerialPage,
        state: RequestState,
        problems: list[str],
        record: OrderRecord | None,
    ) -> None:
        where = dict(order=request.order_id, request=request.request_id)
        if state == RequestState.REFUSED:
            log.error("l3_page_refused", **where, problems=problems)
            self.commands.alarms.raise_(
                AlarmKind.SERIAL_PAGE_REFUSED,
                f"serial page {request.request_id} for order {request.order_id} refused, none "
                f"of its {len(page.serials)} serials is used: {'; '.join(problems[:3])}",
                order_id=request.order_id,
            )
            return
        if state == RequestState.DISCARDED:
            log.warning("l3_page_discarded", **where, serials=len(page.serials), why=problems)
            self._messages_wake.set()
            return
        log.info("l3_page_allocated", **where, serials=len(page.serials), exhausted=page.exhausted)
        if page.exhausted and record is not None and request.gtin != record.order.product.gtin:
            self.commands.alarms.raise_(
                AlarmKind.SERIAL_POOL_EXHAUSTED,
                f"L3 has no more identifiers {request.gtin} for order {record.id}: its cases "
                "or pallets wait for identifiers",
                order_id=record.id,
            )
        elif page.exhausted and record is not None:
            short = self._shortfall_ignoring_exhausted(record)
            if short > 0:
                self.commands.alarms.raise_(
                    AlarmKind.SERIAL_POOL_EXHAUSTED,
                    f"L3 has no more serials for order {record.id}: {short} short of its "
                    f"quantity {record.order.quantity}",
                    order_id=record.id,
                )

    def _shortfall_ignoring_exhausted(self, record: OrderRecord) -> int:
        counts = self._in_hand(record.id)
        have = counts.get(SerialState.ALLOCATED, 0) + sum(counts.get(s, 0) for s in _USED_UP)
        return max(0, record.order.quantity - have)

    def _batch(self, order_id: str) -> BatchInfo | None:
        row = self.conn.execute(
            "SELECT id, gtin, lot, expiry, target, state FROM batches WHERE id = ?", (order_id,)
        ).fetchone()
        return BatchInfo(*row) if row and row[5] == "open" else None

    # --- messages -----------------------------------------------------------------------------

    async def _messages_loop(self) -> None:
        backoff = self._backoff()
        while True:
            self._check_stopping()
            batch = messages.pending(self.conn, limit=50)
            if not batch:
                self.health.through("messages")
                await self._wait(self._messages_wake, self.settings.check_interval_s)
                continue
            try:
                for message in batch:
                    self._check_stopping()
                    await self._deliver(message)
            except DeliveryError as exc:
                await asyncio.sleep(backoff.next_delay(exc.retry_after_s))
                continue
            except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:
                log.exception("l3_messages_failed", link=self.link.name)
                self.health.failed("messages", repr(exc))
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()

    async def _deliver(self, message: L3Message) -> None:
        try:
            await self._bounded(self.link.deliver(message), f"message {message.id}")
        except DeliveryError as exc:
            messages.mark_failed(self.conn, message.id, str(exc))
            self.health.failed("messages", str(exc))
            log.info("l3_message_retry", message=message.id, error=str(exc))
            raise
        crash_point("l3_message_delivered")
        returned = 0
        with write(self.conn):
            if message.kind == MessageKind.SERIAL_RETURN:
                returned = self.commands.ledger.mark_returned(
                    message.order_id, [str(s) for s in message.payload.get("serials", [])]
                )
            messages.mark_delivered(self.conn, message.id)
        self.health.ok("messages")
        if message.kind == MessageKind.ORDER_REFUSED:
            self.commands.alarms.clear(AlarmKind.ORDER_REJECTED, order_id=message.order_id)
        log.info("l3_message_delivered", message=message.id, kind=message.kind, returned=returned)


def page_problems(page: SerialPage, request: SerialRequest) -> list[str]:
    """What makes a page unusable, checked before any of it is allocated."""
    problems = []
    if page.request_id != request.request_id:
        problems.append(f"answers request {page.request_id!r}, not {request.request_id!r}")
    if page.order_id != request.order_id:
        problems.append(f"is for order {page.order_id!r}, not {request.order_id!r}")
    if page.gtin != request.gtin:
        problems.append(f"is for GTIN {page.gtin!r}, not {request.gtin!r}")
    if len(page.serials) > request.count:
        problems.append(f"holds {len(page.serials)} serials, {request.count} were asked for")
    seen: set[str] = set()
    for serial in page.serials:
        if not isinstance(serial, str):
            problems.append(f"serial {serial!r} is not text")
            break
        try:
            gs1.validate_serial(serial)
        except gs1.Gs1Error as exc:
            problems.append(f"serial {serial!r}: {exc}")
            break
        if serial in seen:
            problems.append(f"serial {serial!r} appears twice")
            break
        seen.add(serial)
    return problems


def _digest(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
