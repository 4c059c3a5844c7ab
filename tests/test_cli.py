"""The command line as a user meets it: gs1, batch report, simulate, demo."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.cli import main

REPORT_KEYS = {
    "units", "passed", "rejected", "rejected_by_reason", "injected_defects", "defects_rejected",
    "good_rejected", "serials_allocated", "serials_commissioned", "serials_unused", "duplicates",
    "balanced",
}  # fmt: skip


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, json.loads(out.out if code == 0 else out.err)


def test_gs1_build_prints_ais_element_string_and_hri(capsys: pytest.CaptureFixture[str]) -> None:
    code, result = run_json(
        capsys, "gs1", "build", "--gtin", "09506000134352", "--expiry", "281231",
        "--lot", "DEMO24A", "--serial", "ABC123",
    )  # fmt: skip
    assert code == 0
    assert result["element_string"] == "01095060001343521728123110DEMO24A<GS>21ABC123"
    assert result["hri"] == "(01)09506000134352(17)281231(10)DEMO24A(21)ABC123"
    assert [(a["ai"], a["value"]) for a in result["ais"]] == [  # type: ignore[attr-defined]
        ("01", "09506000134352"), ("17", "281231"), ("10", "DEMO24A"), ("21", "ABC123"),
    ]  # fmt: skip


def test_gs1_parse_raw_with_symbology_and_gs(capsys: pytest.CaptureFixture[str]) -> None:
    code, result = run_json(capsys, "gs1", "parse", "]d201095060001343521728120010ABC<GS>21XYZ")
    assert code == 0
    assert result["symbology"] == "]d2"
    assert result["hri"] == "(01)09506000134352(17)281200(10)ABC(21)XYZ"


def test_gs1_errors_are_precise(capsys: pytest.CaptureFixture[str]) -> None:
    code, error = run_json(capsys, "gs1", "build", "--gtin", "09506000134353", "--serial", "A")
    assert code == 1 and error["ai"] == "01" and "check digit" in str(error["error"])
    code, error = run_json(capsys, "gs1", "build", "--gtin", "09506000134352", "--serial", "A#B")
    assert code == 1 and error["ai"] == "21" and "character set 82" in str(error["error"])


def test_demo_fast_balances_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_file = tmp_path / "r.json"
    state = tmp_path / "state"
    args = ["demo", "--units", "120", "--fast", "--defect-rate", "0.1", "--seed", "7"]
    code = main([*args, "--report-json", str(report_file), "--state-dir", str(state)])
    assert code == 0, capsys.readouterr().out
    report = json.loads(report_file.read_text())
    assert report.keys() >= REPORT_KEYS
    # Every unit got a verdict, or (in flight when the line held) was rejected for lack of one.
    assert report["balanced"] and report["units"] + report["undecided_rejected"] == 120
    assert report["injected_defects"] > 0 and report["process_exits"] == 0
    assert report["defects_rejected"] == report["injected_defects"]
    # A good unit is rejected only when its verdict was late (a loaded machine): its serial too.
    assert report["serials_rejected"] >= report["plc_rejected"] and report["duplicates"] == 0
    (order,) = report["orders"]
    assert order["state"] == "closed" and order["serials_returned"] == report["serials_returned"]
    # The same reconciliation, from the state database alone:
    capsys.readouterr()
    assert main(["batch", "report", "--state-dir", str(state), "--json"]) == 0
    ledger = json.loads(capsys.readouterr().out)
    for key in ("units", "passed", "rejected", "serials_commissioned", "balanced"):
        assert ledger[key] == report[key]


def test_demo_forwards_every_event_to_the_capture_simulator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_file = tmp_path / "r.json"
    args = ["demo", "--units", "80", "--fast", "--upstream", "epcis-http", "--seed", "3"]
    code = main([*args, "--report-json", str(report_file), "--state-dir", str(tmp_path / "s")])
    assert code == 0, capsys.readouterr().out
    report = json.loads(report_file.read_text())
    events = sum(report[f"events_{k}"] for k in ("commissioning", "decommissioning", "destroying"))
    assert report["balanced"] and events >= 80
    assert report["events_pending_delivery"] == 0
    assert report["events_received_upstream"] == events


def test_batch_report_without_state_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["batch", "report", "--state-dir", str(tmp_path)]) == 1
    assert "no state database" in capsys.readouterr().err


def test_simulate_serves_the_configured_simulators(tmp_path: Path) -> None:
    demo = (Path(__file__).resolve().parents[1] / "config" / "demo.toml").read_text()
    config = tmp_path / "sim.toml"
    config.write_text(re.sub(r"(\[simulators\.\w+\]\nport = )\d+", r"\g<1>0", demo))
    truth = tmp_path / "truth.json"
    cmd = [sys.executable, "-m", "edge_agent.cli", "simulate", "--config", str(config)]
    proc = subprocess.Popen(
        [*cmd, "--report-json", str(truth)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ports = json.loads(proc.stdout.readline())["simulators"]
        assert set(ports) == {"printer", "camera", "plc"} and all(ports.values())
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert proc.stdout is not None
        proc.stdout.close()
    assert json.loads(truth.read_text())["units_triggered"] == 0
