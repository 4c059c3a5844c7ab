"""Printer drivers against their simulators: sustained records/s with print confirmation on, and
send→confirm latency. Prints one JSON object with the figures and the machine.

Every printer type of the simulator catalog is measured (a new protocol is picked up without
editing this file). Each simulator runs in its own process, as a real printer would, printing
unpaced (``units_per_min = 0``); the agent side keeps ``buffer_depth`` records in the printer
and sends the next one on each confirmation, as the line runtime does.

    .venv/bin/python benchmarks/printer.py [--records 2000] [--only rci,zipher]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.line_throughput import machine, percentile
from edge_agent import logs
from edge_agent.contracts import PrintJob, PrintRecord
from edge_agent.registry import driver_class
from simulators.catalog import SIMULATOR_TYPES

JOB = PrintJob(name="bench", gtin="09506000134352", lot="LOT42", expiry="271231")
TARGET_PER_S = 100.0


class _Section:
    """The bits of a [simulators.printer] section the simulators read."""

    def __init__(self, buffer_size: int) -> None:
        self.buffer_size = buffer_size
        self.port = 0
        self.transport = None


async def serve(type_name: str, buffer_size: int) -> None:
    """Child process: run one simulator unpaced, print its driver config, run until stdin ends."""
    from simulators.line import SimLine
    from simulators.runner import simulator_class

    line = SimLine(units_per_min=None)
    sim = simulator_class("printer", type_name).from_section(line, _Section(buffer_size))
    await sim.start(host="127.0.0.1", port=0)
    print(json.dumps(sim.driver_config()), flush=True)
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, sys.stdin.read)
    finally:
        await sim.stop()


async def measure(type_name: str, section: dict[str, Any], records: int) -> dict[str, Any]:
    cls = driver_class("printer", type_name)
    printer = cls(f"bench-{type_name}", cls.Config(**section))
    depth = printer.buffer_depth
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    room = asyncio.Semaphore(depth)
    async with printer:
        await printer.clear()
        await printer.select_job(JOB)

        async def feed() -> None:
            for seq in range(records):
                await room.acquire()
                sent_at[seq] = time.perf_counter()
                await printer.send(PrintRecord(seq, f"B{seq:09d}"))

        async def confirm() -> None:
            got = 0
            async for confirmation in printer.confirmations():
                latencies.append(time.perf_counter() - sent_at.pop(confirmation.seq))
                room.release()
                got += 1
                if got == records:
                    return

        started = time.perf_counter()
        feeder = asyncio.create_task(feed())
        try:
            async with asyncio.timeout(max(60.0, records / 20)):
                await confirm()
            await feeder
        finally:
            feeder.cancel()
        elapsed = time.perf_counter() - started
    rate = records / elapsed
    return {
        "records": records,
        "buffer_depth": depth,
        "link": section.get("link", {}).get("kind", "tcp"),
        "records_per_s": round(rate, 1),
        "send_to_confirm_ms": {
            "p50": round(percentile(latencies, 50) * 1000, 2),
            "p99": round(percentile(latencies, 99) * 1000, 2),
            "max": round(max(latencies) * 1000, 2),
        },
        "meets_target": rate >= TARGET_PER_S,
    }


async def bench_one(type_name: str, records: int, buffer_size: int) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve",
        type_name,
        "--buffer-size",
        str(buffer_size),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = await proc.stdout.readline()
        if not line:
            return {"error": "simulator did not start"}
        return await measure(type_name, json.loads(line), records)
    except Exception as exc:  # one broken driver must not hide the others' figures
        return {"error": repr(exc)}
    finally:
        proc.stdin.close()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def main_async(args: argparse.Namespace) -> None:
    logs.configure("auto", "error")
    types = sorted(SIMULATOR_TYPES["printer"])
    if args.only:
        types = [t for t in types if t in args.only.split(",")]
    results = {t: await bench_one(t, args.records, args.buffer_size) for t in types}
    report = {
        "benchmark": "printer",
        "target_records_per_s": TARGET_PER_S,
        "printers": results,
        "machine": machine(),
    }
    print(json.dumps(report, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--buffer-size", type=int, default=16, help="simulated printer buffer")
    parser.add_argument("--only", help="comma-separated printer types")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args.serve, args.buffer_size))
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
