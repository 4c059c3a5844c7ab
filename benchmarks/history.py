"""Cost with history: the agent on a state database holding 2M units of earlier batches against
the same agent on an empty one (only the latest batch).

Builds the databases once (``history_db.build_history``: one batch through the real ledger,
copied by SQL into earlier batches) and caches them under ``$TMPDIR/edge-agent-history``. Each
line run works on a copy. Prints one JSON object:

- ``startup``: the resident daemon (``Agent.serve``) to READY (the systemd notification: the
  database is open and checked, the devices connected) and to the first verdict of the order
  dropped into its inbox, on the real open path, after a clean stop;
  ``open_db`` alone after a clean stop and after an unclean one (the full integrity check);
- ``line``: sustained units/min and frame→verdict p50/p99 in fast mode, simulators in their own
  process, runs alternating empty / history;
- ``batch_report``: ``edge-agent batch report --json`` (the whole command) and the
  reconciliation's queries alone, best of several;
- ``outbox_export``: ``edge-agent outbox export`` of every event: time, peak RSS (VmHWM), size.

    nice -n 19 .venv/bin/python benchmarks/history.py [--units 2000000] [--line-units 3000]
        [--rounds 2] [--no-export]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from history_db import CURRENT, build_history  # type: ignore[import-not-found]
from line_throughput import machine  # type: ignore[import-not-found]

from edge_agent import logs, systemd
from edge_agent.app import Agent, UntilIdle
from edge_agent.config import parse_config
from edge_agent.db import close_db, open_db, open_reader
from edge_agent.line.stats import LineStats
from edge_agent.reconcile import reconcile
from simulators.demo.line import demo_config_text

BATCH_UNITS = 10_000
_CLI = (sys.executable, "-m", "edge_agent.cli")


def cached(units: int, root: Path) -> Path:
    """The state directory of a database with ``units`` units, built once; ready to start
    (schema migrated, closed cleanly)."""
    state = root / f"{units}" / "state"  # built at any schema: open_db below migrates it
    if not state.exists():
        building = state.with_name("state.building")
        shutil.rmtree(building, ignore_errors=True)
        timings = build_history(building, units, batch_units=BATCH_UNITS)
        print(f"built {units} units in {timings['total_s']:.0f} s", file=sys.stderr)
        building.rename(state)
    started = time.monotonic()
    close_db(open_db(state))  # a migration left to do happens here, once
    print(f"prepared {state} in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return state


def copy_of(state: Path, work: Path) -> Path:
    target = work / "state"
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(state), str(target)], check=True)
    # The copy's dirty pages (3.5 GB for 2M units) are written back now, not during the run,
    # where every fsync of the line would wait behind them
    os.sync()
    return target


def open_times(state: Path) -> dict[str, float]:
    """``open_db`` after a clean stop, then after an unclean one (connection left unclosed)."""
    started = time.monotonic()
    conn = open_db(state)
    clean = time.monotonic() - started
    conn.close()  # not close_db: as if the process had died
    started = time.monotonic()
    conn = open_db(state)
    unclean = time.monotonic() - started
    close_db(conn)
    return {
        "open_db_after_clean_stop_s": round(clean, 3),
        "open_db_after_crash_s": round(unclean, 2),
    }


def drop_order(inbox: Path, order_id: str, units: int) -> None:
    """One work order in the daemon's inbox, written aside and renamed as the inbox expects."""
    order = {
        "id": order_id,
        "product": {"gtin": "09506000134352", "description": "Benchmark tablets"},
        "lot": order_id[-10:],
        "expiry": "301231",
        "quantity": units,
        "serials": {"source": "generate", "length": 12},
        "market": "DE",
    }
    inbox.mkdir(parents=True, exist_ok=True)
    part = inbox / f".{order_id}.json.part"
    part.write_text(json.dumps(order), encoding="utf-8")
    part.replace(inbox / f"{order_id}.json")


