"""`edge-agent demo` and `edge-agent simulate` (registered through the entry point group
``edge_agent.commands``): the simulators' commands, so the agent core imports no simulator."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from edge_agent.cli import count_arg
from edge_agent.errors import ConfigError
from simulators.catalog import SIMULATOR_TYPES

DEMO_DEFAULTS = {"printer": "ascii", "camera": "tcp-frames", "plc": "modbus-tcp"}


def add_commands(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the line daemon on in-process simulators, with work orders from a simulated L3",
    )
    demo.add_argument(
        "--orders",
        type=count_arg,
        default=1,
        help="work orders L3 sends, each another product and lot (default 1); from 2 on, a "
        "run of unreadable codes holds order 2 and the demo resumes it through the REST API",
    )
    demo.add_argument(
        "--units", type=count_arg, default=2000, help="units per order (default 2000)"
    )
    demo.add_argument(
        "--speed", type=float, default=300.0, help="line speed, units/min (default 300)"
    )
    demo.add_argument("--fast", action="store_true", help="run as fast as the agent can")
    demo.add_argument(
        "--report-json", type=Path, help="write the reconciliation of every order as JSON here"
    )
    demo.add_argument("--state-dir", type=Path, help="keep the state database here")
    demo.add_argument("--seed", type=int, default=1, help="seed of the injected defects")
    demo.add_argument("--defect-rate", type=float, default=0.02, help="share of defective units")
    for kind in ("printer", "camera", "plc"):
        names = sorted(SIMULATOR_TYPES[kind])
        demo.add_argument(
            f"--{kind}",
            choices=names,
            help=f"{kind} protocol to simulate and drive (default {DEMO_DEFAULTS[kind]})",
        )
    demo.add_argument(
        "--upstream",
        choices=["epcis-http"],
        help="also forward every event to an in-process EPCIS 2.0 capture server simulator",
    )
    demo.add_argument(
        "--aggregate",
        action="store_true",
        help="pack the units into cases and pallets at the simulated line end (case and pallet "
        "stations of the daemon, case defects injected by --seed); any --orders",
    )
    demo.add_argument(
        "--case-size", type=count_arg, default=4, help="--aggregate: units per case (default 4)"
    )
    demo.add_argument(
        "--cases-per-pallet",
        type=count_arg,
        default=2,
        help="--aggregate: cases per pallet (default 2)",
    )
    demo.add_argument(
        "--case-defect-rate",
        type=float,
        default=0.3,
        help="--aggregate: share of cases the case packer makes defective (default 0.3)",
    )
    demo.add_argument(
        "--case-identifier",
        choices=["sscc", "gtin_serial"],
        default="sscc",
        help="--aggregate: how cases are identified: sscc (AI 00 logistic label, default) or "
        "gtin_serial (the case's own GTIN with a serial, AI 01 + 21, commissioned as an SGTIN)",
    )
    demo.add_argument(
        "--bundle",
        type=count_arg,
        metavar="N",
        help="--aggregate: bundle every N units at a bundler (bundle station) before the case "
        "packer: bundle -> case -> pallet, --case-size then counts bundles per case",
    )
    demo.add_argument(
        "--keep-running",
        action="store_true",
        help="after the last order, keep the daemon (REST API, operator screen) up until "
        "Ctrl-C, so the screens can be explored",
    )
    demo.set_defaults(handler=_demo)

    sim = sub.add_parser("simulate", help="start the simulators a config names, standalone")
    sim.add_argument("--config", type=Path, required=True)
    sim.add_argument("--report-json", type=Path, help="write what happened here on exit")
    sim.add_argument("--fast", action="store_true", help="no line speed limit")
    sim.set_defaults(handler=_simulate)


def _demo(args: argparse.Namespace) -> int:
    from simulators.demo.aggregation import AggregateOptions
    from simulators.demo.line import run_demo

    aggregate = None
    if args.aggregate:
        if not 0.0 <= args.case_defect_rate <= 1.0:
            raise ConfigError(
                "--case-defect-rate: give a share from 0 to 1", key="--case-defect-rate"
            )
        aggregate = AggregateOptions(
            args.case_size,
            args.cases_per_pallet,
            args.case_defect_rate,
            case_identifier=args.case_identifier,
            bundle_size=args.bundle,
        )

    return asyncio.run(
        run_demo(
            orders=args.orders,
            units=args.units,
            speed=None if args.fast else args.speed,
            state_dir=args.state_dir,
            report_json=args.report_json,
            seed=args.seed,
            defect_rate=args.defect_rate,
            console=Console(stderr=False),
            devices={k: getattr(args, k) for k in DEMO_DEFAULTS if getattr(args, k)},
            upstream=args.upstream,
            aggregate=aggregate,
            keep_running=args.keep_running,
        )
    )


def _simulate(args: argparse.Namespace) -> int:
    from edge_agent import logs
    from edge_agent.config import load_config
    from simulators.runner import SimulatorSet
    from simulators.standalone import run_until_signal

    config = load_config(args.config)
    logs.configure("console" if sys.stderr.isatty() else "json")
    section = config.model.simulators
    if section is None:
        raise ConfigError("no [simulators] section: nothing to start", file=str(args.config))
    if args.fast:
        section = section.model_copy(update={"units_per_min": None})

    async def serve() -> dict[str, Any]:
        async with SimulatorSet(section) as sims:
            print(
                json.dumps({"simulators": sims.ports(), "devices": sims.device_configs()}),
                flush=True,
            )
            try:
                await asyncio.Event().wait()
            finally:
                truth = sims.ground_truth()
                if args.report_json:
                    args.report_json.write_text(json.dumps(truth, indent=2) + "\n")
        return truth

    return run_until_signal(serve())
