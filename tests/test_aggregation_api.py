"""Manual aggregation and rework through the REST API and `edge-agent case | unit`: each step
audited with who did it and emitting its events; refusals answer 409 with the rule and change
nothing; an order does not close while a case is open."""

from __future__ import annotations

import json
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.api import TOKENS, order_data
from tests.test_orders_cli import Agent, serve

GTIN = "09506000134352"
SERIALS = [f"S{n:04d}" for n in range(1, 9)]
PLAN = {"levels": [{"level": "case", "capacity": 3}, {"level": "pallet", "capacity": 2}]}


def unit(serial: str) -> str:
    return f"(01){GTIN}(21){serial}"


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    async for running in serve(tmp_path, role="supervisor"):  # rework is a supervisor's
        port = tomllib.loads(running.config.read_text())["api"]["port"]
        running.rig.url = f"http://127.0.0.1:{port}"
        order = order_data(
            quantity=7, serials={"source": "list", "serials": SERIALS}, aggregation=PLAN
        )
        async with api(running) as client:
            assert (await client.post("/orders", json=order)).status_code == 201
            assert (await client.post("/orders/ORD-1/commands/start")).status_code == 200
        running.rig.run_units("ORD-1", ["pass"] * 6 + ["no_read"])  # S0007 rejected
        yield running


def api(agent: Agent) -> httpx.AsyncClient:
    return agent.rig.client(TOKENS["operator"])


def events(agent: Agent) -> list[dict[str, object]]:
    rows = agent.rig.conn.execute("SELECT payload FROM outbox ORDER BY seq").fetchall()
    return [json.loads(p) for (p,) in rows]


