"""Drain rate of the EPCIS 2.0 HTTP capture forwarder into the capture server simulator.

The simulator runs in a separate process (``python -m simulators.upstream.capture_server``), so
the figures are the forwarder's own: building documents, POST, polling the capture job. Also the
cost of building events. Prints one JSON object with the figures and the machine.

    .venv/bin/python benchmarks/epcis_capture.py [--events 50000] [--per-document 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import sys
import time

import structlog

from drivers.upstream.http_capture import HttpCaptureForwarder
from edge_agent import epcis
from edge_agent.contracts import OutboxEvent

READ_POINT = "urn:epc:id:sgln:0950600.01340.LINE01"


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


def build(n: int) -> tuple[list[OutboxEvent], float]:
    started = time.perf_counter()
    events = []
    for seq in range(n):
        epc = epcis.sgtin_uri("09506000134352", f"S{seq:010d}", 7)
        body = epcis.commissioning(epc, READ_POINT, "LOT-1", "2027-01-31")
        events.append(OutboxEvent(seq, body["eventID"], "B1", body["type"], json.dumps(body)))
    return events, n / (time.perf_counter() - started)


async def drain(events: list[OutboxEvent], per_document: int, batch: int) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators.upstream.capture_server",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await proc.stdout.readline()).decode()
        url = line.split(" on ", 1)[1].strip().removesuffix("/capture")
        config = HttpCaptureForwarder.Config(
            type="epcis-http", url=url, max_events_per_document=per_document, poll_interval_s=0.005
        )
        async with HttpCaptureForwarder("bench", config) as forwarder:
            started = time.perf_counter()
            delivered = 0
            for start in range(0, len(events), batch):
                result = await forwarder.deliver(events[start : start + batch])
                delivered += len(result.delivered)
            elapsed = time.perf_counter() - started
    finally:
        proc.terminate()
        await proc.wait()
    assert delivered == len(events), (delivered, len(events))
    return {"drain_events_per_s": round(len(events) / elapsed), "drain_s": round(elapsed, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--per-document", type=int, default=500)
    parser.add_argument("--batch", type=int, default=2000, help="events per deliver() call")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    events, build_rate = build(args.events)
    figures = asyncio.run(drain(events, args.per_document, args.batch))
    print(
        json.dumps(
            {
                "events": args.events,
                "events_per_document": args.per_document,
                "build_events_per_s": round(build_rate),
                **figures,
                "machine": machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
