"""The close report as a printable HTML page: stored beside the JSON at close, served by the API,
autoescaped, with an inline SVG chart and nothing loaded from elsewhere."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from edge_agent.orders import audit, report_html
from edge_agent.orders.lifecycle import LineEvent
from edge_agent.orders.model import OrderCommand
from edge_agent.orders.report_html import MAX_BARS, chart, render
from edge_agent.stops import StopReason
from tests.helpers.api import Rig, make_rig, order_data, serving

OPERATOR = audit.Actor("alice", "cli")
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path / "state")


async def run_an_order(rig: Rig, description: str = "Tablets 20 mg") -> None:
    serials = {"source": "list", "serials": [f"S{i:04}" for i in range(12)]}
    data = order_data(
        quantity=10, serials=serials, product={"gtin": "09506000134352", "description": description}
    )
    await rig.commands.submit(data, source="api", actor=OPERATOR)
    await rig.commands.command("ORD-1", OrderCommand.START, OPERATOR)
    rig.run_units("ORD-1", ["pass"] * 4 + ["no_read", "wrong_content"])
    rig.alarms.raise_(StopReason.REPEATED_REJECTS, "2 rejects in a row", order_id="ORD-1")
    await rig.commands.line_event("ORD-1", LineEvent.LINE_STOPPED, reason="repeated_rejects")
    for alarm in rig.alarms.for_order("ORD-1"):
        rig.alarms.acknowledge(alarm.id, "cli:alice")
    await rig.commands.command("ORD-1", OrderCommand.RESUME, OPERATOR)
    rig.run_units("ORD-1", ["pass"] * 5 + ["no_read"])
    # spread the units over three minutes of the run, with the middle minute empty
    first = rig.conn.execute("SELECT min(decided_at) FROM units").fetchone()[0]
    start = first - first % 60
    rig.conn.execute("UPDATE units SET decided_at = ? + 120 + id WHERE id > 6", (start,))
    rig.conn.execute("UPDATE units SET decided_at = ? + id WHERE id <= 6", (start,))
    await rig.commands.line_event("ORD-1", LineEvent.QUANTITY_REACHED)  # auto-close


async def test_the_page_is_stored_beside_the_json_and_served(rig: Rig) -> None:
    await run_an_order(rig)
    json_path = rig.settlement.report_path("ORD-1")
    html_path = json_path.with_suffix(".html")
    assert json_path.exists() and html_path.exists()
    page = html_path.read_text()
    async with serving(rig), rig.client() as api:
        served = await api.get("/orders/ORD-1/report.html")
        assert served.status_code == 200 and served.text == page
        report = (await api.get("/orders/ORD-1/report")).json()

    assert report["state"] == "closed" and report["balanced"] is True
    assert report["holds"][0]["detail"] == {"detail": ""}
    assert "Close report — order ORD-1" in page and "CLOSED" in page.upper()
    assert "90.0 % (9 of 10)" in page  # yield against the order quantity
    assert re.search(r"<td>no_read</td><td class=\"n\">2</td>", page)
    assert re.search(r"<td>wrong_content</td><td class=\"n\">1</td>", page)
    assert "repeated_rejects" in page and "2 rejects in a row" in page  # alarm and hold
    assert "acknowledged" in page.lower() and "cli:alice" in page
    assert report["audit"]["head"] in page and "Balanced" in page
    assert "@media print" in page


async def test_the_chart_is_inline_svg_with_a_bar_per_minute(rig: Rig) -> None:
    await run_an_order(rig)
    page = rig.settlement.report_path("ORD-1").with_suffix(".html").read_text()
    svg = ET.fromstring(re.search(r"<svg.*?</svg>", page, re.S).group(0))  # well-formed XML
    groups = svg.findall(f"{SVG}g")
    assert len(groups) == 3  # minutes 0, 1 (empty) and 2
    titles = [g.find(f"{SVG}title").text for g in groups]
    assert titles[0].endswith(": 4 passed, 2 rejected per minute")
    assert titles[1].endswith(": 0 passed, 0 rejected per minute")
    assert titles[2].endswith(": 5 passed, 1 rejected per minute")
    red = [r for g in groups for r in g.findall(f"{SVG}rect") if r.get("fill") == "#c0392b"]
    assert len(red) == 2


async def test_nothing_is_loaded_from_elsewhere_and_order_text_is_escaped(rig: Rig) -> None:
    await run_an_order(rig, description='<script>alert("x")</script> & <img src=x>')
    page = rig.settlement.report_path("ORD-1").with_suffix(".html").read_text()
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;img src=x&gt;" in page
    assert not re.search(r"<[^>]*\b(src|href)\s*=", page)  # no tag loads anything
    assert re.findall(r"https?://[^\"' ]+", page) == ["http://www.w3.org/2000/svg"]  # a namespace


async def test_a_page_that_could_not_be_stored_is_rendered_from_the_json(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(path: Path, report: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_html, "write", disk_full)
    await run_an_order(rig)
    assert rig.commands.store.get("ORD-1").state == "closed"  # the close did not fail
    assert not rig.settlement.report_path("ORD-1").with_suffix(".html").exists()
    async with serving(rig), rig.client() as api:
        served = await api.get("/orders/ORD-1/report.html")
        assert served.status_code == 200 and "Close report — order ORD-1" in served.text


def test_a_long_run_is_drawn_in_wider_bars() -> None:
    timeline = [
        {"minute_start": 60.0 * m, "units": 10, "passed": 9, "rejected": 1} for m in range(600)
    ]
    drawn = chart(timeline)
    assert len(drawn.bars) <= MAX_BARS and drawn.minutes_per_bar == 5
    assert drawn.bars[0].title.endswith(": 9 passed, 1 rejected per minute")
    assert chart([]).empty


def test_a_report_without_units_renders() -> None:
    page = render(
        {
            "report_version": 1,
            "order_id": "O-1",
            "state": "cancelled",
            "closed_at": 0.0,
            "closed_by": "api:mes",
            "reason": "duplicate",
            "order": {"quantity": 5, "product": {"gtin": "09506000134352"}},
            "received_at": 0.0,
            "started_at": None,
            "completed_at": None,
            "reconciliation": {
                "units": 0,
                "passed": 0,
                "rejected": 0,
                "rejected_by_reason": {},
                "serials_allocated": 0,
                "serials_commissioned": 0,
                "serials_rejected": 0,
                "serials_unused": 0,
                "serials_in_flight": 0,
                "duplicates": 0,
            },
            "balanced": True,
            "problems": [],
            "yield": 0.0,
            "timeline": [],
            "holds": [],
            "alarms": [],
            "audit": {"rows": 2, "head": "abc", "chain_ok": True},
        }
    )
    assert "No unit was decided for this order." in page and "<svg" not in page
    assert "duplicate" in page and "The order was never held." in page
