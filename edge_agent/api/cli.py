"""`edge-agent order ... | line ... | audit verify`.

``order`` and ``line`` talk to the running daemon through its REST API (the address and token
from ``--config``'s [api] section, or ``--api URL --token-file F``), so every command takes the
same path, and is audited the same way, as one from any other client. ``audit verify`` reads the
state database directly and needs no daemon.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any

from edge_agent.api.client import ApiClient, endpoint
from edge_agent.errors import ConfigError, EdgeAgentError

EXIT_OK, EXIT_ERROR = 0, 1
_REASON_REQUIRED = {"hold", "abort", "cancel"}
_COMMANDS = ("start", "hold", "resume", "stop", "abort", "cancel", "close")
_HELP = {
    "start": "start a Ready order",
    "hold": "hold the running order (stops the line)",
    "resume": "resume a held order (after its alarms are acknowledged)",
    "stop": "end the order short: nothing more is printed (Completed)",
    "abort": "end the order at once (Aborted; its serials are settled)",
    "cancel": "withdraw an order that never ran",
    "close": "close a Completed order (a reason when it does not balance)",
}


def add_commands(sub: Any) -> None:
    order = sub.add_parser("order", help="work orders of the running agent (through its API)")
    actions = order.add_subparsers(metavar="ACTION")

    submit = actions.add_parser("submit", help="submit an order file (JSON or TOML)")
    submit.add_argument("file", type=Path)
    _client_options(submit)
    submit.set_defaults(handler=_submit)

    listing = actions.add_parser("list", help="orders and their states")
    listing.add_argument("--state", action="append", help="only this state (repeatable)")
    _client_options(listing)
    listing.set_defaults(handler=_list)

    show = actions.add_parser("show", help="one order: state, holds, alarms, audit trail")
    show.add_argument("order_id", metavar="ID")
    _client_options(show)
    show.set_defaults(handler=_show)

    for name in _COMMANDS:
        command = actions.add_parser(name, help=_HELP[name])
        command.add_argument("order_id", metavar="ID")
        command.add_argument(
            "--reason", required=name in _REASON_REQUIRED, help="why (kept in the audit trail)"
        )
        _client_options(command)
        command.set_defaults(handler=_command, command=name)

    report = actions.add_parser("report", help="close report of an ended order")
    report.add_argument("order_id", metavar="ID")
    report.add_argument(
        "--html", type=Path, metavar="FILE", help="write the HTML page ('-' = stdout)"
    )
    _client_options(report)
    report.set_defaults(handler=_report)

    line = sub.add_parser("line", help="the running line (through the agent's API)")
    line_actions = line.add_subparsers(metavar="ACTION")
    status = line_actions.add_parser("status", help="line state, order, counters, alarms")
    _client_options(status)
    status.set_defaults(handler=_line_status)
    ack = line_actions.add_parser("ack", help="acknowledge an alarm")
    ack.add_argument("alarm_id", metavar="ALARM_ID", type=int)
    _client_options(ack)
    ack.set_defaults(handler=_ack)

    audit_cmd = sub.add_parser("audit", help="the audit trail (state database, no daemon needed)")
    audit_actions = audit_cmd.add_subparsers(metavar="ACTION")
    verify = audit_actions.add_parser("verify", help="prove the hash chain; find changed rows")
    verify.add_argument("--state-dir", type=Path, help="directory of the state database")
    verify.add_argument("--config", type=Path, help="take the state directory from here")
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.set_defaults(handler=_audit_verify)


def _client_options(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("where the agent is")
    where.add_argument("--config", type=Path, help="the agent's config (its [api] section)")
    where.add_argument("--api", metavar="URL", help="API address (default http://127.0.0.1:8470)")
    where.add_argument("--token-file", type=Path, metavar="F", help="file holding the API token")
    where.add_argument("--token-name", help="which [[api.tokens]] entry of --config to use")
    where.add_argument("--cacert", type=Path, help="certificate to trust for https")
    parser.add_argument("--json", action="store_true", help="print the agent's JSON answer")


def _client(args: argparse.Namespace) -> ApiClient:
    return ApiClient(
        endpoint(
            config=args.config,
            api=args.api,
            token_file=args.token_file,
            token_name=args.token_name,
            cacert=args.cacert,
        )
    )


# --- orders ----------------------------------------------------------------------------------


def _submit(args: argparse.Namespace) -> int:
    data = _order_file(args.file)
    with _client(args) as api:
        order = api.post("/orders", data)
    if args.json:
        return _print_json(order)
    print(f"order {order['id']} stored: {order['state']}")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    with _client(args) as api:
        orders = api.get("/orders", state=args.state or [])
    if args.json:
        return _print_json(orders)
    if not orders:
        print("no orders")
        return EXIT_OK
    rows = [
        [o["id"], o["state"], o["gtin"], o["lot"], str(o["quantity"]), _when(o["received_at"])]
        for o in orders
    ]
    _table(["ORDER", "STATE", "GTIN", "LOT", "QUANTITY", "RECEIVED"], rows)
    return EXIT_OK


def _show(args: argparse.Namespace) -> int:
    with _client(args) as api:
        order = api.get(f"/orders/{args.order_id}")
    if args.json:
        return _print_json(order)
    print(f"order {order['id']}: {order['state']}  ({order['description'] or 'no description'})")
    print(
        f"  GTIN {order['gtin']}  lot {order['lot']}  expiry {order['expiry']}  "
        f"quantity {order['quantity']}  market {order['market']}  serials {order['serial_source']}"
    )
    print(f"  received {_when(order['received_at'])} from {order['source']}")
    allowed = ", ".join(order["allowed_commands"]) or "none (it has ended)"
    print(f"  commands allowed now: {allowed}")
    if order["holds"]:
        print("holds:")
        for h in order["holds"]:
            until = _when(h["resumed_at"]) if h["resumed_at"] else "still held"
            print(f"  {_when(h['held_at'])} → {until}  {h['reason']}")
    if order["alarms"]:
        print("alarms:")
        for a in order["alarms"]:
            print(f"  #{a['id']} {a['kind']} ({_alarm_state(a)}): {a['message']}")
    print("audit trail:")
    for row in order["audit"]:
        why = f"  reason: {row['reason']}" if row["reason"] else ""
        print(
            f"  {row['seq']:>6} {_when(row['at'])} {row['source']}:{row['actor']} "
            f"{row['action']} {row['outcome']}{why}"
        )
    return EXIT_OK


def _command(args: argparse.Namespace) -> int:
    body = {"reason": args.reason} if args.reason else None
    with _client(args) as api:
        order = api.post(f"/orders/{args.order_id}/commands/{args.command}", body)
    if args.json:
        return _print_json(order)
    print(f"order {order['id']}: {order['state']}")
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    with _client(args) as api:
        if args.html is not None:
            page = api.get_text(f"/orders/{args.order_id}/report.html")
            if str(args.html) == "-":
                sys.stdout.write(page)
            else:
                args.html.write_text(page, encoding="utf-8")
                print(f"close report of {args.order_id} written to {args.html}")
            return EXIT_OK
        report = api.get(f"/orders/{args.order_id}/report")
    if args.json:
        return _print_json(report)
    rec = report["reconciliation"]
    print(f"order {report['order_id']}: {report['state']} by {report['closed_by']}")
    if report.get("reason"):
        print(f"  reason: {report['reason']}")
    print(
        f"  units {rec['units']}  passed {rec['passed']}  rejected {rec['rejected']}  "
        f"yield {report['yield'] * 100:.1f} % of {report['order'].get('quantity')}"
    )
    for reason, count in rec["rejected_by_reason"].items():
        print(f"    {reason}: {count}")
    print(
        f"  serials: allocated {rec['serials_allocated']}  commissioned "
        f"{rec['serials_commissioned']}  rejected {rec['serials_rejected']}  unused "
        f"{rec['serials_unused']}  returned {report.get('serials_returned', 0)}"
    )
    print(f"  holds {len(report['holds'])}  alarms {len(report['alarms'])}")
    balance = "balanced" if report["balanced"] else "NOT balanced: " + "; ".join(report["problems"])
    print(f"  {balance}")
    print(f"  audit: {report['audit']['rows']} rows, head {report['audit']['head']}")
    return EXIT_OK


# --- line ------------------------------------------------------------------------------------


def _line_status(args: argparse.Namespace) -> int:
    with _client(args) as api:
        line = api.get("/line")
    if args.json:
        return _print_json(line)
    order = line["order"]
    on_line = f"order {order['id']} ({order['state']})" if order else "no order"
    print(f"line {line['state']}: {on_line}")
    c = line["counters"]
    if c["order_id"]:
        print(
            f"  units {c['units']}  passed {c['passed']}  rejected {c['rejected']}  "
            f"remaining {c['remaining']} of {c['quantity']}"
        )
        for reason, count in c["rejected_by_reason"].items():
            print(f"    {reason}: {count}")
    for device in line["devices"]:
        print(f"  {device['kind']} {device['name']}: {device['state']} {device['detail']}".rstrip())
    if line["alarms"]:
        print("alarms:")
        for a in line["alarms"]:
            where = f" order {a['order_id']}" if a["order_id"] else ""
            print(f"  #{a['id']} {a['kind']}{where} ({_alarm_state(a)}): {a['message']}")
    else:
        print("no open alarms")
    return EXIT_OK


def _ack(args: argparse.Namespace) -> int:
    with _client(args) as api:
        alarm = api.post(f"/alarms/{args.alarm_id}/acknowledge")
    if args.json:
        return _print_json(alarm)
    print(f"alarm #{alarm['id']} {alarm['kind']} acknowledged by {alarm['acknowledged_by']}")
    return EXIT_OK


# --- audit -----------------------------------------------------------------------------------


def _audit_verify(args: argparse.Namespace) -> int:
    from edge_agent.db import open_reader
    from edge_agent.orders import audit

    state_dir = _state_dir(args)
    with contextlib.closing(open_reader(state_dir)) as conn:
        check = audit.verify(conn)
    if args.json:
        _print_json(
            {"ok": check.ok, "rows": check.rows, "head": check.head, "problems": check.problems}
        )
    elif check.ok:
        print(f"audit trail holds: {check.rows} rows, head {check.head}")
    else:
        print(f"audit trail BROKEN ({len(check.problems)} problems in {check.rows} rows):")
        for problem in check.problems:
            print(f"  {problem}")
    return EXIT_OK if check.ok else EXIT_ERROR


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir is not None:
        return Path(args.state_dir)
    if args.config is None:
        raise ConfigError("give --state-dir DIR or --config FILE")
    from edge_agent.config.models import AgentSection

    try:
        data = tomllib.loads(args.config.read_text(encoding="utf-8"))
        return AgentSection.model_validate(data.get("agent", {})).state_dir
    except OSError as exc:
        raise ConfigError(f"cannot read the file ({exc.strerror})", file=str(args.config)) from exc
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(
            f"no valid [agent] state_dir ({exc}); give --state-dir", file=str(args.config)
        ) from None


# --- output ----------------------------------------------------------------------------------


def _order_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EdgeAgentError(f"{path}: cannot read the order file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise EdgeAgentError(f"{path}: the order file is not UTF-8 text") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise EdgeAgentError(f"{path}: not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise EdgeAgentError(f"{path}: an order file holds one order (a JSON object)")
    return data


def _print_json(value: Any) -> int:
    print(json.dumps(value, indent=2, ensure_ascii=False))
    return EXIT_OK


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "—"
    return datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _alarm_state(alarm: dict[str, Any]) -> str:
    state = "active" if alarm["active"] else "cleared"
    acked = (
        f"acknowledged by {alarm['acknowledged_by']}"
        if alarm["acknowledged_at"]
        else "to acknowledge"
    )
    return f"{state}, {acked}"
