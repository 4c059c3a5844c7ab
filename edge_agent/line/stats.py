"""Live counters of a running batch, read by the progress display and the benchmark.

Latencies go into a fixed-size histogram, not a list: a batch of millions of units (or a
resident daemon running for months) keeps the same few kilobytes.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import Counter
from dataclasses import dataclass, field

# Verdict latency bounds for Prometheus-style histograms (``le`` buckets), in ms: the PLC's
# verdict deadline is a few hundred milliseconds, so resolution is finest below it.
VERDICT_BUCKETS_MS = (5.0, 10.0, 20.0, 50.0, 100.0, 150.0, 200.0, 300.0, 500.0, 1000.0, 2000.0)


class LatencyHistogram:
    """Latencies in log-spaced buckets (HDR-like): each bucket is ``2**(1/32)`` wide, so a
    percentile is reported within 2.2% of the true value, from ``LOWEST_MS`` up to ``HIGHEST_MS``
    (values outside land in the first / last bucket). Count, sum, min and max are exact, and so
    are the counts at or below each of ``bounds_ms`` (``cumulative``, for metrics)."""

    LOWEST_MS = 0.001
    HIGHEST_MS = 3_600_000.0
    PER_OCTAVE = 32

    def __init__(self, bounds_ms: tuple[float, ...] = VERDICT_BUCKETS_MS) -> None:
        octaves = math.log2(self.HIGHEST_MS / self.LOWEST_MS)
        self._counts = [0] * (math.ceil(octaves * self.PER_OCTAVE) + 1)
        self.bounds_ms = tuple(sorted(bounds_ms))
        self._le = [0] * (len(self.bounds_ms) + 1)  # the last one: above every bound (+Inf)
        self.count = 0
        self.total_ms = 0.0
        self.min_ms = math.inf
        self.max_ms = 0.0

    def _bucket(self, value_ms: float) -> int:
        if value_ms <= self.LOWEST_MS:
            return 0
        index = math.ceil(math.log2(value_ms / self.LOWEST_MS) * self.PER_OCTAVE)
        return min(index, len(self._counts) - 1)

    def _upper_bound(self, index: int) -> float:
        return float(self.LOWEST_MS * 2.0 ** (index / self.PER_OCTAVE))

    def record(self, value_ms: float) -> None:
        self._counts[self._bucket(value_ms)] += 1
        self._le[bisect.bisect_left(self.bounds_ms, value_ms)] += 1
        self.count += 1
        self.total_ms += value_ms
        self.min_ms = min(self.min_ms, value_ms)
        self.max_ms = max(self.max_ms, value_ms)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0..100) in ms; 0.0 before the first value. The bucket's
        upper bound, kept within the exact min and max."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q / 100.0 * self.count))
        seen = 0
        for index, n in enumerate(self._counts):
            seen += n
            if seen >= rank:
                if index == len(self._counts) - 1:  # the overflow bucket: only max bounds it
                    return self.max_ms
                return min(max(self._upper_bound(index), self.min_ms), self.max_ms)
        return self.max_ms

    def cumulative(self) -> list[tuple[float, int]]:
        """(bound in ms, values at or below it) for each bound, then (inf, count): the ``le``
        buckets of a Prometheus histogram."""
        running, out = 0, []
        for bound, n in zip((*self.bounds_ms, math.inf), self._le, strict=True):
            running += n
            out.append((bound, running))
        return out

    @property
    def mean_ms(self) -> float:
        return self.total_ms / self.count if self.count else 0.0

    def summary(self) -> dict[str, float]:
        """p50 / p99 / max in ms, as the demo and the benchmarks print them."""
        return {
            "p50": round(self.percentile(50), 3),
            "p99": round(self.percentile(99), 3),
            "max": round(self.max_ms, 3),
        }


@dataclass
class LineStats:
    started: float = field(default_factory=time.monotonic)
    units: int = 0
    passed: int = 0
    rejected: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    # frame received → verdict written
    latency_ms: LatencyHistogram = field(default_factory=LatencyHistogram)
    consecutive_rejects: int = 0
    repeated_frames: int = 0  # second frames for a trigger already decided: ignored, logged
    alarms: list[str] = field(default_factory=list)
    first_verdict_at: float | None = None
    last_verdict_at: float | None = None

    def record(self, passed: bool, reason: str, latency_ms: float) -> None:
        self.units += 1
        self.latency_ms.record(latency_ms)
        self.last_verdict_at = time.monotonic()
        if self.first_verdict_at is None:
            self.first_verdict_at = self.last_verdict_at
        if passed:
            self.passed += 1
            self.consecutive_rejects = 0
        else:
            self.rejected += 1
            self.by_reason[reason] += 1
            self.consecutive_rejects += 1

    def units_per_min(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.units * 60.0 / elapsed if elapsed > 0 else 0.0

    def sustained_units_per_min(self) -> float:
        """Rate between the first and the last verdict: start-up and batch end not counted."""
        if self.first_verdict_at is None or self.last_verdict_at is None or self.units < 2:
            return 0.0
        span = self.last_verdict_at - self.first_verdict_at
        return (self.units - 1) * 60.0 / span if span > 0 else 0.0
