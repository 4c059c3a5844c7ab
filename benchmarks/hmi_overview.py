"""What the operator screen and a Prometheus scrape cost the line's event loop, per call, as an
order grows: the live overview (read once per interval for every screen watching) and /metrics.

    .venv/bin/python benchmarks/hmi_overview.py [--units 100000] [--repeat 20]

The order's units are written straight into a fresh state database (the read path is what is
measured). Prints JSON: ms per call (p50, max) at each size, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.db import write
from edge_agent.hmi import views
from edge_agent.monitoring.metrics import Metrics
from edge_agent.monitoring.sources import MonitoringSources
from edge_agent.orders.audit import Actor
from edge_agent.orders.model import OrderCommand
from tests.helpers.api import make_rig, order_data, services


def _timed(call: object, repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        times.append((time.perf_counter() - started) * 1000.0)
    times.sort()
    return {"p50_ms": round(times[len(times) // 2], 2), "max_ms": round(times[-1], 2)}


async def _main(units: int, repeat: int) -> dict[str, object]:
    folder = Path(tempfile.mkdtemp(prefix="hmi-bench-"))
    rig = make_rig(folder)
    actor = Actor("bench", "api")
    quantity = units + 10
    order = order_data(id="BENCH", quantity=quantity, serials={"source": "generate", "length": 12})
    await rig.commands.submit(order, source="api", actor=actor)
    await rig.commands.command("BENCH", OrderCommand.START, actor)
    api = services(rig)
    metrics = Metrics(
        MonitoringSources(conn=rig.conn, line=api.line, alarms=rig.alarms, state_dir=folder)
    )
    results = []
    written, now = 0, time.time()
    for size in (1000, 10_000, units):
        if size > units:
            break
        with write(rig.conn):
            rig.conn.executemany(
                "INSERT INTO units (batch_id, trigger, serial, verdict, reason, decided_at) "
                "VALUES ('BENCH', ?, ?, ?, ?, ?)",
                (
                    (
                        n,
                        f"S{n:011d}",
                        "pass" if n % 50 else "reject",
                        "ok" if n % 50 else "unreadable",
                        now - (size - n) * 0.1,
                    )
                    for n in range(written + 1, size + 1)
                ),
            )
        written = size
        results.append(
            {
                "units": size,
                "overview": _timed(lambda: views.overview(api), repeat),
                "metrics": _timed(metrics.exposition, repeat),
            }
        )
    return {"benchmark": "hmi_overview", "results": results, "load_average": os.getloadavg()}


if __name__ == "__main__":
    import asyncio

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--units", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_main(args.units, args.repeat)), indent=2))
