"""The [aggregation] section as the README documents it, and the runner's config errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.aggregation.runner import device
from edge_agent.config import parse_config
from edge_agent.config.loader import ConfigInvalid
from edge_agent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEMO = (ROOT / "config" / "demo.toml").read_text()


def readme_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    after = readme.split("## Aggregation stations", 1)[1]
    match = re.search(r"```toml\n(.*?)```", after, re.DOTALL)
    assert match is not None
    return match.group(1)


def test_the_readme_example_validates_with_every_device_driver() -> None:
    loaded = parse_config(DEMO + "\n" + readme_section())
    section = loaded.model.aggregation
    assert section is not None and section.case_station and section.pallet_station
    case, pallet = section.case_station, section.pallet_station
    built = [
        device("camera", case.camera, "case.camera"),
        device("plc", case.plc, "case.plc"),
        device("label_printer", case.label_printer, "case.label_printer"),
        device("camera", case.label_camera, "case.label_camera"),
        device("scanner", pallet.scanner, "pallet.scanner"),
        device("label_printer", pallet.label_printer, "pallet.label_printer"),
    ]
    assert [type(d).__name__ for d in built] == [
        "TcpFrameSource",
        "ModbusTcpPlc",
        "ZplLabelPrinter",
        "TcpFrameSource",
        "LineScanner",
        "ZplLabelPrinter",
    ]
    assert built[4].config.suffix == "\r\n"


def test_a_wrong_device_table_names_its_key() -> None:
    with pytest.raises(ConfigError, match=r"aggregation\.case_station\.plc\.type"):
        device("plc", {"type": "modbus-tcpp", "port": 502}, "aggregation.case_station.plc")
    with pytest.raises(ConfigInvalid, match="port"):
        device("scanner", {"type": "lines", "link": {"kind": "tcp"}}, "aggregation.x.scanner")


def test_the_runner_without_an_aggregation_section_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(DEMO.replace('state_dir = "', f'state_dir = "{tmp_path}/', 1))
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent.aggregation.runner", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "[aggregation]" in result.stderr and "Traceback" not in result.stderr


def test_the_runner_refuses_a_bad_device_table_at_start(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    bad = readme_section().replace('type = "lines"', 'type = "linez"')
    config.write_text(DEMO.replace('state_dir = "', f'state_dir = "{tmp_path}/', 1) + bad)
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent.aggregation.runner", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "aggregation.pallet_station.scanner" in result.stderr and "lines" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_bundle_station_is_read_and_its_device_tables_checked_at_load() -> None:
    loaded = parse_config(DEMO + "\n" + readme_section())
    section = loaded.model.aggregation
    assert section is not None and section.bundle_station is not None
    assert section.bundle_station.closing_read_s == 3.0
    assert section.bundle_station.plc["type"] == "modbus-tcp"
    bad = readme_section().replace(
        'plc = { type = "modbus-tcp", host = "10.0.0.42"',
        'plc = { type = "modbus-tcpp", host = "10.0.0.42"',
    )
    assert bad != readme_section()
    with pytest.raises(ConfigInvalid) as raised:
        parse_config(DEMO + "\n" + bad)
    text = str(raised.value)
    assert "aggregation.bundle_station.plc.type" in text and "modbus-tcp" in text  # the fix
    unknown = readme_section().replace('host = "10.0.0.41", port', 'host = "10.0.0.41", prot')
    with pytest.raises(ConfigInvalid, match=r"aggregation\.bundle_station\.camera\.prot"):
        parse_config(DEMO + "\n" + unknown)
