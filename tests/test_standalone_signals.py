"""Every standalone program stops on SIGINT even when its parent started it with SIGINT ignored.

A non-interactive shell starts background jobs (``cmd &``) with SIGINT ignored, and so do
``nohup`` and some CI runners. A program that relies on Python's default KeyboardInterrupt never
stops on Ctrl-C / ``kill -INT`` then. Each program here is started through ``sh -c 'trap "" INT;
exec ...'``, exactly as such a shell would hand it over, and must still stop cleanly (exit 0).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

STOP_WITHIN_S = 30.0  # a bound on a hang, not a timing assertion
DEMO = Path(__file__).resolve().parents[1] / "config" / "demo.toml"

STANDALONE = {
    "ascii printer": ["simulators.printers.ascii", "--port", "0"],
    "zipher printer": ["simulators.printers.zipher", "--port", "0"],
    "rci printer": ["simulators.printers.rci"],
    "zpl printer": ["simulators.printers.zpl", "--port", "0"],
    "tcp camera": ["simulators.cameras.tcp", "--port", "0"],
    "smart reader": ["simulators.cameras.smart_reader", "--port", "0"],
    "mjpeg camera": ["simulators.cameras.stream", "--port", "0"],
    "modbus plc": ["simulators.plc.modbus", "--port", "0"],
    "opcua plc": ["simulators.plc.opcua", "--port", "0"],
    "capture server": ["simulators.upstream.capture_server", "--port", "0"],
    "case and pallet stations": ["simulators.aggregation.station"],
    "label printer and camera": [
        "simulators.aggregation.label",
        "--printer-port",
        "0",
        "--camera-port",
        "0",
    ],
    "pallet scanner": ["simulators.aggregation.scanner", "--port", "0"],
}


def _start_with_sigint_ignored(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["/bin/sh", "-c", 'trap "" INT; exec "$@"', "sh", sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _interrupt_once_serving(proc: subprocess.Popen[str]) -> int:
    """Wait for the program's first line (it is serving), send SIGINT, return its exit status."""
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline(), "the program ended before it started serving"
        proc.send_signal(signal.SIGINT)
        return proc.wait(timeout=STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {STOP_WITHIN_S} s after SIGINT")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.mark.parametrize("module", STANDALONE.values(), ids=list(STANDALONE))
def test_standalone_simulator_stops_on_sigint_it_inherited_ignored(module: list[str]) -> None:
    proc = _start_with_sigint_ignored(["-m", *module])
    assert _interrupt_once_serving(proc) == 0


def test_simulate_stops_on_sigint_it_inherited_ignored(tmp_path: Path) -> None:
    config = tmp_path / "sim.toml"
    config.write_text(re.sub(r"(\[simulators\.\w+\]\nport = )\d+", r"\g<1>0", DEMO.read_text()))
    truth = tmp_path / "truth.json"
    proc = _start_with_sigint_ignored(
        ["-m", "edge_agent.cli", "simulate", "--config", str(config), "--report-json", str(truth)]
    )
    assert _interrupt_once_serving(proc) == 0
    assert truth.exists(), "the simulators were not stopped through their clean-up path"
