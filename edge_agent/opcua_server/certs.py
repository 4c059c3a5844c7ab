"""Self-signed OPC UA application instance certificates (``edge-agent opcua-cert``).

OPC UA identifies applications by certificate: the URI in the certificate's subjectAltName is the
application URI, and the peer must have the certificate in its trust list. Sites with their own
CA (or a GDS) use theirs; this is for commissioning and test benches.
"""

from __future__ import annotations

import socket
from pathlib import Path

from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

DEFAULT_URI = "urn:edge-agent:{host}"


def write_identity(
    folder: Path,
    name: str,
    uri: str,
    *,
    host: str | None = None,
    days: int = 730,
    overwrite: bool = True,
) -> tuple[Path, Path]:
    """A 2048-bit RSA key (PEM, mode 0600) and a self-signed certificate (DER) for ``uri``,
    usable as client and as server."""
    cert_path, key_path = folder / f"{name}.der", folder / f"{name}.pem"
    if not overwrite:
        existing = [str(p) for p in (cert_path, key_path) if p.exists()]
        if existing:
            raise FileExistsError(f"{', '.join(existing)} exists; refusing to overwrite")
    folder.mkdir(parents=True, exist_ok=True)
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        name,
        {},
        [x509.UniformResourceIdentifier(uri), x509.DNSName(host or socket.gethostname())],
        [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
        days=days,
    )
    key_path.touch(mode=0o600, exist_ok=True)
    key_path.chmod(0o600)
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return cert_path, key_path
