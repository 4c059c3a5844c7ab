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
from collections.abc import Mapping
from typing import Any, Protocol

import structlog

from edge_agent.aggregation.balance import open_containers
from edge_agent.alarms import AlarmBoard, AlarmKind
from edge_agent.db import write
from edge_agent.errors import CommandRefused, OrderInvalid
from edge_agent.ledger import Ledger
from edge_agent.orders import audit
from edge_agent.orders.lifecycle import NEEDS_REASON, LineEvent, next_state
from edge_agent.orders.model import OrderCommand, OrderState, WorkOrder
from edge_agent.orders.store import OrderRecord, OrderStore
from edge_agent.orders.validation import OrderRules, check_order, parse_order

log = structlog.get_logger("edge_agent.orders")

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
    ) -> None:
        self.conn = conn
        self.store = OrderStore(conn)
        self.ledger = ledger
        self.alarms = alarms
        self.settlement = settlement
        self.rules = rules
        self.auto_close = auto_close
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
        if open_containers(self.conn, record.id):  # the case station still finishes its work
            log.info("auto_close_waits_for_containers", order=record.id)
            return record
        reconciliation = self.settlement.reconcile(record.id)
        if not reconciliation["balanced"]:
            problems = "; ".join(reconciliation["problems"])
            self.alarms.raise_(
                AlarmKind.CLOSE_UNBALANCED,
                f"order {record.id} completed but does not balance ({problems}); a supervisor "
                "must close it with a reason",
                order_id=record.id,
            )
            return record
        return await self._close(record, audit.Actor("auto-close", actor.source), None)

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


def _close_detail(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "balanced": report.get("balanced"),
        "problems": report.get("problems", []),
        "serials_returned": report.get("serials_returned", 0),
    }
