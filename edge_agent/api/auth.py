"""Who is asking: every request but /health carries a bearer token, and the token's name is the
actor the audit trail records.

Authentication is a list of ``Authenticator``s tried in turn; the REST API has bearer tokens
from the config. The operator screen adds its session login beside them, and roles (operator,
supervisor) are checked on the ``Actor`` a dependency returns.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Annotated, Protocol

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from edge_agent.orders.audit import Actor

MIN_TOKEN_LENGTH = 16

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="A token from [[api.tokens]]; its name is recorded as the actor of each command",
)


class Unauthorized(Exception):
    """No credentials, or credentials nobody issued."""


class Authenticator(Protocol):
    async def authenticate(self, request: Request) -> Actor | None:
        """The actor the request's credentials prove, None when they prove none."""


class BearerTokens:
    """Named tokens; compared in constant time, each in full, so timing tells nothing."""

    def __init__(self, tokens: Mapping[str, SecretStr], source: str = "api") -> None:
        self._digests = [
            (name, _digest(secret.get_secret_value())) for name, secret in tokens.items()
        ]
        self.source = source

    async def authenticate(self, request: Request) -> Actor | None:
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return None
        digest = _digest(presented.strip())
        found = None
        for name, expected in self._digests:  # no early exit: every token is compared
            if hmac.compare_digest(digest, expected):
                found = name
        return Actor(found, self.source) if found is not None else None


async def current_actor(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],  # documents it
) -> Actor:
    """FastAPI dependency: the authenticated actor, or 401."""
    authenticators: list[Authenticator] = request.app.state.authenticators
    for authenticator in authenticators:
        actor = await authenticator.authenticate(request)
        if actor is not None:
            return actor
    raise Unauthorized


def _digest(token: str) -> bytes:
    # Equal-length digests: compare_digest then takes the same time whatever was presented.
    return hashlib.sha256(token.encode()).digest()
