"""Prometheus metrics of the line, read from the agent's live objects at each scrape.

One ``CollectorRegistry`` per app (never the process-wide default one: tests and a demo may run
several apps in one process). ``LineCollector`` turns the sources into metric families when
scraped; nothing is sampled in between. The unit counters are counters for Prometheus (they only
grow): ``LineStats`` counts one order, so the collector adds each finished order's counts to a
base when the running order's stats object changes. Metrics carry counts and states only, never
a serial, a lot or a secret.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from edge_agent.api.status import LineMode, LineSnapshot
from edge_agent.integrity import integrity_metrics
from edge_agent.line.stats import LineStats
from edge_agent.monitoring.sources import MonitoringSources
from edge_agent.orders.model import OrderState
from edge_agent.storage import DiskGuard

# Verdict latency (frame received → verdict written) buckets, in seconds: the PLC's verdict
# deadline is a few hundred milliseconds, so resolution is finest below it.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)
LINK_STATES = ("up", "down", "connecting", "unknown")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _UnitTotals:
    """Unit counts over every order this process ran, from per-order ``LineStats`` objects."""

    def __init__(self) -> None:
        self.units = 0
        self.passed = 0
        self.by_reason: Counter[str] = Counter()
        self.buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)  # cumulative; the last one is +Inf
        self.latency_sum_s = 0.0
        self._current: LineStats | None = None
        self._base = _Counts()

    def update(self, stats: LineStats | None) -> None:
        if stats is not self._current:
            if self._current is not None:  # the previous order is over: its counts are final
                self._base = self._base + _Counts.of(self._current)
            self._current = stats
        total = self._base + (_Counts.of(stats) if stats is not None else _Counts())
        self.units, self.passed, self.by_reason = total.units, total.passed, total.by_reason
        self.buckets, self.latency_sum_s = total.buckets, total.latency_sum_s


class _Counts:
    def __init__(
        self,
        units: int = 0,
        passed: int = 0,
        by_reason: Counter[str] | None = None,
        buckets: list[int] | None = None,
        latency_sum_s: float = 0.0,
    ) -> None:
        self.units, self.passed = units, passed
        self.by_reason = by_reason if by_reason is not None else Counter()
        self.buckets = buckets if buckets is not None else [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.latency_sum_s = latency_sum_s

    @classmethod
    def of(cls, stats: LineStats) -> _Counts:
        buckets, total_s = latency_buckets(stats)
        return cls(stats.units, stats.passed, Counter(stats.by_reason), buckets, total_s)

    def __add__(self, other: _Counts) -> _Counts:
        return _Counts(
            self.units + other.units,
            self.passed + other.passed,
            self.by_reason + other.by_reason,
            [a + b for a, b in zip(self.buckets, other.buckets, strict=True)],
            self.latency_sum_s + other.latency_sum_s,
        )


def latency_buckets(stats: LineStats) -> tuple[list[int], float]:
    """Cumulative counts of the verdict latencies at most each of LATENCY_BUCKETS_S (and all,
    +Inf), and their sum in seconds."""
    bounds_ms = [b * 1000.0 for b in LATENCY_BUCKETS_S]
    histogram = getattr(stats, "latency_ms", None)
    if histogram is None:  # LineStats before its LatencyHistogram: the latencies as a list
        values: list[float] = list(getattr(stats, "latencies_ms", []))
        counts = [sum(1 for v in values if v <= bound) for bound in bounds_ms]
        return [*counts, len(values)], sum(values) / 1000.0
    # LatencyHistogram has no public view of its buckets yet; each bucket counts the values up
    # to its upper bound (2.2 % wide), which places it under the first bound it does not exceed
    counts = [0] * len(bounds_ms)
    for index, n in enumerate(histogram._counts):
        if n:
            upper = histogram._upper_bound(index)
            for i, bound in enumerate(bounds_ms):
                if upper <= bound:
                    counts[i] += n
    return [*counts, histogram.count], histogram.total_ms / 1000.0


class LineCollector(Collector):
    def __init__(self, sources: MonitoringSources) -> None:
        self.sources = sources
        self._totals = _UnitTotals()

    def collect(self) -> Iterator[Metric]:
        snapshot = self.sources.line.snapshot()  # one read of the line per scrape
        yield from self._units()
        yield from self._line(snapshot)
        yield from self._devices(snapshot)
        yield from self._outbox()
        yield from self._alarms()
        yield from self._disk()
        yield from integrity_metrics(self.sources.conn)
        info = GaugeMetricFamily(
            "edge_agent_info", "The agent's version", labels=["version", *self.sources.extra]
        )
        info.add_metric([self.sources.version, *self.sources.extra.values()], 1)
        yield info

    def _units(self) -> Iterator[Metric]:
        totals = self._totals
        totals.update(self.sources.stats())
        yield CounterMetricFamily("edge_agent_units", "Units decided (pass + reject)", totals.units)
        yield CounterMetricFamily("edge_agent_units_passed", "Units passed", totals.passed)
        rejects = CounterMetricFamily(
            "edge_agent_units_rejected", "Units rejected, by reason", labels=["reason"]
        )
        for reason, count in sorted(totals.by_reason.items()):
            rejects.add_metric([reason], count)
        yield rejects
        buckets = [
            ("+Inf" if bound == float("inf") else repr(bound), count)
            for bound, count in zip((*LATENCY_BUCKETS_S, float("inf")), totals.buckets, strict=True)
        ]
        yield HistogramMetricFamily(
            "edge_agent_verdict_latency_seconds",
            "Frame received to verdict written",
            buckets=buckets,
            sum_value=totals.latency_sum_s,
        )

    def _line(self, snapshot: LineSnapshot) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "edge_agent_line_state", "The line's state (1 for the current one)", labels=["state"]
        )
        for mode in LineMode:
            state.add_metric([mode.value], 1 if snapshot.state == mode else 0)
        yield state
        counters = snapshot.counters
        for name, value, what in (
            ("quantity", counters.quantity, "Units the order on the line asks for"),
            ("passed", counters.passed, "Units of the order on the line passed"),
            ("rejected", counters.rejected, "Units of the order on the line rejected"),
            ("remaining", counters.remaining, "Passes the order on the line still needs"),
        ):
            yield GaugeMetricFamily(f"edge_agent_order_{name}", what, value)
        rows = self.sources.conn.execute("SELECT state, count(*) FROM orders GROUP BY state")
        counts = dict(rows.fetchall())
        orders = GaugeMetricFamily("edge_agent_orders", "Orders by state", labels=["state"])
        for order_state in OrderState:
            orders.add_metric([order_state.value], counts.get(order_state.value, 0))
        yield orders

    def _devices(self, snapshot: LineSnapshot) -> Iterator[Metric]:
        devices = snapshot.devices
        up = GaugeMetricFamily(
            "edge_agent_device_up", "1 when the device link is up", labels=["device", "kind"]
        )
        state = GaugeMetricFamily(
            "edge_agent_device_state",
            "The device link's state (1 for the current one)",
            labels=["device", "kind", "state"],
        )
        reconnects = CounterMetricFamily(
            "edge_agent_device_reconnects",
            "Times the device link came back after it was lost",
            labels=["device", "kind"],
        )
        for device in devices:
            up.add_metric([device.name, device.kind], 1 if device.state == "up" else 0)
            for name in LINK_STATES:
                state.add_metric([device.name, device.kind, name], 1 if device.state == name else 0)
            reconnects.add_metric([device.name, device.kind], device.reconnects)
        yield from (up, state, reconnects)

    def _outbox(self) -> Iterator[Metric]:
        pending = GaugeMetricFamily(
            "edge_agent_outbox_pending_events",
            "Events the forwarder has not delivered yet",
            labels=["forwarder"],
        )
        oldest = GaugeMetricFamily(
            "edge_agent_outbox_oldest_pending_age_seconds",
            "Age of the oldest event the forwarder has not delivered (0 when none)",
            labels=["forwarder"],
        )
        dead = GaugeMetricFamily(
            "edge_agent_outbox_dead_letters",
            "Events the forwarder gave up on (they need an operator)",
            labels=["forwarder"],
        )
        for status in self.sources.outbox():
            pending.add_metric([status.forwarder], status.pending)
            oldest.add_metric([status.forwarder], status.oldest_pending_age_s or 0.0)
            dead.add_metric([status.forwarder], status.dead_letters)
        yield from (pending, oldest, dead)

    def _alarms(self) -> Iterator[Metric]:
        board = self.sources.alarms
        yield GaugeMetricFamily(
            "edge_agent_alarms_active", "Alarms not cleared", len(board.active())
        )
        yield GaugeMetricFamily(
            "edge_agent_alarms_unacknowledged",
            "Alarms nobody acknowledged yet",
            len(board.unacknowledged()),
        )

    def _disk(self) -> Iterator[Metric]:
        free = disk_free_bytes(self.sources)
        if free is not None:
            yield GaugeMetricFamily(
                "edge_agent_disk_free_bytes",
                "Free space on the state directory's filesystem",
                free,
            )


def disk_free_bytes(sources: MonitoringSources) -> int | None:
    if sources.state_dir is None:
        return None
    try:  # as the disk guard measures it: what the service user may still write
        return DiskGuard(sources.state_dir, alarm_mb=0, stop_mb=0).free_bytes()
    except OSError:
        return None


class Metrics:
    """The registry of one app and its exposition."""

    def __init__(self, sources: MonitoringSources) -> None:
        self.sources = sources
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(LineCollector(sources))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
