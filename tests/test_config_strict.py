"""Strict config types, the expiry rule and timing relations (issue 10, item 13)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from edge_agent import registry
from edge_agent.config.loader import ConfigInvalid, parse_config
from edge_agent.gs1.expiry import Gs1ExpiredError, check_expiry

ROOT = Path(__file__).resolve().parents[1]
DEMO = (ROOT / "config" / "demo.toml").read_text()


def problems(text: str, **kwargs: Any) -> dict[str, str]:
    with pytest.raises(ConfigInvalid) as info:
        parse_config(text, "line.toml", **kwargs)
    return {str(p.key): p.detail for p in info.value.problems}


def yymmdd(day: date) -> str:
    return day.strftime("%y%m%d")


# --- strict types -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "key", "expected"),
    [
        ("port = 19100\nbuffer_depth", 'port = "19100"\nbuffer_depth', "printer.port", "integer"),
        ("port = 15020\nring_size", 'port = "15020"\nring_size', "plc.port", "integer"),
        ("[simulators.plc]\nport = 15020", '[simulators.plc]\nport = "15020"', None, "integer"),
        ("max_consecutive_rejects = 5", 'max_consecutive_rejects = "5"', None, "integer"),
        ("max_consecutive_rejects = 5", "max_consecutive_rejects = 5.0", None, "integer"),
        ("verdict_deadline_ms = 300", 'verdict_deadline_ms = "300"', None, "number"),
        (
            "ring_size = 512                # verdict",
            "ring_size = true  # verdict",
            None,
            "integer",
        ),
        ("max_units_in_flight = 16", "max_units_in_flight = 16.5", None, "integer"),
        ('site = "DEMO-SITE"', "site = 24", "line.site", "string"),
    ],
)
def test_values_are_never_coerced_from_another_type(
    old: str, new: str, key: str | None, expected: str
) -> None:
    assert old in DEMO
    found = problems(DEMO.replace(old, new, 1))
    [(where, detail)] = found.items()
    assert key is None or where == key
    assert f"Input should be a valid {expected}" in detail, detail
    assert detail.startswith("found "), detail


def test_booleans_are_not_taken_from_words() -> None:
    text = DEMO + '\n[opcua_server]\nenabled = "yes"\nsecurity_policy = "None"\n'
    assert "valid boolean" in problems(text)["opcua_server.enabled"]


def test_paths_and_fixed_size_arrays_are_still_written_as_toml_has_them(tmp_path: Path) -> None:
    text = DEMO.replace('state_dir = "demo-state"', f'state_dir = "{tmp_path}"')
    text += "\n[vision]\nroi = [0, 0, 64, 64]\nframe_budget_ms = 30\n"
    config = parse_config(text, "line.toml")
    assert config.model.agent.state_dir == tmp_path
    assert config.model.vision.roi == (0, 0, 64, 64)
    assert config.model.vision.frame_budget_ms == 30.0  # an integer is a fine number


def _typed_fields(model: Any, wanted: type) -> list[str]:
    return [
        name
        for name, field in model.model_fields.items()
        if field.annotation is wanted or field.annotation == (wanted | None)
    ]


WRONG = {int: ("7", "integer"), float: ("0.5", "number"), bool: ("yes", "boolean")}
DRIVER_FIELDS = [
    (kind, type_name, name, python_type)
    for kind, types in registry.BUILTIN.items()
    for type_name in types
    for python_type in WRONG
    for name in _typed_fields(registry.driver_class(kind, type_name).Config, python_type)
]


@pytest.mark.parametrize(("kind", "type_name", "name", "python_type"), DRIVER_FIELDS)
def test_every_driver_section_is_strict(
    kind: str, type_name: str, name: str, python_type: type
) -> None:
    value, expected = WRONG[python_type]
    table = {"type": type_name, name: value}
    if kind == "forwarder":
        sections: dict[str, Any] = {"upstream": {"forwarders": [table]}}
        key = f"upstream.forwarders[0].{name}"
    elif kind in ("label_printer", "scanner"):  # devices of the aggregation stations only
        station = "case_station" if kind == "label_printer" else "pallet_station"
        sections = {"aggregation": {station: {kind: table}}}
        key = f"aggregation.{station}.{kind}.{name}"
    else:
        sections, key = {kind: table}, f"{kind}.{name}"
    found = problems(DEMO, sections=sections)
    assert f"Input should be a valid {expected}" in found[key], found[key]


def test_every_builtin_driver_has_strict_fields_checked() -> None:
    checked = {(kind, type_name) for kind, type_name, _, _ in DRIVER_FIELDS}
    assert checked == {(k, t) for k, types in registry.BUILTIN.items() for t in types}


def test_a_toml_date_is_refused_with_the_form_to_write() -> None:
    found = problems(DEMO.replace('site = "DEMO-SITE"', "site = 2028-12-31"))
    assert "TOML date/time 2028-12-31" in found["line.site"]
    assert '"YYMMDD"' in found["line.site"]


# --- expiry (the rule orders are checked with: tests/test_orders.py) ----------------------------


def test_expiry_rule_is_one_reusable_function() -> None:
    today = date(2026, 12, 1)
    assert check_expiry("261201", today=today).days_left == 0  # the expiry day is still a day
    assert check_expiry("261200", today=today).expires == date(2026, 12, 31)  # DD = 00
    assert check_expiry("261230", today=today, warn_days=30).near  # 29 days: closer than 30
    assert not check_expiry("261231", today=today, warn_days=30).near
    assert not check_expiry("270101", today=today, warn_days=30).near
    with pytest.raises(Gs1ExpiredError, match="in the past"):
        check_expiry("261130", today=today)


# --- timing relations ---------------------------------------------------------------------------


def test_heartbeat_interval_must_sit_well_below_the_plc_heartbeat_timeout() -> None:
    text = DEMO.replace("heartbeat_interval_ms = 100", "heartbeat_interval_ms = 1500")
    detail = problems(text)["line"]
    assert "heartbeat_interval_ms (1500) must be at most half of plc_heartbeat_timeout_ms" in detail
    assert "to 1000 or less" in detail and "to 3000 or more" in detail


def test_reject_confirm_timeout_must_exceed_the_verdict_deadline() -> None:
    text = DEMO.replace(
        "verdict_deadline_ms = 300", "verdict_deadline_ms = 300\nreject_confirm_timeout_ms = 250"
    )
    detail = problems(text)["line"]
    assert "reject_confirm_timeout_ms (250) must be longer than verdict_deadline_ms (300)" in detail


def test_upstream_backoff_must_grow() -> None:
    text = DEMO + "\n[upstream]\nbackoff_initial_s = 60\nbackoff_max_s = 30\n"
    assert "backoff_initial_s (60) must not exceed backoff_max_s (30)" in problems(text)["upstream"]
