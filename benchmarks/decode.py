"""Decode benchmark: read rate, false reads and time per frame, per backend and strategy.

    .venv/bin/python benchmarks/decode.py [--frames 300] [--seed 1] [--strategies a,b]

Generates a varied frame set (``simulators.cameras.synth``: module size 3-12 px, any rotation,
mild perspective, blur, noise, low contrast, uneven light, partial damage, printed text, frames
without a code; 1.3 MP and 5 MP), decodes every frame with each strategy on one thread (one core)
and prints one JSON document: per strategy the read rate, false reads, p50/p99/max ms of frames
with a code and of frames without one, plus the machine. A read is correct when its HRI text
equals the rendered content; any other decoded text is a false read. ``ms`` is wall time,
``cpu_ms`` the decoding thread's CPU time (the same on an idle machine; on a shared, loaded one
it is the figure that says what one core needs). libdmtx runs in a worker process, so its time
shows in ``ms`` only.

The frames are generated once, before any timing, so generation costs are not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import zxingcpp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.config.models import VisionSection
from edge_agent.contracts import CodeRead, GrayImage
from edge_agent.vision.dmtx_pool import DmtxPool
from edge_agent.vision.multi import read_case
from edge_agent.vision.pipeline import DecodePipeline
from simulators.cameras.synth import Synth, synth_case, synth_frame

Reader = Callable[[GrayImage], Sequence[CodeRead]]


def strategies(dmtx: DmtxPool) -> dict[str, Callable[[], DecodePipeline]]:
    """Name → pipeline factory. "cascade" is the default configuration of the line."""

    def pipe(**kwargs: object) -> Callable[[], DecodePipeline]:
        return lambda: DecodePipeline(VisionSection.model_validate(kwargs), dmtx=dmtx)

    return {
        "zxing-single-pass": pipe(fallbacks=[]),
        "cascade": pipe(),
        "cascade+dmtx": pipe(fallbacks=["denoise", "global-binarizer", "clahe", "upscale", "dmtx"]),
        "dmtx-backend": pipe(backend="dmtx", fallbacks=[], dmtx_timeout_ms=30.0),
    }


def frames(count: int, seed: int, no_code_share: float) -> list[tuple[str, Synth]]:
    rng = np.random.default_rng(seed)
    out = []
    for index in range(count):
        size = "5MP" if index % 3 == 2 else "1.3MP"
        out.append((size, synth_frame(rng, size=size, code=rng.random() >= no_code_share)))
    return out


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50": round(float(p50), 2), "p99": round(float(p99), 2), "max": round(max(values), 2)}


def readable(synth: Synth, dmtx: DmtxPool) -> bool:
    """Whether any decoder, told where the code is and given all the time it wants, reads it:
    the benchmark's stand-in for "a code a person can read" (damage can exceed what error
    correction repairs, and then nobody reads it)."""
    xs = [x for x, _ in synth.corners[0]]
    ys = [y for _, y in synth.corners[0]]
    pad = 0.3 * (max(xs) - min(xs))
    height, width = synth.image.shape
    crop = synth.image[
        max(0, int(min(ys) - pad)) : min(height, int(max(ys) + pad)),
        max(0, int(min(xs) - pad)) : min(width, int(max(xs) + pad)),
    ]
    crop = np.ascontiguousarray(crop)
    variants = [
        crop,
        cv2.GaussianBlur(crop, (3, 3), 0),
        cv2.GaussianBlur(crop, (5, 5), 0),
        cv2.medianBlur(crop, 3),
        cv2.createCLAHE(3.0, (8, 8)).apply(crop),
        cv2.resize(crop, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC),
    ]
    for variant in variants:
        for binarizer in zxingcpp.Binarizer.__members__.values():
            for barcode in zxingcpp.read_barcodes(
                np.ascontiguousarray(variant), binarizer=binarizer, try_invert=False
            ):
                if barcode.text == synth.codes[0]:
                    return True
    return any(read.text == synth.codes[0] for read in dmtx.read(crop, budget_ms=3000.0))


def run(reader: Reader, frame_set: list[tuple[str, Synth]]) -> dict[str, object]:
    reader(frame_set[0][1].image)  # warm-up: first call loads tables
    code_ms: dict[str, list[float]] = {"1.3MP": [], "5MP": []}
    empty_ms: list[float] = []
    code_cpu: list[float] = []
    empty_cpu: list[float] = []
    correct = false = coded = 0
    missed: list[dict[str, float]] = []
    by_strategy: dict[str, int] = {}
    missed_frames: list[int] = []
    for index, (size, synth) in enumerate(frame_set):
        started, cpu_started = time.perf_counter(), time.thread_time()
        reads = reader(synth.image)
        ms = (time.perf_counter() - started) * 1000.0
        cpu = (time.thread_time() - cpu_started) * 1000.0
        texts = {read.text for read in reads}
        false += len(texts - set(synth.codes))
        for read in reads:
            by_strategy[read.strategy] = by_strategy.get(read.strategy, 0) + 1
        if synth.codes:
            coded += 1
            code_ms[size].append(ms)
            code_cpu.append(cpu)
            if synth.codes[0] in texts:
                correct += 1
            else:
                missed_frames.append(index)
                missed.append({k: round(v, 2) for k, v in synth.conditions.items()})
        else:
            empty_ms.append(ms)
            empty_cpu.append(cpu)
    all_code_ms = code_ms["1.3MP"] + code_ms["5MP"]
    return {
        "read_rate": round(correct / coded, 4) if coded else None,
        "reads": correct,
        "frames_with_code": coded,
        "false_reads": false,
        "ms_frames_with_code": percentiles(all_code_ms),
        "ms_1.3MP": percentiles(code_ms["1.3MP"]),
        "ms_5MP": percentiles(code_ms["5MP"]),
        "ms_frames_without_code": percentiles(empty_ms),
        "cpu_ms_frames_with_code": percentiles(code_cpu),
        "cpu_ms_frames_without_code": percentiles(empty_cpu),
        "frames_without_code": len(empty_ms),
        "reads_by_stage": by_strategy,
        "missed_conditions": missed[:10],
        "_missed_frames": missed_frames,
    }


def _rate_of_readable(
    results: dict[str, object], frame_set: list[tuple[str, Synth]], dmtx: DmtxPool
) -> None:
    """Add ``read_rate_of_readable``: frames some strategy read are readable by definition; the
    others go to ``readable``."""
    missed = [set(r.pop("_missed_frames")) for r in results.values()]  # type: ignore[attr-defined]
    never_read = set.intersection(*missed) if missed else set()
    unreadable = {index for index in never_read if not readable(frame_set[index][1], dmtx)}
    for result in results.values():
        coded = result["frames_with_code"]  # type: ignore[index]
        reads = result["reads"]  # type: ignore[index]
        result["unreadable_frames"] = len(unreadable)  # type: ignore[index]
        result["read_rate_of_readable"] = round(reads / (coded - len(unreadable)), 4)  # type: ignore[index]


def cases(seed: int) -> dict[str, object]:
    """Multi-code frames: a case of N codes seen from above at 5 MP, two of them duplicates."""
    rng = np.random.default_rng(seed)
    out: dict[str, object] = {}
    for count in (10, 50, 100):
        synth = synth_case(rng, count, duplicates=2)
        read_case(synth.image)  # warm-up
        times, result = [], None
        for _ in range(5):
            started = time.perf_counter()
            result = read_case(synth.image)
            times.append((time.perf_counter() - started) * 1000.0)
        assert result is not None
        texts = [code.read.text for code in result.codes]
        flagged = {code.read.text for code in result.codes if code.duplicate}
        expected_dupes = {text for text in synth.codes if synth.codes.count(text) > 1}
        out[f"{count}_codes"] = {
            "found": sum(1 for text in texts if text in synth.codes),
            "false_reads": sum(1 for text in texts if text not in synth.codes),
            "duplicates_flagged_correctly": flagged == expected_dupes,
            "ms": percentiles(times),
        }
    return out


def machine() -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "threads": 1,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-code-share", type=float, default=0.15)
    parser.add_argument("--strategies", default="", help="comma-separated subset (default all)")
    args = parser.parse_args(argv)
    frame_set = frames(args.frames, args.seed, args.no_code_share)
    dmtx = DmtxPool(1)
    dmtx.start()
    results: dict[str, object] = {}
    try:
        chosen = strategies(dmtx)
        names = [n for n in args.strategies.split(",") if n] or list(chosen)
        for name in names:
            pipeline = chosen[name]()
            results[name] = run(pipeline.read, frame_set)
            print(f"{name}: done", file=sys.stderr)
        _rate_of_readable(results, frame_set, dmtx)
    finally:
        dmtx.close()
    report = {
        "benchmark": "decode",
        "frames": args.frames,
        "seed": args.seed,
        "sizes": {"1.3MP": [1280, 1024], "5MP": [2592, 1944]},
        "dmtx_pool_restarts": dmtx.restarts,
        "strategies": results,
        "multi_code_5MP": cases(args.seed),
        "machine": machine(),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
