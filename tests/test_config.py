"""Config validation: good examples load; each broken config gets its own precise message."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.config import load_config
from edge_agent.config.loader import ConfigInvalid
from edge_agent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEMO = (ROOT / "config" / "demo.toml").read_text()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "line.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["demo.toml", "line-example.toml"])
def test_examples_are_valid(name: str) -> None:
    config = load_config(ROOT / "config" / name)
    assert config.printer.config.type == "ascii"
    assert config.plc.driver.__name__ == "ModbusTcpPlc"


def problems_of(tmp_path: Path, text: str) -> list[ConfigError]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    error = info.value
    return error.problems if isinstance(error, ConfigInvalid) else [error]


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    text = DEMO.replace('id = "DEMO-LINE"', 'id = "DEMO-LINE')
    [problem] = problems_of(tmp_path, text)
    assert "not valid TOML" in str(problem)
    assert problem.line == line_of(text, 'id = "DEMO-LINE')
    assert str(problem).startswith(f"{tmp_path / 'line.toml'}:{problem.line}")


OLD_BATCH = """
[batch]
id = "WO-1"
gtin = "09506000134352"
lot = "L1"
expiry = "281231"
target_quantity = 100

[batch.serials]
source = "generate"
"""


def test_a_batch_section_says_where_orders_come_from_now(tmp_path: Path) -> None:
    """A config from before the daemon: the order in it is refused with where orders come
    from now, at its line; the rest of the file is still checked."""
    text = DEMO + OLD_BATCH
    [problem] = problems_of(tmp_path, text)
    assert problem.key == "batch" and problem.line == line_of(text, "[batch]")
    message = str(problem)
    assert message.startswith(f"{tmp_path / 'line.toml'}:{problem.line}: batch:")
    for where in ("REST API", "edge-agent order submit", "[orders] inbox", "[l3]", "README"):
        assert where in message, where
    keys = {p.key for p in problems_of(tmp_path, text.replace("buffer_depth", "bufer_depth"))}
    assert keys == {"batch", "printer.bufer_depth"}


def test_run_with_a_batch_section_exits_2_before_any_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, DEMO.replace('"demo-state', f'"{tmp_path}/state') + OLD_BATCH)
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"config error: {path}:" in err and "no longer holds the work order" in err
    assert "Traceback" not in err


def test_misspelt_key_suggests_the_right_one(tmp_path: Path) -> None:
    text = DEMO.replace("buffer_depth = 8", "bufer_depth = 8")
    [problem] = problems_of(tmp_path, text)
    assert problem.key == "printer.bufer_depth"
    assert problem.line == line_of(text, "bufer_depth")
    assert "unknown key 'bufer_depth'; did you mean 'buffer_depth'?" in str(problem)


def test_unknown_driver_type_lists_known_types(tmp_path: Path) -> None:
    text = DEMO.replace('type = "ascii"', 'type = "asci"')
    [problem] = problems_of(tmp_path, text)
    assert problem.key == "printer.type"
    assert "unknown printer type 'asci'; did you mean 'ascii'?" in str(problem)


def test_port_out_of_range(tmp_path: Path) -> None:
    text = DEMO.replace("port = 15020", "port = 70000", 1)
    [problem] = problems_of(tmp_path, text)
    assert problem.key == "plc.port"
    assert "found 70000" in str(problem) and "65535" in str(problem)


def test_missing_required_key_says_what_it_is(tmp_path: Path) -> None:
    text = DEMO + "\n[api]\nport = 8470\n"
    [problem] = problems_of(tmp_path, text)
    assert problem.key == "api.tokens"
    assert "required key is missing: [[api.tokens]]: name and token each" in str(problem)


def test_a_value_out_of_its_bounds(tmp_path: Path) -> None:
    text = DEMO + "\n[orders]\ninbox_poll_s = 0\n"
    [problem] = problems_of(tmp_path, text)
    assert problem.key == "orders.inbox_poll_s"
    assert "greater than 0" in str(problem)


def test_inline_secret_is_refused(tmp_path: Path) -> None:
    text = DEMO + (
        '\n[[upstream.forwarders]]\ntype = "epcis-http"\nurl = "https://l3.invalid"\n'
        'token = "s3cret"\n'
    )
    [problem] = problems_of(tmp_path, text)
    assert problem.key == "upstream.forwarders[0].token"
    assert "s3cret" not in str(problem)
    assert 'never written inline; use { env = "NAME" }' in str(problem)


def test_an_endpoint_outside_a_forwarder_is_refused_with_the_fix(tmp_path: Path) -> None:
    text = DEMO + '\n[upstream]\nurl = "https://l3.invalid"\n'
    [problem] = problems_of(tmp_path, text)
    assert problem.key == "upstream"
    assert "[[upstream.forwarders]]" in str(problem) and "epcis-http" in str(problem)


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    text = DEMO.replace("buffer_depth = 8", "bufer_depth = 8").replace(
        "verdict_deadline_ms = 300", "verdict_deadline_ms = 0"
    )
    keys = {p.key for p in problems_of(tmp_path, text)}
    assert keys == {"line.verdict_deadline_ms", "printer.bufer_depth"}


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the example names an inbox, tokens and a state directory of a line PC
    example = str(ROOT / "config" / "line-example.toml")
    assert main(["check-config", "--file-only", example]) == 0
    assert "OK" in capsys.readouterr().out
    bad = write(tmp_path, DEMO.replace("buffer_depth = 8", "bufer_depth = 8"))
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert (
        f"{bad}:{line_of(bad.read_text(), 'bufer_depth')}: printer.bufer_depth: unknown key" in err
    )


def test_secret_reference_resolves_without_showing_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from edge_agent.config.models import SecretRef

    monkeypatch.setenv("EA_TEST_TOKEN", "hunter2")
    ref = SecretRef(env="EA_TEST_TOKEN")
    assert ref.resolve().get_secret_value() == "hunter2"
    assert "hunter2" not in repr(ref.resolve()) and "hunter2" not in repr(ref)
    secret_file = tmp_path / "token"
    secret_file.write_text("from-file\n")
    assert SecretRef(file=secret_file).resolve().get_secret_value() == "from-file"
