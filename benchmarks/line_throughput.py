"""Line throughput in fast mode: sustained units/min and frame→verdict latency.

The simulators run in a separate process (`edge-agent simulate --fast`), as real devices would,
so the figures are the agent's own. Prints one JSON object with the figures and the machine.

    .venv/bin/python benchmarks/line_throughput.py [--units 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edge_agent import logs
from edge_agent.app import Agent, UntilIdle
from edge_agent.config import parse_config
from edge_agent.demo import demo_config_text, demo_order, write_order_file
from edge_agent.line.stats import LineStats


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100.0 * len(ordered)))]


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


def start_simulators(workdir: Path, units: int) -> tuple[subprocess.Popen[str], dict[str, int]]:
    text = demo_config_text().replace("target_quantity = 2000", f"target_quantity = {units}")
    # Free ports: two benchmarks on one machine must not meet at the demo's fixed ports
    text = re.sub(r"(\n\[simulators\.\w+\][^\[]*?)port = \d+", r"\g<1>port = 0", text)
    config = workdir / "sim.toml"
    config.write_text(text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "simulate", "--fast", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())["simulators"]


async def run(units: int, workdir: Path, ports: dict[str, int], in_flight: int) -> LineStats:
    text = demo_config_text()
    overrides = {
        "agent": {"state_dir": str(workdir / "state")},
        "orders": {"inbox": str(workdir / "inbox")},
        "line": {"max_units_in_flight": in_flight},
        **{kind: {"port": port} for kind, port in ports.items()},
    }
    write_order_file(workdir / "inbox", demo_order(units))
    stats = LineStats()
    agent = Agent(parse_config(text, "demo.toml", overrides), stats=stats)
    await agent.serve(until_idle=UntilIdle(hold_timeout_s=0))
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--units", type=int, default=3000)
    parser.add_argument(
        "--in-flight",
        type=int,
        default=8,
        help="max units printed but undecided: in fast mode this trades throughput for latency",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="edge-agent-bench-"))
    with (workdir / "agent.log").open("w") as log_file:
        logs.configure("json", "warning", stream=log_file)
        proc, ports = start_simulators(workdir, args.units)
        try:
            started = time.monotonic()
            stats = asyncio.run(run(args.units, workdir, ports, args.in_flight))
            elapsed = time.monotonic() - started
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
    # Sustained rate: from the first to the last verdict, so start-up is not counted.
    lat = stats.latencies_ms
    result = {
        "benchmark": "line_throughput",
        "mode": "fast",
        "max_units_in_flight": args.in_flight,
        "units": stats.units,
        "passed": stats.passed,
        "rejected": stats.rejected,
        "units_per_min_sustained": round(stats.sustained_units_per_min(), 1),
        "wall_s": round(elapsed, 2),
        "latency_frame_to_verdict_ms": {
            "p50": round(percentile(lat, 50), 3),
            "p99": round(percentile(lat, 99), 3),
            "max": round(max(lat), 3),
        },
        "targets": {"units_per_min": 3000, "p99_ms": 50},
        "machine": machine(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
