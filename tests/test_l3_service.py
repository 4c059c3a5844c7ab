"""The L3 service over the real HTTP link against the L3 site-server simulator: orders through
the command path (audited as L3's), refusals answered, serial pages at the low-water mark and
never beyond the need, pages refused whole when they break a rule, idempotent page requests,
returns delivered once and settled in the ledger, outages alarmed once and cleared."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from edge_agent.alarms import AlarmKind
from edge_agent.l3 import messages, requests
from edge_agent.l3.requests import RequestState
from edge_agent.ledger import SerialState
from edge_agent.orders import audit
from edge_agent.orders.model import OrderCommand, OrderState
from simulators.l3 import L3Sim
from tests.helpers.l3 import GTIN, Agent, l3_order, make_agent, running, until

OPERATOR = audit.Actor("alice", "api")


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    return make_agent(tmp_path / "state")


# --- orders -------------------------------------------------------------------------------


async def test_an_l3_order_is_stored_as_l3_s_audited_and_gets_its_first_page(
    agent: Agent, l3_sim: L3Sim
) -> None:
    l3_sim.add_order(l3_order("ORD-1", quantity=25))
    async with running(agent, l3_sim.driver_config(name="site-l3")):
        await until(lambda: agent.state("ORD-1") == OrderState.READY, "order ready")
        await until(lambda: l3_sim.site.orders_acknowledged == ["ORD-1"], "order acknowledged")
    record = agent.commands.store.get("ORD-1")
    assert record.source == "l3:site-l3"
    rows = audit.rows(agent.conn, order_id="ORD-1")
    assert [(r.action, r.actor, r.source, r.outcome) for r in rows] == [
        ("store", "site-l3", "l3", "done"),
        ("serials_ready", "line", "line", "done"),
    ]
    assert audit.verify(agent.conn).ok
    # One page of page_size (10): the order needs 25, its serials in hand are above low water.
    assert len(l3_sim.site.pages) == 1
    page = next(iter(l3_sim.site.pages.values()))
    assert agent.serials("ORD-1") == list(page.serials)
    assert len(page.serials) == 10


async def test_a_refused_order_is_answered_with_its_problems_and_nothing_is_stored(
    agent: Agent, l3_sim: L3Sim
) -> None:
    bad = l3_order("ORD-BAD", market="Germany")
    bad["product"]["gtin"] = "09506000134353"  # wrong check digit
    l3_sim.add_order(bad)
    l3_sim.add_order({"lot": "no id at all"})
    async with running(agent, l3_sim.driver_config()):
        await until(lambda: len(l3_sim.refusals) == 2, "both refusals delivered")
        await until(lambda: messages.pending_count(agent.conn) == 0, "refusals marked delivered")
    assert agent.commands.store.find("ORD-BAD") is None
    refusal = next(m for m in l3_sim.refusals.values() if m["order_id"] == "ORD-BAD")
    assert refusal["kind"] == "order_refused"
    assert refusal["message_id"].startswith("ORD-BAD:refused:")
    keys = {p["key"] for p in refusal["payload"]["problems"]}
    assert {"product.gtin", "market"} <= keys
    anonymous = next(m for m in l3_sim.refusals.values() if m["order_id"] != "ORD-BAD")
    assert anonymous["order_id"].startswith("unidentified-")
    assert "id" in {p["key"] for p in anonymous["payload"]["problems"]}
    # The refusal is audited as L3's attempt; the operator's alarm clears once L3 knows why.
    refused = [r for r in audit.rows(agent.conn) if r.order_id == "ORD-BAD"]
    assert [(r.action, r.source, r.outcome) for r in refused] == [("store", "l3", "refused")]
    alarm = agent.alarms_of(AlarmKind.ORDER_REJECTED)[0]
    assert alarm.order_id == "ORD-BAD" and alarm.cleared_at is not None
    assert l3_sim.duplicates == 0


async def test_an_order_sent_again_after_a_restart_is_not_refused(
    agent: Agent, l3_sim: L3Sim
) -> None:
    l3_sim.add_order(l3_order("ORD-1"))
    async with running(agent, l3_sim.driver_config()):
        await until(lambda: agent.state("ORD-1") == OrderState.READY, "order ready")
    # L3 never got the acknowledgement (say): it offers the order again to a restarted agent.
    l3_sim.site.add_order(l3_order("ORD-1"))
    async with running(agent, l3_sim.driver_config()):
        await until(lambda: not l3_sim.site.pending_orders(), "order acknowledged again")
        await asyncio.sleep(0.3)
    assert l3_sim.refusals == {}
    stores = [r for r in audit.rows(agent.conn, order_id="ORD-1") if r.action == "store"]
    assert len(stores) == 1


# --- serial pages -------------------------------------------------------------------------


async def test_pages_come_at_the_low_water_mark_and_never_beyond_the_need(
    agent: Agent, l3_sim: L3Sim
) -> None:
    l3_sim.add_order(l3_order("ORD-1", quantity=25))
    async with running(agent, l3_sim.driver_config()) as service:
        await until(lambda: len(agent.serials("ORD-1")) == 10, "first page")
        await agent.commands.command("ORD-1", OrderCommand.START, OPERATOR)
        batch = agent.ledger.open_batch("ORD-1", GTIN, "LOT-A1", "301231", 25)
        for _ in range(6):  # 4 left in hand: at low water, not below
            assert agent.ledger.take_for_print(batch) is not None
        service.wake()
        await asyncio.sleep(0.3)
        assert len(l3_sim.site.pages) == 1
        assert agent.ledger.take_for_print(batch) is not None  # 3 in hand: below low water
        await until(lambda: len(l3_sim.site.pages) == 2, "second page")
        # The site counts a page when it serves it; the agent holds it once it committed it.
        await until(lambda: len(agent.serials("ORD-1")) == 20, "second page in the ledger")
        # 7 sent, 3 + 10 in hand: 20 of 25 covered. Use them all: the last page is only 5.
        while agent.ledger.take_for_print(batch) is not None:
            pass
        await until(lambda: len(agent.serials("ORD-1")) == 25, "last page")
        while agent.ledger.take_for_print(batch) is not None:
            pass
        service.wake()
        await asyncio.sleep(0.3)
    sizes = sorted(len(p.serials) for p in l3_sim.site.pages.values())
    assert sizes == [5, 10, 10]
    assert len(set(agent.serials("ORD-1"))) == 25
    assert all(r.state == RequestState.DONE for r in requests.for_order(agent.conn, "ORD-1"))


async def test_a_page_request_whose_answer_is_lost_is_retried_with_the_same_id(
    agent: Agent, l3_sim: L3Sim
) -> None:
    l3_sim.faults.lose_answers = 2  # L3 hands out the page, the agent never hears of it
    l3_sim.add_order(l3_order("ORD-1"))
    async with running(agent, l3_sim.driver_config()):
        await until(lambda: agent.state("ORD-1") == OrderState.READY, "order ready")
    (token,) = l3_sim.site.pages
    assert l3_sim.site.page_requests[token] == 3
    assert l3_sim.http.idempotency_keys == [token] * 3
    assert agent.serials("ORD-1") == list(l3_sim.site.pages[token].serials)
    (request,) = requests.for_order(agent.conn, "ORD-1")
    assert request.request_id == token and request.attempts == 3


async def test_a_page_with_a_serial_used_before_is_refused_whole_and_alarmed(
    agent: Agent, l3_sim: L3Sim
) -> None:
    used = ["USED0001", "USED0002"]
    listed = l3_order("ORD-LIST", quantity=2, serials={"source": "list", "serials": used})
    await agent.commands.submit(listed, source="api", actor=OPERATOR)
    l3_sim.faults.page_serials = ["USED0002"]  # L3 hands out a serial this line had before
    l3_sim.add_order(l3_order("ORD-1"))
    async with running(agent, l3_sim.driver_config()):
        await until(lambda: agent.state("ORD-1") == OrderState.READY, "order ready")
    refused, done = requests.for_order(agent.conn, "ORD-1")
    assert refused.state == RequestState.REFUSED and done.state == RequestState.DONE
    assert refused.request_id != done.request_id
    bad_page = l3_sim.site.pages[refused.request_id]
    assert "USED0002" in bad_page.serials
    # None of the refused page is used; the serial stays the other order's.
    assert set(agent.serials("ORD-1")).isdisjoint(bad_page.serials)
    assert agent.serials("ORD-1") == list(l3_sim.site.pages[done.request_id].serials)
    assert agent.ledger.state_of(GTIN, "USED0002") == SerialState.ALLOCATED
    (alarm,) = agent.alarms_of(AlarmKind.SERIAL_PAGE_REFUSED)
    assert alarm.order_id == "ORD-1" and "USED0002" in alarm.message


@pytest.mark.parametrize(
    ("fault", "value", "why"),
    [
        ("extra_serials", 3, "were asked for"),
        ("page_serials", ["bad serial"], "bad serial"),
        ("page_serials", ["DUP00001", "DUP00001"], "appears twice"),
    ],
)
async def test_a_page_breaking_a_rule_is_refused(
    agent: Agent, l3_sim: L3Sim, fault: str, value: Any, why: str
) -> None:
    setattr(l3_sim.faults, fault, value)
    l3_sim.add_order(l3_order("ORD-1"))
    async with running(agent, l3_sim.driver_config()):
        await until(lambda: agent.state("ORD-1") == OrderState.READY, "order ready")
    first = requests.for_order(agent.conn, "ORD-1")[0]
    assert first.state == RequestState.REFUSED
    assert set(agent.serials("ORD-1")).isdisjoint(l3_sim.site.pages[first.request_id].serials)
    (alarm,) = agent.alarms_of(AlarmKind.SERIAL_PAGE_REFUSED)
    assert why in alarm.message


async def test_an_exhausted_pool_is_alarmed_and_not_asked_again(agent: Agent) -> None:
    async with L3Sim(pool_size=7) as sim:
        sim.add_order(l3_order("ORD-1", quantity=25))
        async with running(agent, sim.driver_config()):
            await until(lambda: agent.state("ORD-1") == OrderState.READY, "order ready")
            await asyncio.sleep(0.3)
        assert len(sim.site.pages) == 1
    assert len(agent.serials("ORD-1")) == 7
    (alarm,) = agent.alarms_of(AlarmKind.SERIAL_POOL_EXHAUSTED)
    assert "18 short" in alarm.message


async def test_a_page_arriving_after_the_order_ended_goes_back_to_l3(
    agent: Agent, l3_sim: L3Sim
) -> None:
    l3_sim.faults.fail_requests = 1000  # L3 cannot answer while the order is cancelled
    l3_sim.add_order(l3_order("ORD-1"))
    async with running(agent, l3_sim.driver_config()):
        await until(lambda: requests.pending(agent.conn), "request sent")
        await agent.commands.command("ORD-1", OrderCommand.CANCEL, OPERATOR, reason="plan")
        l3_sim.faults.fail_requests = 0
        await until(lambda: len(l3_sim.returns) == 2, "order return and late page return")
    (request,) = requests.for_order(agent.conn, "ORD-1")
    assert request.state == RequestState.DISCARDED
    late = l3_sim.returns[f"ORD-1:return:{request.request_id}"]
    assert late["payload"]["serials"] == list(l3_sim.site.pages[request.request_id].serials)
    assert agent.serials("ORD-1") == []


# --- messages -------------------------------------------------------------------------------


async def ready_then_cancelled(agent: Agent, sim: L3Sim) -> list[str]:
    """An L3 order with its first page, cancelled: its serials are owed back to L3."""
    await until(lambda: agent.state("ORD-1") == OrderState.READY, "order ready")
    await agent.commands.command("ORD-1", OrderCommand.CANCEL, OPERATOR, reason="plan changed")
    return agent.serials("ORD-1", SerialState.UNUSED)


async def test_a_return_is_delivered_once_though_l3_fails_the_first_attempts(
    agent: Agent, l3_sim: L3Sim
) -> None:
    l3_sim.add_order(l3_order("ORD-1"))
    async with running(agent, l3_sim.driver_config()):
        l3_sim.faults.fail_messages = 3
        unused = await ready_then_cancelled(agent, l3_sim)
        await until(lambda: messages.pending_count(agent.conn) == 0, "return and report sent")
    assert len(unused) == 10
    (returned,) = l3_sim.returns.values()
    assert returned["message_id"] == "ORD-1:return"
    assert returned["payload"]["serials"] == unused
    assert set(l3_sim.reports) == {"ORD-1:report"}
    assert l3_sim.duplicates == 0
    assert agent.serials("ORD-1", SerialState.RETURNED) == unused
    assert agent.serials("ORD-1", SerialState.UNUSED) == []
    attempts = messages.get(agent.conn, "ORD-1:return")
    assert attempts is not None and attempts.attempts == 4


async def test_a_return_whose_acknowledgement_is_lost_has_its_effect_once(
    agent: Agent, l3_sim: L3Sim
) -> None:
    l3_sim.add_order(l3_order("ORD-1"))
    async with running(agent, l3_sim.driver_config()):
        l3_sim.faults.lose_message_answers = 1  # L3 records the return, its answer is lost
        unused = await ready_then_cancelled(agent, l3_sim)
        await until(lambda: messages.pending_count(agent.conn) == 0, "return and report sent")
    assert l3_sim.duplicates == 1  # sent twice, with one id: L3 keeps it once
    assert l3_sim.site.returned_serials() == unused
    assert agent.serials("ORD-1", SerialState.RETURNED) == unused


# --- outages --------------------------------------------------------------------------------


async def test_l3_going_away_raises_one_alarm_and_work_resumes_when_it_is_back(
    agent: Agent, l3_sim: L3Sim
) -> None:
    async with running(agent, l3_sim.driver_config()) as service:
        await l3_sim.go_away()
        l3_sim.add_order(l3_order("ORD-1"))
        await until(lambda: not service.status().reachable, "outage seen")
        await asyncio.sleep(1.0)  # several failed polls, backing off
        (alarm,) = agent.alarms_of(AlarmKind.L3_UNREACHABLE)
        assert alarm.active and alarm.count == 1
        assert "connect" in (service.status().last_error or "").lower()
        await l3_sim.come_back()
        await until(lambda: agent.state("ORD-1") == OrderState.READY, "order after outage")
        await until(lambda: service.status().reachable, "outage over")
        status = service.status().as_dict()
    (alarm,) = agent.alarms_of(AlarmKind.L3_UNREACHABLE)
    assert alarm.cleared_at is not None
    assert status["reachable"] and status["last_contact"] is not None
    assert status["pending_messages"] == 0 and status["orders_received"] == 1


async def test_a_slow_l3_is_waited_for_within_the_timeout(agent: Agent, l3_sim: L3Sim) -> None:
    l3_sim.faults.delay_s = 0.5
    l3_sim.add_order(l3_order("ORD-1"))
    async with running(agent, l3_sim.driver_config()) as service:
        await until(lambda: agent.state("ORD-1") == OrderState.READY, "order ready")
        assert service.status().reachable
    assert agent.alarms_of(AlarmKind.L3_UNREACHABLE) == []


async def test_an_answer_slower_than_the_timeout_is_an_outage_then_retried_same_id(
    agent: Agent, l3_sim: L3Sim
) -> None:
    l3_sim.add_order(l3_order("ORD-1"))
    async with running(agent, l3_sim.driver_config(request_timeout_s=0.3)) as service:
        await until(lambda: l3_sim.site.orders_acknowledged, "order taken")
        l3_sim.faults.delay_s = 1.0
        await until(lambda: not service.status().reachable, "timeouts seen")
        l3_sim.faults.delay_s = 0.0
        await until(lambda: agent.state("ORD-1") == OrderState.READY, "order ready")
    assert len(l3_sim.site.pages) == 1


# --- local generation ---------------------------------------------------------------------


async def test_the_guessing_probability_of_generated_serials_is_reported(agent: Agent) -> None:
    order = l3_order("ORD-GEN", quantity=1000, serials={"source": "generate", "length": 12})
    with capture_logs() as logs:
        await agent.commands.submit(order, source="api", actor=OPERATOR)
    (entry,) = [e for e in logs if e["event"] == "order_serials_generated"]
    assert entry["guess_probability"] == pytest.approx(1000 / 34**12)
