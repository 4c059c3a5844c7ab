"""OPC UA security shared by the agent's PackML server, the PLC driver and the PLC simulator.

Policies: Basic256Sha256 and Aes128_Sha256_RsaOaep, each with Sign or SignAndEncrypt. The
application instance certificate and private key come from files; the trust list is a folder of
peer certificates (PEM or DER): a client trusts only servers whose certificate (or its CA) is in
it, a server accepts only such clients. Security ``None`` is never a default: the config must say
``security_policy = "None"``, and a warning is logged every time such a link starts.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import structlog
from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import security_policies, uacrypto
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.server import Server
from cryptography import x509

from edge_agent.config.models import OpcUaSecurity
from edge_agent.errors import ConfigError

log = structlog.get_logger("edge_agent.opcua.security")

SecuritySettings = OpcUaSecurity
PolicyName = Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep"]
ModeName = Literal["Sign", "SignAndEncrypt"]

_POLICY_CLASSES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
}
_SERVER_POLICIES: dict[tuple[str, str], ua.SecurityPolicyType] = {
    ("Basic256Sha256", "Sign"): ua.SecurityPolicyType.Basic256Sha256_Sign,
    ("Basic256Sha256", "SignAndEncrypt"): ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ("Aes128_Sha256_RsaOaep", "Sign"): ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ("Aes128_Sha256_RsaOaep", "SignAndEncrypt"): (
        ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt
    ),
}


def warn_if_insecure(settings: SecuritySettings, what: str, **context: Any) -> None:
    if not settings.secure:
        log.warning(
            "opcua_security_none",
            what=what,
            detail="security_policy = 'None': messages are neither signed nor encrypted and "
            "peers are not authenticated; use only on an isolated test bench",
            **context,
        )


async def trust_store(folder: Path) -> TrustStore:
    """The trust list; an empty or missing folder is a config error (nobody could connect)."""
    if not await asyncio.to_thread(folder.is_dir):
        raise ConfigError(f"{folder} is not a folder", key="trust_dir")
    files = await asyncio.to_thread(lambda: [p for p in folder.iterdir() if p.is_file()])
    if not files:
        raise ConfigError(
            f"{folder} holds no certificates; copy the peer's certificate (or its CA) there",
            key="trust_dir",
        )
    store = TrustStore([folder], [])
    try:
        await store.load()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the trust list {folder}: {exc}", key="trust_dir") from exc
    return store


def certificate_uri(cert: x509.Certificate) -> str | None:
    """The application URI in the certificate's subjectAltName, which OPC UA requires."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


async def configure_client(client: Client, settings: SecuritySettings) -> None:
    """Set channel security on an asyncua client, before ``connect()``."""
    if not settings.secure:
        return
    assert settings.certificate and settings.private_key and settings.trust_dir
    try:
        cert = await uacrypto.load_certificate(settings.certificate)
        await uacrypto.load_private_key(settings.private_key, settings.key_password())
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"cannot load certificate or private key: {exc}", key="certificate"
        ) from exc
    # The ApplicationUri the client announces must equal the certificate's, or servers refuse it.
    client.application_uri = certificate_uri(cert) or client.application_uri
    store = await trust_store(settings.trust_dir)
    validator = CertificateValidator(
        CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_SERVER,
        store,
    )
    client.certificate_validator = validator
    await client.set_security(
        _POLICY_CLASSES[settings.security_policy],
        str(settings.certificate),
        str(settings.private_key),
        settings.key_password(),
        None,  # fetched from the server's endpoints, then checked against the trust list
        getattr(ua.MessageSecurityMode, settings.security_mode),
    )


class ContractUserManager:
    """Users by name and password; certificate users by trust list; anonymous only if allowed."""

    def __init__(
        self,
        passwords: Mapping[str, str],
        *,
        allow_anonymous: bool,
        user_trust: TrustStore | None = None,
    ) -> None:
        self._passwords = dict(passwords)
        self._allow_anonymous = allow_anonymous
        self._user_trust = user_trust

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is not None:
            expected = self._passwords.get(username)
            if expected is not None and password == expected:
                return User(role=UserRole.User, name=username)
            log.warning("opcua_user_refused", user=username)
            return None
        if self._allow_anonymous:
            return User(role=UserRole.User, name="anonymous")
        # Anonymous is not offered, so this is an X509 identity token.
        if certificate is not None and self._user_trust is not None:
            cert = certificate
            if isinstance(cert, bytes):
                cert = x509.load_der_x509_certificate(cert)
            if self._user_trust.is_trusted(cert):
                return User(role=UserRole.User, name=cert.subject.rfc4514_string())
        log.warning("opcua_user_refused", user="certificate")
        return None


async def new_server(
    settings: SecuritySettings,
    *,
    passwords: Mapping[str, str] | None = None,
    allow_anonymous: bool = True,
) -> Server:
    """An initialised asyncua server with this security: endpoints, certificate, client trust
    list, user tokens. With a secure policy only that policy/mode endpoint exists: no None
    endpoint is offered next to it. The caller sets the endpoint URL, adds nodes and starts it.
    """
    store = await trust_store(settings.trust_dir) if settings.trust_dir is not None else None
    server = Server(
        user_manager=ContractUserManager(  # type: ignore[arg-type]
            passwords or {}, allow_anonymous=allow_anonymous, user_trust=store
        )
    )
    await server.init()
    await _configure_server(server, settings, store, passwords or {}, allow_anonymous)
    return server


async def _configure_server(
    server: Server,
    settings: SecuritySettings,
    store: TrustStore | None,
    passwords: Mapping[str, str],
    allow_anonymous: bool,
) -> None:
    tokens: list[type] = []
    if allow_anonymous:
        tokens.append(ua.AnonymousIdentityToken)
    if passwords:
        tokens.append(ua.UserNameIdentityToken)
    if not settings.secure:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_identity_tokens(tokens or [ua.AnonymousIdentityToken])
        return
    assert settings.certificate and settings.private_key and store is not None
    tokens.append(ua.X509IdentityToken)
    server.set_identity_tokens(tokens)
    server.set_security_policy(
        [_SERVER_POLICIES[(settings.security_policy, settings.security_mode)]]
    )
    await server.load_certificate(str(settings.certificate))
    await server.load_private_key(str(settings.private_key), settings.key_password())
    cert = await uacrypto.load_certificate(settings.certificate)
    uri = certificate_uri(cert)
    if uri:
        await server.set_application_uri(uri)
    server.set_certificate_validator(
        CertificateValidator(
            CertificateValidatorOptions.TRUSTED_VALIDATION
            | CertificateValidatorOptions.PEER_CLIENT,
            store,
        )
    )


def hostname() -> str:
    return socket.gethostname()
