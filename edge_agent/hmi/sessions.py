"""Operator screen sessions: a signed cookie that expires, and the CSRF token of its forms.

The cookie holds the user's name, a random nonce and its expiry time, signed with HMAC-SHA256
under a key made at start: nothing on the server to store or clean up, and a restart of the
agent ends every session. The role is not taken from the cookie but looked up in the users file
at each request, so a removed user or a changed role counts at once. The cookie is HttpOnly and
SameSite=Strict (and Secure over HTTPS).

Each form carries a CSRF token derived from the session's nonce (an anonymous session before
login has one too, so the login form is protected as well); a POST without the token of its own
session is refused. Logging in makes a new nonce (no session fixation).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

COOKIE = "edge_agent_hmi"


@dataclass(frozen=True)
class Session:
    user: str | None  # None: not logged in yet
    nonce: str
    expires_at: float

    @property
    def logged_in(self) -> bool:
        return self.user is not None


class SessionCodec:
    def __init__(self, lifetime_s: float, key: bytes | None = None) -> None:
        self.lifetime_s = lifetime_s
        self._key = key or secrets.token_bytes(32)

    def new(self, user: str | None, now: float | None = None) -> Session:
        now = time.time() if now is None else now
        lifetime = self.lifetime_s if user is not None else 3600.0
        return Session(user, secrets.token_urlsafe(16), now + lifetime)

    def encode(self, session: Session) -> str:
        body = json.dumps(
            {"u": session.user, "n": session.nonce, "e": round(session.expires_at, 3)},
            separators=(",", ":"),
        ).encode()
        payload = _b64(body)
        return f"{payload}.{self._sign(payload.encode())}"

    def decode(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session the cookie proves; None when it is missing, forged or expired."""
        if not cookie or cookie.count(".") != 1:
            return None
        payload, signature = cookie.split(".")
        if not hmac.compare_digest(signature, self._sign(payload.encode())):
            return None
        try:
            data = json.loads(_unb64(payload))
            session = Session(data["u"], data["n"], float(data["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires_at <= (time.time() if now is None else now):
            return None
        return session

    def csrf_token(self, session: Session) -> str:
        return self._sign(b"csrf|" + session.nonce.encode())

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token, self.csrf_token(session))

    def _sign(self, data: bytes) -> str:
        return _b64(hmac.new(self._key, data, hashlib.sha256).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
