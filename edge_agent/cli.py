"""edge-agent: run | demo | simulate | check-config | decode | gs1 | batch | outbox."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import signal
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from rich.console import Console

from edge_agent.errors import ConfigError, EdgeAgentError, LineStopped, StateRefused

# Subcommands that live beside the code they drive; each module has add_commands(subparsers).
COMMAND_MODULES = (
    "edge_agent.vision.commands",
    "edge_agent.outbox.commands",
    "edge_agent.opcua_server.commands",
    "edge_agent.state_commands",
    "edge_agent.api.cli",
    "edge_agent.backup_commands",
    "edge_agent.aggregation.commands",
    "edge_agent.hmi.commands",
)

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_LINE_STOPPED, EXIT_UNBALANCED = 0, 1, 2, 3, 4


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_CONFIG
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        for problem in getattr(exc, "problems", [exc]):  # ConfigInvalid: one line each
            print(f"config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except LineStopped as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_LINE_STOPPED
    except StateRefused as exc:  # a person must act: like a config error, never restarted
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except EdgeAgentError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stdout must stay valid until exit
        return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    sub = parser.add_subparsers(metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the line daemon from a config file (the service); orders come from the API, "
        "the inbox folder or L3",
    )
    run.add_argument("--config", type=Path, required=True)
    run.add_argument(
        "--exit-when-idle",
        action="store_true",
        help="exit 0 once no order is left to run (none waiting, ready, running, held or "
        "completed-not-closed) and the outbox is delivered; for scripts and CI (README "
        '"Running the line")',
    )
    run.add_argument(
        "--hold-timeout",
        type=float,
        metavar="SECONDS",
        help="with --exit-when-idle: exit 3 once an order has waited this long for a person "
        "(held, or completed but not balanced); default: wait for the person",
    )
    run.set_defaults(handler=_run)

    check = sub.add_parser(
        "check-config",
        help="validate a config file and everything `run` needs (files, folders, secrets, state)",
    )
    check.add_argument("file", type=Path)
    check.add_argument(
        "--file-only",
        action="store_true",
        help="check only the file itself, not the files, folders, secrets and state database it "
        "names (for editing a config away from the line PC)",
    )
    check.set_defaults(handler=_check_config)

    g = sub.add_parser("gs1", help="GS1 element strings").add_subparsers(metavar="ACTION")
    parse = g.add_parser(
        "parse",
        help="parse an element string or (AI) text typed on the command line",
        description="Parse and validate GS1 data typed on the command line: an element string "
        "(optionally with a ]d2 prefix) or bracketed (01)...(21)... text. As a typing "
        "convenience the text <GS> stands for the group separator (ASCII 29) when TEXT holds "
        "no real one; in data decoded from a symbol only the byte 0x1D separates, and <GS> is "
        "data (the characters < G S > are in GS1 character set 82). Write a literal ( in "
        "bracketed text as \\(.",
    )
    parse.add_argument("text", help="the data; <GS> = group separator (typed input only)")
    parse.set_defaults(handler=_gs1_parse)
    build = g.add_parser("build", help="build an element string")
    build.add_argument("--gtin", required=True)
    build.add_argument("--serial", required=True)
    build.add_argument("--lot")
    build.add_argument("--expiry", help="YYMMDD")
    build.add_argument("--ai", action="append", default=[], metavar="AI=VALUE", help="more AIs")
    build.set_defaults(handler=_gs1_build)

    b = sub.add_parser("batch", help="batch records").add_subparsers(metavar="ACTION")
    report = b.add_parser("report", help="reconciliation of the current/last batch")
    report.add_argument("--state-dir", type=Path, required=True)
    report.add_argument("--batch", help="batch id (default: the most recent)")
    report.add_argument("--json", action="store_true")
    report.set_defaults(handler=_batch_report)

    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    # Commands other packages bring (the simulators' demo and simulate): entry point group
    # "edge_agent.commands", each a module with add_commands(subparsers)
    for entry in sorted(entry_points(group="edge_agent.commands"), key=lambda e: e.name):
        entry.load().add_commands(sub)
    return parser


def count_arg(text: str) -> int:
    """argparse type: a whole number of 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _run(args: argparse.Namespace) -> int:
    from edge_agent import logs, preflight
    from edge_agent.app import Agent, UntilIdle
    from edge_agent.config import load_config

    if args.hold_timeout is not None and not args.exit_when_idle:
        raise ConfigError("--hold-timeout needs --exit-when-idle", key="--hold-timeout")
    config = load_config(args.config)
    preflight.require(config)  # what check-config checks: a problem exits 2 before any device
    logs.configure(config.model.agent.log_format, config.model.agent.log_level)
    until_idle = UntilIdle(args.hold_timeout) if args.exit_when_idle else None
    served, signum = _serve_agent(Agent(config), until_idle)
    if signum is not None:
        print(
            f"edge-agent: stopped on {signal.Signals(signum).name} (units in flight settled); "
            "the order on the line resumes when the agent runs again with the same config",
            file=sys.stderr,
        )
        return 128 + signum
    if served.ended == "held":
        order = served.waiting
        which = f"order {order.id}" if order is not None else "the line"
        print(
            f"edge-agent: line stopped: {served.reason}; {which} needs a person (acknowledge "
            "the alarms and resume, or stop, abort or close the order: `edge-agent line "
            "status`); exiting (--hold-timeout)",
            file=sys.stderr,
        )
        return EXIT_LINE_STOPPED
    return EXIT_OK


