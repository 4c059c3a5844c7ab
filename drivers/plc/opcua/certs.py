"""Self-signed OPC UA application certificates: for tests, benchmarks and a first bench set-up.

Production sites use certificates from their own CA (or the PLC's GDS); the files are then simply
named in the config. ``make_test_pki`` writes a server and a client identity that trust each
other, plus a "rogue" client identity that nobody trusts, to prove refusal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivers.plc.opcua.security import ModeName, PolicyName, SecuritySettings
from edge_agent.opcua_server.certs import write_identity as _write_identity


def write_identity(folder: Path, name: str, uri: str) -> tuple[Path, Path]:
    return _write_identity(folder, name, uri, days=30)


@dataclass(frozen=True)
class BenchPki:
    root: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path
    server_trust: Path  # holds the client's certificate
    client_trust: Path  # holds the server's certificate

    def server_settings(
        self, mode: ModeName = "SignAndEncrypt", policy: PolicyName = "Basic256Sha256"
    ) -> SecuritySettings:
        return SecuritySettings(
            security_policy=policy,
            security_mode=mode,
            certificate=self.server_cert,
            private_key=self.server_key,
            trust_dir=self.server_trust,
        )

    def client_overrides(
        self,
        mode: ModeName = "SignAndEncrypt",
        policy: PolicyName = "Basic256Sha256",
        *,
        rogue: bool = False,
    ) -> dict[str, Any]:
        return {
            "security_policy": policy,
            "security_mode": mode,
            "certificate": str(self.rogue_cert if rogue else self.client_cert),
            "private_key": str(self.rogue_key if rogue else self.client_key),
            "trust_dir": str(self.client_trust),
        }


def make_test_pki(root: Path) -> BenchPki:
    """Server, client and rogue identities under ``root``, with the two trust folders."""
    server_cert, server_key = write_identity(root / "server", "plc", "urn:edge-agent:test:plc")
    client_cert, client_key = write_identity(root / "client", "agent", "urn:edge-agent:test:agent")
    rogue_cert, rogue_key = write_identity(root / "rogue", "rogue", "urn:edge-agent:test:rogue")
    server_trust, client_trust = root / "server-trust", root / "client-trust"
    server_trust.mkdir(exist_ok=True)
    client_trust.mkdir(exist_ok=True)
    (server_trust / client_cert.name).write_bytes(client_cert.read_bytes())
    (client_trust / server_cert.name).write_bytes(server_cert.read_bytes())
    return BenchPki(
        root,
        server_cert,
        server_key,
        client_cert,
        client_key,
        rogue_cert,
        rogue_key,
        server_trust,
        client_trust,
    )
