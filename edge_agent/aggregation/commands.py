"""`edge-agent case ...` and `edge-agent unit sample|destroy`: manual aggregation and rework
through the running agent's REST API (so each step is audited with who did it, and emits its
events, exactly as from the operator screen); `edge-agent station ...`: the daemon's case and
pallet stations at the end of an order (the last, partial case and pallet; a pallet hold).

A container or unit is given as its label reads: the 18 SSCC digits, the GS1 element string as
a scanner types it or bracketed (``(00)...``, ``(01)...(21)...``), or its EPC URI. Children can
also come from a file, one code per line (``--from -`` reads a scanner's lines from stdin).
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

from edge_agent.api.cli import EXIT_OK, _client, _client_options, _print_json, _table
from edge_agent.errors import EdgeAgentError

LEVELS = ("bundle", "case", "pallet")


def add_commands(sub: Any) -> None:
    case = sub.add_parser(
        "case", help="cases, bundles and pallets: show, rework (through the agent's API)"
    )
    actions = case.add_subparsers(metavar="ACTION")

    show = actions.add_parser("show", help="one container: state, children, parent")
    show.add_argument("code", metavar="CODE", help="its label: SSCC, element string or EPC")
    _client_options(show)
    show.set_defaults(handler=_show)

    listing = actions.add_parser("list", help="an order's containers")
    listing.add_argument("--order", required=True, metavar="ID")
    listing.add_argument("--level", choices=LEVELS)
    listing.add_argument("--state", action="append", help="only this state (repeatable)")
    _client_options(listing)
    listing.set_defaults(handler=_list)

    opening = actions.add_parser(
        "open", help="open a closed container for rework (CODE), or a new one (--order)"
    )
    opening.add_argument("code", metavar="CODE", nargs="?", help="the label scanned")
    opening.add_argument("--order", metavar="ID", help="a new container for this order")
    opening.add_argument("--level", choices=LEVELS, default="case")
    _client_options(opening)
    opening.set_defaults(handler=_open)

    adding = actions.add_parser("add", help="add units (or cases to a pallet): all or none")
    _children(adding)
    adding.add_argument("--close", action="store_true", help="and close it, in one step")
    _client_options(adding)
    adding.set_defaults(handler=_add)

    removing = actions.add_parser("remove", help="remove children; they stay loose")
    _children(removing)
    removing.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    _client_options(removing)
    removing.set_defaults(handler=_remove)

    replacing = actions.add_parser("replace", help="replace one child by another")
    replacing.add_argument("code", metavar="CODE")
    replacing.add_argument("old", metavar="OLD")
    replacing.add_argument("new", metavar="NEW")
    replacing.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    _client_options(replacing)
    replacing.set_defaults(handler=_replace)

    for name, text in (
        ("close", "close an open container"),
        ("relabel", "give a container a new identifier (prints the new one)"),
        ("disaggregate", "empty a container for good; its children stay loose"),
    ):
        command = actions.add_parser(name, help=text)
        command.add_argument("code", metavar="CODE")
        if name != "close":
            command.add_argument("--reason", required=True, help="why (kept in the audit trail)")
        _client_options(command)
        command.set_defaults(handler=_container_action, action=name)

    _station_commands(sub)

    unit = sub.add_parser("unit", help="a commissioned unit taken out of the supply chain")
    unit_actions = unit.add_subparsers(metavar="ACTION")
    for name, text in (
        ("sample", "taken for QA samples: out of its case, ends sampled"),
        ("destroy", "destroyed: out of its case, ends destroyed"),
    ):
        command = unit_actions.add_parser(name, help=text)
        command.add_argument("code", metavar="CODE", help="the unit's code, as scanned")
        command.add_argument(
            "--reason", required=name == "destroy", help="why (kept in the audit trail)"
        )
        _client_options(command)
        command.set_defaults(handler=_unit_action, action=name)


def _station_commands(sub: Any) -> None:
    station = sub.add_parser(
        "station", help="the agent's case and pallet stations (through its API)"
    )
    actions = station.add_subparsers(metavar="ACTION")
    status = actions.add_parser("status", help="order, state, the pallet being built, a hold")
    _client_options(status)
    status.set_defaults(handler=_station_status)
    for level in ("case", "bundle"):  # the partial last container of a station's level
        last = actions.add_parser(
            f"last-{level}", help=f"the next {level} is the order's last: N units"
        )
        last.add_argument("count", type=int, metavar="N")
        _client_options(last)
        last.set_defaults(handler=functools.partial(_last, level))
    closing = actions.add_parser("close-pallet", help="close the pallet being built now")
    _client_options(closing)
    closing.set_defaults(handler=_close_pallet)
    release = actions.add_parser(
        "release", help="the pallet station prints again after failed labels"
    )
    _client_options(release)
    release.set_defaults(handler=_release)


def _station_status(args: argparse.Namespace) -> int:
    with _client(args) as api:
        found = api.get("/aggregation/stations")
    if args.json:
        return _print_json(found)
    print(f"order: {found['order_id'] or 'none (no order with an aggregation plan)'}")
    for name in ("bundle", "case", "pallet"):
        one = found.get(name)
        if one is None:
            continue
        state = "running" if one["running"] else "not running"
        extra = ""
        if name in ("bundle", "case") and one.get("last_case"):
            extra = f", last {name} announced: {one['last_case']}"
        if name == "pallet" and one["running"]:
            extra = f", {len(one['scanned'])} of {one['capacity']} cases on the pallet"
        print(f"{name} station: {state}{extra}")
        if name == "pallet" and one.get("held"):
            print(f"  HOLDS: {one['held']}")
    return EXIT_OK


def _last(level: str, args: argparse.Namespace) -> int:
    with _client(args) as api:
        found = api.post(f"/aggregation/stations/{level}/last", {"count": args.count})
    if args.json:
        return _print_json(found)
    print(f"the next {level} is the last one: {found['last_case']} units")
    return EXIT_OK


def _close_pallet(args: argparse.Namespace) -> int:
    with _client(args) as api:
        found = api.post("/aggregation/stations/pallet/close")
    if args.json:
        return _print_json(found)
    print(found["detail"])
    return EXIT_OK


def _release(args: argparse.Namespace) -> int:
    with _client(args) as api:
        api.post("/aggregation/stations/pallet/release")
    print("pallet station released: it prints a label with a new SSCC")
    return EXIT_OK


def _children(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("code", metavar="CODE", help="the container's label")
    parser.add_argument("children", metavar="CHILD", nargs="*", help="codes of the children")
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        metavar="FILE",
        help="children, one per line ('-': stdin)",
    )


def _codes(args: argparse.Namespace) -> list[str]:
    codes = list(args.children)
    if args.source is not None:
        text = sys.stdin.read() if str(args.source) == "-" else args.source.read_text("utf-8")
        codes += [line.strip("\r\n") for line in text.splitlines() if line.strip()]
    if not codes:
        raise EdgeAgentError("give the children's codes (arguments or --from FILE)")
    return codes


def _show(args: argparse.Namespace) -> int:
    with _client(args) as api:
        box = api.get("/containers/detail", code=args.code)
    return _print_detail(args, box)


def _list(args: argparse.Namespace) -> int:
    with _client(args) as api:
        query = {"order_id": args.order, "level": args.level, "state": args.state or []}
        boxes = api.get("/containers", **{k: v for k, v in query.items() if v is not None})
    if args.json:
        return _print_json(boxes)
    if not boxes:
        print(f"order {args.order} has no containers")
        return EXIT_OK
    rows = [
        [b["level"], b["hri"], b["state"], str(b["children"]), b["parent"] or "", b["reason"] or ""]
        for b in boxes
    ]
    _table(["LEVEL", "IDENTIFIER", "STATE", "CHILDREN", "PARENT", "REASON"], rows)
    return EXIT_OK


def _open(args: argparse.Namespace) -> int:
    if (args.code is None) == (args.order is None):
        raise EdgeAgentError(
            "give the label of a closed container (CODE) or --order ID for a new one"
        )
    with _client(args) as api:
        if args.order is not None:
            box = api.post("/containers", {"order_id": args.order, "level": args.level})
            if args.json:
                return _print_json(box)
            print(
                f"{box['level']} {box['hri']} opened for order {box['order_id']}: print its label"
            )
            return EXIT_OK
        box = api.post("/containers/open", {"container": args.code})
    return _print_detail(args, box)


def _add(args: argparse.Namespace) -> int:
    body = {"container": args.code, "children": _codes(args), "close": args.close}
    with _client(args) as api:
        box = api.post("/containers/add", body)
    return _print_detail(args, box)


def _remove(args: argparse.Namespace) -> int:
    body = {"container": args.code, "children": _codes(args), "reason": args.reason}
    with _client(args) as api:
        box = api.post("/containers/remove", body)
    return _print_detail(args, box)


def _replace(args: argparse.Namespace) -> int:
    body = {"container": args.code, "old": args.old, "new": args.new, "reason": args.reason}
    with _client(args) as api:
        box = api.post("/containers/replace", body)
    return _print_detail(args, box)


def _container_action(args: argparse.Namespace) -> int:
    body = {"container": args.code}
    if args.action != "close":
        body["reason"] = args.reason
    with _client(args) as api:
        box = api.post(f"/containers/{args.action}", body)
    if args.action == "relabel" and not args.json:
        print(f"relabelled: the new identifier is {box['hri']}; print its label")
    return _print_detail(args, box)


def _unit_action(args: argparse.Namespace) -> int:
    body = {"unit": args.code, "reason": args.reason}
    with _client(args) as api:
        unit = api.post(f"/units/{args.action}", body)
    if args.json:
        return _print_json(unit)
    print(f"unit {unit['epc']}: {unit['state']}")
    return EXIT_OK


def _print_detail(args: argparse.Namespace, box: dict[str, Any]) -> int:
    if args.json:
        return _print_json(box)
    print(
        f"{box['level']} {box['hri']}: {box['state']}, {box['children']} of {box['capacity']}"
        f"  (order {box['order_id']})"
    )
    if box["parent"]:
        print(f"  in {box['parent']}")
    if box["reason"]:
        print(f"  reason: {box['reason']}")
    for child in box["child_epcs"]:
        print(f"  {child}")
    return EXIT_OK
