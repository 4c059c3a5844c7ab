"""The close report as a printable HTML page: counts, rejects by reason, a chart of throughput
and rejects over time (inline SVG: no script, no CDN), holds and alarms with durations, yield
against the order quantity, and the audit head.

The JSON report is the record (``closing.py`` stores it first); the page is rendered from it,
stored beside it, and rendered again from the JSON whenever the page is missing.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("edge_agent", "resources"),
    autoescape=True,  # every value from an order (descriptions, reasons) is text, never markup
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
TEMPLATE = "close_report.html.j2"
MAX_BARS = 120  # a long run is drawn in wider buckets, so the page stays small and readable

# Chart geometry (SVG user units)
_W, _H, _LEFT, _BOTTOM, _TOP = 720.0, 240.0, 48.0, 28.0, 12.0


def html_path(json_path: Path) -> Path:
    return json_path.with_suffix(".html")


def render(report: Mapping[str, Any]) -> str:
    reconciliation = report.get("reconciliation", {})
    order = report.get("order", {})
    return _ENV.get_template(TEMPLATE).render(
        r=report,
        rec=reconciliation,
        order=order,
        product=order.get("product", {}),
        chart=chart(report.get("timeline", [])),
        when=_when,
        duration=_duration,
        percent=_percent,
    )


def write(path: Path, report: Mapping[str, Any]) -> None:
    """Render and store atomically (a reader never sees half a page)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".html.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(render(report))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


class StoredReports:
    """Close reports under the state directory, by order id (JSON, and HTML beside it)."""

    def __init__(self, json_path: Callable[[str], Path]) -> None:
        self.json_path = json_path

    def load(self, order_id: str) -> dict[str, Any] | None:
        try:
            text = self.json_path(order_id).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        report: dict[str, Any] = json.loads(text)
        return report

    def html(self, order_id: str) -> str | None:
        try:
            return html_path(self.json_path(order_id)).read_text(encoding="utf-8")
        except FileNotFoundError:
            report = self.load(order_id)
            return None if report is None else render(report)


# --- the chart -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    passed_y: float
    passed_h: float
    rejected_y: float
    rejected_h: float
    title: str


@dataclass(frozen=True)
class Tick:
    pos: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: float
    height: float
    left: float
    top: float
    bottom: float  # y of the x axis
    right: float
    bars: list[Bar]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    minutes_per_bar: int
    empty: bool


def chart(timeline: Sequence[Mapping[str, Any]]) -> Chart:
    """Stacked bars (passed below, rejected on top) in units per minute over the run."""
    plot_bottom, plot_right = _H - _BOTTOM, _W - 8.0
    if not timeline:
        return Chart(_W, _H, _LEFT, _TOP, plot_bottom, plot_right, [], [], [], 1, True)
    minutes = _per_minute(timeline)
    first = min(minutes)
    span = max(minutes) - first + 1
    per_bar = max(1, math.ceil(span / MAX_BARS))
    buckets: dict[int, list[int]] = {}
    for minute, (passed, rejected) in minutes.items():
        slot = buckets.setdefault((minute - first) // per_bar, [0, 0])
        slot[0] += passed
        slot[1] += rejected
    count = math.ceil(span / per_bar)
    rates = [(p / per_bar, r / per_bar) for p, r in (buckets.get(i, [0, 0]) for i in range(count))]
    top_rate = _nice_ceiling(max(p + r for p, r in rates))
    plot_h = plot_bottom - _TOP
    step = (plot_right - _LEFT) / count
    bars = []
    for i, (pass_rate, reject_rate) in enumerate(rates):
        ph, rh = plot_h * pass_rate / top_rate, plot_h * reject_rate / top_rate
        start = (first + i * per_bar) * 60
        bars.append(
            Bar(
                x=_LEFT + i * step + step * 0.1,
                width=max(step * 0.8, 0.5),
                passed_y=plot_bottom - ph,
                passed_h=ph,
                rejected_y=plot_bottom - ph - rh,
                rejected_h=rh,
                title=f"{_clock(start)}: {pass_rate:g} passed, {reject_rate:g} rejected per minute",
            )
        )
    y_ticks = [
        Tick(plot_bottom - plot_h * f, f"{top_rate * f:g}") for f in (0.0, 0.25, 0.5, 0.75, 1.0)
    ]
    x_ticks = [
        Tick(_LEFT + i * step + step / 2, _clock((first + i * per_bar) * 60))
        for i in sorted({0, count // 2, count - 1})
    ]
    return Chart(
        _W, _H, _LEFT, _TOP, plot_bottom, plot_right, bars, y_ticks, x_ticks, per_bar, False
    )


def _per_minute(timeline: Sequence[Mapping[str, Any]]) -> dict[int, tuple[int, int]]:
    found: dict[int, tuple[int, int]] = {}
    for bucket in timeline:
        minute = int(float(bucket["minute_start"]) // 60)
        p, r = found.get(minute, (0, 0))
        found[minute] = (p + int(bucket.get("passed") or 0), r + int(bucket.get("rejected") or 0))
    return found


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^n at or above ``value`` (a readable axis top)."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for factor in (1, 2, 2.5, 5, 10):
        if value <= factor * magnitude:
            return float(factor * magnitude)
    return float(10 * magnitude)


# --- formatting ------------------------------------------------------------------------------


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "—"
    return datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def _clock(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).astimezone().strftime("%H:%M")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"
