"""Case station figures: a case frame of 100 unit codes at 5 MP decoded, matched against the
ledger and committed (SSCC reserved, units packed and the case closed, durably), per case.

Prints one JSON object: p50/p99 ms of each step and of the whole, and the machine. Run it with
the other agents' load in mind: ``nice -n 19 .venv/bin/python benchmarks/aggregation.py``.

    .venv/bin/python benchmarks/aggregation.py [--cases 20] [--codes 100]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from line_throughput import machine  # type: ignore[import-not-found]

from edge_agent.aggregation.hierarchy import Hierarchy
from edge_agent.aggregation.matching import match_case
from edge_agent.aggregation.runner import case_reader
from edge_agent.aggregation.station import resolve_unit
from edge_agent.config.models import VisionSection
from edge_agent.db import open_db
from edge_agent.ledger import Ledger, UnitOutcome
from edge_agent.orders import audit
from edge_agent.orders.model import OrderState, WorkOrder
from edge_agent.orders.store import OrderStore
from simulators.aggregation.case_frame import FIVE_MP, Slot, render_case

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--codes", type=int, default=100, help="unit codes per case frame")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    reader = case_reader(VisionSection())
    timings: dict[str, list[float]] = {"decode": [], "match": [], "commit": [], "total": []}
    with tempfile.TemporaryDirectory() as tmp:
        hierarchy, hris = setup(Path(tmp), args.cases * args.codes, args.codes)
        frames = [
            render_case([Slot(h) for h in hris[i * args.codes : (i + 1) * args.codes]], rng=rng)
            for i in range(args.cases)
        ]
        reader.read(frames[0])  # warm up zxing and the allocator; not counted
        for frame in frames:
            started = time.perf_counter()
            reads = reader.read(frame)
            decoded = time.perf_counter()
            found = match_case(
                reads,
                expected=args.codes,
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
    result = {
        "benchmark": "aggregation",
        "case_frame": {"codes": args.codes, "size": list(FIVE_MP), "cases": args.cases},
        **{
            f"{step}_ms": {
                "p50": round(percentile(values, 50), 2),
                "p99": round(percentile(values, 99), 2),
            }
            for step, values in timings.items()
        },
        "unit_station_units_per_min": "not measured: needs the resident daemon running the unit "
        "and case stations together (aggregation on vs off)",
        "machine": {**machine(), "load_avg_1m": os.getloadavg()[0]},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
