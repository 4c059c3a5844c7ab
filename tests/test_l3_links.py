"""One contract suite for every L3 link (http, mqtt, folder), each against the L3 site-server
simulator over its real transport (an aiohttp server, a stock Mosquitto broker, a folder), then
what is particular to each transport."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
import pytest_asyncio

from drivers.l3 import wire
from edge_agent.alarms import AlarmKind
from edge_agent.contracts import L3Link, L3Message
from edge_agent.errors import DeliveryError
from edge_agent.l3 import messages, requests
from edge_agent.ledger import SerialState
from edge_agent.orders import audit
from edge_agent.orders.model import OrderCommand, OrderState
from simulators.l3 import L3Sim
from simulators.pytest_plugin import require_tool
from simulators.upstream.mosquitto import Mosquitto
from tests.helpers.l3 import FAST, Agent, l3_order, make_agent, make_link, running, until

OPERATOR = audit.Actor("alice", "api")


@pytest.fixture
def broker(mosquitto: Mosquitto) -> Mosquitto:
    return mosquitto  # stock limits (Receive Maximum 20), as users run it


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    return make_agent(tmp_path / "state")


@pytest_asyncio.fixture(params=["http", "mqtt", "folder"])
async def site(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[L3Sim]:
    async with L3Sim() as sim:
        if request.param == "mqtt":
            broker = request.getfixturevalue("broker")
            await sim.attach_mqtt("127.0.0.1", broker.port, retain_orders=True)
        elif request.param == "folder":
            await sim.attach_folder(tmp_path / "exchange")
        yield sim


# --- the contract, for every transport -----------------------------------------------------


async def test_orders_pages_refusals_returns_and_reports_round_trip(
    agent: Agent, site: L3Sim
) -> None:
    site.add_order(l3_order("ORD-1"))
    site.add_order(l3_order("ORD-BAD", quantity=0))
    # The first page request fails (a 503, an error answer); a folder answers when it can.
    failures = site.faults.fail_requests = 0 if site.serve == "folder" else 1
    section = site.driver_config(request_timeout_s=0.5)
    async with running(agent, section) as service:
        await until(lambda: agent.state("ORD-1") == OrderState.READY, "ORD-1 ready")
        await until(lambda: len(site.refusals) == 1, "refusal delivered")
        await agent.commands.command("ORD-1", OrderCommand.CANCEL, OPERATOR, reason="test")
        await until(lambda: messages.pending_count(agent.conn) == 0, "all messages delivered")
        await until(lambda: site.returns and site.reports, "L3 has the return and report")
        await until(lambda: service.status().reachable, "link through")
    (token,) = site.site.pages
    page = site.site.pages[token]
    assert page.order_id == "ORD-1" and len(page.serials) == FAST["page_size"]
    (request,) = requests.for_order(agent.conn, "ORD-1")  # asked again, with the same id
    assert request.request_id == token and request.attempts == 1 + failures
    (refusal,) = site.refusals.values()
    assert refusal["order_id"] == "ORD-BAD"
    assert refusal["payload"]["problems"][0]["key"] == "quantity"
    assert site.returns["ORD-1:return"]["payload"]["serials"] == list(page.serials)
    assert site.reports["ORD-1:report"]["payload"]["order_id"] == "ORD-1"
    assert agent.serials("ORD-1", SerialState.RETURNED) == list(page.serials)
    assert site.duplicates == 0
    assert agent.alarms_of(AlarmKind.SERIAL_PAGE_REFUSED) == []


async def test_the_same_request_id_yields_the_same_page(site: L3Sim) -> None:
    section = {**FAST, **site.driver_config()}
    async with make_link(section) as link:
        assert isinstance(link, L3Link)
        first = await asyncio.wait_for(link.request_serials("O1", "09506000134352", 5, "r-1"), 10)
        again = await asyncio.wait_for(link.request_serials("O1", "09506000134352", 5, "r-1"), 10)
        other = await asyncio.wait_for(link.request_serials("O1", "09506000134352", 5, "r-2"), 10)
    assert again == first and len(first.serials) == 5
    assert set(other.serials).isdisjoint(first.serials)


async def test_a_message_is_delivered_with_its_id_and_kind(site: L3Sim) -> None:
    message = L3Message(
        "O1:report", "close_report", "O1", {"order_id": "O1", "balanced": True}, 1.5
    )
    async with make_link({**FAST, **site.driver_config()}) as link:
        await asyncio.wait_for(link.deliver(message), 10)
        await until(lambda: site.reports, "report received")
    assert site.reports["O1:report"] == {
        "message_id": "O1:report",
        "kind": "close_report",
        "order_id": "O1",
        "created_at": 1.5,
        "payload": {"order_id": "O1", "balanced": True},
    }


# --- HTTP -----------------------------------------------------------------------------------


async def test_http_sends_the_bearer_token_and_reports_a_wrong_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("L3_TOKEN", "wrong")
    async with L3Sim(token="s3cret") as sim:
        section = {**FAST, **sim.driver_config(token={"env": "L3_TOKEN"})}
        async with make_link(section) as link:
            with pytest.raises(DeliveryError, match=r"401.*check the token"):
                await link.request_serials("O1", "09506000134352", 5, "r-1")
            monkeypatch.setenv("L3_TOKEN", "s3cret")  # rotated: re-read after the 401
            with pytest.raises(DeliveryError, match="re-read"):
                await link.request_serials("O1", "09506000134352", 5, "r-1")
            page = await link.request_serials("O1", "09506000134352", 5, "r-1")
    assert len(page.serials) == 5


async def test_http_passes_retry_after_on(l3_sim: L3Sim) -> None:
    l3_sim.faults.fail_requests, l3_sim.faults.retry_after_s = 1, 7
    async with make_link({**FAST, **l3_sim.driver_config()}) as link:
        with pytest.raises(DeliveryError) as caught:
            await link.request_serials("O1", "09506000134352", 5, "r-1")
    assert caught.value.retry_after_s == 7


async def test_http_garbage_answer_is_a_retry_not_a_page(l3_sim: L3Sim) -> None:
    l3_sim.faults.garbage_answers = 1
    async with make_link({**FAST, **l3_sim.driver_config()}) as link:
        with pytest.raises(DeliveryError, match="not JSON"):
            await link.request_serials("O1", "09506000134352", 5, "r-1")
        page = await link.request_serials("O1", "09506000134352", 5, "r-1")
    assert page.serials == l3_sim.site.pages["r-1"].serials


# --- MQTT 5 request/response --------------------------------------------------------------


async def test_mqtt_requests_carry_response_topic_and_correlation_data(broker: Mosquitto) -> None:
    seen: list[aiomqtt.Message] = []

    async def spy(client: aiomqtt.Client) -> None:
        async for message in client.messages:
            seen.append(message)

    async with (
        L3Sim() as sim,
        aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as watcher,
    ):
        await watcher.subscribe("serialization/#", qos=1)
        listening = asyncio.create_task(spy(watcher))
        await sim.attach_mqtt("127.0.0.1", broker.port, site_id="S1", line_id="L7")
        section = {**FAST, **sim.driver_config(), "client_id": "line-7"}
        async with make_link(section, site="S1", line="L7") as link:
            page = await link.request_serials("O1", "09506000134352", 3, "req-42")
        await until(lambda: len(seen) >= 2, "request and answer seen")
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
    request, answer = seen[0], seen[1]
    assert str(request.topic) == "serialization/S1/L7/l3/serials/request"
    assert request.properties.ResponseTopic == "serialization/S1/L7/l3/responses/line-7"
    assert request.properties.CorrelationData == b"req-42"
    assert request.qos == 1
    assert wire.decode(request.payload) == wire.serial_request("O1", "09506000134352", 3, "req-42")
    assert str(answer.topic) == "serialization/S1/L7/l3/responses/line-7"
    assert answer.properties.CorrelationData == b"req-42"
    assert wire.parse_page(wire.decode(answer.payload)) == page


async def test_mqtt_orders_sent_while_the_agent_is_away_arrive_later(
    agent: Agent, broker: Mosquitto
) -> None:
    """The link's session is persistent: QoS 1 orders wait at the broker for it."""
    async with L3Sim() as sim:
        responder = await sim.attach_mqtt("127.0.0.1", broker.port)
        async with running(agent, sim.driver_config()) as service:
            await until(lambda: getattr(service.link, "connected", False), "link subscribed")
        sim.add_order(l3_order("ORD-1"))  # not retained: only the session keeps it
        await until(lambda: responder._outgoing.empty(), "order published")
        async with running(agent, sim.driver_config()):
            await until(lambda: agent.state("ORD-1") == OrderState.READY, "order after restart")


