"""Grading benchmark: CPU time of one process-control grade per symbol, by module size.

    .venv/bin/python benchmarks/grade.py [--symbols 40]

Renders GS1 DataMatrix frames (``simulators.cameras.render``: 640x480, any rotation, noise, mild
blur), decodes each once with zxing-cpp for its corners (not timed), then times
``grade_symbol`` on one thread, with the symbol size searched and with it given (as the decoder
reports it). Prints JSON with p50/p99/max of wall and CPU ms, the overall grades seen, and the
machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import zxingcpp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.vision.grade import grade_symbol
from simulators.cameras.render import render


def _percentiles(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values)
    return {
        "p50": round(float(np.percentile(arr, 50)), 2),
        "p99": round(float(np.percentile(arr, 99)), 2),
        "max": round(float(arr.max()), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--symbols", type=int, default=40, help="symbols per module size")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    results = {}
    for module_px in (3, 5, 8):
        wall: dict[str, list[float]] = {"searched": [], "size_given": []}
        cpu: dict[str, list[float]] = {"searched": [], "size_given": []}
        grades: dict[str, int] = {}
        for i in range(args.symbols):
            hri = f"(01)09506000134352(17)281231(10)LOT{i:03d}(21)SN{rng.integers(1e9):010d}"
            frame = render(hri, width=640, height=480, module_px=module_px, rng=rng)
            found = zxingcpp.read_barcodes(frame.image, formats=zxingcpp.BarcodeFormat.DataMatrix)
            if not found:
                continue
            p = found[0].position
            corners = [(q.x, q.y) for q in (p.top_left, p.top_right, p.bottom_right, p.bottom_left)]
            size: dict[str, int] = {}
            for mode in ("searched", "size_given"):
                w0, c0 = time.perf_counter(), time.thread_time()
                report = grade_symbol(frame.image, corners, **size)
                wall[mode].append((time.perf_counter() - w0) * 1000)
                cpu[mode].append((time.thread_time() - c0) * 1000)
                if mode == "searched":
                    size = {"rows": report["rows"], "cols": report["cols"]}
                    letter = report["overall_letter"]
                    grades[letter] = grades.get(letter, 0) + 1
        results[f"module_{module_px}px"] = {
            "symbols": len(wall["searched"]),
            "grades": dict(sorted(grades.items())),
            **{
                f"{mode}_{kind}_ms": _percentiles(values[mode])
                for mode in ("searched", "size_given")
                for kind, values in (("wall", wall), ("cpu", cpu))
                if values[mode]
            },
        }
    print(
        json.dumps(
            {
                "benchmark": "grade",
                "results": results,
                "machine": {
                    "platform": platform.platform(),
                    "cpu_count": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_avg": os.getloadavg(),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
