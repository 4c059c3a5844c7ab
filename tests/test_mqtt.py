"""MQTT forwarder against a real Mosquitto on loopback: QoS 1, PUBACK reason codes, both delivery
levels, dead letters from the receiver."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from outbox_helpers import add_events, check_oracle

from drivers.upstream.mqtt import MqttForwarder
from edge_agent.db import open_db
from edge_agent.errors import DeliveryError
from edge_agent.outbox.forwarding import ForwarderLoop
from edge_agent.outbox.store import OutboxStore
from simulators.upstream.mosquitto import Mosquitto
from simulators.upstream.mqtt_consumer import MqttConsumer


def forwarder(port: int, **extra: Any) -> MqttForwarder:
    config = {"type": "mqtt", "host": "127.0.0.1", "port": port, "timeout_s": 5.0, **extra}
    return MqttForwarder("l3", config, site="S1", line="L1")


@contextlib.asynccontextmanager
async def running(loop: ForwarderLoop) -> AsyncIterator[ForwarderLoop]:
    task = asyncio.create_task(loop.run())
    try:
        yield loop
    finally:
        loop.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def drained(store: OutboxStore, name: str, within_s: float = 30.0) -> bool:
    deadline = asyncio.get_running_loop().time() + within_s
    while store.pending(name, 1):
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


@pytest.fixture
def conn(tmp_path: Path) -> Any:
    c = open_db(tmp_path / "state")
    yield c
    c.close()


@pytest.mark.parametrize(
    ("delivery", "protocol"),
    [("broker", "auto"), ("end-to-end", "auto"), ("end-to-end", "3.1.1")],
)
async def test_delivers_every_event_in_order(
    conn: Any, mosquitto: Mosquitto, mqtt_consumer: MqttConsumer, delivery: str, protocol: str
) -> None:
    await asyncio.wait_for(mqtt_consumer.connected.wait(), 10)
    add_events(conn, 120, "B1")
    add_events(conn, 80, "B2")
    store = OutboxStore(conn, ["l3"])
    fwd = forwarder(mosquitto.port, delivery=delivery, protocol=protocol)
    async with running(ForwarderLoop(store, fwd, "l3", batch_size=50)):
        assert await drained(store, "l3")
        assert await mqtt_consumer.wait_for(lambda: len(mqtt_consumer.unique()) == 200, 10)
    check_oracle(conn, mqtt_consumer.received)
    assert mqtt_consumer.received[0].topic == "serialization/S1/L1/events"
    assert conn.execute("SELECT count(*) FROM outbox WHERE state = 'delivered'").fetchone() == (
        200,
    )


async def test_end_to_end_keeps_events_pending_until_confirmed(
    conn: Any, mosquitto: Mosquitto, mqtt_consumer: MqttConsumer
) -> None:
    await asyncio.wait_for(mqtt_consumer.connected.wait(), 10)
    mqtt_consumer.ack = False
    add_events(conn, 5)
    store = OutboxStore(conn, ["l3"])
    async with forwarder(mosquitto.port, delivery="end-to-end", ack_timeout_s=0.5) as fwd:
        events = store.pending("l3", 10)
        with pytest.raises(DeliveryError, match="confirmed nothing"):
            await fwd.deliver(events)
        assert len(mqtt_consumer.unique()) == 5  # the broker took them; nobody confirmed
        before = len(mqtt_consumer.received)
        with pytest.raises(DeliveryError, match="confirmed nothing"):
            await fwd.deliver(events)  # the receiver is still silent: one event as a probe
        assert len(mqtt_consumer.received) == before + 1
        mqtt_consumer.ack = True
        result = await fwd.deliver(events)  # the probe is confirmed ...
        assert result.delivered == [events[0].event_id]
        result = await fwd.deliver(events[1:])  # ... and the rest go again, confirmed
        assert result.delivered == [e.event_id for e in events[1:]]


async def test_receiver_rejection_is_a_dead_letter(
    conn: Any, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    ids = add_events(conn, 4)
    bad = ids[2]
    consumer = MqttConsumer(
        "127.0.0.1",
        mosquitto.port,
        reject=lambda event: "unknown GTIN" if event["eventID"] == bad else None,
    )
    alarms: list[str] = []
    store = OutboxStore(conn, ["l3"])
    async with consumer:
        await asyncio.wait_for(consumer.connected.wait(), 10)
        fwd = forwarder(mosquitto.port, delivery="end-to-end")
        loop = ForwarderLoop(store, fwd, "l3", on_alarm=alarms.append)
        async with running(loop):
            assert await drained(store, "l3")
    [dead] = store.dead_letters()
    assert dead["event_id"] == bad and "unknown GTIN" in dead["detail"]
    assert alarms and "rejected" in alarms[0]
    assert store.status()[0].dead_letters == 1 and store.status()[0].pending == 0


@pytest.mark.requires_tool("mosquitto")
async def test_negative_puback_is_a_failure_not_a_success(conn: Any, tmp_path: Path) -> None:
    """Mosquitto answers a publish its ACL forbids with PUBACK reason 0x87 (MQTT 5); aiomqtt
    alone would report that publish as successful. (Mosquitto 2.0 then drops the connection, so
    one event is sent: with more in flight the reset can swallow the PUBACK, which the forwarder
    reports as 'no PUBACK', also a failure.)"""
    acl = tmp_path / "acl"
    acl.write_text("topic read serialization/#\n")
    broker = Mosquitto(tmp_path / "mq", extra_config=f"acl_file {acl}\n")
    with broker:
        add_events(conn, 3)
        store = OutboxStore(conn, ["l3"])
        async with forwarder(broker.port) as fwd:
            with pytest.raises(DeliveryError, match="0x87"):
                await fwd.deliver(store.pending("l3", 1))
            with pytest.raises(DeliveryError):
                await fwd.deliver(store.pending("l3", 10))
    assert store.status()[0].pending == 3


@pytest.mark.requires_tool("mosquitto")
async def test_broker_down_at_start_then_up(conn: Any, tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mq")
    add_events(conn, 10)
    store = OutboxStore(conn, ["l3"])
    loop = ForwarderLoop(store, forwarder(broker.port), "l3", backoff_initial_s=0.05)
    async with running(loop):
        await asyncio.sleep(0.5)
        assert loop.failures >= 1 and loop.down_since is not None
        with broker:
            assert await drained(store, "l3")
    assert loop.down_since is None and loop.delivered == 10
