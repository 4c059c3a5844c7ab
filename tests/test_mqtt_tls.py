"""MQTT over TLS with client certificates (mutual TLS) against a real Mosquitto: a forwarder
with the configured client certificate delivers; one without it never counts anything as
delivered."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from drivers.upstream.mqtt import MqttForwarder
from edge_agent.db import open_db
from edge_agent.errors import DeliveryError
from edge_agent.outbox.store import OutboxStore
from simulators.pytest_plugin import require_tool
from simulators.upstream.mosquitto import Mosquitto, free_port
from tests.helpers.outbox import add_events

pytestmark = pytest.mark.usefixtures("no_leaks")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    san: str | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        import ipaddress

        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    d.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, None, ca=True)
    _write(d / "ca", ca, ca_key)
    for who, san in (("broker", "127.0.0.1"), ("line01", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        _write(d / who, _cert(who, key, ("test-ca", ca_key), san=san), key)
    return d


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Path) -> Any:
    require_tool("mosquitto")
    port = free_port()
    tls = (
        f"cafile {pki / 'ca.pem'}\ncertfile {pki / 'broker.pem'}\nkeyfile {pki / 'broker.key'}\n"
        "require_certificate true\n"
    )
    broker = Mosquitto(tmp_path / "mq", port=port, extra_config=tls)
    with broker:
        yield broker


async def test_mutual_tls_delivers_and_needs_the_client_certificate(
    tmp_path: Path, pki: Path, tls_broker: Mosquitto
) -> None:
    conn = open_db(tmp_path / "state")
    try:
        ids = add_events(conn, 5)
        store = OutboxStore(conn, ["l3"])
        base = {
            "type": "mqtt",
            "host": "127.0.0.1",
            "port": tls_broker.port,
            "tls": True,
            "ca_file": str(pki / "ca.pem"),
            "timeout_s": 5.0,
        }
        without = MqttForwarder("l3", {**base, "timeout_s": 2.0})
        async with without:
            with pytest.raises(DeliveryError):
                await without.deliver(store.pending("l3", 10))
        with_cert = MqttForwarder(
            "l3",
            {**base, "cert_file": str(pki / "line01.pem"), "key_file": str(pki / "line01.key")},
        )
        async with with_cert:
            result = await with_cert.deliver(store.pending("l3", 10))
        assert result.delivered == ids
    finally:
        conn.close()
