"""Verdict timing on a busy disk: the line at 600 units/min while another process hammers the same
filesystem with fsync-heavy writes (a backup, log rotation, another service), against the same
run without the stress.

Every unit the simulators make is good (no injected defects), so every reject is a good pack
lost; ``late_verdict`` ones are the disk's fault. The simulators run in their own process, the
stress in a third. Prints one JSON object.

    .venv/bin/python benchmarks/io_stress.py [--minutes 5] [--stress-procs 1]

Takes 2 x ``--minutes`` (quiet run, then stressed run). The test suite does not run it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from line_throughput import (  # type: ignore[import-not-found]
    drop_order,
    scratch_dir,
    start_simulators,
)

from edge_agent import logs
from edge_agent.app import Agent, UntilIdle
from edge_agent.config import parse_config
from edge_agent.line.stats import LineStats
from simulators.demo.line import demo_config_text

UNITS_PER_MIN = 600
STRESS_CHUNK = 256 * 1024  # bytes written between two fsyncs
STRESS_FILE_MAX = 64 * 1024 * 1024  # the stress file starts over at this size


def probe(path: Path, out: Path) -> None:
    """The disk's own commit latency (the probe process's body): append 4 KiB and fdatasync,
    20 times a second, as a commit of the state database does, until SIGTERM; then the
    figures go to ``out`` as JSON. Beside the verdict times it tells what the disk alone costs."""
    stopped = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGTERM, stop)
    block = os.urandom(4096)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    took: list[float] = []
    while not stopped:
        os.write(fd, block)
        started = time.perf_counter()
        os.fdatasync(fd)
        took.append((time.perf_counter() - started) * 1000)
        time.sleep(max(0.0, 0.05 - took[-1] / 1000))
    took.sort()

    def at(share: float) -> float:
        return round(took[min(len(took) - 1, int(share * len(took)))], 2) if took else 0.0

    figures = {"samples": len(took), "p50": at(0.5), "p99": at(0.99), "max": at(1.0)}
    out.write_text(json.dumps(figures))


def stress(path: Path) -> None:
    """Write and fsync forever (the stress process's body)."""
    block = os.urandom(STRESS_CHUNK)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    written = 0
    while True:
        os.write(fd, block)
        os.fsync(fd)
        written += len(block)
        if written >= STRESS_FILE_MAX:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            written = 0


async def run_line(workdir: Path, units: int, ports: dict[str, int]) -> LineStats:
    overrides: dict[str, Any] = {
        "agent": {"state_dir": str(workdir / "state")},
        "orders": {"inbox": str(workdir / "inbox")},
        "clock": {"check": False},
        **{kind: {"port": port} for kind, port in ports.items()},
    }
    drop_order(workdir / "inbox", units, "IO-STRESS-1")
    stats = LineStats()
    agent = Agent(parse_config(demo_config_text(), "demo.toml", overrides), stats=stats)
    served = await agent.serve(until_idle=UntilIdle(hold_timeout_s=0))
    if served.ended != "idle":  # held: a line stop (repeated rejects, ...) ended the run early
        print(f"the order did not run to its end: {served}", file=sys.stderr)
    return stats


def phase(workdir: Path, units: int, stress_procs: int) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    stressors = [
        subprocess.Popen(
            [sys.executable, __file__, "--stress", str(workdir / f"stress-{n}.bin")],
            stdout=subprocess.DEVNULL,
        )
        for n in range(stress_procs)
    ]
    prober = subprocess.Popen(
        [sys.executable, __file__, "--probe", str(workdir / "probe.bin")],
        stdout=subprocess.DEVNULL,
    )
    load_before = os.getloadavg()
    with (workdir / "agent.log").open("w") as log_file:
        logs.configure("json", "warning", stream=log_file)
        sims, ports = start_simulators(workdir, units_per_min=UNITS_PER_MIN, defect_rate=0.0)
        try:
            started = time.monotonic()
            stats = asyncio.run(run_line(workdir, units, ports))
            elapsed = time.monotonic() - started
        finally:
            sims.send_signal(signal.SIGTERM)
            sims.wait(timeout=20)
            for proc in stressors:
                proc.kill()
                proc.wait(timeout=20)
            prober.send_signal(signal.SIGTERM)
            prober.wait(timeout=20)
    disk = workdir / "probe.bin.json"
    return {
        "stress_procs": stress_procs,
        "units": stats.units,
        "passed": stats.passed,
        "rejected": stats.rejected,
        "good_rejected_late": stats.by_reason.get("late_verdict", 0),
        "rejects_by_reason": {k: v for k, v in stats.by_reason.items() if k != "ok"},
        "latency_frame_to_verdict_ms": stats.latency_ms.summary(),
        "disk_fdatasync_4k_ms": json.loads(disk.read_text()) if disk.exists() else None,
        "wall_s": round(elapsed, 1),
        "load_average": {
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in os.getloadavg()],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0, help="per run (two runs)")
    parser.add_argument("--stress-procs", type=int, default=1)
    parser.add_argument("--stress", help=argparse.SUPPRESS)
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stress:
        stress(Path(args.stress))
        return
    if args.probe:
        probe(Path(args.probe), Path(args.probe + ".json"))
        return
    units = max(1, round(UNITS_PER_MIN * args.minutes))
    with scratch_dir("edge-agent-io-stress-") as workdir:
        quiet = phase(workdir / "quiet", units, 0)
        stressed = phase(workdir / "stressed", units, args.stress_procs)
    result = {
        "benchmark": "io_stress",
        "units_per_min": UNITS_PER_MIN,
        "minutes": args.minutes,
        "filesystem_of": str(workdir),
        "with_stress": stressed,
        "without_stress": quiet,
        "targets": {"good_rejected_late": 0, "p99_ms": 30},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
