"""`edge-agent demo --aggregate --bundle 5`: a bundler (its own station of the daemon,
``[aggregation.bundle_station]``) shrink-wraps every 5 units into a bundle before the case packer,
bundle and case defects injected by seed: bundle -> case -> pallet. The report balances, every
defect is rejected at its level (exit 0), each unit is in exactly one bundle, each bundle in
exactly one case or loose for rework, and the comparison with physical truth can fail."""

from __future__ import annotations

import copy
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.cli import main
from edge_agent.db import open_reader
from simulators.aggregation.label import label_code
from simulators.demo.aggregation import aggregation_report

UNITS, BUNDLE = 100, 5


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, dict[str, Any], Path]]:
    tmp = tmp_path_factory.mktemp("demo-bundle")
    report_file, state = tmp / "report.json", tmp / "state"
    args = ["demo", "--orders", "1", "--aggregate", "--bundle", str(BUNDLE), "--fast"]
    args += ["--units", str(UNITS), "--seed", "1"]
    code = main([*args, "--report-json", str(report_file), "--state-dir", str(state)])
    yield code, json.loads(report_file.read_text()), state


def test_units_are_bundled_bundles_cased_and_every_defect_rejected(
    demo: tuple[int, dict[str, Any], Path],
) -> None:
    code, report, state = demo
    assert code == 0, report["problems"]
    assert report["balanced"] and report["hierarchy_balanced"] and report["problems"] == []
    (order,) = report["orders"]
    assert order["state"] == "closed" and order["hierarchy_balanced"]
    assert report["bundle_defects_injected"] >= 1  # the seed draws some
    assert report["bundle_defects_rejected"] == report["bundle_defects_injected"]
    assert report["case_defects_rejected"] == report["case_defects_injected"]
    bundles = report["line_end"]["bundles"]["cases"]
    passed = [b for b in bundles if b["passed"]]
    assert report["bundles"] == len(passed) >= 1 and report["cases"] >= 1
    with open_reader(state) as conn:
        closed = dict(
            conn.execute("SELECT code, epc FROM containers WHERE level = 'bundle' AND "
                         "state = 'closed'").fetchall()
        )  # fmt: skip
        for bundle in passed:  # exactly the units physically in it, in no other bundle
            code_on_label = label_code(bundle["labels"][-1])
            assert code_on_label in closed
            units = _units_in(conn, closed[code_on_label])
            assert units == set(bundle["serials"]) and len(units) == len(bundle["serials"])
        (rows, distinct) = conn.execute(
            "SELECT count(*), count(DISTINCT p.child) FROM packed p JOIN containers c "
            "ON c.epc = p.parent WHERE c.level = 'bundle' AND p.level = 'unit'"
        ).fetchone()
        assert rows == distinct == sum(len(b["serials"]) for b in passed)
        # each closed bundle is in exactly one case, or recorded loose (its case rejected)
        for epc in closed.values():
            parents = conn.execute(
                "SELECT c.level FROM packed p JOIN containers c ON c.epc = p.parent "
                "WHERE p.child = ?",
                (epc,),
            ).fetchall()
            loose = conn.execute("SELECT count(*) FROM loose WHERE child = ?", (epc,)).fetchone()
            assert (parents, loose) in (([("case",)], (0,)), ([], (1,))), epc
        in_cases = conn.execute(
            "SELECT count(*) FROM packed p JOIN containers c ON c.epc = p.parent "
            "WHERE c.level = 'case' AND c.state = 'closed' AND p.level = 'bundle'"
        ).fetchone()
        cases = [c for c in report["line_end"]["cases"] if c["passed"]]
        assert in_cases == (sum(len(c["serials"]) for c in cases),)


def test_the_report_finds_a_bundle_whose_ledger_differs_from_its_content(
    demo: tuple[int, dict[str, Any], Path],
) -> None:
    _, report, state = demo
    truth = copy.deepcopy(report["line_end"])
    bundle = next(b for b in truth["bundles"]["cases"] if b["passed"])
    bundle["serials"][0] = "SWAPPED000001"
    ids = [o["order_id"] for o in report["orders"]]
    with open_reader(state) as conn:
        assert aggregation_report(conn, ids, report["line_end"])["aggregation_problems"] == []
        problems = aggregation_report(conn, ids, truth)["aggregation_problems"]
    assert any(f"bundle {bundle['number']}" in p and "differ" in p for p in problems), problems


def _units_in(conn: sqlite3.Connection, epc: str) -> set[str]:
    rows = conn.execute("SELECT serial FROM packed WHERE parent = ? AND level = 'unit'", (epc,))
    return {str(serial) for (serial,) in rows}
