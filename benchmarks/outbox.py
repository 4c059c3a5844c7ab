"""Outbox figures: durable ingest, drain rate to a real Mosquitto after a backlog, peak RSS.

- ingest: events committed durably (WAL, synchronous=FULL) in group commits: 64 per
  transaction (the runtime's commit group cap) and 512, for the outbox insert alone; and the
  ledger's whole ``commit_outcomes`` (unit row + serial transition + event per unit) at 64.
  Each commit is one fsync, so the rate scales with the group size until CPU-bound.
- drain: a backlog of ``--backlog`` events (default 100,000; ``--full`` = 1,000,000 as in the
  issue) delivered by the agent's ForwarderLoop + MQTT forwarder (QoS 1, broker level) to a
  Mosquitto started on a free loopback port (its stock limits, Receive Maximum 20, as users run
  it; ``--tuned-broker`` lifts them); events/s from start to an empty outbox.
- rss: the process's resident memory sampled every 100 ms during the drain (peak), and VmHWM.

    .venv/bin/python benchmarks/outbox.py [--backlog N | --full] [--delivery end-to-end]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drivers.upstream.mqtt import MqttForwarder  # noqa: E402
from edge_agent import epcis, logs  # noqa: E402
from edge_agent.db import open_db, write  # noqa: E402
from edge_agent.ledger import Ledger, UnitOutcome  # noqa: E402
from edge_agent.outbox.forwarding import ForwarderLoop  # noqa: E402
from edge_agent.outbox.store import OutboxStore, database_bytes  # noqa: E402
from simulators.upstream.mosquitto import Mosquitto  # noqa: E402
from simulators.upstream.mqtt_consumer import MqttConsumer  # noqa: E402

GROUP = 64  # edge_agent.line.runtime._COMMIT_GROUP
GTIN = "09506000134352"
READ_POINT = "urn:epc:id:sgln:0950600.01340.BENCH"


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


def rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def event_rows(n: int, start: int) -> list[tuple[str, str, str, str, float]]:
    rows = []
    now = time.time()
    for i in range(start, start + n):
        event = epcis.commissioning(
            epcis.sgtin_uri(GTIN, f"B{i:011d}", 7), READ_POINT, "LOT1", "2028-12-31"
        )
        payload = json.dumps(event, separators=(",", ":"))
        rows.append((event["eventID"], f"BATCH-{i // 100_000}", "commissioning", payload, now))
    return rows


def ingest_outbox(state: Path, total: int, group: int = GROUP) -> dict[str, float]:
    """Group commits of the outbox insert alone; payloads built beforehand (not timed)."""
    conn = open_db(state)
    try:
        elapsed, done = 0.0, 0
        while done < total:
            chunk = event_rows(min(50_000, total - done), done)
            start = time.perf_counter()
            for i in range(0, len(chunk), group):
                with write(conn):
                    conn.executemany(
                        "INSERT INTO outbox (event_id, batch_id, kind, payload, created_at) "
                        "VALUES (?, ?, ?, ?, ?)",
                        chunk[i : i + group],
                    )
            elapsed += time.perf_counter() - start
            done += len(chunk)
        return {
            "events": total,
            "per_commit": group,
            "seconds": round(elapsed, 2),
            "events_per_s": round(total / elapsed),
        }
    finally:
        conn.close()


def ingest_ledger(state: Path, units: int) -> dict[str, float]:
    """The whole commit path of the line: units, serial transitions and events, 64 per commit."""
    ledger = Ledger(open_db(state), read_point=READ_POINT, company_prefix_length=7)
    try:
        batch = ledger.open_batch(f"L-{uuid.uuid4().hex[:8]}", GTIN, "LOT1", "281231", units)
        serials = []
        ledger.ensure_allocated(batch, units, length=12, alphabet="0123456789ABCDEFGHJK")
        for _ in range(units):
            taken = ledger.take_for_print(batch)
            assert taken is not None
            serials.append(taken[1])
        for serial in serials:
            ledger.mark_printed(batch, serial)
        start = time.perf_counter()
        for i in range(0, units, GROUP):
            group = [
                UnitOutcome(i + k + 1, True, "ok", serial)
                for k, serial in enumerate(serials[i : i + GROUP])
            ]
            ledger.commit_outcomes(batch, group)
        elapsed = time.perf_counter() - start
        return {
            "events": units,
            "seconds": round(elapsed, 2),
            "events_per_s": round(units / elapsed),
        }
    finally:
        ledger.conn.close()


async def drain(state: Path, broker: Mosquitto, delivery: str, batch: int) -> dict[str, Any]:
    conn = open_db(state)
    store = OutboxStore(conn, ["bench"])
    (backlog,) = conn.execute("SELECT count(*) FROM outbox").fetchone()
    config = {"type": "mqtt", "host": "127.0.0.1", "port": broker.port, "delivery": delivery}
    consumer = MqttConsumer("127.0.0.1", broker.port) if delivery == "end-to-end" else None
    peak = rss_mb()
    async with contextlib.AsyncExitStack() as stack:
        if consumer is not None:
            await stack.enter_async_context(consumer)
            await asyncio.wait_for(consumer.connected.wait(), 10)
        loop = ForwarderLoop(store, MqttForwarder("bench", config), "bench", batch_size=batch)
        start = time.perf_counter()
        task = asyncio.create_task(loop.run())
        last_report = start
        while loop.delivered + loop.dead < backlog:
            await asyncio.sleep(0.1)
            peak = max(peak, rss_mb())
            if time.perf_counter() - last_report > 10:
                last_report = time.perf_counter()
                rate = loop.delivered / (last_report - start)
                print(f"drained {loop.delivered}/{backlog} ({rate:.0f}/s)", file=sys.stderr)
            if task.done():
                break
        elapsed = time.perf_counter() - start
        loop.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    pending = store.pending("bench", 1)
    conn.close()
    return {
        "backlog": backlog,
        "delivery": delivery,
        "batch_size": batch,
        "seconds": round(elapsed, 2),
        "events_per_s": round(loop.delivered / elapsed),
        "all_delivered": not pending and loop.delivered == backlog,
        "peak_rss_mb_during_drain": round(peak, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backlog", type=int, default=100_000, help="events in the backlog")
    parser.add_argument("--full", action="store_true", help="the issue's 1,000,000 events")
    parser.add_argument("--ingest", type=int, default=100_000, help="events for the ingest test")
    parser.add_argument("--delivery", choices=["broker", "end-to-end"], default="broker")
    parser.add_argument("--batch-size", type=int, default=500, help="events per deliver call")
    parser.add_argument(
        "--tuned-broker", action="store_true", help="mosquitto without in-flight or queue limits"
    )
    args = parser.parse_args()
    backlog = 1_000_000 if args.full else args.backlog
    logs.configure("console", "warning")  # logs on stderr; stdout carries only the JSON
    with tempfile.TemporaryDirectory(prefix="outbox-bench-") as tmp:
        work = Path(tmp)
        outbox_ingest = [
            ingest_outbox(work / f"ingest-{group}", args.ingest, group) for group in (GROUP, 512)
        ]
        ledger_ingest = ingest_ledger(work / "ledger", min(args.ingest, 20_000))
        fill = ingest_outbox(work / "drain", backlog, 2000)
        db_mb = database_bytes(work / "drain") / 2**20
        with Mosquitto(work / "mosquitto", tuned=args.tuned_broker) as broker:
            drained = asyncio.run(drain(work / "drain", broker, args.delivery, args.batch_size))
    print(
        json.dumps(
            {
                "benchmark": "outbox",
                "machine": machine(),
                "ingest_outbox_insert": outbox_ingest,
                "ingest_ledger_commit_path": ledger_ingest,
                "backlog_fill": fill,
                "backlog_db_mb": round(db_mb, 1),
                "drain": drained,
                "broker": "tuned" if args.tuned_broker else "stock",
                "vm_hwm_mb": round(rss_mb("VmHWM"), 1),
                "targets": {"ingest_per_s": 20_000, "drain_per_s": 5_000, "rss_mb": 200},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
