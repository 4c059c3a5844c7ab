"""TLS client contexts from the files a config names, with errors that name the file and key.

``ssl`` reports a missing file as ``FileNotFoundError(2, 'No such file or directory')`` without
its name, and would prompt on the terminal for the password of an encrypted key. Forwarders
build their contexts here, so a wrong file is one message: which key, which file, what to do.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from edge_agent.errors import ConfigError


def client_context(
    *,
    ca_file: Path | None,
    cert_file: Path | None,
    key_file: Path | None,
    keys: tuple[str, str, str] = ("ca_file", "cert_file", "key_file"),
) -> ssl.SSLContext:
    """A verifying client context trusting ``ca_file`` (else the system's CAs), presenting
    ``cert_file`` (+ ``key_file``, or a key inside the certificate file) when given. ``keys``
    are the config keys of the three files, for the messages."""
    ca_key, cert_key, key_key = keys
    for key, path in zip(keys, (ca_file, cert_file, key_file), strict=True):
        if path is not None:
            readable(path, key)
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{ca_file} holds no usable CA certificate ({_reason(exc)}); give the PEM file of "
            "the CA certificates that signed the server's certificate",
            key=ca_key,
        ) from exc
    if cert_file is not None:

        def no_password() -> str:
            raise ConfigError(
                f"the private key {key_file or cert_file} is encrypted; the agent needs it "
                "unencrypted (readable only by its user)",
                key=key_key if key_file else cert_key,
            )

        try:
            context.load_cert_chain(
                str(cert_file), str(key_file) if key_file else None, password=no_password
            )
        except ssl.SSLError as exc:
            pair = f"{cert_file} and {key_file}" if key_file else f"{cert_file}"
            raise ConfigError(
                f"{pair}: not a PEM certificate with its matching private key ({_reason(exc)})",
                key=cert_key,
            ) from exc
    return context


def readable(path: Path, key: str) -> None:
    """ConfigError naming ``path`` and ``key`` unless ``path`` is a file this user can read."""
    try:
        with path.open("rb") as f:
            f.read(1)
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder, not a file", key=key) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path} ({exc.strerror}); check the path and that the agent's user "
            "may read it",
            key=key,
        ) from None


def _reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc).replace("_", " ").lower()
