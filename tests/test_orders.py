"""Work orders: lifecycle table, store + audit in one transaction, validation, command path."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.alarms import AlarmBoard
from edge_agent.db import open_db
from edge_agent.errors import CommandRefused, OrderInvalid
from edge_agent.ledger import Ledger
from edge_agent.orders import audit
from edge_agent.orders.commands import CommandPath
from edge_agent.orders.lifecycle import TRANSITIONS, LineEvent, Trigger, next_state
from edge_agent.orders.model import TERMINAL_STATES, OrderCommand, OrderState
from edge_agent.orders.store import OrderRecord
from edge_agent.orders.validation import OrderRules
from edge_agent.stops import StopReason

C, S = OrderCommand, OrderState
OPERATOR = audit.Actor("alice", "cli")
TRIGGERS: list[Trigger] = [*OrderCommand, *LineEvent]


def order(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "ORD-1",
        "product": {"gtin": "09506000134352", "description": "Tablets 20 mg"},
        "lot": "LOT-A1",
        "expiry": "301231",
        "quantity": 3,
        "serials": {"source": "list", "serials": ["S0001", "S0002", "S0003", "S0004"]},
        "market": "DE",
    }
    base.update(changes)
    return base


# --- lifecycle -------------------------------------------------------------------------------


@given(st.sampled_from(list(OrderState)), st.lists(st.sampled_from(TRIGGERS), max_size=30))
def test_any_trigger_sequence_stays_in_the_table(
    start: OrderState, triggers: list[Trigger]
) -> None:
    state = start
    for trigger in triggers:
        try:
            after = next_state("O", state, trigger)
        except CommandRefused as exc:
            assert (state, trigger) not in TRANSITIONS
            assert str(state) in str(exc)
            continue
        assert TRANSITIONS[(state, trigger)] == after
        state = after


def test_terminal_states_take_no_command() -> None:
    for state in TERMINAL_STATES:
        for trigger in TRIGGERS:
            with pytest.raises(CommandRefused, match="allowed only when"):
                next_state("O", state, trigger)


# --- the command path, with a line that records what it was asked ------------------------------


class FakeLine:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.problems: list[str] = []
        self.start_refusals: list[str] = []

    def wake(self) -> None:
        self.calls.append(("wake", ""))

    async def hold(self, order_id: str, reason: str) -> None:
        self.calls.append(("hold", order_id))

    def start_problems(self) -> list[str]:
        return self.start_refusals

    async def resume_problems(self, order_id: str) -> list[str]:
        return self.problems

    async def finish(self, order_id: str) -> None:
        self.calls.append(("finish", order_id))

    async def abort(self, order_id: str) -> None:
        self.calls.append(("abort", order_id))


class FakeSettlement:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.balanced = True
        self.settled: list[tuple[str, OrderState]] = []

    def reconcile(self, order_id: str) -> dict[str, Any]:
        return {"balanced": self.balanced, "problems": [] if self.balanced else ["off by one"]}

    async def settle(
        self, record: OrderRecord, final: OrderState, actor: audit.Actor, reason: str | None
    ) -> dict[str, Any]:
        self.settled.append((record.id, final))
        return {"balanced": self.balanced}


@pytest.fixture
def path(tmp_path: Path) -> CommandPath:
    conn = open_db(tmp_path)
    ledger = Ledger(conn, read_point="urn:epc:id:sgln:0950600.01340.L1", company_prefix_length=7)
    commands = CommandPath(
        conn, ledger, AlarmBoard(conn), FakeSettlement(conn), OrderRules(), auto_close=False
    )
    commands.line = FakeLine()
    return commands


def serial_states(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT serial, state FROM serials").fetchall())


async def test_an_order_runs_its_lifecycle_and_every_step_is_audited(path: CommandPath) -> None:
    record = await path.submit(order(), source="api", actor=OPERATOR)
    assert record.state == S.READY
    assert serial_states(path.conn) == dict.fromkeys(
        ["S0001", "S0002", "S0003", "S0004"], "allocated"
    )
    await path.command("ORD-1", C.START, OPERATOR)
    await path.command("ORD-1", C.HOLD, OPERATOR, reason="jam at the labeller")
    assert path.store.open_hold("ORD-1") is not None
    await path.command("ORD-1", C.RESUME, OPERATOR)
    await path.command("ORD-1", C.STOP, OPERATOR)
    closed = await path.command("ORD-1", C.CLOSE, OPERATOR)
    assert closed.state == S.CLOSED
    rows = audit.rows(path.conn, order_id="ORD-1")
    assert [r.action for r in rows] == ["store", "start", "hold", "resume", "stop", "close"]
    assert rows[2].reason == "jam at the labeller" and rows[2].actor == "alice"
    assert audit.verify(path.conn).ok


@pytest.mark.parametrize(
    ("command", "state_word"),
    [(C.HOLD, "ready"), (C.RESUME, "ready"), (C.CLOSE, "ready"), (C.STOP, "ready")],
)
async def test_commands_in_the_wrong_state_are_refused_and_audited(
    path: CommandPath, command: OrderCommand, state_word: str
) -> None:
    await path.submit(order(), source="api", actor=OPERATOR)
    with pytest.raises(CommandRefused, match=f"is {state_word}; '{command}' is allowed only"):
        await path.command("ORD-1", command, OPERATOR, reason="because")
    assert path.store.get("ORD-1").state == S.READY
    last = audit.rows(path.conn)[-1]
    assert (last.action, last.outcome) == (command, "refused")


async def test_a_start_by_a_person_meets_the_same_checks_as_an_automatic_one(
    path: CommandPath,
) -> None:
    """[clock] on_unsynchronised = "refuse" holds for a start from the API or the screen too."""
    line = path.line
    assert isinstance(line, FakeLine)
    line.start_refusals = ["the system clock is not synchronised (chrony: NOT synchronised)"]
    await path.submit(order(), source="api", actor=OPERATOR)
    with pytest.raises(CommandRefused, match="cannot start now: the system clock is not"):
        await path.command("ORD-1", C.START, OPERATOR)
    assert path.store.get("ORD-1").state == S.READY
    last = audit.rows(path.conn)[-1]
    assert (last.action, last.outcome) == ("start", "refused")
    line.start_refusals = []
    assert (await path.command("ORD-1", C.START, OPERATOR)).state == S.RUNNING


async def test_hold_and_abort_need_a_reason(path: CommandPath) -> None:
    await path.submit(order(), source="api", actor=OPERATOR)
    await path.command("ORD-1", C.START, OPERATOR)
    for command in (C.HOLD, C.ABORT):
        with pytest.raises(CommandRefused, match="needs a reason"):
            await path.command("ORD-1", command, OPERATOR, reason="  ")
    assert path.store.get("ORD-1").state == S.RUNNING


async def test_one_order_on_the_line_at_a_time(path: CommandPath) -> None:
    await path.submit(order(), source="api", actor=OPERATOR)
    await path.submit(
        order(id="ORD-2", serials={"source": "generate", "length": 12}),
        source="api",
        actor=OPERATOR,
    )
    await path.command("ORD-1", C.START, OPERATOR)
    with pytest.raises(CommandRefused, match="ORD-1 is running on the line; one order runs"):
        await path.command("ORD-2", C.START, OPERATOR)
    assert await path.start_next(audit.LINE) is None


async def test_resume_waits_for_acknowledged_alarms_and_recovery_checks(path: CommandPath) -> None:
    await path.submit(order(), source="api", actor=OPERATOR)
    await path.command("ORD-1", C.START, OPERATOR)
    await path.line_event("ORD-1", LineEvent.LINE_STOPPED, reason="repeated_rejects")
    alarm = path.alarms.raise_(StopReason.REPEATED_REJECTS, "5 rejects", order_id="ORD-1")
    with pytest.raises(
        CommandRefused, match=rf"acknowledge the alarms of order ORD-1 first: {alarm.id}"
    ):
        await path.command("ORD-1", C.RESUME, OPERATOR)
    path.alarms.acknowledge(alarm.id, "alice")
    line = path.line
    assert isinstance(line, FakeLine)
    line.problems = ["PLC heartbeat not moving"]
    with pytest.raises(CommandRefused, match="cannot resume yet: PLC heartbeat not moving"):
        await path.command("ORD-1", C.RESUME, OPERATOR)
    line.problems = []
    assert (await path.command("ORD-1", C.RESUME, OPERATOR)).state == S.RUNNING
    cleared = path.alarms.get(alarm.id)
    assert cleared is not None and cleared.cleared_at is not None


async def test_close_with_exceptions_needs_a_reason(path: CommandPath) -> None:
    await path.submit(order(), source="api", actor=OPERATOR)
    await path.command("ORD-1", C.START, OPERATOR)
    await path.command("ORD-1", C.STOP, OPERATOR)
    settlement = path.settlement
    assert isinstance(settlement, FakeSettlement)
    settlement.balanced = False
    with pytest.raises(CommandRefused, match=r"off by one.*needs a reason"):
        await path.command("ORD-1", C.CLOSE, OPERATOR)
    assert settlement.settled == []
    closed = await path.command("ORD-1", C.CLOSE, OPERATOR, reason="one pack taken by QA")
    assert closed.state == S.CLOSED and settlement.settled == [("ORD-1", S.CLOSED)]


async def test_a_person_with_the_operator_role_may_not_abort_or_close_with_exceptions(
    path: CommandPath,
) -> None:
    anna = audit.Actor("anna", "hmi", audit.Role.OPERATOR)
    sam = audit.Actor("sam", "hmi", audit.Role.SUPERVISOR)
    await path.submit(order(), source="hmi", actor=anna)
    await path.command("ORD-1", C.START, anna)
    with pytest.raises(CommandRefused, match="'abort' needs a supervisor; anna is an operator"):
        await path.command("ORD-1", C.ABORT, anna, reason="wrong lot")
    await path.command("ORD-1", C.STOP, anna)
    settlement = path.settlement
    assert isinstance(settlement, FakeSettlement)
    settlement.balanced = False
    with pytest.raises(CommandRefused, match="close with exceptions needs a supervisor"):
        await path.command("ORD-1", C.CLOSE, anna, reason="one pack taken by QA")
    assert settlement.settled == []
    closed = await path.command("ORD-1", C.CLOSE, sam, reason="one pack taken by QA")
    assert closed.state == S.CLOSED
    refused = [r for r in audit.rows(path.conn, order_id="ORD-1") if r.outcome == "refused"]
    assert [(r.actor, r.source, r.action) for r in refused] == [
        ("anna", "hmi", "abort"),
        ("anna", "hmi", "close"),
    ]


# --- validation: each bad order is refused precisely and changes nothing ------------------------


BAD_ORDERS = [
    (order(product={"gtin": "09506000134353"}), "product.gtin", "check digit"),
    (order(expiry="200131"), "expiry", "is in the past"),
    (order(expiry="301341"), "expiry", "month"),
    (order(lot="LOT A1"), "lot", "not allowed|character"),
    (order(lot="L" * 21), "lot", "at most 20"),
    (order(quantity=0), "quantity", "greater than or equal to 1"),
    (order(quantity=5), "serials.serials", "holds 4 serials for a quantity of 5"),
    (order(colour="red"), "colour", "unknown key"),
    (order(market="de"), "market", "should match pattern"),
    (
        order(serials={"source": "generate", "length": 4, "alphabet": "0123456789"}),
        "serials.length",
        "guessed with probability 0.0003",
    ),
    (order(serials={"source": "l3"}), "serials.source", "needs an L3 link"),
    (
        order(product={"gtin": "09506000134352", "national_code": {"ai": "710", "value": "ab cd"}}),
        "product.national_code",
        "",
    ),
    (
        order(serials={"source": "list", "serials": ["S1", "S1", "S2"]}, quantity=2),
        "serials.serials",
        "appears twice",
    ),
]


@pytest.mark.parametrize(("data", "key", "message"), BAD_ORDERS)
async def test_bad_orders_are_refused_with_key_and_reason(
    path: CommandPath, data: dict[str, Any], key: str, message: str
) -> None:
    with pytest.raises(OrderInvalid) as info:
        await path.submit(data, source="inbox/ord.json", actor=OPERATOR)
    assert any(k == key and re.search(message, m) for k, m in info.value.problems), (
        info.value.problems
    )
    assert "order ORD-1 from inbox/ord.json" in str(info.value)
    assert path.store.all() == [] and serial_states(path.conn) == {}
    assert audit.rows(path.conn)[-1].outcome == "refused"


async def test_an_order_id_of_an_earlier_batch_is_refused(path: CommandPath) -> None:
    path.ledger.open_batch("ORD-1", "09506000134352", "LOT-A1", "301231", 10)
    with pytest.raises(OrderInvalid, match="a batch ORD-1 was run on this line before"):
        await path.submit(order(), source="api", actor=OPERATOR)


async def test_a_duplicate_order_id_and_reused_serials_are_refused(path: CommandPath) -> None:
    await path.submit(order(), source="api", actor=OPERATOR)
    with pytest.raises(OrderInvalid, match="exists already"):
        await path.submit(order(), source="api", actor=OPERATOR)
    with pytest.raises(OrderInvalid, match="4 serials were handed out before"):
        await path.submit(order(id="ORD-2"), source="api", actor=OPERATOR)
    assert [r.id for r in path.store.all()] == ["ORD-1"]


# --- the audit trail ------------------------------------------------------------------------


async def test_audit_verify_finds_a_changed_and_a_deleted_row(path: CommandPath) -> None:
    await path.submit(order(), source="api", actor=OPERATOR)
    await path.command("ORD-1", C.START, OPERATOR)
    await path.command("ORD-1", C.HOLD, OPERATOR, reason="jam")
    assert audit.verify(path.conn).ok
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        path.conn.execute("UPDATE audit SET reason = 'none' WHERE seq = 3")
    path.conn.execute("DROP TRIGGER audit_no_update")
    path.conn.execute("UPDATE audit SET reason = 'none' WHERE seq = 3")
    assert audit.verify(path.conn).problems == ["row 3: content does not match its hash (changed)"]
    path.conn.execute("DROP TRIGGER audit_no_delete")
    path.conn.execute("DELETE FROM audit WHERE seq = 2")
    problems = audit.verify(path.conn).problems
    assert "row 2..2 missing (deleted)" in problems


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=20))
def test_audit_chain_of_any_length_verifies(tmp_path_factory: Any, names: list[str]) -> None:
    conn = open_db(tmp_path_factory.mktemp("audit"))
    for name in names:
        conn.execute("BEGIN IMMEDIATE")
        audit.append(conn, audit.Actor(name, "api"), "hold", order_id="O", reason=name)
        conn.execute("COMMIT")
    check = audit.verify(conn)
    assert check.ok and check.rows == len(names)
