"""Tests that need a system tool skip with the package to install, or fail under EDGE_AGENT_CI=1.

The tool-using tests are run in a pytest subprocess on a machine made to look as if mosquitto,
mbpoll and libdmtx were not installed (a plugin hides them from every lookup), so any test that
reaches for a tool without declaring it shows up as an error instead of a skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from simulators.pytest_plugin import require_tool
from simulators.system_tools import TOOLS

ROOT = Path(__file__).resolve().parents[1]
# Tests that need a tool, each with the Debian package its skip must name.
NEEDING = {
    "tests/test_mqtt.py::test_delivers_every_event_in_order": "mosquitto",  # the fixture
    "tests/test_mqtt.py::test_negative_puback_is_a_failure_not_a_success": "mosquitto",
    "tests/test_mqtt.py::test_broker_down_at_start_then_up": "mosquitto",
    "tests/test_mqtt_tls.py::test_mutual_tls_delivers_and_needs_the_client_certificate": (
        "mosquitto"
    ),
    "tests/test_mbpoll.py::test_mbpoll_reads_the_contract_registers": "mbpoll",
    "tests/test_decode_cli.py::test_dmtx_backend_keeps_gs": "libdmtx0b",
    "tests/test_vision_pipeline.py::test_dmtx_keeps_fnc1_as_gs": "libdmtx0b",
    "tests/test_vision_pipeline.py::test_read_turns_a_crash_into_no_read": "libdmtx0b",
}
HIDE_TOOLS = """
import ctypes.util, shutil
import simulators.upstream.mosquitto as mosquitto

_which, _find_library = shutil.which, ctypes.util.find_library
shutil.which = lambda name, *a, **k: None if name in ("mosquitto", "mbpoll") else _which(name, *a, **k)
ctypes.util.find_library = lambda name: None if name == "dmtx" else _find_library(name)
mosquitto.MOSQUITTO_PATHS = ()
"""


def _run_without_tools(tmp_path: Path, ci: bool) -> dict[str, list[tuple[str, str]]]:
    """Outcomes per test id (each parametrization): (passed|skipped|failed|error, message)."""
    (tmp_path / "hide_tools.py").write_text(HIDE_TOOLS)
    report = tmp_path / ("ci.xml" if ci else "local.xml")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "EDGE_AGENT_CI": "1" if ci else "0"}
    plugins = ["-p", "hide_tools", "-p", "no:randomly", "-p", "no:cacheprovider", "-n", "0"]
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *plugins, f"--junitxml={report}", *NEEDING],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=300,
    )
    outcomes: dict[str, list[tuple[str, str]]] = {}
    for case in ET.parse(report).iter("testcase"):
        module = case.get("classname", "").replace(".", "/") + ".py"
        test_id = f"{module}::{case.get('name', '').split('[')[0]}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("skipped", "failure", "error"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                message = f"{child.get('message', '')} {child.text or ''}"
        outcomes.setdefault(test_id, []).append((outcome, message))
    return outcomes


def test_tests_needing_a_missing_tool_skip_naming_the_package(tmp_path: Path) -> None:
    outcomes = _run_without_tools(tmp_path, ci=False)
    assert set(outcomes) == set(NEEDING)
    for test_id, package in NEEDING.items():
        for outcome, message in outcomes[test_id]:
            assert outcome == "skipped", f"{test_id}: {outcome} {message[:500]}"
            assert f"apt-get install {package}" in message, test_id


def test_under_ci_a_missing_tool_fails_the_test(tmp_path: Path) -> None:
    outcomes = _run_without_tools(tmp_path, ci=True)
    assert set(outcomes) == set(NEEDING)
    for test_id, package in NEEDING.items():
        for outcome, message in outcomes[test_id]:
            assert outcome in ("failed", "error"), f"{test_id}: {outcome}"
            assert f"apt-get install {package}" in message, test_id
            assert "EDGE_AGENT_CI=1" in message, test_id


def test_every_tool_names_its_package_and_is_found_here() -> None:
    # This machine runs the suite, so every tool must be there (else the CI image is wrong).
    for name, tool in TOOLS.items():
        assert tool.install == f"apt-get install {tool.package}"
        if os.environ.get("EDGE_AGENT_CI") == "1":
            assert require_tool(name)


@pytest.mark.requires_tool("mosquitto")
def test_the_marker_lets_a_test_run_where_the_tool_is_installed() -> None:
    assert TOOLS["mosquitto"].find() is not None