async def test_a_case_from_open_to_disaggregation_through_the_cli(
    agent: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await agent.cli("case", "open", "--order", "ORD-1", capsys=capsys)
    assert code == 0 and out.startswith("case (00)")
    label = out.split()[1]  # the HRI, as the operator would scan or type it
    code, out, _ = await agent.cli(
        "case", "add", label, unit("S0001"), unit("S0002"), "--close", capsys=capsys
    )
    assert code == 0 and out.splitlines()[0].endswith("closed, 2 of 3  (order ORD-1)")

    code, _, err = await agent.cli("case", "add", label, unit("S0003"), capsys=capsys)
    assert code == 1 and "is closed" in err and "case open" in err
    code, out, _ = await agent.cli("case", "open", label, capsys=capsys)
    assert code == 0 and "open, 2 of 3" in out
    code, _, err = await agent.cli("case", "add", label, unit("S0007"), capsys=capsys)
    assert code == 1 and "is rejected: only commissioned units can be packed" in err
    code, out, _ = await agent.cli(
        "case", "replace", label, unit("S0001"), unit("S0003"), "--reason", "smudged",
        capsys=capsys,
    )  # fmt: skip
    assert code == 0 and "S0003" in out and "S0001" not in out
    code, out, _ = await agent.cli(
        "case", "remove", label, unit("S0002"), "--reason", "damaged box", capsys=capsys
    )
    assert code == 0 and "open, 1 of 3" in out

    code, _, err = await agent.cli("order", "stop", "ORD-1", capsys=capsys)
    assert code == 0  # completed; the close waits: a case is still open
    code, _, err = await agent.cli("order", "close", "ORD-1", "--reason", "x", capsys=capsys)
    assert code == 1 and "containers not closed: case" in err

    code, out, _ = await agent.cli("case", "relabel", label, "--reason", "torn", capsys=capsys)
    assert code == 0 and out.startswith("relabelled: the new identifier is (00)")
    new_label = out.split()[5].rstrip(";")
    assert new_label != label
    code, out, _ = await agent.cli("case", "show", new_label, "--json", capsys=capsys)
    shown = json.loads(out)
    assert shown["state"] == "open" and shown["children"] == 1
    code, out, _ = await agent.cli(
        "case", "disaggregate", new_label, "--reason", "wrong product", capsys=capsys
    )
    assert code == 0 and "disaggregated, 0 of 3" in out

    code, out, _ = await agent.cli("unit", "sample", unit("S0004"), capsys=capsys)
    assert (code, out) == (0, "unit urn:epc:id:sgtin:9506000.013435.S0004: sampled\n")
    code, out, _ = await agent.cli("case", "list", "--order", "ORD-1", capsys=capsys)
    assert [line.split()[2] for line in out.splitlines()[1:]] == ["disaggregated"] * 2

    audited = agent.rig.conn.execute(
        "SELECT actor, source, action, outcome FROM audit WHERE action LIKE 'container_%' "
        "OR action LIKE 'unit_%' ORDER BY seq"
    ).fetchall()
    assert {(a, s) for a, s, _, _ in audited} == {("operator", "api")}
    assert [(a, o) for _, _, a, o in audited] == [
        ("container_open", "done"),
        ("container_pack", "done"),
        ("container_pack", "refused"),
        ("container_reopen", "done"),
        ("container_pack", "refused"),
        ("container_replace", "done"),
        ("container_unpack", "done"),
        ("container_relabel", "done"),
        ("container_disaggregate", "done"),
        ("unit_sample", "done"),
    ]
    steps = [
        (e["type"], e["action"], e["bizStep"])
        for e in events(agent)
        if e["bizStep"] != "destroying"
    ]
    assert ("AggregationEvent", "ADD", "packing") in steps
    assert ("AggregationEvent", "DELETE", "unpacking") in steps
    assert ("ObjectEvent", "OBSERVE", "sampling") in steps


async def test_api_refusals_name_the_rule_and_the_hierarchy_report(agent: Agent) -> None:
    async with api(agent) as client:
        opened = await client.post("/containers", json={"order_id": "ORD-1", "level": "case"})
        assert opened.status_code == 201
        case = opened.json()
        full = [unit(s) for s in SERIALS[:4]]
        answer = await client.post(
            "/containers/add", json={"container": case["code"], "children": full}
        )
        assert answer.status_code == 409
        assert answer.json()["error"] == "aggregation_refused"
        assert answer.json()["problems"][0]["key"] == "capacity"
        assert (await client.get("/containers/detail", params={"code": "nope"})).status_code == 404
        answer = await client.post(
            "/containers/add", json={"container": case["epc"], "children": full[:3], "close": True}
        )
        assert answer.status_code == 200 and answer.json()["state"] == "closed"
        report = (await client.get("/orders/ORD-1/hierarchy")).json()
        assert report["hierarchy_balanced"] is False
        assert report["aggregation"]["units_packed"] == 3
        assert report["hierarchy_problems"] == [
            "1 closed cases are in no pallet and not listed loose with a reason",
            "3 commissioned units are in no case and not listed loose with a reason",
        ]
        pallet = await client.post("/containers", json={"order_id": "ORD-1", "level": "pallet"})
        answer = await client.post(
            "/containers/add", json={"container": pallet.json()["code"], "children": full[3:]}
        )
        assert answer.json()["problems"][0]["key"] == "wrong_level"
        destroyed = await client.post(
            "/units/destroy", json={"unit": unit("S0005"), "reason": "crushed"}
        )
        assert destroyed.json()["state"] == "destroyed"
        no_reason = await client.post("/units/destroy", json={"unit": unit("S0006")})
        assert no_reason.status_code == 409


async def test_an_aborted_order_scraps_its_reserved_containers(agent: Agent) -> None:
    async with api(agent) as client:
        reserved = (await client.post("/containers", json={"order_id": "ORD-1"})).json()
        opened = (await client.post("/containers", json={"order_id": "ORD-1"})).json()
        await client.post(
            "/containers/add", json={"container": opened["code"], "children": [unit("S0001")]}
        )
        aborted = await client.post("/orders/ORD-1/commands/abort", json={"reason": "recall"})
        assert aborted.status_code == 200
        shown = await client.get("/containers/detail", params={"code": reserved["code"]})
        assert (shown.json()["state"], shown.json()["reason"]) == ("scrapped", "order_aborted")
        report = (await client.get("/orders/ORD-1/report")).json()
        assert report["reconciliation"]["hierarchy_balanced"] is False  # the open case
        late = await client.post("/containers/close", json={"container": opened["code"]})
        assert late.json()["problems"][0]["key"] == "order_state"


async def test_the_close_report_page_shows_the_hierarchy(agent: Agent) -> None:
    async with api(agent) as client:
        case = (await client.post("/containers", json={"order_id": "ORD-1"})).json()
        units = [unit(s) for s in SERIALS[:3]]
        await client.post(
            "/containers/add", json={"container": case["code"], "children": units, "close": True}
        )
        await client.post("/units/sample", json={"unit": unit("S0004")})
        aborted = await client.post("/orders/ORD-1/commands/abort", json={"reason": "recall"})
        assert aborted.status_code == 200
        page = (await client.get("/orders/ORD-1/report.html")).text
    assert "<h2>Packaging hierarchy</h2>" in page
    assert "<tr><th>cases</th>" in page and "1 closed" in page
    assert "Hierarchy not balanced:" in page and "2 commissioned units are in no case" in page


@pytest.fixture
async def operator_agent(tmp_path: Path) -> AsyncIterator[Agent]:
    """The same agent, its token without a role: an operator's."""
    async for running in serve(tmp_path):
        port = tomllib.loads(running.config.read_text())["api"]["port"]
        running.rig.url = f"http://127.0.0.1:{port}"
        order = order_data(
            quantity=7, serials={"source": "list", "serials": SERIALS}, aggregation=PLAN
        )
        async with api(running) as client:
            assert (await client.post("/orders", json=order)).status_code == 201
            assert (await client.post("/orders/ORD-1/commands/start")).status_code == 200
        running.rig.run_units("ORD-1", ["pass"] * 6 + ["no_read"])
        yield running


async def test_an_operator_token_aggregates_but_may_not_rework(
    operator_agent: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    """Manual aggregation is an operator's; rework, samples and destruction answer 403 naming
    the role needed and how to get it, change nothing, and are audited as refused."""
    agent = operator_agent
    async with api(agent) as client:
        case = (await client.post("/containers", json={"order_id": "ORD-1"})).json()
        units = [unit(s) for s in SERIALS[:3]]
        added = await client.post(
            "/containers/add", json={"container": case["code"], "children": units, "close": True}
        )
        assert added.status_code == 200 and added.json()["state"] == "closed"
        before = agent.rig.conn.execute("SELECT count(*) FROM outbox").fetchone()
        code = case["code"]
        refused = [
            ("/containers/open", {"container": code}),
            ("/containers/remove", {"container": code, "children": units[:1], "reason": "x"}),
            ("/containers/replace", {"container": code, "old": units[0], "new": unit("S0004"),
                                     "reason": "x"}),
            ("/containers/relabel", {"container": code, "reason": "torn"}),
            ("/containers/disaggregate", {"container": code, "reason": "x"}),
            ("/containers/scrap", {"container": code, "reason": "x"}),
            ("/units/sample", {"unit": unit("S0005")}),
            ("/units/destroy", {"unit": unit("S0005"), "reason": "crushed"}),
        ]  # fmt: skip
        for path, body in refused:
            answer = await client.post(path, json=body)
            assert answer.status_code == 403, (path, answer.text)
            message = answer.json()["message"]
            assert answer.json()["error"] == "forbidden"
            assert "needs the supervisor role; operator has the operator role" in message
            assert 'role = "supervisor"' in message and "[[api.tokens]]" in message
        shown = (await client.get("/containers/detail", params={"code": code})).json()
        assert (shown["state"], shown["children"]) == ("closed", 3)
        assert agent.rig.conn.execute("SELECT count(*) FROM outbox").fetchone() == before
        sample = await client.get("/orders/ORD-1/hierarchy")
        assert sample.json()["aggregation"]["units_packed"] == 3
        # the command path applies the same role: an operator may not abort
        aborted = await client.post("/orders/ORD-1/commands/abort", json={"reason": "recall"})
        assert aborted.status_code == 409 and "needs a supervisor" in aborted.json()["message"]
    # the CLI, with the operator's token from the config, says the same
    status, _, err = await agent.cli("case", "disaggregate", code, "--reason", "x", capsys=capsys)
    assert status == 1 and "needs the supervisor role" in err and "Traceback" not in err
    refusals = agent.rig.conn.execute(
        "SELECT actor, action FROM audit WHERE outcome = 'refused' AND "
        "(action LIKE 'container_%' OR action LIKE 'unit_%') ORDER BY seq"
    ).fetchall()
    assert refusals == [
        ("operator", a)
        for a in (
            "container_reopen",
            "container_remove",
            "container_replace",
            "container_relabel",
            "container_disaggregate",
            "container_scrap",
            "unit_sample",
            "unit_destroy",
            "container_disaggregate",
        )
    ]


def test_a_token_role_that_does_not_exist_names_the_file_key_and_the_choices() -> None:
    from edge_agent.config import parse_config
    from edge_agent.config.loader import ConfigInvalid

    demo = (Path(__file__).parent.parent / "config" / "demo.toml").read_text()
    extra = '\n[api]\n[[api.tokens]]\nname = "mes"\ntoken = { env = "X" }\nrole = "admin"\n'
    with pytest.raises(ConfigInvalid) as raised:
        parse_config(demo + extra, "line.toml")
    (problem,) = [str(p) for p in raised.value.problems]
    assert problem.startswith("line.toml:") and "api.tokens.0.role: found 'admin'" in problem
    assert "'operator' or 'supervisor'" in problem
    assert parse_config(demo + extra.replace("admin", "supervisor")).model.api is not None


async def test_the_station_routes_say_when_the_agent_runs_no_stations(agent: Agent) -> None:
    async with api(agent) as client:
        for answer in (
            await client.get("/aggregation/stations"),
            await client.post("/aggregation/stations/case/last", json={"count": 2}),
            await client.post("/aggregation/stations/pallet/close"),
            await client.post("/aggregation/stations/pallet/release"),
        ):
            assert answer.status_code == 404, answer.text
            assert "[aggregation.case_station]" in answer.json()["message"]


async def test_the_station_cli_says_when_the_agent_runs_no_stations(
    agent: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (("status",), ("last-case", "2"), ("close-pallet",), ("release",)):
        code, _, err = await agent.cli("station", *argv, capsys=capsys)
        assert code == 1 and "no aggregation stations run in this agent" in err, (argv, err)