async def test_mqtt_broker_gone_then_back(agent: Agent, broker: Mosquitto) -> None:
    async with L3Sim() as sim:
        await sim.attach_mqtt("127.0.0.1", broker.port)
        async with running(agent, sim.driver_config()) as service:
            await until(lambda: getattr(service.link, "connected", False), "link subscribed")
            broker.stop()
            await until(lambda: not service.status().reachable, "outage seen")
            broker.start()
            await sim.go_away()
            await sim.come_back()  # the simulated L3 reconnects too (the broker lost sessions)
            sim.add_order(l3_order("ORD-1"))
            await until(lambda: agent.state("ORD-1") == OrderState.READY, "order after outage")
            await until(lambda: service.status().reachable, "outage over")
    (alarm,) = agent.alarms_of(AlarmKind.L3_UNREACHABLE)
    assert alarm.cleared_at is not None and alarm.count == 1


async def test_mqtt_no_answer_is_a_bounded_wait(broker: Mosquitto) -> None:
    section = {**FAST, "type": "mqtt", "host": "127.0.0.1", "port": broker.port}
    async with make_link({**section, "request_timeout_s": 0.3}) as link:
        with pytest.raises(DeliveryError, match="no answer"):
            await link.request_serials("O1", "09506000134352", 3, "req-1")  # nobody listens


