"""`edge-agent demo --orders 2 --aggregate` (issue 12 acceptance, with a second order): units,
cases and pallets on the simulators with case defects injected by seed, by the daemon's own
stations following one order after the other (the second one held on repeated rejects and
resumed); the report's figures and exit 0; the outbox export of its state validates against the
EPCIS 2.0 schema (when ../shared/conformance is there) and every child EPC is in exactly one
open ADD."""

from __future__ import annotations

import copy
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.cli import main
from edge_agent.db import open_reader
from simulators.demo.aggregation import (
    CASES_PER_MIN,
    FAST_CASES_PER_MIN,
    aggregation_report,
    conveyor_pace,
)
from tests.helpers.epcis import CONFORMANCE

SCHEMA_FILE = CONFORMANCE / "epcis" / "EPCIS-JSON-Schema.json"
UNITS, CASE, PALLET, ORDERS = 24, 4, 2, 2
SEED = 1  # draws a case defect or more among the 6 cases


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, dict[str, Any], Path]]:
    """One demo run (the expensive part) and what it left."""
    tmp = tmp_path_factory.mktemp("demo")
    report_file, state = tmp / "report.json", tmp / "state"
    args = ["demo", "--orders", str(ORDERS), "--aggregate", "--units", str(UNITS), "--fast"]
    args += ["--case-size", str(CASE), "--cases-per-pallet", str(PALLET), "--seed", str(SEED)]
    code = main([*args, "--report-json", str(report_file), "--state-dir", str(state)])
    yield code, json.loads(report_file.read_text()), state


