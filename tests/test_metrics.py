"""/metrics and /health over real HTTP: the exposition parsed with prometheus-client's own parser."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from pydantic import SecretStr

from edge_agent.api.app import create_app
from edge_agent.api.auth import BearerTokens
from edge_agent.api.server import ApiServer
from edge_agent.api.status import DbLineStatus, DeviceLink, LineSnapshot
from edge_agent.line.stats import LineStats
from edge_agent.monitoring.sources import MonitoringSources
from edge_agent.orders.audit import Actor
from edge_agent.outbox.store import OutboxStore
from tests.helpers.api import Rig, make_rig, order_data, services


class Links:
    """The line as the database has it, with device links the test sets."""

    def __init__(self, rig: Rig) -> None:
        self.db = DbLineStatus(rig.conn)
        self.devices: list[DeviceLink] = []

    def snapshot(self) -> LineSnapshot:
        return self.db.snapshot().model_copy(update={"devices": self.devices})


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert isinstance(sample, Sample)
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def scrape(rig: Rig, path: str = "/metrics") -> str:
    async with rig.client(token=None) as client:
        answer = await client.get(path)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return answer.text


async def test_counters_move_never_go_back_and_the_histogram_counts_each_verdict(
    rig: Rig,
) -> None:
    stats = LineStats()
    current: list[LineStats | None] = [stats]
    links = Links(rig)
    sources = MonitoringSources(
        conn=rig.conn,
        line=links,
        alarms=rig.alarms,
        state_dir=rig.state_dir,
        stats=lambda: current[0],
        outbox=OutboxStore(rig.conn, ["l3", "mqtt"]).status,
    )
    await rig.commands.submit(order_data(), source="api", actor=Actor("mes", "api"))
    app = create_app(services(rig, links), [], monitoring=sources)
    async with ApiServer(app, port=0) as server:
        rig.url = server.url
        first = samples(await scrape(rig))
        assert first[("edge_agent_units_total", ())] == 0
        assert first[("edge_agent_verdict_latency_seconds_count", ())] == 0

        stats.record(True, "ok", 12.0)
        stats.record(False, "unreadable", 80.0)
        stats.record(False, "wrong_serial", 400.0)
        links.devices = [
            DeviceLink(name="printer", kind="printer", state="up", reconnects=2),
            DeviceLink(name="camera", kind="camera", state="down"),
        ]
        rig.run_units("ORD-1", ["pass", "unreadable"])  # events for the forwarders
        second = samples(await scrape(rig))
        assert second[("edge_agent_units_total", ())] == 3
        assert second[("edge_agent_units_passed_total", ())] == 1
        assert second[("edge_agent_units_rejected_total", (("reason", "unreadable"),))] == 1
        assert second[("edge_agent_verdict_latency_seconds_count", ())] == 3
        assert second[("edge_agent_verdict_latency_seconds_bucket", (("le", "0.02"),))] == 1
        assert second[("edge_agent_verdict_latency_seconds_bucket", (("le", "0.1"),))] == 2
        assert second[("edge_agent_verdict_latency_seconds_bucket", (("le", "+Inf"),))] == 3
        assert second[("edge_agent_verdict_latency_seconds_sum", ())] == pytest.approx(0.492)
        printer = (("device", "printer"), ("kind", "printer"))
        assert second[("edge_agent_device_up", printer)] == 1
        assert second[("edge_agent_device_reconnects_total", printer)] == 2
        camera = (("device", "camera"), ("kind", "camera"))
        assert second[("edge_agent_device_up", camera)] == 0
        assert second[("edge_agent_device_state", (*camera, ("state", "down")))] == 1
        for forwarder in ("l3", "mqtt"):
            label = (("forwarder", forwarder),)
            assert second[("edge_agent_outbox_pending_events", label)] > 0
            assert second[("edge_agent_outbox_oldest_pending_age_seconds", label)] >= 0
        assert second[("edge_agent_orders", (("state", "ready"),))] == 1
        assert second[("edge_agent_line_state", (("state", "idle"),))] == 1
        assert second[("edge_agent_disk_free_bytes", ())] > 0

        # the next order: new stats; the counters carry on from the last order's totals
        stats.record(True, "ok", 15.0)  # counted after the last scrape, before the switch
        current[0] = LineStats()
        current[0].record(False, "unreadable", 30.0)
        third = samples(await scrape(rig))
        assert third[("edge_agent_units_total", ())] == 5
        assert third[("edge_agent_units_passed_total", ())] == 2
        assert third[("edge_agent_units_rejected_total", (("reason", "unreadable"),))] == 2
        assert third[("edge_agent_verdict_latency_seconds_count", ())] == 5

        current[0] = None  # between orders: nothing is lost either
        assert samples(await scrape(rig))[("edge_agent_units_total", ())] == 5


async def test_two_apps_in_one_process_keep_their_own_registries(rig: Rig, tmp_path: Path) -> None:
    other = make_rig(tmp_path / "other")
    stats = LineStats()
    stats.record(True, "ok", 1.0)
    one = create_app(services(rig), [], monitoring=_sources(rig, stats=lambda: stats))
    two = create_app(services(other), [])
    async with ApiServer(one, port=0) as a, ApiServer(two, port=0) as b:
        rig.url, other.url = a.url, b.url
        assert samples(await scrape(rig))[("edge_agent_units_total", ())] == 1
        assert samples(await scrape(other))[("edge_agent_units_total", ())] == 0


async def test_metrics_can_require_a_token(rig: Rig) -> None:
    tokens = BearerTokens({"prometheus": SecretStr("scrape-token-0123456789")})
    app = create_app(services(rig), [tokens], metrics_public=False)
    async with ApiServer(app, port=0) as server:
        rig.url = server.url
        async with rig.client(token=None) as anonymous:
            assert (await anonymous.get("/metrics")).status_code == 401
            assert (await anonymous.get("/health")).status_code == 200
        async with rig.client(token="scrape-token-0123456789") as scraper:
            answer = await scraper.get("/metrics")
            assert answer.status_code == 200
            assert "edge_agent_units_total" in answer.text


async def test_health_is_ok_degraded_or_failing(rig: Rig) -> None:
    links = Links(rig)
    app = create_app(services(rig, links), [], monitoring=_sources(rig, line=links))
    async with ApiServer(app, port=0) as server:
        rig.url = server.url
        async with rig.client(token=None) as client:
            ok = await client.get("/health")
            assert ok.status_code == 200
            body = ok.json()
            assert body["status"] == "ok"
            assert set(body["checks"]) == {"database", "disk", "line", "devices", "outbox"}

            links.devices = [DeviceLink(name="camera", kind="camera", state="down")]
            degraded = await client.get("/health")
            assert degraded.status_code == 200
            assert degraded.json()["status"] == "degraded"
            assert degraded.json()["checks"]["devices"]["detail"] == "down: camera"

    full = _sources(rig, disk_stop_mb=1e12)  # no disk has that much free: below the stop level
    async with ApiServer(create_app(services(rig), [], monitoring=full), port=0) as server:
        rig.url = server.url
        async with rig.client(token=None) as client:
            failing = await client.get("/health")
            assert failing.status_code == 503
            assert failing.json()["status"] == "failing"
            assert failing.json()["checks"]["disk"]["status"] == "fail"


def _sources(rig: Rig, **changes: object) -> MonitoringSources:
    base = MonitoringSources(
        conn=rig.conn, line=DbLineStatus(rig.conn), alarms=rig.alarms, state_dir=rig.state_dir
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]