def _serve_agent(agent: Any, until_idle: Any) -> tuple[Any, int | None]:
    """Serve until done; returns (how it ended, None) or (None, the signal that stopped it).

    The first SIGTERM or SIGINT stops the daemon as a line stop stops the line (units in flight
    settled, the PLC told, reason ``shutdown``), then the forwarders get ``drain_on_exit_s``; a
    second signal cancels at once. The handlers are the program's own, so they work even when
    it was started with SIGINT ignored.
    """
    import structlog

    from edge_agent import systemd
    from edge_agent.shutdown import TEARDOWN_S, ExitGuard
    from edge_agent.stops import StopReason

    log = structlog.get_logger("edge_agent.cli")
    # Every step of the exit has a bound of its own; this one ends the process (exit 1, the
    # stack of every thread logged) if the whole exit still overruns
    guard = ExitGuard()
    agent.on_stopping = lambda: guard.arm(agent.exit_bound_s, EXIT_ERROR, "daemon stop")

    async def runner() -> tuple[Any, int | None]:
        task = asyncio.ensure_future(agent.serve(until_idle=until_idle))
        received: list[signal.Signals] = []

        def on_signal(sig: signal.Signals) -> None:
            if received:
                log.warning("shutdown_forced", signal=sig.name)
                task.cancel()
                return
            received.append(sig)
            guard.arm(agent.exit_bound_s, EXIT_ERROR, f"stop on {sig.name}")
            log.warning("shutdown_requested", signal=sig.name)
            systemd.notify_stopping(f"stopping on {sig.name}")
            agent.request_stop(LineStopped(StopReason.SHUTDOWN, f"{sig.name} received"))

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            served = await task
        except asyncio.CancelledError:
            if not received:
                raise
            return None, int(received[0])
        finally:  # what is left: the event loop's and the interpreter's teardown
            guard.arm(TEARDOWN_S, EXIT_ERROR, "process teardown")
        if received:
            return None, int(received[0])
        return served, None

    result: tuple[Any, int | None] = asyncio.run(runner())
    return result


def _run_until_signal(coro: Any) -> Any:
    """Run until done or SIGTERM/SIGINT; a signal cancels the run (the batch stays open)."""

    async def runner() -> Any:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            return await task
        return None

    return asyncio.run(runner())


def _check_config(args: argparse.Namespace) -> int:
    from edge_agent import preflight
    from edge_agent.config import load_config
    from edge_agent.config.loader import ConfigInvalid

    try:
        config = load_config(args.file)
    except ConfigInvalid as exc:
        return _config_problems(args.file, exc.problems)
    except ConfigError as exc:
        return _config_problems(args.file, [exc])
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    findings = None if args.file_only else preflight.check(config)
    if findings is not None and findings.problems:
        return _config_problems(args.file, findings.problems)
    m = config.model
    print(
        f"{args.file}: OK — line {m.line.id}, "
        f"printer {config.printer.type_name}, camera {config.camera.type_name}, "
        f"plc {config.plc.type_name}"
        + "".join(f", forwarder {f.name} ({f.type_name})" for f in config.forwarders)
    )
    if findings is None:
        print("  (--file-only: files, folders, secrets and the state database were not checked)")
    for note in findings.notes if findings else ():
        print(f"  {note}")
    return EXIT_OK


def _config_problems(file: Path, problems: list[ConfigError]) -> int:
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    print(f"{file}: {len(problems)} problem(s)", file=sys.stderr)
    return EXIT_CONFIG


def _gs1_parse(args: argparse.Namespace) -> int:
    from edge_agent import gs1

    try:
        element = gs1.parse(args.text, gs_text=True)  # typed: <GS> may stand for GS
    except gs1.Gs1Error as exc:
        print(
            json.dumps({"error": str(exc), "ai": exc.ai, "position": exc.position}), file=sys.stderr
        )
        return EXIT_ERROR
    print(json.dumps(element.to_json(), indent=2))
    return EXIT_OK


def _gs1_build(args: argparse.Namespace) -> int:
    from edge_agent import gs1

    pairs = [("01", args.gtin)]
    if args.expiry:
        pairs.append(("17", args.expiry))
    if args.lot:
        pairs.append(("10", args.lot))
    for item in args.ai:
        ai, sep, value = item.partition("=")
        if not sep:
            print(f"--ai expects AI=VALUE, got {item!r}", file=sys.stderr)
            return EXIT_CONFIG
        pairs.append((ai.strip("()"), value))
    pairs.append(("21", args.serial))
    try:
        element = gs1.build(pairs)
    except gs1.Gs1Error as exc:
        print(
            json.dumps({"error": str(exc), "ai": exc.ai, "position": exc.position}), file=sys.stderr
        )
        return EXIT_ERROR
    print(json.dumps(element.to_json(), indent=2))
    return EXIT_OK


def _batch_report(args: argparse.Namespace) -> int:
    from edge_agent.batch_report import print_report
    from edge_agent.db import reading
    from edge_agent.reconcile import reconcile

    with reading(args.state_dir) as conn:
        report = reconcile(conn, args.batch)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, Console())
    return EXIT_OK if report["balanced"] else EXIT_UNBALANCED


if __name__ == "__main__":
    sys.exit(main())
