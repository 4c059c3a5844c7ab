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
    text = DEMO.replace('lot = "DEMO24A"', 'lot = "DEMO24A')
    [problem] = problems_of(tmp_path, text)
    assert "not valid TOML" in str(problem)
    assert problem.line == line_of(text, 'lot = "DEMO24A')
    assert str(problem).startswith(f"{tmp_path / 'line.toml'}:{problem.line}")


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


def test_bad_gtin_check_digit(tmp_path: Path) -> None:
    text = DEMO.replace('gtin = "09506000134352"', 'gtin = "09506000134353"')
    [problem] = problems_of(tmp_path, text)
    assert problem.key == "batch.gtin"
    assert problem.line == line_of(text, "gtin =")
    assert "'09506000134353'" in str(problem) and "check digit" in str(problem)


def test_port_out_of_range(tmp_path: Path) -> None:
    text = DEMO.replace("port = 15020", "port = 70000", 1)
    [problem] = problems_of(tmp_path, text)
    assert problem.key == "plc.port"
    assert "found 70000" in str(problem) and "65535" in str(problem)


def test_missing_required_key_says_what_it_is(tmp_path: Path) -> None:
    text = DEMO.replace('lot = "DEMO24A"\n', "")
    [problem] = problems_of(tmp_path, text)
    assert problem.key == "batch.lot"
    assert "required key is missing: Lot / batch number" in str(problem)


def test_invalid_expiry_month(tmp_path: Path) -> None:
    text = DEMO.replace('expiry = "281231"', 'expiry = "281331"')
    [problem] = problems_of(tmp_path, text)
    assert problem.key == "batch.expiry"
    assert "'281331'" in str(problem)


def test_serial_alphabet_outside_cset82(tmp_path: Path) -> None:
    text = DEMO.replace(
        'alphabet = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"', 'alphabet = "0123456789 #"'
    )
    [problem] = problems_of(tmp_path, text)
    assert problem.key == "batch.serials.alphabet"
    assert "not in GS1 character set 82" in str(problem)


def test_serial_list_needs_a_file(tmp_path: Path) -> None:
    text = DEMO.replace('source = "generate"', 'source = "list"')
    [problem] = problems_of(tmp_path, text)
    assert problem.key == "batch.serials"
    assert "needs 'file'" in str(problem)


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
        'expiry = "281231"', 'expiry = "2812"'
    )
    keys = {p.key for p in problems_of(tmp_path, text)}
    assert keys == {"batch.expiry", "printer.bufer_depth"}


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the example names a serial list, a token and a state directory of a line PC
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
