"""Line throughput in fast mode: sustained units/min and frame→verdict latency.

The simulators run in a separate process (`edge-agent simulate --fast`), as real devices would,
so the figures are the agent's own. The agent is the resident daemon (``Agent.serve``): one work
order (generated serials) is dropped into its inbox, and it serves until the order is closed and
nothing is left to run. Prints one JSON object with the figures and the machine.

    .venv/bin/python benchmarks/line_throughput.py [--units 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge_agent import logs
from edge_agent.app import Agent, UntilIdle
from edge_agent.config import parse_config
from edge_agent.line.stats import LineStats
from simulators.demo.line import demo_config_text


def machine() -> dict[str, object]:
    model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


@contextlib.contextmanager
def scratch_dir(prefix: str, *, keep: bool = False) -> Iterator[Path]:
    """A working directory for one run, removed after it (a state database and logs of a few
    MB each: runs must not pile them up in /tmp); kept, and named on stderr, when ``keep`` or
    when the run failed (its agent log says why)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    except BaseException:
        print(f"the run failed; its state and log are in {path}", file=sys.stderr)
        raise
    if keep:
        print(f"kept {path}", file=sys.stderr)
    else:
        shutil.rmtree(path, ignore_errors=True)


def start_simulators(
    workdir: Path, *, units_per_min: int | None = None, defect_rate: float | None = None
) -> tuple[subprocess.Popen[str], dict[str, int]]:
    """The demo's simulators in a process of their own, on free ports: as fast as they go, or
    at ``units_per_min``; ``defect_rate`` replaces the demo's."""
    config = workdir / "sim.toml"
    # Free ports: two benchmarks on one machine must not meet at the demo's fixed ports
    text = re.sub(r"(\n\[simulators\.\w+\][^\[]*?)port = \d+", r"\g<1>port = 0", demo_config_text())
    if units_per_min is not None:
        text = re.sub(r"units_per_min = \d+", f"units_per_min = {units_per_min}", text)
    if defect_rate is not None:
        text = re.sub(r"defect_rate = [\d.]+", f"defect_rate = {defect_rate}", text)
    config.write_text(text)
    fast = ["--fast"] if units_per_min is None else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "simulate", *fast, "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())["simulators"]


def drop_order(inbox: Path, units: int, order_id: str = "BENCH-1") -> None:
    """One work order in the inbox, written aside and renamed as the inbox expects."""
    order = {
        "id": order_id,
        "product": {"gtin": "09506000134352", "description": "Benchmark tablets"},
        "lot": re.sub(r"[^A-Z0-9]", "", order_id.upper())[:20],
        "expiry": "301231",
        "quantity": units,
        "serials": {"source": "generate", "length": 12},
        "market": "DE",
    }
    inbox.mkdir(parents=True, exist_ok=True)
    part = inbox / f".{order_id}.json.part"
    part.write_text(json.dumps(order), encoding="utf-8")
    part.replace(inbox / f"{order_id}.json")


async def run(
    units: int, workdir: Path, ports: dict[str, int], in_flight: int | None
) -> tuple[LineStats, int]:
    """The order run to its end; returns the stats and the in-flight window it ran with."""
    text = demo_config_text()
    inbox = workdir / "inbox"
    overrides: dict[str, Any] = {
        "agent": {"state_dir": str(workdir / "state")},
        "orders": {"inbox": str(inbox)},
        "clock": {"check": False},
        **{kind: {"port": port} for kind, port in ports.items()},
    }
    if in_flight is not None:
        overrides["line"] = {"max_units_in_flight": in_flight}
    drop_order(inbox, units)
    stats = LineStats()
    config = parse_config(text, "demo.toml", overrides)
    agent = Agent(config, stats=stats)
    served = await agent.serve(until_idle=UntilIdle(hold_timeout_s=0))
    if served.ended != "idle":
        raise SystemExit(f"the order did not run to its end: {served}")
    return stats, config.model.line.max_units_in_flight


def cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--units", type=int, default=3000)
    parser.add_argument(
        "--in-flight",
        type=int,
        default=8,
        help="max units printed but undecided (the demo config has 16): in fast mode this "
        "trades throughput for latency; 8 keeps the figures comparable with earlier ones",
    )
    parser.add_argument("--keep", action="store_true", help="keep the state and the agent's log")
    args = parser.parse_args()
    with (
        scratch_dir("edge-agent-bench-", keep=args.keep) as workdir,
        (workdir / "agent.log").open("w") as log_file,
    ):
        logs.configure("json", "warning", stream=log_file)
        load_start = os.getloadavg()
        proc, ports = start_simulators(workdir)
        try:
            started = time.monotonic()
            stats, in_flight = asyncio.run(run(args.units, workdir, ports, args.in_flight))
            elapsed = time.monotonic() - started
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
    units = max(1, stats.units)
    # Sustained rate: from the first to the last verdict, so start-up is not counted.
    result = {
        "benchmark": "line_throughput",
        "mode": "fast",
        "max_units_in_flight": in_flight,
        "units": stats.units,
        "passed": stats.passed,
        "rejected": stats.rejected,
        "units_per_min_sustained": round(stats.sustained_units_per_min(), 1),
        "wall_s": round(elapsed, 2),
        "latency_frame_to_verdict_ms": stats.latency_ms.summary(),
        # CPU per unit of each process, start-up included: unlike the rate it hardly moves
        # with the machine's load, so it shows what a change costs or saves.
        "cpu_ms_per_unit": {
            "agent": round(cpu_s(resource.RUSAGE_SELF) * 1000.0 / units, 3),
            "simulators": round(cpu_s(resource.RUSAGE_CHILDREN) * 1000.0 / units, 3),
        },
        "targets": {"units_per_min": 3000, "p99_ms": 50},
        # The machine's load beside the figures: on a shared machine they move with it.
        "load_average_1_5_15": {"start": load_start, "end": os.getloadavg()},
        "machine": machine(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
