"""OPC UA channel security and authentication, with certificates generated at test time.

One SignAndEncrypt (Basic256Sha256) PLC simulator with users serves most tests; it also uses
site-specific node ids in its own namespace, as a real PLC project would.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio
from asyncua import ua
from asyncua.server.uaprocessor import UaProcessor
from asyncua.ua.ua_binary import struct_from_binary
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from drivers.plc.opcua import OpcUaPlc, refusals
from drivers.plc.opcua import nodes as n
from drivers.plc.opcua.certs import BenchPki, make_test_pki
from drivers.plc.opcua.security import certificate_uri
from edge_agent import cli
from edge_agent.contracts import Verdict
from edge_agent.errors import ConfigError, DeviceConnectionError
from simulators.line import SimLine, SimUnit
from simulators.plc.opcua import OpcUaPlcSim

module_loop = pytest.mark.asyncio(loop_scope="module")

SITE_NAMESPACE = "urn:acme:packaging:line7"
SITE_NODES = n.NodeIds(
    agent_heartbeat='s="DB_Serial"."AgentBeat"',
    verdict_slot='s="DB_Serial"."Verdict"[{k}]',
    plc_heartbeat='s="DB_Serial"."PlcBeat"',
)
USERS = {"operator": "s3cret-pw"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> BenchPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secure_sim(pki: BenchPki) -> AsyncIterator[OpcUaPlcSim]:
    sim = OpcUaPlcSim(
        SimLine(units_per_min=None),
        gate_delay_s=0.05,
        security=pki.server_settings("SignAndEncrypt", "Basic256Sha256"),
        users=USERS,
        namespace_uri=SITE_NAMESPACE,
        node_ids=SITE_NODES,
    )
    async with sim:
        yield sim


@pytest.fixture
def password_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("PLC_PASSWORD", USERS["operator"])
    monkeypatch.setenv("WRONG_PASSWORD", "guess")
    return {"env": "PLC_PASSWORD"}


def site_config(sim: OpcUaPlcSim, pki: BenchPki, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        **pki.client_overrides("SignAndEncrypt", "Basic256Sha256"),
        "nodes": SITE_NODES.model_dump(),
        "timeout_s": 2.0,
    }
    return sim.driver_config(**{**settings, **overrides})


async def refused(config: dict[str, Any]) -> str:
    with pytest.raises(DeviceConnectionError) as info:
        async with OpcUaPlc("plc", config):
            pass
    return str(info.value)


@module_loop
async def test_sign_and_encrypt_end_to_end_with_user_and_password(
    secure_sim: OpcUaPlcSim, pki: BenchPki, password_env: dict[str, str]
) -> None:
    config = site_config(secure_sim, pki, username="operator", password=password_env)
    async with OpcUaPlc("plc", config) as plc:
        assert plc._client is not None
        policy = plc._client.security_policy
        assert policy.Mode == ua.MessageSecurityMode.SignAndEncrypt
        assert policy.URI == "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256"
        trigger = secure_sim.line.trigger_count + 1
        await plc.write_verdict(trigger, Verdict.PASS)
        await plc.beat()
        secure_sim.line.unit_printed(SimUnit("S", "09506000134352", "L", "301231", 0.0))
        await secure_sim.line.drain()
        deadline = time.monotonic() + 3.0
        while True:
            if trigger in secure_sim.passed_triggers or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        assert trigger in secure_sim.passed_triggers
        state = await plc.read_state()
        assert state.trigger_count == trigger and state.extra["ring_size"] == 32


def sha1_thumbprint(cert_file: Path) -> str:
    return hashlib.sha1(cert_file.read_bytes()).hexdigest()


@module_loop
async def test_plc_refusing_the_agent_certificate_says_so(
    secure_sim: OpcUaPlcSim, pki: BenchPki, password_env: dict[str, str]
) -> None:
    # asyncua's server checks the client certificate at CreateSession: BadCertificateUntrusted.
    rogue = {**site_config(secure_sim, pki), **pki.client_overrides(rogue=True)}
    rogue.update(nodes=SITE_NODES.model_dump(), username="operator", password=password_env)
    message = await refused(rogue)
    assert f"the PLC refused the agent's certificate {pki.rogue_cert} " in message
    assert "BadCertificateUntrusted" in message
    assert f"add {pki.rogue_cert} to the PLC's trusted certificates" in message
    assert "agent refused" not in message


@module_loop
async def test_agent_refusing_the_plc_certificate_says_so(
    secure_sim: OpcUaPlcSim, pki: BenchPki, password_env: dict[str, str], tmp_path: Path
) -> None:
    other_trust = tmp_path / "trust"
    other_trust.mkdir()
    (other_trust / "someone.der").write_bytes(pki.rogue_cert.read_bytes())
    config = site_config(
        secure_sim, pki, username="operator", password=password_env, trust_dir=str(other_trust)
    )
    message = await refused(config)
    assert "the agent refused the PLC's certificate (CN=plc, " in message
    assert f"thumbprint {sha1_thumbprint(pki.server_cert)}" in message
    assert "BadCertificateUntrusted, the agent does not trust it" in message
    assert f"in the agent's trust_dir {other_trust}" in message
    assert "PLC refused" not in message
    # An empty trust list trusts nobody: a config error before any connection is made.
    (other_trust / "someone.der").unlink()
    with pytest.raises(ConfigError, match=r"trust_dir.*holds no certificates"):
        async with OpcUaPlc("plc", config):
            pass


def _refuse_untrusted_at_open_secure_channel(
    trusted: set[bytes],
) -> Callable[[Any, Any, Any, Any], None]:
    """UaProcessor.open_secure_channel as node-opcua, open62541 and S7-1500 servers behave:
    they check the client certificate when the channel opens (asyncua's own server waits for
    CreateSession) and answer an untrusted one with a ServiceFault, BadSecurityChecksFailed."""
    original = UaProcessor.open_secure_channel

    def open_secure_channel(self: Any, algohdr: Any, seqhdr: Any, body: Any) -> None:
        sender = algohdr.SenderCertificate
        if self._connection.is_open() or not sender or sender in trusted:
            return original(self, algohdr, seqhdr, body)
        request = struct_from_binary(ua.OpenSecureChannelRequest, body.copy())
        mode = request.Parameters.SecurityMode
        self._connection.select_policy(algohdr.SecurityPolicyURI, sender, mode)
        fault = ua.ServiceFault()
        fault.ResponseHeader.ServiceResult = ua.StatusCode(ua.StatusCodes.BadSecurityChecksFailed)
        self.send_response(
            request.RequestHeader.RequestHandle, seqhdr, fault, ua.MessageType.SecureOpen
        )
        return None

    return open_secure_channel


@module_loop
async def test_plc_refusing_the_agent_certificate_at_open_secure_channel_says_so(
    pki: BenchPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: "ProtocolError: connect to ...: AssertionError()" (asyncua's client asserts that
    # the answer to OpenSecureChannel is a channel, not a fault).
    trusted = {pki.client_cert.read_bytes()}  # DER, as SenderCertificate carries it
    monkeypatch.setattr(
        UaProcessor, "open_secure_channel", _refuse_untrusted_at_open_secure_channel(trusted)
    )
    async with OpcUaPlcSim(SimLine(units_per_min=None), security=pki.server_settings()) as sim:
        async with OpcUaPlc("plc", sim.driver_config(**pki.client_overrides())) as plc:
            await plc.beat()  # the trusted agent certificate still opens a channel
        message = await refused(sim.driver_config(**pki.client_overrides(rogue=True)))
    assert f"the PLC refused the agent's certificate {pki.rogue_cert} " in message
    assert "answered OpenSecureChannel with a ServiceFault" in message
    assert "BadSecurityChecksFailed" in message
    assert "AssertionError" not in message


@module_loop
async def test_wrong_or_missing_credentials_are_refused(
    secure_sim: OpcUaPlcSim, pki: BenchPki, password_env: dict[str, str]
) -> None:
    wrong = site_config(secure_sim, pki, username="operator", password={"env": "WRONG_PASSWORD"})
    assert "BadUserAccessDenied" in await refused(wrong)
    unknown = site_config(secure_sim, pki, username="intruder", password=password_env)
    assert "BadUserAccessDenied" in await refused(unknown)
    anonymous = site_config(secure_sim, pki)  # anonymous is not offered once users exist
    assert "BadIdentityTokenRejected" in await refused(anonymous)
    # Security None is not offered next to a secure endpoint at all.
    insecure = secure_sim.driver_config(
        security_policy="None", nodes=SITE_NODES.model_dump(), connect_timeout_s=3.0
    )
    assert "offers no endpoint with security_policy 'None'" in await refused(insecure)


@module_loop
async def test_user_certificate_authentication(secure_sim: OpcUaPlcSim, pki: BenchPki) -> None:
    # X509 identity token: a user certificate the server trusts (here the client's own).
    trusted_user = site_config(
        secure_sim,
        pki,
        user_certificate=str(pki.client_cert),
        user_private_key=str(pki.client_key),
    )
    async with OpcUaPlc("plc", trusted_user) as plc:
        await plc.beat()
    rogue_user = site_config(
        secure_sim,
        pki,
        user_certificate=str(pki.rogue_cert),
        user_private_key=str(pki.rogue_key),
    )
    assert "refused" in await refused(rogue_user)


@module_loop
async def test_aes128_sha256_rsaoaep_sign(pki: BenchPki) -> None:
    async with OpcUaPlcSim(
        SimLine(units_per_min=None), security=pki.server_settings("Sign", "Aes128_Sha256_RsaOaep")
    ) as sim:
        config = sim.driver_config(**pki.client_overrides("Sign", "Aes128_Sha256_RsaOaep"))
        async with OpcUaPlc("plc", config) as plc:
            assert plc._client is not None
            assert plc._client.security_policy.Mode == ua.MessageSecurityMode.Sign
            await plc.write_verdict(3, Verdict.REJECT)
            await plc.request_line_stop(12)
            assert (await plc.read_state()).extra["ring_size"] == 32
        rogue = sim.driver_config(
            **pki.client_overrides("Sign", "Aes128_Sha256_RsaOaep", rogue=True)
        )
        assert "BadCertificateUntrusted" in await refused(rogue)


@module_loop
async def test_encrypted_private_key_with_password_by_reference(
    secure_sim: OpcUaPlcSim,
    pki: BenchPki,
    password_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = serialization.load_pem_private_key(pki.client_key.read_bytes(), password=None)
    encrypted = tmp_path / "agent-encrypted.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"key-pw"),
        )
    )
    monkeypatch.setenv("KEY_PASSWORD", "key-pw")
    config = site_config(
        secure_sim,
        pki,
        username="operator",
        password=password_env,
        private_key=str(encrypted),
        private_key_password={"env": "KEY_PASSWORD"},
    )
    async with OpcUaPlc("plc", config) as plc:
        await plc.beat()
    monkeypatch.setenv("KEY_PASSWORD", "wrong")
    with pytest.raises(ConfigError, match="cannot load certificate or private key"):
        async with OpcUaPlc("plc", config):
            pass


def test_opcua_cert_command_writes_a_usable_identity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pki"
    argv = ["opcua-cert", "--out", str(out), "--uri", "urn:acme:agent", "--host", "agent.local"]
    assert cli.main(argv) == 0
    cert = x509.load_der_x509_certificate((out / "edge-agent.der").read_bytes())
    assert certificate_uri(cert) == "urn:acme:agent"
    assert (out / "edge-agent.pem").stat().st_mode & 0o777 == 0o600
    assert 'certificate = "' in capsys.readouterr().out
    assert cli.main(argv) == 1  # never overwrites a key by accident
    assert "refusing to overwrite" in capsys.readouterr().err


def test_no_answer_is_not_taken_for_a_refusal() -> None:
    config = SimpleNamespace(
        security_policy="Basic256Sha256",
        certificate="agent.der",
        trust_dir="trusted",
        user_certificate=None,
        username=None,
    )
    for silence in (TimeoutError(), ConnectionResetError("closed")):
        assert refusals.explain(silence, refusals.OPEN_SECURE_CHANNEL, config) is None
    fault = refusals.explain(AssertionError(), refusals.OPEN_SECURE_CHANNEL, config)
    assert fault is not None and fault.startswith("the PLC refused the agent's certificate")
    denied = ua.UaStatusCodeError(ua.StatusCodes.BadUserAccessDenied)
    assert refusals.explain(denied, refusals.ACTIVATE_SESSION, config) == (
        "the PLC refused anonymous access (BadUserAccessDenied): check the user settings on "
        "the PLC and in [plc]"
    )