async def line_run(state: Path, work: Path, ports: dict[str, int], units: int) -> dict[str, Any]:
    """The resident daemon (``Agent.serve``) on ``state``: one order from its inbox, served
    until nothing is left to run."""
    inbox = work / "inbox"
    shutil.rmtree(inbox, ignore_errors=True)
    overrides = {
        "agent": {"state_dir": str(state)},
        "orders": {"inbox": str(inbox)},
        # a loaded machine makes late verdicts (rejects): the run goes on, they are counted
        "line": {"max_units_in_flight": 8, "max_consecutive_rejects": 1000},
        "clock": {"check": False},
        **{kind: {"port": port} for kind, port in ports.items()},
    }
    drop_order(inbox, f"HIST-{time.time_ns()}", units)
    stats = LineStats()
    ready: list[float] = []
    real_ready = systemd.notify_ready

    def noted(status: str) -> bool:
        ready.append(time.monotonic())
        return real_ready(status)

    systemd.notify_ready = noted  # type: ignore[assignment]
    try:
        started = time.monotonic()
        agent = Agent(parse_config(demo_config_text(), "demo.toml", overrides), stats=stats)
        served = await agent.serve(until_idle=UntilIdle(hold_timeout_s=0))
    finally:
        systemd.notify_ready = real_ready  # type: ignore[assignment]
    first = stats.first_verdict_at
    return {
        "ended": served.ended,
        "to_ready_s": round(ready[0] - started, 3) if ready else None,
        "to_first_verdict_s": round(first - started, 3) if first else None,
        "units": stats.units,
        "rejected": stats.rejected,
        "units_per_min_sustained": round(stats.sustained_units_per_min(), 1),
        "latency_frame_to_verdict_ms": stats.latency_ms.summary(),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_simulators(work: Path) -> tuple[subprocess.Popen[str], dict[str, int]]:
    """`edge-agent simulate --fast` in its own process, on free ports (the demo's fixed ones
    may be taken on a shared machine)."""
    text = demo_config_text()
    for fixed in (19100, 19200, 15020):
        text = text.replace(f"port = {fixed}\n", f"port = {free_port()}\n")
    config = work / "sim.toml"
    config.write_text(text)
    with (work / "simulators.log").open("a") as errors:
        proc = subprocess.Popen(
            [*_CLI, "simulate", "--fast", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"the simulators did not start: {(work / 'simulators.log').read_text()}")
    return proc, json.loads(line)["simulators"]


def one_line_run(state: Path, work: Path, units: int) -> dict[str, Any]:
    proc, ports = start_simulators(work)
    try:
        return asyncio.run(line_run(state, work, ports, units))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def batch_report(state: Path, rounds: int) -> dict[str, float]:
    """Best of ``rounds`` after one run that warms the page cache (the database was just built
    or copied: its pages may not all be in memory yet)."""
    command, queries = [], []
    for _ in range(rounds + 1):
        started = time.monotonic()
        subprocess.run(
            [*_CLI, "batch", "report", "--state-dir", str(state), "--batch", CURRENT, "--json"],
            check=True,
            capture_output=True,
        )
        command.append(time.monotonic() - started)
        with contextlib.closing(open_reader(state)) as conn:
            started = time.monotonic()
            assert reconcile(conn, CURRENT)["balanced"]
            queries.append(time.monotonic() - started)
    return {"command_s": round(min(command[1:]), 3), "queries_s": round(min(queries[1:]), 4)}


_EXPORT = (
    "import re, resource, sys\n"
    "from edge_agent.cli import main\n"
    "status = main(sys.argv[1:])\n"
    "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
    "use = resource.getrusage(resource.RUSAGE_SELF)\n"
    "print('peak_kb', hwm, 'cpu_s', use.ru_utime + use.ru_stime, file=sys.stderr)\n"
    "sys.exit(status)\n"
)


def outbox_export(state: Path, work: Path) -> dict[str, Any]:
    out = work / "export.jsonld"
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _EXPORT,
            "outbox",
            "export",
            "--state-dir",
            str(state),
            "--out",
            out,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    elapsed = time.monotonic() - started
    peak = re.search(r"peak_kb (\d+) cpu_s ([\d.]+)", done.stderr)
    exported = re.search(r"exported (\d+) events", done.stderr)
    result = {
        "events": int(exported.group(1)) if exported else None,
        "s": round(elapsed, 1),
        "cpu_s": round(float(peak.group(2)), 1) if peak else None,
        "peak_rss_mb": round(int(peak.group(1)) / 1024, 1) if peak else None,
        "file_mb": round(out.stat().st_size / 2**20, 1),
    }
    out.unlink()
    return result


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--units", type=int, default=2_000_000, help="units of history")
    parser.add_argument("--line-units", type=int, default=3000, help="units per line run")
    parser.add_argument("--rounds", type=int, default=2, help="line runs per database")
    parser.add_argument("--no-export", action="store_true", help="skip the outbox export")
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "edge-agent-history"
    )
    args = parser.parse_args()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="edge-agent-history-bench-"))
    log_file = (work / "agent.log").open("w")
    logs.configure("json", "info", stream=log_file)  # stdout carries the result alone
    databases = {
        "empty": cached(BATCH_UNITS, args.cache),
        "history": cached(args.units, args.cache),
    }
    result: dict[str, Any] = {
        "benchmark": "history",
        "history_units": args.units,
        "database_mb": {
            k: round((v / "state.db").stat().st_size / 2**20, 1) for k, v in databases.items()
        },
    }
    with log_file:
        result["batch_report"] = {k: batch_report(v, 3) for k, v in databases.items()}
        if not args.no_export:
            result["outbox_export"] = {k: outbox_export(v, work) for k, v in databases.items()}
        runs: dict[str, list[dict[str, Any]]] = {"empty": [], "history": []}
        opens: dict[str, dict[str, float]] = {}
        for _ in range(args.rounds):
            for name, state in databases.items():
                copy = copy_of(state, work)
                runs[name].append(one_line_run(copy, work, args.line_units))
                opens[name] = open_times(copy)
                shutil.rmtree(copy)
    events = []
    for line in (work / "agent.log").read_text().splitlines():
        with contextlib.suppress(ValueError):  # libraries' plain lines (asyncio, pymodbus)
            events.append(json.loads(line))
    result["startup"] = {
        name: {
            "to_ready_s": [r["to_ready_s"] for r in runs[name]],
            "to_first_verdict_s": [r["to_first_verdict_s"] for r in runs[name]],
            **opens[name],
        }
        for name in runs
    }
    result["startup"]["integrity_checks_at_line_starts"] = [
        e["event"] for e in events if e.get("event", "").startswith("integrity_check")
    ]
    result["startup"]["storage_capacity"] = [
        e.get("detail") for e in events if e.get("event") in ("storage_capacity", "storage_low")
    ][-1:]
    result["line"] = runs
    best = {n: max(r["units_per_min_sustained"] for r in runs[n]) for n in runs}
    p99 = {n: min(r["latency_frame_to_verdict_ms"]["p99"] for r in runs[n]) for n in runs}
    report = result["batch_report"]
    result["ratios_history_to_empty"] = {
        "units_per_min_best": ratio(best["history"], best["empty"]),
        "p99_best": ratio(p99["history"], p99["empty"]),
        "batch_report_command": ratio(report["history"]["command_s"], report["empty"]["command_s"]),
        "batch_report_queries": ratio(report["history"]["queries_s"], report["empty"]["queries_s"]),
    }
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    result["machine"] = machine()
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
