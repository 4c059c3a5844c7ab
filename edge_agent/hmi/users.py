"""Operator screen users: name, role and an argon2 password hash, in one JSON file.

The file (``[hmi] users_file``) is managed with ``edge-agent user add|remove|list`` by whoever
administers the line PC, and only read by the agent, again whenever it changes: a user added,
removed or given another role counts from the next request, without a restart. It holds no
password, only argon2id hashes (argon2-cffi's defaults), and is written atomically with mode
0640 (the group is the agent's service user's, as the file had it).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.orders.audit import Role

MIN_PASSWORD_LENGTH = 8
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
_HASHER = PasswordHasher()


@functools.cache
def _dummy() -> str:
    """Checked when the name is unknown, so that a wrong name takes as long as a wrong password.
    Made at the first check, not at import: a hash takes 64 MB and half a second, and every
    `edge-agent` command imports this module to build its parser."""
    return _HASHER.hash("not a password of anyone")


class UserError(EdgeAgentError):
    """A user cannot be added or removed as asked."""


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    password_hash: str
    created_at: float


class UserFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: tuple[tuple[int, int], dict[str, User]] | None = None

    # --- reading (the agent) ----------------------------------------------------------------

    def users(self) -> dict[str, User]:
        """The users as the file has them now (read again only when it changed)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(
                f"cannot read {self.path}: {exc.strerror}", key="hmi.users_file"
            ) from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if self._cache is None or self._cache[0] != stamp:
            self._cache = (stamp, self._read())
        return self._cache[1]

    def get(self, name: str) -> User | None:
        return self.users().get(name)

    def verify(self, name: str, password: str) -> User | None:
        """The user whose name and password these are; None otherwise (same time either way)."""
        user = self.get(name)
        try:
            _HASHER.verify(user.password_hash if user else _dummy(), password)
        except (VerificationError, InvalidHashError):
            return None
        return user

    def _read(self) -> dict[str, User]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return {
                entry["name"]: User(
                    entry["name"], Role(entry["role"]), entry["hash"], entry["created_at"]
                )
                for entry in data["users"]
            }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{self.path} is not a users file ({type(exc).__name__}: {exc}); recreate it "
                "with `edge-agent user add`",
                key="hmi.users_file",
            ) from None

    # --- changing (the CLI) -----------------------------------------------------------------

    def add(self, name: str, role: Role, password: str, *, replace: bool = False) -> User:
        if not NAME.match(name):
            raise UserError(
                f"user name {name!r}: 1 to 40 letters, digits, '.', '_' or '-', starting with a "
                "letter or digit"
            )
        if len(password) < MIN_PASSWORD_LENGTH:
            raise UserError(f"the password needs at least {MIN_PASSWORD_LENGTH} characters")
        users = dict(self.users())
        if name in users and not replace:
            raise UserError(f"user {name!r} exists; --replace sets a new password and role")
        users[name] = User(name, role, _HASHER.hash(password), time.time())
        self._write(users)
        return users[name]

    def remove(self, name: str) -> None:
        users = dict(self.users())
        if users.pop(name, None) is None:
            raise UserError(f"no user {name!r} in {self.path}")
        self._write(users)

    def _write(self, users: dict[str, User]) -> None:
        body = {
            "users": [
                {
                    "name": u.name,
                    "role": str(u.role),
                    "hash": u.password_hash,
                    "created_at": u.created_at,
                }
                for u in sorted(users.values(), key=lambda u: u.name)
            ]
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(body, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileNotFoundError, PermissionError):
            old = self.path.stat()
            os.chown(tmp, old.st_uid, old.st_gid)  # keep the group the agent reads it with
        tmp.replace(self.path)
        self._cache = None
