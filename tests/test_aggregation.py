"""The hierarchy: plan validation, identifier allocation, the rules of packing, rework,
sampling and destruction, events and reconciliation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.aggregation import sscc
from edge_agent.aggregation.hierarchy import ContainerState
from edge_agent.aggregation.plan import PartialPolicy
from edge_agent.db import write
from edge_agent.errors import AggregationRefused, OrderInvalid, RefusalReason
from edge_agent.ledger import SerialState
from edge_agent.orders.validation import parse_order
from edge_agent.reconcile import reconcile
from tests.helpers.aggregation import (
    CASE_GTIN,
    GTIN,
    TESTER,
    AggSetup,
    aggregation_db,
    order_spec,
    plan,
)

R = RefusalReason
ORDER = "WO-AGG-1"


@pytest.fixture
def agg(tmp_path: Path) -> Iterator[AggSetup]:
    with aggregation_db(tmp_path / "state") as setup:
        yield setup


def snapshot(setup: AggSetup) -> list[Any]:
    tables = ["containers", "packed", "loose", "serials", "outbox", "identifier_ranges"]
    return [setup.conn.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in tables]


# --- plan -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("aggregation", "key", "text"),
    [
        ({"levels": [{"level": "pallet", "capacity": 2}]}, "aggregation", "'case' level"),
        (
            {"levels": [{"level": "pallet", "capacity": 2}, {"level": "case", "capacity": 4}]},
            "aggregation",
            "lowest first",
        ),
        (
            {"levels": [{"level": "case", "capacity": 4, "identifier": "gtin_serial"}]},
            "aggregation.levels.0",
            "needs the level's 'gtin'",
        ),
        (
            {"levels": [{"level": "case", "capacity": 0}]},
            "aggregation.levels.0.capacity",
            "greater than or equal to 1",
        ),
        (
            {"levels": [{"level": "case", "capacity": 4, "gtin": "19506000134358"}]},
            "aggregation.levels.0.gtin",
            "check digit",
        ),
        (
            {
                "levels": [
                    {"level": "case", "capacity": 4},
                    {
                        "level": "pallet",
                        "capacity": 2,
                        "identifier": "gtin_serial",
                        "gtin": CASE_GTIN,
                    },
                ]
            },
            "aggregation.levels.1",
            "logistic unit",
        ),
        (
            {"levels": [{"level": "case", "capacity": 4, "range_start": 5}]},
            "aggregation.levels.0",
            "both 'range_start' and 'range_end'",
        ),
        (
            {
                "levels": [
                    {
                        "level": "case",
                        "capacity": 4,
                        "company_prefix": "0950600134",
                        "range_start": 0,
                        "range_end": 10**6,
                    }
                ]
            },
            "aggregation.levels.0",
            "6 digits of serial reference",
        ),
        (
            {"levels": [{"level": "case", "capacity": 4, "colour": "red"}]},
            "aggregation.levels.0.colour",
            "unknown key",
        ),
    ],
)
def test_a_bad_plan_is_refused_with_its_key(aggregation: Any, key: str, text: str) -> None:
    with pytest.raises(OrderInvalid) as refused:
        parse_order(order_spec(aggregation=aggregation), "test")
    assert any(k == key and text in m for k, m in refused.value.problems), refused.value.problems


def test_a_case_gtin_equal_to_the_unit_gtin_is_a_rule_problem() -> None:
    spec = order_spec(
        aggregation={"levels": [{"level": "case", "capacity": 4, "identifier": "gtin_serial",
                                 "gtin": GTIN}]}
    )  # fmt: skip
    problems = parse_order(spec, "test").rule_problems()
    assert [k for k, _ in problems] == ["aggregation.levels.0.gtin"]


def test_a_fixed_measure_case_gtin_refuses_partial_cases() -> None:
    """GS1: a case GTIN fixes its content; a partial case would carry a wrong GTIN. Refused by
    default, and a plan that allows it is a rule problem; a variable-measure GTIN may be partial."""
    fixed = parse_order(order_spec(aggregation=plan(case_identifier="gtin_serial")), "test")
    assert fixed.aggregation is not None
    assert fixed.aggregation.level("case").partial_policy == PartialPolicy.REFUSED
    allowed = order_spec(aggregation=plan(case_identifier="gtin_serial", partial="allowed"))
    problems = parse_order(allowed, "test").rule_problems()
    assert [k for k, _ in problems] == ["aggregation.levels.0.partial"]
    assert "fixed-measure" in problems[0][1]
    variable = {"levels": [{"level": "case", "capacity": 4, "identifier": "gtin_serial",
                            "gtin": "99506000134355", "partial": "allowed"}]}  # fmt: skip
    order = parse_order(order_spec(aggregation=variable), "test")
    assert order.rule_problems() == []
    assert order.aggregation is not None
    assert order.aggregation.level("case").partial_policy == PartialPolicy.ALLOWED
    default = parse_order(order_spec(), "test").aggregation
    assert default is not None and default.level("case").partial_policy == PartialPolicy.ALLOWED


def test_plan_levels() -> None:
    order = parse_order(order_spec(aggregation=plan(case=6, pallet=10, bundle=3)), "test")
    assert order.aggregation is not None
    assert order.aggregation.child_level("bundle") == "unit"
    assert order.aggregation.child_level("pallet") == "case"
    assert order.aggregation.parent_level("case") == "pallet"
    assert order.aggregation.parent_level("pallet") is None


# --- identifiers ------------------------------------------------------------------------------


def test_sscc_parts_and_check_digit() -> None:
    code = sscc.sscc(3, "0614141", 123456789)
    body = "30614141123456789"  # mod 10, weights 3 and 1 from the right (GS1 Gen Specs 7.9)
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    assert code == body + str(-total % 10)
    sscc.check_sscc(code)
    with pytest.raises(Exception, match="check digit"):
        sscc.check_sscc(code[:-1] + "3")
    with pytest.raises(Exception, match="does not fit"):
        sscc.sscc(0, "0614141", 10**9)


def test_identifiers_are_never_reused_across_restarts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    seen = set()
    with aggregation_db(state) as setup:
        setup.add_order(order_spec())
        for _ in range(3):
            seen.add(setup.hierarchy.open_container(ORDER, "case").code)
    with aggregation_db(state) as setup:  # a restart: the reserved ones were never committed
        scrapped = setup.hierarchy.recover_reserved()
        assert {c.code for c in scrapped} == seen
        assert all(c.state == ContainerState.SCRAPPED for c in scrapped)
        for _ in range(3):
            code = setup.hierarchy.open_container(ORDER, "case").code
            assert code not in seen
            seen.add(code)
    assert len(seen) == 6


def test_a_rolled_back_allocation_leaves_the_range_where_it_was(agg: AggSetup) -> None:
    agg.add_order(order_spec())
    before = agg.conn.execute("SELECT * FROM identifier_ranges").fetchall()
    with pytest.raises(RuntimeError), write(agg.conn):
        agg.hierarchy.open_container(ORDER, "case")
        raise RuntimeError("crash before commit")
    assert agg.conn.execute("SELECT * FROM identifier_ranges").fetchall() == before
    assert agg.hierarchy.containers(ORDER) == []


def test_a_range_runs_out_with_a_clear_refusal(agg: AggSetup) -> None:
    spec = order_spec(
        aggregation={"levels": [{"level": "case", "capacity": 4, "range_start": 7,
                                 "range_end": 8}]}
    )  # fmt: skip
    agg.add_order(spec)
    codes = [agg.hierarchy.open_container(ORDER, "case").code for _ in range(2)]
    assert [c[8:17] for c in codes] == ["000000007", "000000008"]
    with pytest.raises(AggregationRefused, match="range 7-8") as refused:
        agg.hierarchy.open_container(ORDER, "case")
    assert refused.value.reason == R.IDENTIFIERS_EXHAUSTED


def test_case_gtin_serial_identifiers(agg: AggSetup) -> None:
    batch = agg.add_order(order_spec(aggregation=plan(case=2, case_identifier="gtin_serial")))
    units = agg.units(batch, 2)
    case = agg.hierarchy.open_container(ORDER, "case")
    assert case.code == f"01{CASE_GTIN}210000000000"
    assert case.epc == "urn:epc:id:sgtin:9506000.113435.0000000000"
    agg.hierarchy.pack(f"(01){CASE_GTIN}(21)0000000000", units, close=True)
    assert agg.hierarchy.parent_of(units[0]) == case.epc
    commissioning = events(agg, "container_commissioning")[0]
    assert commissioning["ilmd"]["cbvmda:lotNumber"] == "LOT1"


def test_identifiers_from_l3_are_stored_before_use_and_never_twice(agg: AggSetup) -> None:
    spec = order_spec(aggregation={"levels": [{"level": "case", "capacity": 4, "source": "l3"}]})
    agg.add_order(spec)
    order = parse_order(spec, "test")
    assert order.aggregation is not None
    level = order.aggregation.level("case")
    page = [sscc.sscc(0, "9506000", n) for n in (100, 101)]
    with write(agg.conn):
        assert sscc.add_to_pool(agg.conn, ORDER, level, page, 7) == 2
    assert [agg.hierarchy.open_container(ORDER, "case").code for _ in range(2)] == page
    with pytest.raises(AggregationRefused) as refused:
        agg.hierarchy.open_container(ORDER, "case")
    assert refused.value.reason == R.IDENTIFIERS_EXHAUSTED
    with pytest.raises(AggregationRefused) as reused, write(agg.conn):
        sscc.add_to_pool(agg.conn, ORDER, level, page[:1], 7)
    assert reused.value.reason == R.IDENTIFIER_USED


# --- rules ------------------------------------------------------------------------------------


def events(setup: AggSetup, kind: str | None = None) -> list[dict[str, Any]]:
    rows = setup.conn.execute("SELECT kind, payload FROM outbox ORDER BY seq").fetchall()
    return [json.loads(p) for k, p in rows if kind is None or k == kind]


def refused(setup: AggSetup, why: RefusalReason, call: Any, *args: Any, **kw: Any) -> str:
    before = snapshot(setup)
    with pytest.raises(AggregationRefused) as exc:
        call(*args, **kw)
    assert exc.value.reason == why, str(exc.value)
    assert snapshot(setup) == before, "a refused operation changed the ledger"
    return str(exc.value)


def test_pack_rules_refuse_and_change_nothing(agg: AggSetup) -> None:
    h = agg.hierarchy
    batch = agg.add_order(order_spec())
    units = agg.units(batch, 6)
    rejected = agg.units(batch, 1, passed=False)
    other = agg.add_order(order_spec("WO-AGG-2"))
    foreign = agg.units(other, 1)
    other_lot = agg.add_order(order_spec("WO-AGG-3", lot="LOT2"))
    wrong_lot = agg.units(other_lot, 1)
    case = h.open_container(ORDER, "case")
    h.pack(case.code, units[:2])
    refused(agg, R.ALREADY_PACKED, h.pack, case.code, [units[2], units[0]])
    refused(agg, R.DUPLICATE, h.pack, case.code, [units[2], units[2]])
    refused(agg, R.NOT_COMMISSIONED, h.pack, case.code, rejected)
    refused(agg, R.OTHER_ORDER, h.pack, case.code, foreign)
    refused(agg, R.WRONG_LOT, h.pack, case.code, wrong_lot)
    refused(agg, R.CAPACITY, h.pack, case.code, units[2:5])
    refused(agg, R.UNKNOWN_CODE, h.pack, case.code, [f"(01){GTIN}(21)NOSUCH"])
    refused(agg, R.UNKNOWN_CODE, h.pack, case.code, ["garbage"])
    pallet = h.open_container(ORDER, "pallet")
    refused(agg, R.WRONG_LEVEL, h.pack, pallet.code, units[2:3])
    refused(agg, R.CHILD_NOT_CLOSED, h.pack, pallet.code, [case.code])
    refused(agg, R.WRONG_LEVEL, h.pack, case.code, [pallet.code])
    h.close_container(case.code)
    refused(agg, R.CONTAINER_STATE, h.pack, case.code, units[2:3])
    refused(agg, R.REASON_MISSING, h.unpack, case.code, units[:1], reason=" ")
    refused(agg, R.NO_PLAN, h.open_container, ORDER, "bundle")


def test_partial_cases_follow_the_plan(agg: AggSetup) -> None:
    h = agg.hierarchy
    batch = agg.add_order(order_spec(aggregation=plan(case=4, pallet=None, partial="refused")))
    units = agg.units(batch, 3)
    case = h.open_container(ORDER, "case")
    h.pack(case.code, units)
    refused(agg, R.PARTIAL_REFUSED, h.close_container, case.code)
    refused(agg, R.CONTAINER_STATE, h.close_container, h.open_container(ORDER, "case").code)


def test_a_rejected_unit_leaves_its_case_with_an_unpacking_event_first(agg: AggSetup) -> None:
    batch = agg.add_order(order_spec())
    units = agg.units(batch, 2)
    case = agg.hierarchy.open_container(ORDER, "case")
    agg.hierarchy.pack(case.code, units)
    serial = units[0].rsplit(".", 1)[1]
    trigger = agg.conn.execute("SELECT trigger FROM units WHERE serial = ?", (serial,)).fetchone()[
        0
    ]
    assert agg.ledger.confirm_rejected_at_gate(batch, trigger) == "decommissioned"
    assert agg.hierarchy.children(case.code) == units[1:]
    kinds = [e["bizStep"] for e in events(agg)][-2:]
    assert kinds == ["unpacking", "decommissioning"]


def test_sampled_and_destroyed_units_leave_and_never_come_back(agg: AggSetup) -> None:
    h = agg.hierarchy
    batch = agg.add_order(order_spec())
    units = agg.units(batch, 4)
    case = h.open_container(ORDER, "case")
    h.pack(case.code, units, close=True)
    h.sample(units[0], actor=TESTER)
    h.destroy(units[1], reason="crushed", actor=TESTER)
    assert agg.ledger.state_of(GTIN, units[0].rsplit(".", 1)[1]) == SerialState.SAMPLED
    assert agg.ledger.state_of(GTIN, units[1].rsplit(".", 1)[1]) == SerialState.DESTROYED
    assert h.children(case.code) == units[2:]
    h.reopen(case.code)
    refused(agg, R.NOT_COMMISSIONED, h.pack, case.code, units[:1])
    refused(agg, R.NOT_COMMISSIONED, h.pack, case.code, units[1:2])
    refused(agg, R.NOT_COMMISSIONED, h.sample, units[0])
    steps = [(e["type"], e.get("action"), e["bizStep"]) for e in events(agg)[-5:]]
    assert steps == [
        ("AggregationEvent", "DELETE", "unpacking"),
        ("ObjectEvent", "OBSERVE", "sampling"),
        ("ObjectEvent", "DELETE", "decommissioning"),
        ("AggregationEvent", "DELETE", "unpacking"),
        ("ObjectEvent", "DELETE", "destroying"),
    ]


def test_events_come_in_an_order_l3_can_apply(agg: AggSetup) -> None:
    h = agg.hierarchy
    batch = agg.add_order(order_spec(aggregation=plan(case=2, pallet=2)))
    units = agg.units(batch, 4)
    cases = [h.open_container(ORDER, "case") for _ in range(2)]
    for case, pair in zip(cases, (units[:2], units[2:]), strict=True):
        h.pack(case.code, pair, close=True)
    pallet = h.open_container(ORDER, "pallet")
    h.pack(pallet.code, [c.code for c in cases], close=True)
    h.reopen(cases[0].code)
    h.unpack(cases[0].code, units[:1], reason="damaged box", actor=TESTER)
    commissioned: set[str] = set()
    inside: dict[str, str] = {}
    for event in events(agg):
        if event["type"] == "ObjectEvent" and event["bizStep"] == "commissioning":
            commissioned.update(event["epcList"])
        elif event["type"] == "AggregationEvent":
            parent = event["parentID"]
            assert parent in commissioned, "a parent packed before its commissioning"
            for child in event["childEPCs"]:
                assert child in commissioned, "a child packed before its commissioning"
                if event["action"] == "ADD":
                    assert child not in inside
                    inside[child] = parent
                else:
                    assert inside.pop(child) == parent
    assert inside == {units[1]: cases[0].epc, units[2]: cases[1].epc, units[3]: cases[1].epc,
                      cases[0].epc: pallet.epc, cases[1].epc: pallet.epc}  # fmt: skip


# --- rework -----------------------------------------------------------------------------------


def test_rework_replace_relabel_disaggregate(agg: AggSetup) -> None:
    h = agg.hierarchy
    batch = agg.add_order(order_spec(aggregation=plan(case=3, pallet=2)))
    units = agg.units(batch, 5)
    case = h.open_container(ORDER, "case")
    h.pack(case.code, units[:3], close=True)
    pallet = h.open_container(ORDER, "pallet")
    h.pack(pallet.code, [case.code])
    h.reopen(case.code, actor=TESTER)
    h.replace(case.code, units[0], units[3], reason="smudged code", actor=TESTER)
    assert h.children(case.code) == units[1:4]
    assert h.loose(ORDER) == {units[0]: "smudged code"}
    h.close_container(case.code, actor=TESTER)
    new = h.relabel(case.code, reason="label torn", actor=TESTER)
    assert new.code != case.code and new.state == ContainerState.CLOSED
    assert h.children(new.code) == units[1:4]
    assert h.parent_of(new.code) == pallet.epc
    assert h.container(case.code).state == ContainerState.DISAGGREGATED
    assert h.children(pallet.code) == [new.epc]
    h.disaggregate(pallet.code, reason="pallet broken", actor=TESTER)
    assert h.parent_of(new.code) is None
    assert h.loose(ORDER)[new.epc] == "pallet broken"
    refused(agg, R.CONTAINER_STATE, h.pack, pallet.code, [new.code])
    actions = [
        r[0] for r in agg.conn.execute("SELECT action FROM audit WHERE action LIKE 'container_%'")
    ]
    assert actions == [
        "container_reopen",
        "container_replace",
        "container_close",
        "container_relabel",
        "container_disaggregate",
    ]


def test_a_refusal_with_an_actor_is_audited(agg: AggSetup) -> None:
    agg.add_order(order_spec())
    with pytest.raises(AggregationRefused):
        agg.hierarchy.pack("(00)095060000000000008", [], actor=TESTER)
    row = agg.conn.execute("SELECT action, outcome, detail FROM audit").fetchall()[-1]
    assert row[:2] == ("container_pack", "refused")
    assert json.loads(row[2])["refused"] == "unknown_code"


# --- reconciliation ---------------------------------------------------------------------------


def test_reconciliation_covers_the_hierarchy(agg: AggSetup) -> None:
    h = agg.hierarchy
    batch = agg.add_order(order_spec(aggregation=plan(case=2, pallet=None)))
    units = agg.units(batch, 5)
    case = h.open_container(ORDER, "case")
    h.pack(case.code, units[:2])
    report = reconcile(agg.conn, ORDER)
    assert not report["hierarchy_balanced"]
    assert "1 cases still open" in report["hierarchy_problems"]
    assert (
        "3 commissioned units are in no case and not listed loose with a reason"
        in (report["hierarchy_problems"])
    )
    h.close_container(case.code)
    second = h.open_container(ORDER, "case")
    h.pack(second.code, units[2:4], close=True)
    h.sample(units[0])
    h.leave_loose(ORDER, units[4:], reason="partial_refused")
    report = reconcile(agg.conn, ORDER)
    assert report["hierarchy_balanced"], report["hierarchy_problems"]
    assert report["balanced"], report["problems"]
    assert report["aggregation"]["units_packed"] == 3
    assert report["aggregation"]["units_loose_by_reason"] == {"partial_refused": 1}
    assert report["serials_sampled"] == 1


def test_an_order_without_a_plan_balances_its_hierarchy_trivially(agg: AggSetup) -> None:
    spec = order_spec()
    del spec["aggregation"]
    batch = agg.add_order(spec)
    agg.units(batch, 2)
    report = reconcile(agg.conn, ORDER)
    assert report["hierarchy_balanced"] and report["aggregation"] is None
    assert report["balanced"], report["problems"]


_KILLED_MID_PACK = """
import os, signal, sys
from pathlib import Path
from edge_agent.db import write
from tests.helpers.aggregation import aggregation_db, order_spec
with aggregation_db(Path(sys.argv[1])) as agg:
    batch = agg.add_order(order_spec())
    units = agg.units(batch, 4)
    case = agg.hierarchy.open_container("WO-AGG-1", "case")
    print(case.code, *units, flush=True)
    with write(agg.conn):  # the station's commit, cut by a power loss before COMMIT
        agg.hierarchy.pack(case.code, units, close=True)
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_kill_during_a_pack_leaves_the_case_unaggregated_and_its_sscc_unused(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    state = tmp_path / "state"
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_MID_PACK, str(state)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == -9, done.stderr
    code, *units = done.stdout.split()
    with aggregation_db(state) as agg:
        h = agg.hierarchy
        assert h.container(code).state == ContainerState.RESERVED  # the pack never happened
        assert all(h.parent_of(u) is None for u in units)
        assert events(agg, "packing") == [] and events(agg, "container_commissioning") == []
        assert [c.code for c in h.recover_reserved()] == [code]
        again = h.open_container(ORDER, "case")
        assert again.code != code
        h.pack(again.code, units, close=True)
        assert h.children(again.code) == units