async def test_mqtt_keeps_to_the_broker_s_receive_maximum(tmp_path: Path) -> None:
    require_tool("mosquitto")
    # A broker advertising Receive Maximum 1 (MQTT 5 CONNACK): the link must connect and keep
    # at most one QoS 1 publish in flight (mosquitto does not police QoS 1, so the window is
    # read from the client).
    with Mosquitto(tmp_path / "rm", extra_config="max_inflight_messages 1\n") as strict:
        async with L3Sim() as sim:
            await sim.attach_mqtt("127.0.0.1", strict.port)
            async with make_link({**FAST, **sim.driver_config()}) as link:
                sends = [
                    link.deliver(L3Message(f"O{i}:report", "close_report", f"O{i}", {}, 0.0))
                    for i in range(8)
                ]
                await asyncio.wait_for(asyncio.gather(*sends), 20)
                assert link.most_in_flight == 1
        assert len(sim.reports) == 8


# --- folder -----------------------------------------------------------------------------------


async def test_folder_files_moved_written_atomically_and_named_safely(
    agent: Agent, tmp_path: Path
) -> None:
    exchange = tmp_path / "exchange"
    async with L3Sim() as sim:
        await sim.attach_folder(exchange)
        sim.add_order(l3_order("ORD-1"))
        (exchange / "orders" / "garbled.json").write_text("{not json", encoding="utf-8")
        async with running(agent, sim.driver_config()):
            await until(lambda: agent.state("ORD-1") == OrderState.READY, "ready")
            await until(lambda: len(sim.refusals) == 1, "refusal of the unreadable file")
        assert sorted(p.name for p in (exchange / "orders").glob("*.json")) == []
        assert sorted(p.name for p in (exchange / "orders" / "done").iterdir()) == [
            "ORD-1.json",
            "garbled.json",
        ]
        (refusal,) = sim.refusals.values()
        assert "JSON object" in refusal["payload"]["problems"][0]["message"]
        (request_file,) = (exchange / "requests").iterdir()
        request = json.loads(request_file.read_text())
        assert request_file.name == f"{request['request_id']}.json"
        assert (exchange / "serials" / request_file.name).exists()
        outbox = sorted(p.name for p in (exchange / "outbox").iterdir())
        assert len(outbox) == 1 and ":" not in outbox[0]  # the refusal, ':' written '.'
        assert not any(p.name.endswith(".tmp") for p in exchange.rglob("*"))


async def test_folder_without_an_answer_the_request_waits_then_retries(tmp_path: Path) -> None:
    section = {**FAST, "type": "folder", "folder": str(tmp_path / "x"), "request_timeout_s": 0.2}
    async with make_link(section) as link:
        with pytest.raises(DeliveryError, match="no page yet"):
            await link.request_serials("O1", "09506000134352", 3, "req-1")
        request = tmp_path / "x" / "requests" / "req-1.json"
        assert json.loads(request.read_text())["count"] == 3
        page = wire.page_document(
            wire.parse_page(
                {
                    "request_id": "req-1",
                    "order_id": "O1",
                    "gtin": "09506000134352",
                    "serials": ["A1", "A2"],
                    "exhausted": True,
                }
            )
        )
        (tmp_path / "x" / "serials" / "req-1.json").write_text(json.dumps(page))
        answer = await link.request_serials("O1", "09506000134352", 3, "req-1")
    assert answer.serials == ("A1", "A2") and answer.exhausted
