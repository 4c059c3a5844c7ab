"""Latency statistics stay a fixed size however long the line runs, and their percentiles stay
within the histogram's stated precision of the exact ones."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.line.stats import VERDICT_BUCKETS_MS, LatencyHistogram, LineStats


def exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100.0 * len(ordered))) - 1]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0.002, 1_000_000.0), min_size=1, max_size=400),
    st.sampled_from([0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 100.0]),
)
def test_percentiles_are_within_the_stated_precision(values: list[float], q: float) -> None:
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)
    want = exact(values, q)
    got = histogram.percentile(q)
    assert want / 1.000001 <= got <= want * 2 ** (1 / 32) * 1.000001, (want, got)
    assert histogram.count == len(values)
    assert histogram.max_ms == max(values) and histogram.min_ms == min(values)
    assert math.isclose(histogram.mean_ms, sum(values) / len(values), rel_tol=1e-9)


def test_values_outside_the_range_are_kept_in_the_end_buckets() -> None:
    histogram = LatencyHistogram()
    for value in (0.0, -1.0, 1e-9, 1e12):
        histogram.record(value)
    assert histogram.percentile(0) == LatencyHistogram.LOWEST_MS
    assert histogram.percentile(100) == 1e12
    assert histogram.count == 4


def test_an_empty_histogram_reports_zero() -> None:
    assert LatencyHistogram().percentile(99) == 0.0
    assert LatencyHistogram().summary() == {"p50": 0.0, "p99": 0.0, "max": 0.0}


def test_line_stats_memory_does_not_grow_with_units() -> None:
    stats = LineStats()
    buckets = len(stats.latency_ms._counts)
    for i in range(200_000):
        stats.record(i % 7 != 0, "no_read", 5.0 + (i % 1000) / 10.0)
    assert len(stats.latency_ms._counts) == buckets < 1100
    assert not [v for v in vars(stats).values() if isinstance(v, list) and len(v) > 10]
    assert stats.units == 200_000 and stats.rejected == sum(1 for i in range(200_000) if i % 7 == 0)
    summary = stats.latency_ms.summary()
    assert 54.0 <= summary["p50"] <= 55.0 * 1.022 and 103.9 <= summary["p99"] <= 104.9 * 1.022
    assert summary["max"] == 104.9


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 5000.0), max_size=300))
def test_metric_buckets_count_exactly(values: list[float]) -> None:
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)
    buckets = histogram.cumulative()
    assert [b for b, _ in buckets] == [*VERDICT_BUCKETS_MS, math.inf]
    assert buckets == [(b, sum(1 for v in values if v <= b)) for b, _ in buckets]
