"""The operator screen and the monitoring endpoints as the daemon serves them, from its config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.api.service import agent_api_server
from edge_agent.errors import ConfigError
from edge_agent.line.stats import LineStats
from edge_agent.orders.audit import Actor
from edge_agent.outbox.store import OutboxStore
from simulators.pytest_plugin import order_for
from simulators.runner import SimulatorSet
from tests.helpers.api import make_rig, services
from tests.helpers.hmi import browser, daemon, login, users_file
from tests.helpers.line import simulators
from tests.helpers.margins import VERDICT_DEADLINE_MS
from tests.helpers.waiting import until


def _api(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("EDGE_AGENT_TEST_TOKEN", "mes-token-0123456789abcdef")
    return {"port": 0, "tokens": [{"name": "mes", "token": {"env": "EDGE_AGENT_TEST_TOKEN"}}]}


async def test_the_daemons_server_has_the_screen_metrics_and_health(
    agent_config_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = users_file(tmp_path)
    config = agent_config_factory(
        order=None, api=_api(monkeypatch), hmi={"users_file": str(users.path)}
    )
    rig = make_rig(tmp_path / "rig")
    stats = LineStats()
    stats.record(True, "ok", 20.0)
    server = agent_api_server(
        config.model,
        services(rig),
        stats=lambda: stats,
        outbox=OutboxStore(rig.conn, ["l3"]).status,
    )
    async with server:
        rig.url = server.url
        async with browser(rig) as client:
            await login(client, "anna")
            metrics = (await client.get("/metrics")).text
            health = await client.get("/health")
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    assert found[("edge_agent_units_total", ())] == 1
    assert found[("edge_agent_outbox_pending_events", (("forwarder", "l3"),))] == 0
    assert ("edge_agent_disk_free_bytes", ()) in found
    info = [k for k in found if k[0] == "edge_agent_info"]
    assert info and ("line", config.model.line.id) in info[0][1]
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_hmi_without_api_is_a_config_error(agent_config_factory: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[hmi\] is served by the API server"):
        agent_config_factory(order=None, hmi={"users_file": str(tmp_path / "u.json")})


def test_a_session_lifetime_out_of_range_names_its_key(
    agent_config_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match=r"hmi\.session_minutes"):
        agent_config_factory(order=None, api=_api(monkeypatch), hmi={"session_minutes": 0})


async def test_the_daemon_serves_the_screen_and_counts_its_units_in_metrics(
    agent_config_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    users = users_file(tmp_path)
    async with SimulatorSet(simulators()) as sims:
        config = agent_config_factory(
            simulators=sims,
            order=None,
            line={"verdict_deadline_ms": VERDICT_DEADLINE_MS},
            api=_api(monkeypatch),
            hmi={"users_file": str(users.path)},
        )
        async with daemon(config) as agent:
            assert agent.commands is not None and agent.api_url is not None
            anna = Actor("anna", "hmi", "operator")
            await agent.commands.submit(order_for(id="W1", quantity=20), source="hmi", actor=anna)
            await until(lambda: agent.stats.units >= 20, "the order packed", within=60)
            async with httpx.AsyncClient(base_url=agent.api_url, timeout=10) as client:
                assert (await client.get("/hmi/login")).status_code == 200
                text = (await client.get("/metrics")).text
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert found[("edge_agent_units_total", ())] >= 20
    assert found[("edge_agent_verdict_latency_seconds_count", ())] >= 20


def test_check_config_reads_the_users_file(
    agent_config_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_agent import preflight

    path = tmp_path / "hmi-users.json"
    config = agent_config_factory(order=None, api=_api(monkeypatch), hmi={"users_file": str(path)})
    assert any("nobody can log in yet" in n for n in preflight.check(config).notes)
    path.write_text("{not a users file")
    problems = preflight.check(config).problems
    assert [p.key for p in problems] == ["hmi.users_file"]
    assert "edge-agent user add" in str(problems[0])
    users_file(tmp_path)  # anna and sam
    assert any("2 users" in n for n in preflight.check(config).notes)
