"""`check-config` checks everything `run` needs before the first unit, and `run` checks the same
at start: a config that checks OK does not die at start, and neither command shows a traceback
for a configuration or environment problem. Files a driver needs (CA, client certificates) and
secrets are named with their key when they are missing, at start and at run time."""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from drivers.upstream.mqtt import MqttForwarder
from edge_agent import tls
from edge_agent.contracts import OutboxEvent
from edge_agent.errors import ConfigError, DeliveryError

ROOT = Path(__file__).resolve().parents[1]
DEMO = (ROOT / "config" / "demo.toml").read_text()
UNSET = "EDGE_AGENT_TEST_PREFLIGHT_UNSET"


def config_file(tmp_path: Path, text: str = DEMO, **replace: str) -> Path:
    text = text.replace('state_dir = "demo-state"', f'state_dir = "{tmp_path / "state"}"')
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "line.toml"
    path.write_text(text)
    return path


def with_section(tmp_path: Path, extra: str, **replace: str) -> Path:
    return config_file(tmp_path, DEMO + "\n" + extra, **replace)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != UNSET}
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )


def line_of(path: Path, needle: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def assert_both_refuse(config: Path, *needles: str) -> str:
    """check-config and run both exit 2 with the same precise message, and no traceback."""
    checked, ran = cli("check-config", str(config)), cli("run", "--config", str(config))
    for result in (checked, ran):
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        for needle in needles:
            assert needle in result.stderr, result.stderr
    problem = re.search(rf"{re.escape(str(config))}:\d+: [^\n]*", checked.stderr)
    assert problem is not None and problem.group(0) in ran.stderr
    return checked.stderr


def test_a_complete_environment_checks_ok(tmp_path: Path) -> None:
    result = cli("check-config", str(config_file(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "the first run creates it" in result.stdout


def test_an_unusable_inbox_is_found_before_run(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    config = with_section(tmp_path, f'[orders]\ninbox = "{blocker}"\n')
    line = line_of(config, f'inbox = "{blocker}"')
    assert_both_refuse(config, f"{config}:{line}: orders.inbox: {blocker} is not a folder")


@pytest.mark.parametrize("shape", ["a-file", "under-a-file"])
def test_an_unusable_state_directory_is_found_before_run(tmp_path: Path, shape: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    state = blocker if shape == "a-file" else blocker / "state"
    config = config_file(
        tmp_path, **{f'state_dir = "{tmp_path / "state"}"': f'state_dir = "{state}"'}
    )
    line = line_of(config, "state_dir =")
    expected = "is not a folder" if shape == "a-file" else "cannot create it"
    assert_both_refuse(config, f"{config}:{line}: agent.state_dir: ", expected)


def test_an_unset_token_variable_is_found_before_run(tmp_path: Path) -> None:
    config = with_section(
        tmp_path,
        '[[upstream.forwarders]]\ntype = "epcis-http"\nurl = "http://127.0.0.1:1/epcis"\n'
        f'token = {{ env = "{UNSET}" }}\n',
    )
    assert_both_refuse(
        config, f"upstream.forwarders[0].token: environment variable {UNSET} is not set"
    )


def test_an_empty_secret_file_is_found(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("\n")
    config = with_section(
        tmp_path,
        f'[[upstream.forwarders]]\ntype = "mqtt"\nhost = "127.0.0.1"\nusername = "agent"\n'
        f'password = {{ file = "{secret}" }}\n',
    )
    assert_both_refuse(config, f"upstream.forwarders[0].password: secret file {secret} is empty")


def test_a_missing_ca_file_is_found_before_run(tmp_path: Path) -> None:
    missing = tmp_path / "pki" / "ca.pem"
    config = with_section(
        tmp_path,
        f'[[upstream.forwarders]]\ntype = "mqtt"\nhost = "127.0.0.1"\nport = 8883\ntls = true\n'
        f'ca_file = "{missing}"\n',
    )
    assert_both_refuse(
        config,
        f"upstream.forwarders[0].ca_file: cannot read {missing} (No such file or directory)",
    )


def test_a_ca_file_that_is_not_a_certificate_is_found(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    config = with_section(
        tmp_path,
        f'[[upstream.forwarders]]\ntype = "epcis-http"\nurl = "https://127.0.0.1:1/epcis"\n'
        f'ca_file = "{garbage}"\n',
    )
    assert_both_refuse(config, f"upstream.forwarders[0].ca_file: {garbage} holds no usable CA")


def test_opcua_files_are_checked_before_run(tmp_path: Path) -> None:
    from drivers.plc.opcua.certs import make_test_pki

    pki = make_test_pki(tmp_path / "pki")
    empty_trust = tmp_path / "empty-trust"
    empty_trust.mkdir()
    plc = (
        '[plc]\ntype = "opcua"\nurl = "opc.tcp://127.0.0.1:4841"\nring_size = 512\n'
        f'certificate = "{pki.client_cert}"\nprivate_key = "{tmp_path / "missing.pem"}"\n'
        f'trust_dir = "{empty_trust}"\nuser_certificate = "{tmp_path / "user.der"}"\n'
    )
    text = re.sub(r"\[plc\]\n(?:[^\[\n].*\n|\n)*", plc + "\n", DEMO, count=1)
    config = config_file(tmp_path, text)
    err = assert_both_refuse(
        config,
        f"plc.private_key: cannot read {tmp_path / 'missing.pem'} (No such file or directory)",
        f"plc.trust_dir: {empty_trust} holds no certificates",
        f"plc.user_certificate: cannot read {tmp_path / 'user.der'}",
    )
    assert "plc.certificate" not in err  # the certificate itself is fine


def test_file_only_skips_the_environment(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    config = with_section(tmp_path, f'[orders]\ninbox = "{blocker}"\n')
    result = cli("check-config", "--file-only", str(config))
    assert result.returncode == 0 and "--file-only" in result.stdout


# --- at the driver boundary, at run time --------------------------------------------------


def event() -> OutboxEvent:
    return OutboxEvent(1, "urn:uuid:1", "B1", "ObjectEvent", "{}")


async def test_a_ca_file_gone_at_run_time_is_a_delivery_error_naming_it(tmp_path: Path) -> None:
    """The original failure: FileNotFoundError(2, ...) without the file name, as a traceback at
    every retry. Now one DeliveryError (logged once by the forwarder loop) naming key and file."""
    missing = tmp_path / "ca.pem"
    fwd = MqttForwarder(
        "site-broker", {"type": "mqtt", "host": "127.0.0.1", "tls": True, "ca_file": str(missing)}
    )
    with pytest.raises(DeliveryError, match=rf"site-broker: ca_file: cannot read {missing}"):
        await fwd.deliver([event()])
    with pytest.raises(ConfigError, match="ca_file"):
        await fwd.preflight()


def test_an_encrypted_client_key_is_refused_not_prompted_for(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "agent.pem", tmp_path / "agent.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ConfigError, match=rf"key_file: the private key {key_file} is encrypted"):
        tls.client_context(ca_file=None, cert_file=cert_file, key_file=key_file)
