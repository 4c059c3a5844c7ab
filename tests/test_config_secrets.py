"""No message, log line or traceback ever contains a secret's value (issue 10, item 12).

Secrets written inline in several places of one config (forwarders, the OPC UA PLC, the agent's
OPC UA server users, a key password, the misplaced upstream token) together with a table-level
error (the upstream quota order, whose message once echoed the whole [upstream] table): the
processes ``check-config`` and ``run`` refuse it naming every key, and print no secret.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import structlog

from drivers.plc.modbus import ModbusTcpPlc
from drivers.upstream.mqtt import MqttForwarder
from edge_agent import logs
from edge_agent.config.loader import ConfigInvalid, parse_config
from edge_agent.errors import DeviceConnectionError
from edge_agent.redaction import redact_url

ROOT = Path(__file__).resolve().parents[1]
DEMO = (ROOT / "config" / "demo.toml").read_text()
SECRETS = {
    "upstream.token": "TOKEN-upstream-misplaced",
    "upstream.forwarders[0].token": "TOKEN-capture-bearer",
    "upstream.forwarders[1].password": "TOKEN-mqtt-password",
    "plc.password": "TOKEN-opcua-plc-password",
    "opcua_server.users.operator": "TOKEN-opcua-user",
    "opcua_server.private_key_password": "TOKEN-key-passphrase",
}


def inline_secrets_config(tmp_path: Path) -> Path:
    text = (
        DEMO.split("[plc]")[0]
        + f'''
[plc]
type = "opcua"
url = "opc.tcp://127.0.0.1:4840"
security_policy = "None"
username = "line"
password = "{SECRETS["plc.password"]}"

[upstream]
quota_alarm_mb = 4096
quota_stop_mb = 2048
token = "{SECRETS["upstream.token"]}"

[[upstream.forwarders]]
name = "l3"
type = "epcis-http"
url = "https://l3.example/epcis"
token = "{SECRETS["upstream.forwarders[0].token"]}"

[[upstream.forwarders]]
name = "broker"
type = "mqtt"
host = "broker.example"
username = "line"
password = "{SECRETS["upstream.forwarders[1].password"]}"

[opcua_server]
enabled = true
security_policy = "None"
private_key_password = "{SECRETS["opcua_server.private_key_password"]}"

[opcua_server.users]
operator = "{SECRETS["opcua_server.users.operator"]}"
'''
    )
    path = tmp_path / "line.toml"
    path.write_text(text)
    return path


def agent(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def assert_no_secret(text: str) -> None:
    for key, value in SECRETS.items():
        assert value not in text, f"the secret of {key} is shown"
    assert "TOKEN-" not in text


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_inline_secrets_are_refused_by_key_and_never_shown(tmp_path: Path, command: str) -> None:
    config = inline_secrets_config(tmp_path)
    args = (
        [command, str(config)] if command == "check-config" else [command, "--config", str(config)]
    )
    done = agent(*args, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert_no_secret(output)
    for key in SECRETS:
        if key != "upstream.token":  # a misplaced key: the message says where it belongs
            assert f"{key}: a secret is never written inline" in output, key
    assert "belong to a forwarder" in output
    assert "Traceback" not in output
    logged = "".join(p.read_text() for p in tmp_path.rglob("*.log"))
    assert_no_secret(logged)


def test_the_loaders_errors_and_their_traceback_hold_no_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigInvalid) as info:
        parse_config(inline_secrets_config(tmp_path).read_text(), "line.toml")
    shown = "".join(traceback.format_exception(info.value))
    assert_no_secret(shown)
    assert_no_secret(repr(info.value.problems))


def test_a_table_level_error_never_echoes_the_table(tmp_path: Path) -> None:
    # The secret is given correctly by reference; the table is still never printed whole.
    text = DEMO + (
        "\n[upstream]\nquota_alarm_mb = 4096\nquota_stop_mb = 2048\n\n[[upstream.forwarders]]\n"
        'name = "l3"\ntype = "epcis-http"\nurl = "https://u:TOKEN-in-url@l3.example/epcis"\n'
        'token = { env = "L3_TOKEN" }\n'
    )
    with pytest.raises(ConfigInvalid) as info:
        parse_config(text, "line.toml")
    [problem] = info.value.problems
    assert problem.key == "upstream"
    assert problem.detail == "quota_alarm_mb must be below quota_stop_mb"


def test_a_wrong_value_beside_a_secret_names_only_the_wrong_key(tmp_path: Path) -> None:
    camera = DEMO[DEMO.index("[camera]") : DEMO.index("[plc]")]
    text = DEMO.replace(
        camera,
        '[camera]\ntype = "videocapture"\nsource = "rtsp://op:TOKEN-camera-url@cam/s"\n'
        'width = "wide"\n\n',
    )
    with pytest.raises(ConfigInvalid) as info:
        parse_config(text, "line.toml")
    assert_no_secret(str(info.value))


@pytest.mark.parametrize(
    ("make", "section"),
    [
        (MqttForwarder, {"type": "mqtt", "host": "h", "password": "TOKEN-mqtt-in-code"}),
        (ModbusTcpPlc, {"type": "modbus-tcp", "port": 502, "password": "TOKEN-modbus"}),
    ],
)
def test_drivers_given_a_table_in_code_report_like_the_loader(make: type, section: dict) -> None:
    with pytest.raises(ConfigInvalid) as info:
        make("dev", section)
    shown = "".join(traceback.format_exception(info.value))
    assert "TOKEN-" not in shown
    assert "dev.password" in str(info.value)


def test_log_lines_mask_secret_fields_and_url_passwords() -> None:
    stream = io.StringIO()
    logs.configure("json", "info", stream=stream)
    try:
        log = structlog.get_logger("test")
        log.info("plc_link_up", url="opc.tcp://line:TOKEN-url-log@plc:4840", password="TOKEN-f")
        try:
            raise DeviceConnectionError("camera", "cannot open rtsp://op:TOKEN-exc@cam/stream")
        except DeviceConnectionError:
            log.exception("camera_failed")
    finally:
        structlog.reset_defaults()
    text = stream.getvalue()
    assert "TOKEN-" not in text
    first = json.loads(text.splitlines()[0])
    assert first["url"] == "opc.tcp://line:<redacted>@plc:4840"


def test_redact_url_keeps_everything_but_the_password() -> None:
    assert redact_url("see rtsp://op:pw%40x@10.0.0.5:554/s?a=1 now") == (
        "see rtsp://op:<redacted>@10.0.0.5:554/s?a=1 now"
    )
    assert redact_url("http://host/path@x") == "http://host/path@x"
    assert redact_url("opc.tcp://user@plc:4840") == "opc.tcp://user@plc:4840"
