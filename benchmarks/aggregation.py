"""Case station figures.

1. A case frame of 100 unit codes at 5 MP decoded, matched against the ledger and committed
   (SSCC reserved, units packed and the case closed, durably), per case: p50/p99 ms per step.
2. The unit station's units/min with aggregation on versus off: the unit line in fast mode (the
   resident daemon, simulators in a process of their own, as ``line_throughput.py`` runs it),
   once with the case station working behind the unit gate (its case packer fed with every unit
   the gate passed, the case camera's 5 MP frames decoded, labels printed over ZPL and read
   back, cases committed into the same state database, in the daemon's process) and once
   without. Runs alternate off/on (``--pairs`` of each), so a change of the machine's load
   falls on both; the ratio is of the medians, the per-pair ratios beside it.

Prints one JSON object, with the machine and its load average. Run it with the other agents'
load in mind: ``nice -n 19 .venv/bin/python benchmarks/aggregation.py``.

    .venv/bin/python benchmarks/aggregation.py [--cases 20] [--codes 100]
        [--line-units 2000] [--pairs 2] [--line-case-size 100] [--skip-line | --skip-frame]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from line_throughput import (  # type: ignore[import-not-found]
    drop_order,
    machine,
    scratch_dir,
    start_simulators,
)

from edge_agent import logs
from edge_agent.aggregation.hierarchy import Hierarchy
from edge_agent.aggregation.matching import match_case
from edge_agent.aggregation.runner import StationRunner, case_reader
from edge_agent.aggregation.station import resolve_unit
from edge_agent.app import Agent, UntilIdle
from edge_agent.config import parse_config
from edge_agent.config.models import VisionSection
from edge_agent.db import open_db
from edge_agent.ledger import Ledger, UnitOutcome
from edge_agent.line.stats import LineStats
from edge_agent.orders import audit
from edge_agent.orders.model import OrderState, WorkOrder
from edge_agent.orders.store import OrderStore
from simulators.aggregation.case_frame import FIVE_MP, Slot, render_case
from simulators.aggregation.station import CaseStationSim
from simulators.demo.line import demo_config_text
from simulators.line import SimUnit
from simulators.standalone import run_until_signal

GTIN = "09506000134352"
ORDER = "BENCH-AGG"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100.0 * len(ordered)))]


def setup(state_dir: Path, units: int, codes: int) -> tuple[Hierarchy, list[str]]:
    conn = open_db(state_dir)
    ledger = Ledger(conn, read_point="urn:epc:id:sgln:0950600.01340.L1", company_prefix_length=7)
    order = WorkOrder.model_validate(
        {
            "id": ORDER,
            "product": {"gtin": GTIN},
            "lot": "BENCH1",
            "expiry": "491231",
            "quantity": units,
            "serials": {"source": "generate", "length": 12},
            "market": "DE",
            "aggregation": {"levels": [{"level": "case", "capacity": codes}]},
        }
    )
    OrderStore(conn).store(order, "bench", audit.Actor("bench", "bench"), OrderState.RUNNING)
    batch = ledger.open_batch(ORDER, GTIN, order.lot, order.expiry, units)
    ledger.ensure_allocated(batch, units, length=12, alphabet="0123456789ABCDEF")
    serials, outcomes = [], []
    for _ in range(units):
        taken = ledger.take_for_print(batch)
        assert taken is not None
        seq, serial = taken
        ledger.mark_printed(batch, serial)
        outcomes.append(UnitOutcome(seq, True, "verified", serial))
        serials.append(serial)
    ledger.commit_outcomes(batch, outcomes)
    return Hierarchy(ledger), [
        f"(01){GTIN}(17){order.expiry}(10){order.lot}(21){s}" for s in serials
    ]


def frame_figures(cases: int, codes: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    reader = case_reader(VisionSection())
    timings: dict[str, list[float]] = {"decode": [], "match": [], "commit": [], "total": []}
    with tempfile.TemporaryDirectory() as tmp:
        hierarchy, hris = setup(Path(tmp), cases * codes, codes)
        frames = [
            render_case([Slot(h) for h in hris[i * codes : (i + 1) * codes]], rng=rng)
            for i in range(cases)
        ]
        reader.read(frames[0])  # warm up zxing and the allocator; not counted
        for frame in frames:
            started = time.perf_counter()
            reads = reader.read(frame)
            decoded = time.perf_counter()
            found = match_case(
                reads,
                expected=codes,
                order_id=ORDER,
                resolve=lambda raw: resolve_unit(hierarchy, raw),
            )
            matched = time.perf_counter()
            assert found.accepted, (found.reason, found.detail)
            box = hierarchy.open_container(ORDER, "case")
            hierarchy.pack(box.epc, list(found.units), close=True)
            committed = time.perf_counter()
            timings["decode"].append((decoded - started) * 1000)
            timings["match"].append((matched - decoded) * 1000)
            timings["commit"].append((committed - matched) * 1000)
            timings["total"].append((committed - started) * 1000)
        hierarchy.conn.close()
    return {
        "case_frame": {"codes": codes, "size": list(FIVE_MP), "cases": cases},
        **{
            f"{step}_ms": {
                "p50": round(percentile(values, 50), 2),
                "p99": round(percentile(values, 99), 2),
            }
            for step, values in timings.items()
        },
    }


# --- the unit station with aggregation on and off --------------------------------------------

LINE_ORDER = "BENCH-1"
CASE_GATE_S = 60.0  # the case conveyor waits for the station's verdict: no case lost to timing


async def _feed(state: Path, packer: Any, order: dict[str, Any]) -> None:
    """Units the unit gate passed go into the case packer, as on the line: each unit the ledger
    passed (a pass is committed before the gate lets it through), in order."""
    import sqlite3

    last = 0
    conn: sqlite3.Connection | None = None
    gtin, lot, expiry = order["gtin"], order["lot"], order["expiry"]
    try:
        while True:
            await asyncio.sleep(0.05)
            if conn is None:
                with contextlib.suppress(sqlite3.Error):
                    conn = sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True)
                if conn is None:
                    continue
            with contextlib.suppress(sqlite3.OperationalError):  # not created yet, or busy
                rows = conn.execute(
                    "SELECT id, serial FROM units WHERE verdict = 'pass' AND id > ? ORDER BY id",
                    (last,),
                ).fetchall()
                if rows:
                    last = rows[-1][0]
                    packer.put([SimUnit(serial, gtin, lot, expiry, 0.0) for _, serial in rows])
    finally:
        if conn is not None:
            conn.close()


async def _case_simulators(args: argparse.Namespace) -> None:
    """``--case-sims``: the case station's simulators (case packer and 5 MP case camera, case
    PLC, label printer and camera) in this process, apart from the daemon's, as devices are;
    prints their device tables as one JSON line, then feeds the packer until SIGTERM."""
    sim = CaseStationSim(case_size=args.line_case_size, gate_delay_s=CASE_GATE_S)
    await sim.start()
    try:
        print(json.dumps(sim.driver_configs()), flush=True)
        order = {"gtin": args.gtin, "lot": args.lot, "expiry": args.expiry}
        await _feed(Path(args.case_sims), sim.packer, order)
    finally:
        await sim.stop()


def start_case_simulators(state: Path, case_size: int, order: dict[str, Any]) -> tuple[Any, Any]:
    """The case station's simulators in a process of their own; (process, device tables)."""
    proc = subprocess.Popen(
        [
            sys.executable, __file__, "--case-sims", str(state),
            "--line-case-size", str(case_size), "--gtin", order["product"]["gtin"],
            "--lot", order["lot"], "--expiry", order["expiry"],
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


class _Stations:
    """The case station in the daemon's process: the daemon's own when it runs the
    ``[aggregation]`` stations itself (``Agent.stations``), else a ``StationRunner`` started
    beside it once the order's batch exists (the station needs it; the daemon creates the
    state database first)."""

    def __init__(self, config: Any, agent: Agent) -> None:
        self.config = config
        self.agent = agent
        self.runner: StationRunner | None = None
        self.own = False  # a runner this benchmark started (and closes)

    async def run(self, state: Path) -> None:
        deadline = time.monotonic() + 120.0
        while not await asyncio.to_thread(self._started, state):
            if time.monotonic() > deadline:
                raise SystemExit(f"order {LINE_ORDER} did not start within 120 s")
            await asyncio.sleep(0.05)
        if hasattr(self.agent, "stations"):  # the daemon runs them: keep hold of its runner
            while True:
                self.runner = getattr(self.agent, "stations", None) or self.runner
                await asyncio.sleep(0.2)
        self.runner, self.own = StationRunner(self.config.model, LINE_ORDER), True
        await self.runner.run()

    @staticmethod
    def _started(state: Path) -> bool:
        import sqlite3

        try:
            conn = sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True)
            try:
                row = conn.execute("SELECT 1 FROM batches WHERE id = ?", (LINE_ORDER,))
                return row.fetchone() is not None
            finally:
                conn.close()
        except sqlite3.Error:
            return False


async def line_run(
    units: int, workdir: Path, ports: dict[str, int], *, aggregate: bool, case_size: int
) -> dict[str, Any]:
    """One run of the unit line; with ``aggregate`` the case station works behind the gate."""
    inbox, state = workdir / "inbox", workdir / "state"
    drop_order(inbox, units, LINE_ORDER)
    order_file = inbox / f"{LINE_ORDER}.json"
    order = json.loads(order_file.read_text())
    sections: dict[str, Any] = {}
    sims = None
    if aggregate:
        order["aggregation"] = {"levels": [{"level": "case", "capacity": case_size}]}
        part = inbox / f".{LINE_ORDER}.json.part"
        part.write_text(json.dumps(order))
        part.replace(order_file)
        sims, tables = start_case_simulators(state, case_size, order)
        sections["aggregation"] = {"case_station": tables}
    overrides = {
        "agent": {"state_dir": str(state)},
        "orders": {"inbox": str(inbox)},
        "clock": {"check": False},
        **{kind: {"port": port} for kind, port in ports.items()},
    }
    config = parse_config(demo_config_text(), "demo.toml", overrides, sections=sections)
    stats = LineStats()
    agent = Agent(config, stats=stats)
    tasks: list[asyncio.Task[None]] = []
    stations = _Stations(config, agent)
    if sims is not None:
        tasks = [asyncio.create_task(stations.run(state))]
    load = os.getloadavg()[0]
    try:
        served = await agent.serve(until_idle=UntilIdle(hold_timeout_s=0))
    finally:
        for task in tasks:  # pymodbus (Python 3.11) can lose a cancellation: cancel until done
            while not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=1.0)
        if sims is not None:
            sims.send_signal(signal.SIGTERM)
            sims.wait(timeout=20)
    figures: dict[str, Any] = {
        "aggregation": aggregate,
        "units": stats.units,
        "units_per_min": round(stats.sustained_units_per_min(), 1),
        "load_avg_1m": [round(load, 2), round(os.getloadavg()[0], 2)],
    }
    # with aggregation the order waits, Completed, for its loose units to be cased ("held"
    # with no hold); a real hold (a line stop) before the quantity is a figure too
    if served.ended not in ("idle", "held") or stats.units < units:
        figures["ended"] = served.ended
        figures["stopped"] = served.reason or (served.hold.reason if served.hold else None)
    if (runner := stations.runner) is not None:
        station = runner.case_station
        figures["case_station"] = station.stats.to_json() if station is not None else None
        if stations.own:
            runner.close()
    return figures


