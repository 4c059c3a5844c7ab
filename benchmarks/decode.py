"""Decode benchmark: read rate, false reads and time per frame, per category, backend and strategy.

    .venv/bin/python benchmarks/decode.py [--set wide|synth] [--frames N] [--seed 1]
                                          [--strategies a,b]

``--set wide`` (the default) is ``simulators.cameras.wide``: what lines print, one stressor per
category (rectangular and DMRE symbols, low contrast, modules down to 2 px, inkjet dots,
dot peen, glare, curved packs, blur, noise, perspective, uneven light, the field's low-contrast
rectangles at 5 MP, and frames without a code), ``--frames`` per category, 1.3 MP and 5 MP
alternating. ``--set synth`` is the older set (``simulators.cameras.synth``: square symbols,
module size 3-12 px, any rotation, mild perspective, blur, noise, low contrast, uneven light,
partial damage, printed text, frames without a code; 1.3 MP and 5 MP; ``--frames`` in all).
Both are generated at run time from the seed. With the third-party DataMatrix corpus present
(``../shared/conformance/datamatrix``, skipped when absent) its images get a report line of
their own.

Every frame is decoded with each strategy on one thread (one core; OpenCV's own thread pool is
set to one thread too); the JSON document gives,
per strategy, overall and per category, the read rate, false reads, p50/p99/max ms of frames
with a code and of frames without one, and the machine's load average before and after the
strategy ran (the machine may be shared: quote the load with the figures). A read is correct
when its HRI text equals the rendered content; any other decoded text is a false read. ``ms``
is wall time, ``cpu_ms`` the decoding thread's CPU time (the same on an idle machine; on a
shared, loaded one it is the figure that says what one core needs). The frame budget counts
wall time, as on the line; on a loaded machine that starves the fallbacks, and
``--budget-clock cpu`` counts this thread's CPU time instead (what a core of its own does).
libdmtx runs in a worker process, so its time shows in ``ms`` only.

Beside the raw read rate (the headline), the wide set's frames are judged by a
physical-readability oracle (``wide.oracle_readable``): the frame sampled at the module centres
the generator put the symbol at, thresholded by the symbol's own levels and decoded with
Reed-Solomon correction. ``readable`` counts the frames it decodes, ``read_of_readable`` is the
read rate over those, ``missed_readable`` lists the readable frames not read (indices in the
set's order) and ``read_but_oracle_unreadable`` the reads of frames it calls unreadable (where
it is too strict). ``read_rate_of_readable`` is the older, decoder-based stand-in: frames no
strategy read and no decoder reads from a crop at the symbol's place count as unreadable.

The frames are generated once, before any timing, so generation costs are not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
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
from simulators.cameras import wide
from simulators.cameras.synth import Synth, synth_case, synth_frame

Reader = Callable[[GrayImage], Sequence[CodeRead]]
Frame = tuple[str, str, Synth]  # category, size, frame
CONFORMANCE = Path(
    os.environ.get(
        "EDGE_AGENT_DATAMATRIX_CORPUS",
        Path(__file__).resolve().parents[1] / ".." / "shared" / "conformance" / "datamatrix",
    )
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def strategies(
    dmtx: DmtxPool, clock: Callable[[], float] = time.perf_counter
) -> dict[str, Callable[[], DecodePipeline]]:
    """Name → pipeline factory. "cascade" is the default configuration of the line."""

    # The default clock is left to the pipeline (so this script also runs against a pipeline
    # from before the clock could be chosen, for before/after figures).
    timing = {} if clock is time.perf_counter else {"clock": clock}

    def pipe(**kwargs: object) -> Callable[[], DecodePipeline]:
        return lambda: DecodePipeline(VisionSection.model_validate(kwargs), dmtx=dmtx, **timing)

    return {
        "zxing-single-pass": pipe(fallbacks=[]),
        "cascade": pipe(),
        "cascade+dmtx": pipe(fallbacks=[*VisionSection().fallbacks, "dmtx"]),
        "dmtx-backend": pipe(backend="dmtx", fallbacks=[], dmtx_timeout_ms=30.0),
    }


def synth_frames(count: int, seed: int, no_code_share: float) -> list[Frame]:
    """The older set: one category, frames without a code mixed in."""
    rng = np.random.default_rng(seed)
    out = []
    for index in range(count):
        size = "5MP" if index % 3 == 2 else "1.3MP"
        synth = synth_frame(rng, size=size, code=rng.random() >= no_code_share)
        out.append(("synth" if synth.codes else "no_code", size, synth))
    return out


def wide_frames(per_category: int, seed: int, categories: Sequence[str]) -> list[Frame]:
    out = []
    for category in categories:
        for synth in wide.category_frames(category, per_category, seed):
            size = "5MP" if synth.image.shape[1] > 2000 else "1.3MP"
            out.append((category, size, synth))
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
    pad = 0.3 * max(max(xs) - min(xs), max(ys) - min(ys))
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
        cv2.resize(crop, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC),
    ]
    for variant in variants:
        for binarizer in zxingcpp.Binarizer.__members__.values():
            for barcode in zxingcpp.read_barcodes(
                np.ascontiguousarray(variant), binarizer=binarizer, try_invert=False
            ):
                if barcode.text == synth.codes[0]:
                    return True
    return any(read.text == synth.codes[0] for read in dmtx.read(crop, budget_ms=3000.0))


def oracle(frame_set: list[Frame]) -> list[bool | None]:
    """Per frame, whether the symbol is physically readable (``wide.oracle_readable``: decoded
    at the module centres the generator put it at); None where there is no code or the set
    does not record where its modules are (``--set synth``)."""
    return [
        wide.oracle_readable(synth) if synth.codes and synth.module_centres is not None else None
        for _, _, synth in frame_set
    ]


class Tally:
    """Reads and times of one group of frames (a category, a size, or all)."""

    def __init__(self) -> None:
        self.correct = self.false = self.coded = self.empty = 0
        self.judged = self.readable = self.read_of_readable = 0
        self.missed_readable: list[int] = []
        self.read_unreadable: list[int] = []
        self.code_ms: list[float] = []
        self.empty_ms: list[float] = []
        self.code_cpu: list[float] = []
        self.empty_cpu: list[float] = []

    def add(
        self,
        synth: Synth,
        texts: set[str],
        ms: float,
        cpu: float,
        index: int = -1,
        readable: bool | None = None,
    ) -> bool:
        """Count one frame (``index`` in the set, ``readable`` the oracle's verdict); True when
        it had a code that was not read."""
        self.false += len(texts - set(synth.codes))
        if not synth.codes:
            self.empty += 1
            self.empty_ms.append(ms)
            self.empty_cpu.append(cpu)
            return False
        self.coded += 1
        self.code_ms.append(ms)
        self.code_cpu.append(cpu)
        hit = synth.codes[0] in texts
        self.correct += hit
        if readable is not None:
            self.judged += 1
            self.readable += readable
            self.read_of_readable += hit and readable
            if readable and not hit:
                self.missed_readable.append(index)
            if hit and not readable:
                self.read_unreadable.append(index)
        return not hit

    def report(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.coded:
            out.update(
                read_rate=round(self.correct / self.coded, 4),
                reads=self.correct,
                frames_with_code=self.coded,
            )
        out["false_reads"] = self.false
        if self.judged:
            # Beside the raw rate, never instead of it: the oracle's verdict on the print.
            out.update(
                readable=self.readable,
                read_of_readable=round(self.read_of_readable / self.readable, 4)
                if self.readable
                else None,
                missed_readable=self.missed_readable,
                # Reads of frames the oracle calls unreadable: where the oracle is too strict.
                read_but_oracle_unreadable=self.read_unreadable,
            )
        if self.coded:
            out["ms_frames_with_code"] = percentiles(self.code_ms)
            out["cpu_ms_frames_with_code"] = percentiles(self.code_cpu)
        if self.empty:
            out["frames_without_code"] = self.empty
            out["ms_frames_without_code"] = percentiles(self.empty_ms)
            out["cpu_ms_frames_without_code"] = percentiles(self.empty_cpu)
        return out


def run(
    reader: Reader, frame_set: list[Frame], verdicts: Sequence[bool | None] = ()
) -> dict[str, object]:
    """``verdicts``: the oracle's per frame (``oracle``), none for no readable-rate fields."""
    verdicts = list(verdicts) or [None] * len(frame_set)
    reader(frame_set[0][2].image)  # warm-up: first call loads tables
    load_before = _load()
    total = Tally()
    by_category: dict[str, Tally] = {}
    by_size: dict[str, Tally] = {}
    missed: list[dict[str, object]] = []
    by_stage: dict[str, int] = {}
    missed_frames: list[int] = []
    for index, (category, size, synth) in enumerate(frame_set):
        started, cpu_started = time.perf_counter(), time.thread_time()
        reads = reader(synth.image)
        ms = (time.perf_counter() - started) * 1000.0
        cpu = (time.thread_time() - cpu_started) * 1000.0
        texts = {read.text for read in reads}
        for read in reads:
            by_stage[read.strategy] = by_stage.get(read.strategy, 0) + 1
        verdict = verdicts[index]
        total.add(synth, texts, ms, cpu, index, verdict)
        by_size.setdefault(size, Tally()).add(synth, texts, ms, cpu, index, verdict)
        if by_category.setdefault(category, Tally()).add(synth, texts, ms, cpu, index, verdict):
            missed_frames.append(index)
            conditions = {k: round(v, 2) for k, v in synth.conditions.items()}
            missed.append({"category": category, "index": index, **conditions})
    return {
        **total.report(),
        "load_average_before": load_before,
        "load_average_after": _load(),
        "by_size": {size: tally.report() for size, tally in sorted(by_size.items())},
        "by_category": {name: tally.report() for name, tally in by_category.items()},
        "reads_by_stage": by_stage,
        "missed_conditions": missed[:20],
        "_missed_frames": missed_frames,
    }


def _rate_of_readable(results: dict[str, object], frame_set: list[Frame], dmtx: DmtxPool) -> None:
    """Add ``read_rate_of_readable``: frames some strategy read are readable by definition; the
    others go to ``readable``."""
    missed = [set(r.pop("_missed_frames")) for r in results.values()]  # type: ignore[attr-defined]
    never_read = set.intersection(*missed) if missed else set()
    unreadable = {index for index in never_read if not readable(frame_set[index][2], dmtx)}
    for result in results.values():
        coded = result["frames_with_code"]  # type: ignore[index]
        reads = result["reads"]  # type: ignore[index]
        result["unreadable_frames"] = sorted(unreadable)  # type: ignore[index]
        result["read_rate_of_readable"] = round(reads / (coded - len(unreadable)), 4)  # type: ignore[index]


def conformance_samples(root: Path) -> Iterator[tuple[str, Path, bytes]]:
    """(folder, image, expected bytes) of the third-party corpus, as its INDEX.md describes."""
    for folder in sorted(root.glob("zxing*/datamatrix-*")):
        for image in sorted(folder.iterdir()):
            truth = image.with_suffix(".txt")
            if image.suffix.lower() in IMAGE_SUFFIXES and truth.is_file():
                expected = truth.read_bytes()
                if expected.strip() != b"<unkown>":  # upstream placeholder, no ground truth
                    yield f"{folder.parent.name}/{folder.name}", image, expected
    messages = root / "libdmtx" / "input_messages"
    for image in sorted((root / "libdmtx").glob("compare_*/*.png")):
        number = image.stem.split("_")[1]
        number = "017" if number == "013" else number  # upstream mix-up, see INDEX.md
        yield (
            f"libdmtx/{image.parent.name}",
            image,
            (messages / f"message_{number}.dat").read_bytes(),
        )


def conformance(reader: Reader, root: Path = CONFORMANCE) -> dict[str, object]:
    """Read rate and wrong reads on the third-party images (each read compared byte-wise)."""
    from edge_agent.vision.commands import load_gray

    if not (root / "INDEX.md").is_file():
        return {"skipped": f"corpus not found at {root}"}
    gs = b"\x1d"
    folders: dict[str, dict[str, int]] = {}
    times: list[float] = []
    wrong: list[str] = []
    load_before = _load()
    for folder, image, expected in conformance_samples(root):
        gray = load_gray(image)
        started = time.perf_counter()
        reads = reader(gray)
        times.append((time.perf_counter() - started) * 1000.0)
        got = [
            {read.raw.encode("latin-1", "replace").lstrip(gs), read.text.encode().lstrip(gs)}
            for read in reads
        ]
        tally = folders.setdefault(folder, {"images": 0, "read": 0, "wrong": 0})
        tally["images"] += 1
        if any(expected.lstrip(gs) in forms for forms in got):
            tally["read"] += 1
        elif reads and expected.isascii():  # ECI content may differ in encoding only
            tally["wrong"] += 1
            wrong.append(f"{folder}/{image.name}")
    images = sum(t["images"] for t in folders.values())
    read = sum(t["read"] for t in folders.values())
    return {
        "images": images,
        "read": read,
        "read_rate": round(read / images, 4) if images else None,
        "wrong_reads": len(wrong),
        "wrong": wrong,
        "ms": percentiles(times),
        "load_average_before": load_before,
        "load_average_after": _load(),
        "by_folder": folders,
    }


def cases(seed: int) -> dict[str, object]:
    """Multi-code frames: a case of N codes seen from above at 5 MP, two of them duplicates."""
    rng = np.random.default_rng(seed)
    out: dict[str, object] = {"load_average_before": _load()}
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


def _load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def machine() -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "zxing_cpp": getattr(zxingcpp, "__version__", None),
        "threads": 1,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--set", choices=["wide", "synth"], default="wide", dest="frame_set")
    parser.add_argument(
        "--frames", type=int, default=None, help="per category (wide, 40) or in all (synth, 300)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-code-share", type=float, default=0.15, help="synth set only")
    parser.add_argument("--categories", default="", help="wide set: comma-separated subset")
    parser.add_argument("--strategies", default="", help="comma-separated subset (default all)")
    parser.add_argument(
        "--budget-clock",
        choices=["wall", "cpu"],
        default="wall",
        help="what the frame budget counts: wall time (as on the line) or this thread's CPU "
        "time (what one core of its own would do, on a machine shared with other jobs)",
    )
    parser.add_argument("--no-cases", action="store_true", help="skip the multi-code frames")
    parser.add_argument("--no-conformance", action="store_true", help="skip the corpus line")
    args = parser.parse_args(argv)
    # One thread means one: OpenCV would otherwise spread a blur or a resize over its own pool,
    # whose time neither the frame's CPU figure nor a single core's budget would show.
    cv2.setNumThreads(1)
    if args.frame_set == "wide":
        count = args.frames or 40
        categories = [c for c in args.categories.split(",") if c] or list(wide.CATEGORIES)
        frame_set = wide_frames(count, args.seed, categories)
    else:
        count = args.frames or 300
        frame_set = synth_frames(count, args.seed, args.no_code_share)
    dmtx = DmtxPool(1)
    dmtx.start()
    results: dict[str, object] = {}
    corpus: dict[str, object] = {}
    verdicts = oracle(frame_set)  # before any timing, like the frames themselves
    try:
        clock = time.thread_time if args.budget_clock == "cpu" else time.perf_counter
        chosen = strategies(dmtx, clock)
        names = [n for n in args.strategies.split(",") if n] or list(chosen)
        for name in names:
            pipeline = chosen[name]()
            results[name] = run(pipeline.read, frame_set, verdicts)
            print(f"{name}: done", file=sys.stderr)
        _rate_of_readable(results, frame_set, dmtx)
        if not args.no_conformance:
            corpus = conformance(chosen["cascade"]().read)
    finally:
        dmtx.close()
    report: dict[str, object] = {
        "benchmark": "decode",
        "set": args.frame_set,
        "frames": len(frame_set),
        "seed": args.seed,
        "budget_clock": args.budget_clock,
        "sizes": {"1.3MP": [1280, 1024], "5MP": [2592, 1944]},
        "dmtx_pool_restarts": dmtx.restarts,
        "strategies": results,
    }
    if not args.no_conformance:
        report["conformance_datamatrix_cascade"] = corpus
    if not args.no_cases:
        report["multi_code_5MP"] = cases(args.seed)
    report["machine"] = machine()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
