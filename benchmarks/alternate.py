"""Line throughput of this tree against another commit, in alternating runs: the ratio that counts.

    .venv/bin/python benchmarks/alternate.py --base 7ac7387 [--pairs 3] [--units 3000]

The disk's fsync latency and other tenants' load move the rate by several times from one hour to
the next, so a figure of one tree alone says little; runs of the two trees taken in turn share the
machine's moment. The base commit is checked out into a temporary git worktree (removed after)
and run with this tree's virtual environment (``PYTHONPATH`` set to each tree), so both use the
same installed libraries. Each run is ``benchmarks/line_throughput.py`` of its own tree. Prints
one JSON object: every run (units/min, p99, load average before it), the ratio of each pair, the
medians of both trees and their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 900  # one run of 3000 units takes well under a minute on 2 cores


@contextlib.contextmanager
def worktree(commit: str) -> Iterator[Path]:
    """``commit`` checked out beside this repository, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="edge-agent-base-"))
    subprocess.run(
        ["git", "-C", str(HERE), "worktree", "add", "--detach", "--force", str(path), commit],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "-C", str(HERE), "worktree", "remove", "--force", str(path)],
            capture_output=True,
        )


def run(tree: Path, units: int) -> dict[str, Any]:
    """One ``line_throughput.py`` run of ``tree``: its figures and the load before it."""
    load = os.getloadavg()
    env = {**os.environ, "PYTHONPATH": str(tree)}
    try:
        done = subprocess.run(
            [sys.executable, "benchmarks/line_throughput.py", "--units", str(units)],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise SystemExit(f"the run in {tree} did not end within {RUN_TIMEOUT_S} s") from None
    if done.returncode != 0:
        raise SystemExit(f"the run in {tree} failed:\n{done.stderr[-2000:]}")
    figures = json.loads(done.stdout)
    return {
        "units_per_min": figures["units_per_min_sustained"],
        "p99_ms": figures["latency_frame_to_verdict_ms"].get("p99"),
        "rejected": figures["rejected"],
        "load_average_before": [round(x, 2) for x in load],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--units", type=int, default=3000)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"this": [], "base": []}
    with worktree(args.base) as base:
        for _ in range(args.pairs):
            runs["this"].append(run(HERE, args.units))
            runs["base"].append(run(base, args.units))
    rates = {tree: [r["units_per_min"] for r in done] for tree, done in runs.items()}
    medians = {tree: statistics.median(values) for tree, values in rates.items()}
    pairs = [round(a / b, 3) for a, b in zip(rates["this"], rates["base"], strict=True)]
    result = {
        "benchmark": "alternate",
        "base": args.base,
        "units": args.units,
        "runs": runs,
        "pair_ratios": pairs,
        "median_units_per_min": medians,
        "ratio_of_medians": round(medians["this"] / medians["base"], 3),
        "median_pair_ratio": statistics.median(pairs),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
