"""Which configuration values are secrets, and how they are kept out of messages and logs.

Three rules, applied wherever a config value could be shown (config errors, log lines):

- a key whose name says it holds a secret (``token``, ``password``, ``passphrase``, ``secret``,
  ``api_key`` ...) or may point at one (``key``, ``private_key``, ``key_file``) never has its value
  shown, and neither does a field typed ``SecretRef`` or ``SecretStr``;
- a whole table or array is never shown (it may contain any of the above);
- the password part of a URL (``rtsp://user:password@camera/stream``) is masked.

A secret itself is never written into a config file: ``token = { env = "NAME" }`` or
``token = { file = "/path" }``. ``inline_secrets`` finds keys that break this rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

# Words that make a key hold a secret value (or a reference to one).
_SECRET_WORDS = frozenset(
    {"token", "password", "passwd", "passphrase", "secret", "credential", "credentials", "apikey"}
)
# Words that make a key name a place (variable, file) rather than hold the value.
_REFERENCE_WORDS = frozenset({"env", "file", "path", "dir", "directory", "ref", "reference"})
_SECRET_NAMES = frozenset({"key", "api_key", "access_key", "secret_key", "private_key"})
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/@]*):[^\s/@]*@")
REDACTED = "<redacted>"
INLINE_SECRET = (
    'a secret is never written inline; use { env = "NAME" } (an environment variable) or '
    '{ file = "/path" } (a file holding it)'
)


def _words(name: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", name.lower())) - {""}


def is_secret_key(name: str) -> bool:
    """True for a key whose value must never be shown: a secret or where a secret may be."""
    words = _words(name)
    return bool(words & _SECRET_WORDS) or "key" in words or name.lower() in _SECRET_NAMES


def holds_inline_secret(name: str, value: Any) -> bool:
    """True when ``value`` written under key ``name`` would be a secret written in clear."""
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        return False
    words = _words(name)
    named = bool(words & _SECRET_WORDS) or name.lower() in _SECRET_NAMES - {"private_key"}
    return named and not words & _REFERENCE_WORDS


def inline_secrets(data: Any, path: str = "") -> Iterator[str]:
    """Key paths (``upstream.forwarders[0].token``) where a secret is written in clear."""
    if isinstance(data, dict):
        for key, value in data.items():
            where = f"{path}.{key}" if path else str(key)
            if holds_inline_secret(str(key), value):
                yield where
            else:
                yield from inline_secrets(value, where)
    elif isinstance(data, list):
        for index, item in enumerate(data):
            yield from inline_secrets(item, f"{path}[{index}]")


def secret_values(data: Any, under_secret: bool = False) -> set[str]:
    """Every string written under a secret key (and every URL password) in ``data``."""
    found: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            found |= secret_values(value, under_secret or is_secret_key(str(key)))
    elif isinstance(data, list):
        for item in data:
            found |= secret_values(item, under_secret)
    elif isinstance(data, str):
        if under_secret:
            found.add(data)
        found |= {m.group(0).rsplit("@", 1)[0].split(":")[-1] for m in _URL_PASSWORD.finditer(data)}
    return {value for value in found if len(value) >= 4}  # shorter ones would mangle messages


def redact_url(text: str) -> str:
    """``text`` with the password of every URL in it masked (``scheme://user:<redacted>@``)."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group(1)}:{REDACTED}@", text)


def scrub(text: str, secrets: set[str]) -> str:
    """``text`` with every known secret value and URL password masked."""
    for value in sorted(secrets, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return redact_url(text)
