"""Which side refused an OPC UA connection, and why: the agent, the PLC, a certificate or a user.

asyncua reports a refusal by the step that failed, not by who refused: an untrusted PLC
certificate (the agent refusing) and an untrusted agent certificate (the PLC refusing) both come
out as ``BadCertificateUntrusted``, and a PLC that refuses the agent's certificate in its answer to
OpenSecureChannel (node-opcua, S7-1500 and others answer with a ServiceFault,
BadSecurityChecksFailed) surfaces as a bare ``AssertionError``. Here the driver learns the connect
step (``PlcClient``) and the agent's own certificate verdict (``agent_validator``), so the error
it raises names the side that refused, the certificate and where to put it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from asyncua import Client, ua
from asyncua.common.utils import ServiceError
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

Validator = Callable[[x509.Certificate, ua.ApplicationDescription], Awaitable[Any]]

OPEN_SECURE_CHANNEL = "OpenSecureChannel"
CREATE_SESSION = "CreateSession"
ACTIVATE_SESSION = "ActivateSession"

# What a certificate status code says is wrong with the certificate it names.
_CERTIFICATE_PROBLEMS = {
    ua.StatusCodes.BadCertificateUntrusted: "not trusted",
    ua.StatusCodes.BadSecurityChecksFailed: "not trusted, or it failed a security check",
    ua.StatusCodes.BadCertificateTimeInvalid: "outside its validity period",
    ua.StatusCodes.BadCertificateIssuerTimeInvalid: "its issuer is outside its validity period",
    ua.StatusCodes.BadCertificateUriInvalid: "its application URI does not match",
    ua.StatusCodes.BadCertificateUseNotAllowed: "its key usage does not allow this use",
    ua.StatusCodes.BadCertificateRevoked: "revoked",
    ua.StatusCodes.BadCertificateIssuerRevoked: "its issuer's certificate is revoked",
    ua.StatusCodes.BadCertificateRevocationUnknown: "its revocation status is unknown",
    ua.StatusCodes.BadCertificateChainIncomplete: "its CA chain is incomplete",
    ua.StatusCodes.BadCertificateInvalid: "invalid (a required field or extension is missing)",
    ua.StatusCodes.BadCertificateHostNameInvalid: "its host name does not match",
}
_USER_CODES = {
    ua.StatusCodes.BadUserAccessDenied,
    ua.StatusCodes.BadIdentityTokenRejected,
    ua.StatusCodes.BadIdentityTokenInvalid,
}


class PlcClient(Client):
    """asyncua's client, remembering the connect step it reached: a refusal in the secure
    channel, the session or its activation means a different thing in each."""

    step = "connect"

    async def open_secure_channel(self, renew: bool = False) -> None:
        if not renew:
            self.step = OPEN_SECURE_CHANNEL
        await super().open_secure_channel(renew)

    async def create_session(self) -> ua.CreateSessionResult:
        self.step = CREATE_SESSION
        return await super().create_session()

    async def activate_session(self, *args: Any, **kwargs: Any) -> ua.ActivateSessionResult:
        self.step = ACTIVATE_SESSION
        return await super().activate_session(*args, **kwargs)


class AgentRefusedCertificate(ServiceError):
    """The agent's own check refused the PLC's certificate (asyncua chains it as the cause)."""

    def __init__(self, code: int, certificate: x509.Certificate, announced_uri: str | None):
        super().__init__(code)
        self.certificate = certificate
        self.announced_uri = announced_uri


def agent_validator(validator: Validator) -> Validator:
    """``validator``, marking its refusals as the agent's own, with the certificate refused."""

    async def validate(cert: x509.Certificate, app: ua.ApplicationDescription) -> Any:
        try:
            return await validator(cert, app)
        except ServiceError as exc:
            raise AgentRefusedCertificate(exc.code, cert, app.ApplicationUri) from exc

    return validate


