"""`edge-agent state check | adopt`: look at the state database's identity, and recover it.

``check`` runs what every opening runs (identity, WAL proof) plus SQLite's quick_check, and
writes nothing. ``adopt`` gives a state.db restored without its state.id its identity back.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError


def add_commands(sub: Any) -> None:
    state = sub.add_parser("state", help="the state database: identity and integrity, recovery")
    actions = state.add_subparsers(metavar="ACTION")

    check = actions.add_parser(
        "check", help="identity, WAL and integrity of the state database (writes nothing)"
    )
    _where(check)
    check.set_defaults(handler=_check)

    adopt = actions.add_parser(
        "adopt",
        help="make the state.db in the state directory its database (writes state.id); for a "
        "state.db restored from a backup without its state.id",
    )
    _where(adopt)
    adopt.set_defaults(handler=_adopt)


def _where(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, help="the state directory")
    parser.add_argument("--config", type=Path, help="take the state directory from this config")


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir is not None:
        return Path(args.state_dir)
    if args.config is not None:
        from edge_agent.config import load_config

        return load_config(args.config).model.agent.state_dir
    raise ConfigError("give --state-dir DIR or --config FILE", key="state")


def _check(args: argparse.Namespace) -> int:
    from edge_agent import db, proclocks

    state_dir = _state_dir(args)
    seen = db.verify(state_dir)
    if seen.header is None:
        print(f"no state database in {state_dir} yet: the first `edge-agent run` creates it")
        return 0
    with db.reading(state_dir) as conn:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
        (schema,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    files = seen.files
    identity = (
        f"database {seen.database_id} (state.id matches)"
        if seen.database_id
        else "made before identities: the next `edge-agent run` adopts it"
    )
    print(f"{files.db}: {identity}, schema {schema}")
    if seen.wal_transactions is None:
        users = proclocks.describe(seen.open_by, exclude_self=False)
        print(f"  WAL: not read, the database is open in {users or 'another process'}")
    else:
        print(f"  WAL: {seen.wal_transactions} committed transaction(s), all continuing state.db")
    if problems != ["ok"]:
        print(f"  integrity: FAILED: {'; '.join(problems[:5])}")
        print("  keep the files; restore state.db and state.id from the last backup")
        return 2
    print("  integrity: ok (quick_check)")
    return 0


def _adopt(args: argparse.Namespace) -> int:
    from edge_agent import db, logs

    state_dir = _state_dir(args)
    logs.configure("console", "warning")
    database_id = db.adopt_existing(state_dir)
    print(f"{state_dir / 'state.id'} written: state.db is database {database_id}")
    return 0