def line_figures(units: int, pairs: int, case_size: int) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for index in range(2 * pairs):
        aggregate = index % 2 == 1  # off, on, off, on: a drift of the load falls on both
        with (
            scratch_dir("edge-agent-bench-agg-") as workdir,
            (workdir / "agent.log").open("w") as log_file,
        ):
            logs.configure("json", "warning", stream=log_file)
            proc, ports = start_simulators(workdir)
            try:
                runs.append(
                    asyncio.run(
                        line_run(units, workdir, ports, aggregate=aggregate, case_size=case_size)
                    )
                )
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=20)
    off = [r["units_per_min"] for r in runs if not r["aggregation"]]
    on = [r["units_per_min"] for r in runs if r["aggregation"]]
    median_off, median_on = statistics.median(off), statistics.median(on)
    return {
        "mode": "fast",
        "units_per_run": units,
        "case_size": case_size,
        "units_per_min_off": median_off,
        "units_per_min_on": median_on,
        "ratio_on_off": round(median_on / median_off, 3) if median_off else None,
        "pair_ratios": [round(b / a, 3) if a else None for a, b in zip(off, on, strict=True)],
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--codes", type=int, default=100, help="unit codes per case frame")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--line-units", type=int, default=2000, help="units per unit-line run")
    parser.add_argument("--pairs", type=int, default=2, help="off/on pairs of unit-line runs")
    parser.add_argument("--line-case-size", type=int, default=100, help="units per case, on")
    parser.add_argument("--skip-line", action="store_true", help="case frame figures only")
    parser.add_argument("--skip-frame", action="store_true", help="unit-line figures only")
    parser.add_argument("--case-sims", metavar="STATE_DIR", help=argparse.SUPPRESS)
    for name in ("--gtin", "--lot", "--expiry"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case_sims:  # the child process of start_case_simulators: stdout is its tables
        logs.configure("json", "warning", stream=sys.stderr)
        run_until_signal(_case_simulators(args))
        return
    load_start = os.getloadavg()
    result: dict[str, Any] = {"benchmark": "aggregation"}
    if not args.skip_frame:
        result |= frame_figures(args.cases, args.codes, args.seed)
    if not args.skip_line:
        result["unit_station"] = line_figures(args.line_units, args.pairs, args.line_case_size)
    result["load_average_1_5_15"] = {"start": load_start, "end": os.getloadavg()}
    result["machine"] = machine()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
