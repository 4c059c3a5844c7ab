"""`edge-agent outbox status | replay | export`: look into and act on the event outbox.

They work on the state database directly (``--state-dir``, or ``--config`` to take it and the
forwarder names from the agent's config), and are safe while the agent runs: reads are single
short statements, writes one short ``BEGIN IMMEDIATE`` transaction each.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_commands(sub: Any) -> None:
    outbox = sub.add_parser("outbox", help="events waiting for delivery upstream")
    actions = outbox.add_subparsers(metavar="ACTION")

    status = actions.add_parser("status", help="pending, oldest age, rate, dead letters")
    _where(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)

    replay = actions.add_parser("replay", help="send delivered events again")
    _where(replay)
    replay.add_argument(
        "--since",
        required=True,
        help="events created since: ISO 8601 time (2026-11-21T08:00+01:00) or an age (90m, 2h, 1d)",
    )
    replay.add_argument("--forwarder", help="only for this forwarder (default: all)")
    replay.add_argument("--dead", action="store_true", help="re-queue dead letters too")
    replay.set_defaults(handler=_replay)

    drain = actions.add_parser(
        "drain", help="run only the forwarders until the outbox is empty (no line)"
    )
    drain.add_argument("--config", type=Path, required=True, help="the agent's config file")
    drain.add_argument(
        "--timeout", type=float, default=600.0, help="give up after this many seconds (600)"
    )
    drain.set_defaults(handler=_drain)

    export = actions.add_parser("export", help="write events as one EPCIS document")
    _where(export)
    export.add_argument("--format", choices=["epcis-json", "epcis-xml-1.2"], default="epcis-json")
    export.add_argument("--out", type=Path, required=True, help="file to write ('-' = stdout)")
    export.add_argument("--since", help="only events created since (as for replay)")
    export.add_argument("--batch", help="only events of this batch")
    export.add_argument(
        "--state",
        choices=["all", "pending", "delivered", "dead"],
        default="all",
        help="only events in this aggregate state",
    )
    export.set_defaults(handler=_export)


def _where(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, help="directory of the state database")
    parser.add_argument("--config", type=Path, help="take state dir and forwarders from here")


def _resolve(args: argparse.Namespace) -> tuple[Path, list[str]]:
    if args.config is not None:
        from edge_agent.config import load_config

        config = load_config(args.config)
        return args.state_dir or config.model.agent.state_dir, [f.name for f in config.forwarders]
    if args.state_dir is None:
        raise ConfigError("give --state-dir DIR or --config FILE", key="outbox")
    return args.state_dir, []


def parse_since(text: str, now: float | None = None) -> float:
    now = time.time() if now is None else now
    if match := _DURATION.match(text.strip()):
        return now - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"--since {text!r} is neither an ISO 8601 time nor an age like 90m, 2h or 1d",
            key="since",
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # a time without offset is local time, as an operator means it
    return when.timestamp()


def _store(conn: sqlite3.Connection, names: list[str]) -> Any:
    from edge_agent.outbox.store import OutboxStore

    store = OutboxStore(conn, names)
    if not names:
        store.forwarders = store._known_forwarders()
    return store


def _status(args: argparse.Namespace) -> int:
    from edge_agent.db import reading

    state_dir, names = _resolve(args)
    with reading(state_dir) as conn:
        store = _store(conn, names)
        rows = [vars(s) for s in store.status()]
        totals = dict(conn.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall())
    report = {"state_dir": str(state_dir), "events": totals, "forwarders": rows}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"outbox in {state_dir}: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())))
    if not rows:
        print("no forwarder has delivered anything yet (give --config to name them)")
    for row in rows:
        age = row["oldest_pending_age_s"]
        print(
            f"  {row['forwarder']}: pending {row['pending']}"
            + (f" (oldest {_age(age)})" if age is not None else "")
            + f", delivered {row['delivered_last_minute']}/min, dead letters {row['dead_letters']}"
        )
    dead = sum(r["dead_letters"] for r in rows)
    if dead:
        print(
            f"{dead} dead letter(s): upstream refused them as invalid; fix the cause, then "
            "`edge-agent outbox replay --dead --since ...`",
            file=sys.stderr,
        )
    return 0


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _replay(args: argparse.Namespace) -> int:
    from edge_agent.db import close_db, open_db, storage_errors

    state_dir, names = _resolve(args)
    since = parse_since(args.since)
    conn = open_db(state_dir)
    try:
        with storage_errors(state_dir):
            count = _store(conn, names).replay(since, args.forwarder, dead=args.dead)
    finally:
        close_db(conn)
    print(f"re-queued {count} deliveries of events created since {time.ctime(since)}")
    return 0


def _drain(args: argparse.Namespace) -> int:
    """Exit 0 when every forwarder delivered everything, 1 when events are still pending."""
    import asyncio

    from edge_agent import logs
    from edge_agent.app import Agent
    from edge_agent.config import load_config

    config = load_config(args.config)
    logs.configure(config.model.agent.log_format, config.model.agent.log_level)
    if not config.forwarders:
        raise ConfigError("no [[upstream.forwarders]] configured", file=str(args.config))
    left = asyncio.run(Agent(config).drain_outbox(args.timeout))
    print(json.dumps({"pending": left}))
    return 0 if left == 0 else 1


def _export(args: argparse.Namespace) -> int:
    """Streams: one event in memory at a time, spooled next to the output file (the document's
    head needs every event) and copied behind its head once the last one is in."""
    from edge_agent.db import reading
    from edge_agent.epcis import spool

    state_dir, _names = _resolve(args)
    sql, params = "SELECT payload FROM outbox WHERE 1 = 1", list[Any]()
    if args.since:
        sql, params = sql + " AND created_at >= ?", [*params, parse_since(args.since)]
    if args.batch:
        sql, params = sql + " AND batch_id = ?", [*params, args.batch]
    if args.state != "all":
        sql, params = sql + " AND state = ?", [*params, args.state]
    to_stdout = str(args.out) == "-"
    document = spool.json_document if args.format == "epcis-json" else spool.xml_document
    with reading(state_dir) as conn:
        # one statement, read to its end while the events are spooled (one snapshot)
        events = (json.loads(payload) for (payload,) in conn.execute(sql + " ORDER BY seq", params))
        spool_dir = None if to_stdout else args.out.resolve().parent
        with document(events, spool_dir=spool_dir) as spooled:
            newline = b"\n" if args.format == "epcis-json" else b""
            if to_stdout:
                spooled.write_to(sys.stdout.buffer)
                sys.stdout.buffer.write(newline)
                sys.stdout.buffer.flush()
            else:
                with args.out.open("wb") as out:
                    spooled.write_to(out)
                    out.write(newline)
    print(f"exported {spooled.count} events to {args.out}", file=sys.stderr)
    return 0
