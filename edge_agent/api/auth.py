"""Who is asking: every request but /health carries a bearer token, and the token's name is the
actor the audit trail records.

Authentication is a list of ``Authenticator``s tried in turn; the REST API has bearer tokens
from the config, each with a role (``[[api.tokens]] role``, default operator). The operator
screen adds its session login beside them. Roles (operator, supervisor) are checked on the
``Actor`` a dependency returns: the command path refuses an operator the abort and the close
with exceptions, and the rework routes need a supervisor (``require_role``, 403 otherwise).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Annotated, Protocol

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from edge_agent.orders.audit import Actor, Role

MIN_TOKEN_LENGTH = 16

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="A token from [[api.tokens]]; its name is recorded as the actor of each command",
)


class Unauthorized(Exception):
    """No credentials, or credentials nobody issued."""


class Forbidden(Exception):
    """Valid credentials whose role may not do this (403); the message names the role needed."""


def require_role(actor: Actor, role: Role, what: str) -> None:
    """Forbidden unless ``actor`` has ``role`` (a supervisor may do what an operator may)."""
    if role == Role.OPERATOR or actor.role == Role.SUPERVISOR:
        return
    has = f"the {actor.role} role" if actor.role else "no role"
    fix = (
        'give its [[api.tokens]] entry role = "supervisor", or use a supervisor\'s token'
        if actor.source == "api"
        else "log in as a supervisor"
    )
    raise Forbidden(f"{what} needs the {role} role; {actor.name} has {has} ({fix})")


class Authenticator(Protocol):
    async def authenticate(self, request: Request) -> Actor | None:
        """The actor the request's credentials prove, None when they prove none."""


class BearerTokens:
    """Named tokens; compared in constant time, each in full, so timing tells nothing."""

    def __init__(
        self,
        tokens: Mapping[str, SecretStr],
        source: str = "api",
        roles: Mapping[str, Role] | None = None,
    ) -> None:
        self._digests = [
            (name, _digest(secret.get_secret_value())) for name, secret in tokens.items()
        ]
        self.source = source
        self._roles = dict(roles or {})  # a token not named here is an operator's

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
        if found is None:
            return None
        return Actor(found, self.source, str(self._roles.get(found, Role.OPERATOR)))


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
