"""PLC verdict write round-trip per transport: p50/p99 of ``write_verdict`` until acknowledged.

Each transport's driver talks to its simulator on loopback (Modbus TCP), a pty pair (Modbus RTU)
or an OPC UA server (security None and, when the OPC UA package provides test certificates,
Basic256Sha256 SignAndEncrypt). The simulator runs in this process and event loop, as in the
demo, so the figures include both ends' Python. Prints one JSON object with the machine.

    .venv/bin/python benchmarks/plc.py [--writes 2000] [--only modbus-tcp,modbus-rtu]

The transport list is data (``TRANSPORTS``): an entry whose package is not installed is reported
as skipped, not an error. Target: p99 <= 5 ms for Modbus TCP on loopback.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import importlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent import logs
from edge_agent.contracts import Verdict
from edge_agent.registry import driver_class
from simulators.line import SimLine
from simulators.runner import simulator_class

TARGET_P99_MS = {"modbus-tcp": 5.0}


@dataclass
class Transport:
    name: str  # as reported
    type: str  # registry / simulator catalog type
    needs: str  # module that must exist, else the entry is skipped
    writes_factor: float = 1.0  # slower transports run fewer writes
    setup: Callable[[Path], tuple[dict[str, Any], dict[str, Any]]] = field(
        default=lambda _tmp: ({}, {})
    )  # -> (simulator kwargs, driver_config overrides)
    sim_argv: list[str] | None = None  # run the simulator as its own process with these args


def _opcua_secure(tmp: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    certs = importlib.import_module("drivers.plc.opcua.certs")
    pki = certs.make_test_pki(tmp)
    return (
        {"security": pki.server_settings("SignAndEncrypt")},
        pki.client_overrides("SignAndEncrypt"),
    )


TRANSPORTS = [
    Transport("modbus-tcp", "modbus-tcp", "drivers.plc.modbus",
              sim_argv=["-m", "simulators.plc.modbus", "--port", "0"]),
    Transport("modbus-rtu (pty)", "modbus-rtu", "drivers.plc.modbus.rtu",
              sim_argv=["-m", "simulators.plc.modbus", "--rtu"]),
    Transport("opcua (None)", "opcua", "drivers.plc.opcua", 0.25),
    Transport("opcua (Basic256Sha256 SignAndEncrypt)", "opcua", "drivers.plc.opcua", 0.25,
              _opcua_secure),
]  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100.0 * len(ordered)))]


def machine() -> dict[str, object]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def rtu_wire_ms(baud: int) -> float:
    """Time an FC16 verdict write (3 registers) and its answer spend on a real serial line.

    Request 15 bytes, answer 8 bytes, 11 bits per character (8 data, parity or 2nd stop, start,
    stop), plus the 3.5-character silence that ends each RTU frame. The pty has no baud rate, so
    this is added information, not part of the measurement.
    """
    char_ms = 11 / baud * 1000.0  # 8N2 has 11 bits per character too
    return round((15 + 8 + 2 * 3.5) * char_ms, 2)


@contextlib.asynccontextmanager
async def sim_process(transport: Transport) -> AsyncIterator[dict[str, Any]]:
    """The simulator in a process of its own, as a real PLC would be: the figures are then the
    agent side's plus the wire, not two event loops sharing one. Yields the driver config."""
    assert transport.sim_argv is not None
    argv = [*transport.sim_argv, "--heartbeat-timeout", "60", "--gate-delay", "5"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    assert proc.stdout is not None
    try:
        config: dict[str, Any] | None = None
        while config is None:
            text = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            if not text:
                raise RuntimeError(f"simulator {argv} exited before it was ready")
            if text.startswith("agent [plc] section: "):
                config = ast.literal_eval(text.split(": ", 1)[1])
            elif "modbus-tcp://" in text:
                host, port = text.split("modbus-tcp://", 1)[1].split()[0].rsplit(":", 1)
                config = {"type": "modbus-tcp", "host": host, "port": int(port)}
        yield config
    finally:
        proc.terminate()
        await proc.wait()


@contextlib.asynccontextmanager
async def link(transport: Transport, tmp: Path) -> AsyncIterator[Any]:
    driver = driver_class("plc", transport.type)
    if transport.sim_argv is not None:
        async with sim_process(transport) as config, driver("bench", config) as plc:
            yield plc
        return
    sim_kwargs, overrides = transport.setup(tmp)
    line = SimLine(units_per_min=None)
    sim = simulator_class("plc", transport.type)(
        line, gate_delay_s=5.0, heartbeat_timeout_s=30.0, **sim_kwargs
    )
    await sim.start()
    try:
        async with driver("bench", sim.driver_config(**overrides)) as plc:
            yield plc
    finally:
        await sim.stop()


async def measure(transport: Transport, writes: int, tmp: Path) -> dict[str, Any]:
    n = max(50, int(writes * transport.writes_factor))
    async with link(transport, tmp) as plc:
        for trigger in range(1, 51):  # warm-up: connections, caches, first-call costs
            await plc.write_verdict(trigger, Verdict.PASS)
        samples: list[float] = []
        for i in range(n):
            trigger = 1000 + i
            verdict = Verdict.PASS if i % 7 else Verdict.REJECT
            started = time.perf_counter()
            await plc.write_verdict(trigger, verdict)
            samples.append((time.perf_counter() - started) * 1000.0)
    result: dict[str, Any] = {
        "writes": n,
        "p50_ms": round(percentile(samples, 50), 3),
        "p99_ms": round(percentile(samples, 99), 3),
        "max_ms": round(max(samples), 3),
        "mean_ms": round(statistics.fmean(samples), 3),
        "simulator": "own process" if transport.sim_argv else "same event loop",
    }
    target = TARGET_P99_MS.get(transport.type)
    if target is not None:
        result["target_p99_ms"] = target
        result["meets_target"] = result["p99_ms"] <= target
    if transport.type == "modbus-rtu":
        result["real_line_wire_ms"] = {
            "19200_8E1": rtu_wire_ms(19200),
            "115200_8E1": rtu_wire_ms(115200),
        }
    return result


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000, help="verdict writes per transport")
    parser.add_argument("--only", help="comma-separated transport types to run")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    report: dict[str, Any] = {"benchmark": "plc_verdict_write_round_trip", "machine": machine()}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="plc-bench-") as tmp:
        for transport in TRANSPORTS:
            if only is not None and transport.type not in only:
                continue
            if importlib.util.find_spec(transport.needs) is None:
                results[transport.name] = {"skipped": f"{transport.needs} not installed"}
                continue
            try:
                results[transport.name] = await measure(transport, args.writes, Path(tmp))
            except (ImportError, AttributeError) as exc:  # e.g. no test PKI helper yet
                results[transport.name] = {"skipped": f"{type(exc).__name__}: {exc}"}
    report["transports"] = results
    return report


if __name__ == "__main__":
    logs.configure("console", "error", stream=sys.stderr)  # stdout carries the JSON only
    print(json.dumps(asyncio.run(main()), indent=2))
