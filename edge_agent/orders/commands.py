"""The one command path: every order and every command, from whichever source (REST API, CLI,
inbox folder, L3 link, OPC UA, the operator screen, the line itself), goes through here.

It validates, asks the line to act where the command needs the line, changes the order's state
and appends the audit record in one transaction. Commands run one at a time. A refused command
changes nothing and is audited too, with why it was refused.

Rule for the line controller (``LineControl``): its methods return once the line has acted; they
never call back into the command path themselves. Line events (quantity reached, a line stop)
are reported with ``line_event`` from the controller's own task, after any command it serves.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Mapping
from typing import Any, Protocol

import structlog

from edge_agent.aggregation.balance import open_containers
from edge_agent.alarms import AlarmBoard, AlarmKind
from edge_agent.db import write
from edge_agent.errors import CommandRefused, EdgeAgentError, OrderInvalid
from edge_agent.ledger import Ledger
from edge_agent.orders import audit
from edge_agent.orders.lifecycle import NEEDS_REASON, LineEvent, next_state
from edge_agent.orders.model import OrderCommand, OrderState, WorkOrder
from edge_agent.orders.store import OrderRecord, OrderStore
from edge_agent.orders.validation import OrderRules, check_order, parse_order

log = structlog.get_logger("edge_agent.orders")

LINE_END_POLL_S = 1.0  # how often a completed aggregated order is looked at for its auto-close

C = OrderCommand
# What a person needs the supervisor role for (actors without a role are systems: see Actor).
SUPERVISOR_COMMANDS = frozenset({C.ABORT})


class LineControl(Protocol):
    """What the command path needs from the line controller."""

    def wake(self) -> None:
        """Orders changed (one became ready or was started): look at the queue again."""

    def start_problems(self) -> list[str]:
        """Why no order may start now (e.g. the clock is not synchronised and the config says
        refuse); empty when one may. Asked for every start, automatic or by a person."""

    async def hold(self, order_id: str, reason: str) -> None:
        """Stop the line (PLC line-stop request set) and settle units in flight; return held."""

    async def resume_problems(self, order_id: str) -> list[str]:
        """Recovery checks before a resume (devices up, printer queue reconciled, PLC heartbeat
        fresh); each problem found, empty when the line may run again."""

    async def finish(self, order_id: str) -> None:
        """Stop printing for good and settle units in flight (the order ends short)."""

    async def abort(self, order_id: str) -> None:
        """Stop the line at once and settle units in flight."""


class Settlement(Protocol):
    """The ends of an order: reconciliation, unused serials returned, close report."""

    def reconcile(self, order_id: str) -> dict[str, Any]:
        """The reconciliation as it stands; ``balanced`` and ``problems`` say if it closes."""

    async def settle(
        self, record: OrderRecord, final: OrderState, actor: audit.Actor, reason: str | None
    ) -> dict[str, Any]:
        """Close the order's serial account (idempotent): unused serials returned, close report
        stored and queued for L3. Returns the close report."""


class CommandPath:
    def __init__(
        self,
        conn: sqlite3.Connection,
        ledger: Ledger,
        alarms: AlarmBoard,
        settlement: Settlement,
        rules: OrderRules,
        *,
        auto_close: bool = True,
        line_end_wait_s: float = 600.0,
    ) -> None:
        self.conn = conn
        self.store = OrderStore(conn)
        self.ledger = ledger
        self.alarms = alarms
        self.settlement = settlement
        self.rules = rules
        self.auto_close = auto_close
        # Completed aggregated orders whose auto-close waits for the line end (its last partial
        # case and pallet): order -> when the wait began (monotonic); alarmed after the wait.
        self.line_end_wait_s = line_end_wait_s
        self._line_end_since: dict[str, float] = {}
        self._line_end_alarmed: set[str] = set()
        self.line: LineControl | None = None  # set by the agent once the line controller exists
        self._lock = asyncio.Lock()

    # --- orders in ----------------------------------------------------------------------------

    async def submit(
        self, data: Mapping[str, Any], *, source: str, actor: audit.Actor
    ) -> OrderRecord:
        """Validate and store a new order (Waiting, or Ready when its serials came with it)."""
        async with self._lock:
            try:
                order = parse_order(data, source)
                warnings = check_order(order, self.conn, source, self.rules)
            except OrderInvalid as exc:
                self.store.refused(exc.order_id, C.STORE, actor, str(exc), None)
                log.warning(
                    "order_refused", order=exc.order_id, source=source, problems=exc.problems
                )
                raise
            state = OrderState.WAITING if order.serials.source == "l3" else OrderState.READY
            with write(self.conn):
                self.store.store(order, source, actor, state)
                self._open_serial_account(order)
            for warning in warnings:
                self.alarms.raise_(AlarmKind.EXPIRY_NEAR, warning, order_id=order.id)
                log.warning("order_warning", order=order.id, detail=warning)
            log.info("order_stored", order=order.id, state=state, source=source, actor=str(actor))
            if order.serials.source == "generate":  # EU FMD 2016/161 art. 4: report the figure
                odds = order.serials.guess_probability(order.quantity)
                log.info("order_serials_generated", order=order.id, guess_probability=odds)
        self._wake()
        return self.store.get(order.id)

    def _open_serial_account(self, order: WorkOrder) -> None:
        batch = self.ledger.open_batch(
            order.id, order.product.gtin, order.lot, order.expiry, order.quantity
        )
        if order.serials.serials is not None:
            self.ledger.allocate(batch, order.serials.serials, "from_order")

    # --- commands -----------------------------------------------------------------------------

    async def command(
        self,
        order_id: str,
        command: OrderCommand,
        actor: audit.Actor,
        *,
        reason: str | None = None,
    ) -> OrderRecord:
        async with self._lock:
            try:
                return await self._command(order_id, command, actor, reason)
            except CommandRefused as exc:
                self.store.refused(order_id, command, actor, str(exc), reason)
                log.warning("command_refused", order=order_id, command=command, detail=str(exc))
                raise
            finally:
                self._wake()

    async def _command(
        self, order_id: str, command: OrderCommand, actor: audit.Actor, reason: str | None
    ) -> OrderRecord:
        if command == C.STORE:
            raise CommandRefused("'store' takes a whole order: submit it instead")
        record = self.store.get(order_id)
        next_state(order_id, record.state, command)  # refuse early, before the line acts
        reason = (reason or "").strip() or None
        if command in SUPERVISOR_COMMANDS and actor.role == audit.Role.OPERATOR:
            raise CommandRefused(
                f"'{command}' needs a supervisor; {actor.name} is an operator", order_id=order_id
            )
        if command in NEEDS_REASON and reason is None:
            raise CommandRefused(
                f"'{command}' needs a reason for the audit trail", order_id=order_id
            )
        handler = getattr(self, f"_{command}")
        result: OrderRecord = await handler(record, actor, reason)
        log.info(
            "order_command", order=order_id, command=command, actor=str(actor), to=result.state
        )
        return result

    async def _start(
        self, record: OrderRecord, actor: audit.Actor, reason: str | None
    ) -> OrderRecord:
        problems = self.line.start_problems() if self.line is not None else []
        if problems:
            raise CommandRefused(
                f"order {record.id} cannot start now: " + "; ".join(problems), order_id=record.id
            )
        return self.store.transition(record.id, C.START, actor, reason=reason)

    async def _hold(
        self, record: OrderRecord, actor: audit.Actor, reason: str | None
    ) -> OrderRecord:
        assert reason is not None
        await self._line().hold(record.id, reason)
        return self.store.transition(record.id, C.HOLD, actor, reason=reason)

    async def _resume(
        self, record: OrderRecord, actor: audit.Actor, reason: str | None
    ) -> OrderRecord:
        pending = [a for a in self.alarms.for_order(record.id) if a.acknowledged_at is None]
        if pending:
            names = ", ".join(f"{a.id} ({a.kind})" for a in pending)
            raise CommandRefused(
                f"acknowledge the alarms of order {record.id} first: {names}", order_id=record.id
            )
        problems = await self._line().resume_problems(record.id)
        if problems:
            raise CommandRefused(
                f"order {record.id} cannot resume yet: " + "; ".join(problems), order_id=record.id
            )
        hold = self.store.open_hold(record.id)
        if hold is not None:
            for alarm in self.alarms.for_order(record.id):
                if alarm.active and alarm.kind == hold.reason:
                    self.alarms.clear(alarm.kind, order_id=record.id)
        return self.store.transition(record.id, C.RESUME, actor, reason=reason)

    async def _stop(
        self, record: OrderRecord, actor: audit.Actor, reason: str | None
    ) -> OrderRecord:
        await self._line().finish(record.id)
        done = self.store.transition(record.id, C.STOP, actor, reason=reason)
        return await self._maybe_close(done, actor)

    async def _abort(
        self, record: OrderRecord, actor: audit.Actor, reason: str | None
    ) -> OrderRecord:
        await self._line().abort(record.id)
        report = await self.settlement.settle(record, OrderState.ABORTED, actor, reason)
        return self.store.transition(
            record.id, C.ABORT, actor, reason=reason, detail=_close_detail(report)
        )

    async def _cancel(
        self, record: OrderRecord, actor: audit.Actor, reason: str | None
    ) -> OrderRecord:
        report = await self.settlement.settle(record, OrderState.CANCELLED, actor, reason)
        return self.store.transition(
            record.id, C.CANCEL, actor, reason=reason, detail=_close_detail(report)
        )

    async def _close(
        self, record: OrderRecord, actor: audit.Actor, reason: str | None
    ) -> OrderRecord:
        still_open = open_containers(self.conn, record.id)
        if still_open:  # no reason overrides this: the case exists, half-aggregated
            shown = ", ".join(f"{level} {code} ({state})" for level, code, state in still_open[:5])
            raise CommandRefused(
                f"order {record.id} has {len(still_open)} containers not closed: {shown}"
                + (" ..." if len(still_open) > 5 else "")
                + "; close or disaggregate them first (edge-agent case close|disaggregate)",
                order_id=record.id,
            )
        reconciliation = self.settlement.reconcile(record.id)
        if not reconciliation["balanced"] and reason is None:
            raise CommandRefused(
                f"order {record.id} does not balance ({'; '.join(reconciliation['problems'])}); "
                "closing it anyway is a close with exceptions and needs a reason",
                order_id=record.id,
            )
        if not reconciliation["balanced"] and actor.role == audit.Role.OPERATOR:
            raise CommandRefused(
                f"order {record.id} does not balance: a close with exceptions needs a "
                f"supervisor; {actor.name} is an operator",
                order_id=record.id,
            )
        report = await self.settlement.settle(record, OrderState.CLOSED, actor, reason)
        return self.store.transition(
            record.id, C.CLOSE, actor, reason=reason, detail=_close_detail(report)
        )

    async def _maybe_close(self, record: OrderRecord, actor: audit.Actor) -> OrderRecord:
        if not self.auto_close or record.state != OrderState.COMPLETED:
            return record
        aggregated = record.order.aggregation is not None
        if open_containers(self.conn, record.id):  # the case station still finishes its work
            if aggregated:
                self._wait_for_line_end(record.id)
            log.info("auto_close_waits_for_containers", order=record.id)
            return record
        reconciliation = self.settlement.reconcile(record.id)
        if not reconciliation["balanced"] and aggregated and _only_hierarchy(reconciliation):
            # the line end still finishes its last partial case and pallet (and the units of
            # rejected cases are not recorded loose yet): closed once the hierarchy balances
            self._wait_for_line_end(record.id)
            log.info(
                "auto_close_waits_for_line_end",
                order=record.id,
                problems=reconciliation["problems"],
            )
            return record
        if not reconciliation["balanced"]:
            problems = "; ".join(reconciliation["problems"])
            self.alarms.raise_(
                AlarmKind.CLOSE_UNBALANCED,
                f"order {record.id} completed but does not balance ({problems}); a supervisor "
                "must close it with a reason",
                order_id=record.id,
            )
            return record
        closed = await self._close(record, audit.Actor("auto-close", actor.source), None)
        self._line_end_since.pop(record.id, None)
        if self._line_end_alarmed:
            self._line_end_alarmed.discard(record.id)
            self.alarms.clear(AlarmKind.CLOSE_UNBALANCED, order_id=record.id)
        return closed

    def _wait_for_line_end(self, order_id: str) -> None:
        self._line_end_since.setdefault(order_id, time.monotonic())

    async def finish_line_ends(self, poll_s: float = LINE_END_POLL_S) -> None:
        """Run for the life of the daemon: auto-close each completed aggregated order once its
        line end has finished (the hierarchy balances); an alarm when it has not after
        ``line_end_wait_s`` (the order still closes by itself when it then balances)."""
        if self.auto_close:  # completed before a restart: their wait starts again now
            for record in self.store.all(frozenset({OrderState.COMPLETED})):
                if record.order.aggregation is not None:
                    self._wait_for_line_end(record.id)
        while True:
            await asyncio.sleep(poll_s)
            if not self._line_end_since:
                continue
            try:
                await self._retry_line_ends()
            except (EdgeAgentError, sqlite3.Error) as exc:  # storage trouble: the next poll
                log.error("auto_close_retry_failed", detail=str(exc))
            except Exception:  # a bug here must not end the auto-close (nor the daemon)
                log.exception("auto_close_retry_error")

    async def _retry_line_ends(self) -> None:
        async with self._lock:
            for order_id, since in list(self._line_end_since.items()):
                record = self.store.get(order_id)
                if record.state != OrderState.COMPLETED:  # closed or aborted by a person
                    self._line_end_since.pop(order_id, None)
                    self._line_end_alarmed.discard(order_id)
                    continue
                try:
                    record = await self._maybe_close(record, audit.LINE)
                except CommandRefused as exc:  # a container opened again meanwhile
                    log.info("auto_close_refused", order=order_id, detail=str(exc))
                if record.state != OrderState.COMPLETED or order_id not in self._line_end_since:
                    continue
                waited = time.monotonic() - since
                if waited > self.line_end_wait_s and order_id not in self._line_end_alarmed:
                    self._line_end_alarmed.add(order_id)
                    self._line_end_alarm(order_id, waited)
        self._wake()

    def _line_end_alarm(self, order_id: str, waited: float) -> None:
        still_open = open_containers(self.conn, order_id)
        problems = self.settlement.reconcile(order_id)["problems"]
        shown = ", ".join(f"{level} {code} ({state})" for level, code, state in still_open[:5])
        what = f"containers not closed: {shown}" if still_open else "; ".join(problems)
        self.alarms.raise_(
            AlarmKind.CLOSE_UNBALANCED,
            f"order {order_id} completed {waited:.0f} s ago but its line end has not finished "
            f"({what}). Finish the last, partial case and pallet (edge-agent station last-case "
            "N, edge-agent station close-pallet) and record units of rejected cases loose; the "
            "order then closes by itself, or a supervisor closes it with a reason",
            order_id=order_id,
        )
        log.warning("auto_close_line_end_unfinished", order=order_id, waited_s=round(waited))

    # --- what the line reports ----------------------------------------------------------------

    async def line_event(
        self, order_id: str, event: LineEvent, *, reason: str | None = None, detail: str = ""
    ) -> OrderRecord:
        """A transition the line made by itself: serials in hand, quantity reached, a stop."""
        async with self._lock:
            record = self.store.transition(
                order_id, event, audit.LINE, reason=reason, detail={"detail": detail}
            )
            if event == LineEvent.QUANTITY_REACHED:
                record = await self._maybe_close(record, audit.LINE)
        self._wake()
        return record

    async def start_next(self, actor: audit.Actor) -> OrderRecord | None:
        """Auto-start: the oldest Ready order, when no order is on the line."""
        async with self._lock:
            if self.store.active() is not None:
                return None
            ready = self.store.next_ready()
            if ready is None:
                return None
            return self.store.transition(ready.id, C.START, actor)

    def _line(self) -> LineControl:
        if self.line is None:
            raise CommandRefused("the line controller is not running yet; try again shortly")
        return self.line

    def _wake(self) -> None:
        if self.line is not None:
            self.line.wake()


def _only_hierarchy(reconciliation: dict[str, Any]) -> bool:
    """The serial account balances; only the hierarchy does not (yet)."""
    hierarchy = set(reconciliation.get("hierarchy_problems", ()))
    return bool(hierarchy) and set(reconciliation["problems"]) <= hierarchy


def _close_detail(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "balanced": report.get("balanced"),
        "problems": report.get("problems", []),
        "serials_returned": report.get("serials_returned", 0),
    }