def describe_certificate(cert: x509.Certificate) -> str:
    """Subject, SHA-1 thumbprint (what OPC UA tools and PLC web pages show) and validity."""
    thumbprint = hashlib.sha1(cert.public_bytes(Encoding.DER)).hexdigest()
    return (
        f"{cert.subject.rfc4514_string() or '(empty subject)'}, thumbprint {thumbprint}, valid "
        f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}"
    )


def explain(exc: BaseException, step: str, config: Any) -> str | None:
    """Who refused the connection and what to do, or None when ``exc`` is no refusal.

    ``config`` is the link's config: ``certificate``, ``trust_dir``, ``user_certificate``,
    ``username`` and ``security_policy`` name the files and settings involved.
    """
    refused = _find(exc, AgentRefusedCertificate)
    if refused is not None:
        return _agent_refused(refused, config)
    code = _status_code(exc)
    secure = config.security_policy != "None"
    if step == OPEN_SECURE_CHANNEL and code is None and _find(exc, AssertionError):
        # asyncua turns a ServiceFault answer to OpenSecureChannel into a bare AssertionError
        # (a timeout or a closed connection is no answer, and not taken for a refusal).
        if not secure:
            return "the PLC refused to open a channel with security_policy 'None' (ServiceFault)"
        return _plc_refused(
            config,
            "it answered OpenSecureChannel with a ServiceFault, as PLCs refuse a client "
            "certificate they do not trust (BadSecurityChecksFailed)",
        )
    if code is None:
        return None
    name = ua.StatusCode(code).name
    if step == ACTIVATE_SESSION and (code in _USER_CODES or code in _CERTIFICATE_PROBLEMS):
        return _user_refused(config, name)
    if code in _CERTIFICATE_PROBLEMS and secure:
        return _plc_refused(config, f"{name}: {_CERTIFICATE_PROBLEMS[code]}, in answer to {step}")
    return None


def _agent_refused(refused: AgentRefusedCertificate, config: Any) -> str:
    code = refused.code
    cert = refused.certificate
    name = ua.StatusCode(code).name
    what = f"the agent refused the PLC's certificate ({describe_certificate(cert)}): {name}"
    trust_dir = Path(config.trust_dir) if config.trust_dir else None
    if code == ua.StatusCodes.BadCertificateUntrusted:
        return (
            f"{what}, the agent does not trust it: check the thumbprint against the PLC's own, "
            f"then put the PLC's certificate (or its CA) in the agent's trust_dir {trust_dir}"
        )
    if code == ua.StatusCodes.BadCertificateTimeInvalid:
        return f"{what}, it is outside its validity period: renew it on the PLC, or set the clocks"
    if code == ua.StatusCodes.BadCertificateUriInvalid:
        return (
            f"{what}, its subjectAltName URI is not the application URI the PLC announces "
            f"({refused.announced_uri!r}): make a certificate for that URI on the PLC"
        )
    problem = _CERTIFICATE_PROBLEMS.get(code, "refused")
    return f"{what}, {problem}: replace the PLC's certificate, or fix trust_dir {trust_dir}"


def _plc_refused(config: Any, why: str) -> str:
    cert = Path(config.certificate) if config.certificate else None
    return (
        f"the PLC refused the agent's certificate {cert} ({why}): add {cert} to the PLC's "
        "trusted certificates (many PLCs keep a refused certificate in a 'rejected' folder: "
        "move it to 'trusted'); if it is trusted, check its validity dates and application URI"
    )


def _user_refused(config: Any, name: str) -> str:
    if config.user_certificate:
        who = f"user certificate {config.user_certificate}"
    elif config.username:
        who = f"user {config.username!r} (user name and password)"
    else:
        who = "anonymous access"
    return f"the PLC refused {who} ({name}): check the user settings on the PLC and in [plc]"


def _status_code(exc: BaseException) -> int | None:
    found = _find(exc, ua.UaStatusCodeError)
    return int(found.code) if found is not None else None


def _find(exc: BaseException, kind: type[Any]) -> Any:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
