"""`edge-agent backup --to DIR` and `edge-agent restore --from BACKUP`: see edge_agent/backup.py."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError


def add_commands(sub: Any) -> None:
    backup = sub.add_parser(
        "backup",
        help="take an online, consistent copy of the state database (the line may run)",
        description="Copy the state database with its identity into a new folder of DIR, while "
        "the agent runs or not. With --keep N, only the newest N backups of this database in "
        "DIR are kept.",
    )
    backup.add_argument("--to", type=Path, required=True, metavar="DIR", help="backup folder")
    _where(backup)
    backup.add_argument("--keep", type=int, metavar="N", help="delete all but the newest N")
    backup.set_defaults(handler=_backup)

    restore = sub.add_parser(
        "restore",
        help="check a backup and put it in place as the state database (agent stopped)",
        description="Check the backup (checksum, integrity, identity) and the state directory "
        "(not in use, no other database), quarantine every serial not settled at backup time, "
        "move serial generation to a new epoch, then put the copy in place.",
    )
    restore.add_argument(
        "--from", dest="source", type=Path, required=True, metavar="BACKUP", help="backup folder"
    )
    _where(restore)
    restore.add_argument(
        "--replace",
        action="store_true",
        help="the directory holds this database already: move its files aside and restore",
    )
    restore.set_defaults(handler=_restore)


def _where(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, help="the state directory")
    parser.add_argument("--config", type=Path, help="take the state directory from this config")


def _target(args: argparse.Namespace) -> tuple[Path, str | None]:
    if args.config is not None:
        from edge_agent.config import load_config

        model = load_config(args.config).model
        state_dir = args.state_dir or model.agent.state_dir
        return Path(state_dir), model.line.id
    if args.state_dir is not None:
        return Path(args.state_dir), None
    raise ConfigError("give --state-dir DIR or --config FILE", key="state")


def _backup(args: argparse.Namespace) -> int:
    from edge_agent import backup, logs

    logs.configure("console", "warning")
    if args.keep is not None and args.keep < 1:
        raise ConfigError("--keep must be 1 or more", key="keep")
    state_dir, line_id = _target(args)
    taken = backup.take_backup(state_dir, args.to, line_id=line_id)
    m = taken.manifest
    print(f"{taken.path}: database {taken.database_id}, taken {m['taken_at']}")
    print(
        f"  {m['size']} bytes in {m['copy_seconds']} s, integrity ok, write {m['write_counter']}"
        f", serials: {', '.join(f'{n} {s}' for s, n in sorted(m['serials'].items())) or 'none'}"
    )
    if args.keep is not None:
        for gone in backup.prune(args.to, taken.database_id, args.keep):
            print(f"  removed {gone} (keeping the newest {args.keep})")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from edge_agent import backup, logs

    logs.configure("console", "warning")
    state_dir, line_id = _target(args)
    done = backup.restore(args.source, state_dir, replace=args.replace, line_id=line_id)
    quarantined = sum(len(s) for s in done.quarantined.values())
    print(
        f"{state_dir}: database {done.backup.database_id} restored from the backup taken "
        f"{done.backup.manifest['taken_at']}"
    )
    print(
        f"  {quarantined} serial(s) not settled at backup time quarantined (never used again)"
        + "".join(f"; batch {b}: {len(s)}" for b, s in sorted(done.quarantined.items()))
    )
    if done.pool_quarantined:
        print(f"  free serials of imported L3 lists quarantined: {done.pool_quarantined}")
    if done.requests_discarded:
        print(f"  {done.requests_discarded} pending L3 serial request(s) discarded")
    print(f"  serial generation moved to epoch {done.epoch}; report: {done.report}")
    if done.replaced is not None:
        print(f"  the directory's previous files are in {done.replaced}")
    print("  reconcile the quarantined serials with L3 and the EPCIS repository")
    return 0
