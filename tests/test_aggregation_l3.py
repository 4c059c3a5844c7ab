"""Case and pallet identifiers from L3 on the path of unit serials (the real HTTP link against
the L3 simulator): pages stored before use, each level asked apart from the units, a reused
identifier refusing its page whole, unused ones returned when the order ends."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.aggregation.hierarchy import Hierarchy
from edge_agent.aggregation.sscc import check_sscc
from edge_agent.alarms import AlarmKind
from edge_agent.errors import OrderInvalid
from edge_agent.l3 import messages, requests
from edge_agent.l3.requests import RequestState
from edge_agent.orders import audit
from edge_agent.orders.model import OrderCommand, OrderState
from simulators.l3 import L3Sim
from tests.helpers.l3 import Agent, l3_order, make_agent, running, until

CASE_GTIN = "19506000134359"
PLAN = {
    "levels": [
        {"level": "case", "capacity": 5, "identifier": "gtin_serial", "gtin": CASE_GTIN,
         "source": "l3"},
        {"level": "pallet", "capacity": 2, "extension_digit": 3, "source": "l3"},
    ]
}  # fmt: skip
OPERATOR = audit.Actor("alice", "api")


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    return make_agent(tmp_path / "state")


def pool(agent: Agent, level: str) -> list[str]:
    rows = agent.conn.execute(
        "SELECT code FROM identifier_pool WHERE order_id = 'ORD-1' AND level = ? ORDER BY rowid",
        (level,),
    )
    return [code for (code,) in rows]


async def test_identifiers_come_in_pages_and_open_containers_use_them(
    agent: Agent, l3_sim: L3Sim
) -> None:
    l3_sim.add_order(l3_order("ORD-1", quantity=40, aggregation=PLAN))
    async with running(agent, l3_sim.driver_config()):
        await until(lambda: agent.state("ORD-1") == OrderState.READY, "order ready")
        # 40 units: 8 cases + a spare (one page of up to 10), 4 pallets + a spare
        await until(lambda: len(pool(agent, "case")) == 9, "case identifiers")
        await until(lambda: len(pool(agent, "pallet")) == 5, "pallet identifiers")
    keys = {r.gtin for r in requests.for_order(agent.conn, "ORD-1")}
    assert keys == {"09506000134352", CASE_GTIN, "sscc:39506000"}
    cases = pool(agent, "case")
    assert all(c.startswith(f"01{CASE_GTIN}21") for c in cases)
    for code in pool(agent, "pallet"):
        check_sscc(code)
        assert code.startswith("39506000")
    hierarchy = Hierarchy(agent.ledger)
    assert hierarchy.open_container("ORD-1", "case").code == cases[0]
    assert hierarchy.open_container("ORD-1", "pallet").code == pool(agent, "pallet")[0]

    await agent.commands.command("ORD-1", OrderCommand.CANCEL, OPERATOR, reason="test")
    returns = {
        m.id: m.payload
        for m in messages.for_order(agent.conn, "ORD-1")
        if m.kind == "serial_return"
    }
    assert returns["ORD-1:return:identifiers-case"]["gtin"] == CASE_GTIN
    assert len(returns["ORD-1:return:identifiers-case"]["serials"]) == 8  # one was taken
    assert returns["ORD-1:return:identifiers-pallet"]["gtin"] == "sscc:39506000"


async def test_a_page_reusing_an_identifier_is_refused_whole(agent: Agent, l3_sim: L3Sim) -> None:
    plan = {"levels": [{"level": "case", "capacity": 5, "identifier": "gtin_serial",
                        "gtin": CASE_GTIN, "source": "l3"}]}  # fmt: skip
    l3_sim.add_order(l3_order("ORD-1", quantity=60, aggregation=plan))  # 12 cases + 1 spare
    async with running(agent, l3_sim.driver_config()):
        await until(lambda: len(pool(agent, "case")) == 10, "a page of case identifiers")
        first = pool(agent, "case")[0]
        l3_sim.site.faults.page_serials = [first[18:]]  # a case serial L3 gave before
        hierarchy = Hierarchy(agent.ledger)
        for _ in range(7):  # 3 left, below low water: the next page comes
            hierarchy.open_container("ORD-1", "case")
        await until(
            lambda: agent.alarms_of(AlarmKind.SERIAL_PAGE_REFUSED), "the reused page refused"
        )
    refused = [
        r for r in requests.for_order(agent.conn, "ORD-1") if r.state == RequestState.REFUSED
    ]
    assert refused and refused[0].gtin == CASE_GTIN
    assert len(pool(agent, "case")) == 10  # nothing of the refused page was stored


async def test_an_l3_identifier_source_needs_an_l3_link(tmp_path: Path) -> None:
    from tests.helpers.api import make_rig

    rig = make_rig(tmp_path / "state")
    order = l3_order("ORD-1", aggregation=PLAN, serials={"source": "generate"})
    with pytest.raises(OrderInvalid) as refused:
        await rig.commands.submit(order, source="api", actor=OPERATOR)
    assert [k for k, _ in refused.value.problems] == [
        "aggregation.levels.0.source",
        "aggregation.levels.1.source",
    ]
