"""`edge-agent user add|remove|list`: the operator screen's users (see edge_agent/hmi/users.py)."""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError
from edge_agent.hmi.users import UserError, UserFile
from edge_agent.orders.audit import Role

DEFAULT_CONFIG = Path("/etc/edge-agent/line.toml")


def add_commands(sub: Any) -> None:
    user = sub.add_parser("user", help="operator screen users").add_subparsers(metavar="ACTION")
    add = user.add_parser(
        "add",
        help="add a user (the password is asked for, or read from stdin)",
        description="Add a user of the operator screen. The password is asked for twice on a "
        "terminal, or read as the first line of stdin; only its argon2 hash is stored.",
    )
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=[str(r) for r in Role])
    add.add_argument("--replace", action="store_true", help="set a new password and role")
    _where(add)
    add.set_defaults(handler=_add)

    remove = user.add_parser("remove", help="remove a user (their session ends at once)")
    remove.add_argument("name")
    _where(remove)
    remove.set_defaults(handler=_remove)

    listing = user.add_parser("list", help="users and their roles")
    _where(listing)
    listing.set_defaults(handler=_list)


def _where(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users-file", type=Path, help="the users file itself")
    parser.add_argument(
        "--config",
        type=Path,
        help=f"take [hmi] users_file from this config (default {DEFAULT_CONFIG})",
    )


def _file(args: argparse.Namespace) -> UserFile:
    if args.users_file is not None:
        return UserFile(args.users_file)
    from edge_agent.config import load_config

    model = load_config(args.config or DEFAULT_CONFIG).model
    if model.hmi is None:
        raise ConfigError(
            f"{args.config or DEFAULT_CONFIG} has no [hmi] section; add one (users_file = ...) "
            "or give --users-file",
            key="hmi",
        )
    return UserFile(model.hmi.users_file)


def _password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise UserError("the two passwords differ; nothing was changed")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def _add(args: argparse.Namespace) -> int:
    users = _file(args)
    user = users.add(args.name, Role(args.role), _password(), replace=args.replace)
    print(f"user {user.name} ({user.role}) saved in {users.path}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    users = _file(args)
    users.remove(args.name)
    print(f"user {args.name} removed from {users.path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    for user in sorted(_file(args).users().values(), key=lambda u: u.name):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(user.created_at))
        print(f"{user.name:<24} {user.role:<11} since {when}")
    return 0