@pytest.fixture(scope="module")
def exported(
    demo: tuple[int, dict[str, Any], Path], tmp_path_factory: pytest.TempPathFactory
) -> Any:
    out = tmp_path_factory.mktemp("export") / "events.json"
    assert main(["outbox", "export", "--state-dir", str(demo[2]), "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_the_demo_packs_cases_and_pallets_and_rejects_every_case_defect(
    demo: tuple[int, dict[str, Any], Path],
) -> None:
    code, report, state = demo
    assert code == 0, report["problems"]
    assert report["balanced"] and report["hierarchy_balanced"] and report["problems"] == []
    orders = report["orders"]
    assert len(orders) == ORDERS
    assert all(o["state"] == "closed" and o["hierarchy_balanced"] for o in orders)
    assert orders[1]["order_id"] in {h["order_id"] for h in report["holds"]}  # and resumed
    assert report["case_defects_injected"] >= 1
    assert report["case_defects_rejected"] == report["case_defects_injected"]
    assert report["cases"] >= 1 and report["pallets"] >= 1
    cases = report["line_end"]["cases"]
    assert report["cases"] == sum(1 for c in cases if c["passed"])
    assert report["cases"] + report["cases_rejected"] == len(cases)
    # Every commissioned unit is in exactly one case or listed loose.
    commissioned = sum(o["serials_commissioned"] for o in orders)
    assert report["units_packed"] + report["units_loose"] == commissioned
    with open_reader(state) as conn:
        packed = conn.execute(
            "SELECT count(*), count(DISTINCT child) FROM packed WHERE level = 'unit'"
        ).fetchone()
        assert packed == (report["units_packed"], report["units_packed"])
        on_pallets = conn.execute("SELECT count(*) FROM packed WHERE level = 'case'").fetchone()
        assert on_pallets == (report["cases"],)


def test_the_report_finds_a_case_whose_ledger_differs_from_its_content(
    demo: tuple[int, dict[str, Any], Path],
) -> None:
    """The comparison with physical truth can fail: a unit swapped in a passed case, a defective
    case that passed, a pallet missing a case are each found."""
    _, report, state = demo
    truth = report["line_end"]
    with open_reader(state) as conn:
        assert aggregation_report(conn, _ids(report), truth)["aggregation_problems"] == []
        swapped = copy.deepcopy(truth)
        passed = next(c for c in swapped["cases"] if c["passed"])
        passed["serials"][0] = "NOT-IN-THE-LEDGER"
        assert _problems(conn, report, swapped) == [
            f"case {passed['number']} (SSCC {_sscc_of(passed)}): the ledger's units differ "
            "from those physically in it"
        ]
        defective = copy.deepcopy(truth)
        bad = next(c for c in defective["cases"] if c["defect"])
        bad["passed"] = True
        assert any(
            f"case {bad['number']} ({bad['defect']}) passed" in p
            for p in _problems(conn, report, defective)
        )
        short = copy.deepcopy(truth)
        short["pallets"][0]["cases"].pop()
        assert any("ledger and pallet differ" in p for p in _problems(conn, report, short))


def test_the_export_validates_against_the_epcis_2_schema(exported: Any) -> None:
    if not SCHEMA_FILE.is_file():
        pytest.skip(f"{SCHEMA_FILE} not found")
    from jsonschema import Draft7Validator, FormatChecker

    schema = Draft7Validator(json.loads(SCHEMA_FILE.read_text()), format_checker=FormatChecker())
    assert [e.message for e in schema.iter_errors(exported)] == []


def test_every_child_epc_is_in_exactly_one_open_add(
    demo: tuple[int, dict[str, Any], Path], exported: Any
) -> None:
    """Applying the AggregationEvents in order (ADD packs, DELETE unpacks the children it names
    or, naming none, all) leaves every child in one parent: the ledger's hierarchy; and every
    child and parent was commissioned before it was packed."""
    _, report, state = demo
    events = exported["epcisBody"]["eventList"]
    aggregations = [e for e in events if e["type"] == "AggregationEvent"]
    assert any(e["action"] == "ADD" for e in aggregations)
    commissioned: set[str] = set()
    open_adds: dict[str, list[str]] = {}  # child -> parents of its open ADDs
    for event in events:
        if event["type"] == "ObjectEvent" and _step(event) == "commissioning":
            commissioned.update(event.get("epcList", []))
        if event["type"] != "AggregationEvent":
            continue
        parent, children = event["parentID"], event.get("childEPCs", [])
        if event["action"] == "ADD":
            assert _step(event) == "packing"
            assert parent in commissioned, f"{parent} packed into before its commissioning"
            for child in children:
                assert child in commissioned, f"{child} packed before its commissioning"
                open_adds.setdefault(child, []).append(parent)
        elif event["action"] == "DELETE":
            named = children or [c for c, ps in open_adds.items() if parent in ps]
            for child in named:
                open_adds[child].remove(parent)
    open_adds = {c: ps for c, ps in open_adds.items() if ps}
    assert all(len(ps) == 1 for ps in open_adds.values()), open_adds
    with open_reader(state) as conn:
        ledger = dict(conn.execute("SELECT child, parent FROM packed").fetchall())
    assert {c: ps[0] for c, ps in open_adds.items()} == ledger
    assert len(ledger) == report["units_packed"] + report["cases"]


@given(units_per_min=st.floats(1.0, 20_000.0), per_case=st.integers(1, 120))
def test_the_case_conveyor_keeps_ahead_of_the_packer_within_the_stations_pace(
    units_per_min: float, per_case: int
) -> None:
    pace = conveyor_pace(units_per_min, per_case)
    assert CASES_PER_MIN <= pace <= FAST_CASES_PER_MIN
    filled = units_per_min / per_case
    # faster than the packer fills cases wherever the stations allow it: no backlog grows
    assert pace >= min(FAST_CASES_PER_MIN, 1.5 * filled)
    assert conveyor_pace(None, per_case) == FAST_CASES_PER_MIN  # --fast


def _problems(conn: sqlite3.Connection, report: dict[str, Any], truth: dict[str, Any]) -> list[str]:
    found = aggregation_report(conn, _ids(report), truth)
    problems: list[str] = found["aggregation_problems"]
    return problems


def _ids(report: dict[str, Any]) -> list[str]:
    return [o["order_id"] for o in report["orders"]]


def _sscc_of(case: dict[str, Any]) -> str:
    from edge_agent import gs1

    sscc = gs1.parse(case["labels"][-1], check_requisites=False).get("00")
    assert sscc is not None
    return sscc


def _step(event: dict[str, Any]) -> str:
    return str(event.get("bizStep", "")).rsplit("/", 1)[-1].rsplit("-", 1)[-1]
