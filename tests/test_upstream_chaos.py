"""Chaos against a real Mosquitto: the broker stopped or killed mid-batch, the agent SIGKILLed at
each step of write → publish → acknowledge. The oracle (tests/outbox_helpers.check_oracle): the
consumer receives every event at least once, de-duplicated by eventID it is exactly the ledger's
set with intact payloads, per-batch first arrivals are in outbox order, and a fresh event goes
through within 60 s after the faults stop.

The "upstream answers 500s then recovers" case is in tests/test_http_capture_chaos.py (EPCIS
capture forwarder, same store, loop and oracle).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.upstream.mqtt import MqttForwarder
from edge_agent.db import open_db, open_reader
from edge_agent.outbox.forwarding import ForwarderLoop
from edge_agent.outbox.store import OutboxStore
from simulators.upstream.mosquitto import Mosquitto
from simulators.upstream.mqtt_consumer import MqttConsumer
from tests.helpers.outbox import add_events, check_oracle

ROOT = Path(__file__).resolve().parents[1]
FRESH_WITHIN_S = 60.0

pytestmark = pytest.mark.slow


@contextlib.asynccontextmanager
async def forwarding(store: OutboxStore, port: int, **extra: Any) -> AsyncIterator[ForwarderLoop]:
    config = {
        "type": "mqtt",
        "host": "127.0.0.1",
        "port": port,
        "delivery": "end-to-end",
        "ack_timeout_s": 2.0,
        "timeout_s": 3.0,
        **extra,
    }
    fwd = MqttForwarder("l3", config, site="S1", line="L1")
    loop = ForwarderLoop(store, fwd, "l3", batch_size=50, backoff_initial_s=0.05, backoff_max_s=0.5)
    task = asyncio.create_task(loop.run())
    try:
        yield loop
    finally:
        loop.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def fresh_event_goes_through(conn: Any, consumer: MqttConsumer) -> float:
    [event_id] = add_events(conn, 1, "FRESH")
    start = time.monotonic()
    assert await consumer.wait_for(lambda: event_id in consumer.unique(), FRESH_WITHIN_S)
    return time.monotonic() - start


async def produce(conn: Any, batches: list[str], per_batch: int, chunk: int = 25) -> None:
    """The line writing events while the faults happen: batches interleaved, in chunks."""
    for start in range(0, per_batch, chunk):
        for batch in batches:
            add_events(conn, chunk, batch, start)
        await asyncio.sleep(0.02)


@pytest.fixture
def conn(tmp_path: Path) -> Any:
    c = open_db(tmp_path / "state")
    yield c
    c.close()


@pytest.mark.parametrize("kill", [False, True], ids=["broker-stopped", "broker-killed"])
async def test_broker_goes_away_mid_batch(
    conn: Any, mosquitto: Mosquitto, mqtt_consumer: MqttConsumer, kill: bool
) -> None:
    """Stopped (SIGTERM: persistence saved) or killed (SIGKILL: what was not saved is lost) while
    events flow, down for a while, then back on the same port."""
    await asyncio.wait_for(mqtt_consumer.connected.wait(), 10)
    store = OutboxStore(conn, ["l3"])
    async with forwarding(store, mosquitto.port) as loop:
        await produce(conn, ["B1", "B2"], 100)
        await asyncio.to_thread(mosquitto.stop, kill=kill)  # mid-batch: more events follow
        await produce(conn, ["B1", "B2"], 100)
        await asyncio.sleep(1.0)
        assert loop.down_since is not None
        await asyncio.to_thread(mosquitto.start)
        await fresh_event_goes_through(conn, mqtt_consumer)
        assert await mqtt_consumer.wait_for(
            lambda: len(mqtt_consumer.unique()) == 401, FRESH_WITHIN_S
        )
        for _ in range(300):
            if not store.pending("l3", 1):
                break
            await asyncio.sleep(0.1)
    assert store.pending("l3", 1) == []
    check_oracle(conn, mqtt_consumer.received)


# --- the agent SIGKILLed along write → publish → acknowledge --------------------------------


def agent_config(state: Path, port: int) -> str:
    text = (ROOT / "config" / "demo.toml").read_text()
    text = re.sub(r'state_dir = "[^"]*"', f'state_dir = "{state}"', text)
    text = text.replace('log_format = "json"', 'log_format = "json"\nlog_level = "warning"')
    return text + (
        "\n[upstream]\nbatch_size = 40\nbackoff_initial_s = 0.05\nbackoff_max_s = 0.5\n"
        'drain_on_exit_s = 30\n\n[[upstream.forwarders]]\nname = "l3-mqtt"\ntype = "mqtt"\n'
        f'host = "127.0.0.1"\nport = {port}\ndelivery = "end-to-end"\nack_timeout_s = 2\n'
        "timeout_s = 3\n"
    )


async def run_cli(*args: str, crash_at: str | None = None, log: Path) -> int:
    env = dict(os.environ)
    env.pop("EDGE_AGENT_CRASH_AT", None)
    if crash_at:
        env["EDGE_AGENT_CRASH_AT"] = crash_at
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge_agent.cli", *args, env=env, stdout=out, stderr=out
        )
        try:
            return await asyncio.wait_for(proc.wait(), 120)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@pytest.mark.parametrize(
    "crash_at",
    ["forward_published:2", "forward_delivered:2", "forward_marked:3"],
    ids=["after-publish", "after-ack-before-record", "after-record"],
)
async def test_agent_sigkilled_while_forwarding(
    tmp_path: Path, mosquitto: Mosquitto, mqtt_consumer: MqttConsumer, crash_at: str
) -> None:
    """`edge-agent outbox drain` (the agent's forwarders, no line) killed at a point of the
    publish path, then run again: the same oracle holds."""
    await asyncio.wait_for(mqtt_consumer.connected.wait(), 10)
    state = tmp_path / "state"
    conn = open_db(state)
    try:
        add_events(conn, 120, "B1")
        add_events(conn, 80, "B2")
    finally:
        conn.close()
    config = tmp_path / "agent.toml"
    config.write_text(agent_config(state, mosquitto.port))
    log = tmp_path / "agent.log"
    first = await run_cli("outbox", "drain", "--config", str(config), crash_at=crash_at, log=log)
    assert first == -signal.SIGKILL, log.read_text()[-3000:]
    second = await run_cli("outbox", "drain", "--config", str(config), log=log)
    assert second == 0, log.read_text()[-3000:]
    with contextlib.closing(open_reader(state)) as reader:
        assert await mqtt_consumer.wait_for(lambda: len(mqtt_consumer.unique()) == 200, 30)
        check_oracle(reader, mqtt_consumer.received)
    assert json.loads(log.read_text().strip().splitlines()[-1]) == {"pending": 0}


async def test_line_sigkilled_during_outbox_commit_then_resumed(
    tmp_path: Path, mosquitto: Mosquitto, mqtt_consumer: MqttConsumer
) -> None:
    """The whole agent (`edge-agent run` against `edge-agent simulate`) with an MQTT forwarder,
    killed inside a commit group's transaction, restarted: the batch completes and L3 has
    exactly the ledger's events."""
    from test_crash import config_text, simulators, with_order

    await asyncio.wait_for(mqtt_consumer.connected.wait(), 10)
    state = tmp_path / "state"
    with simulators(tmp_path) as (ports, _proc, _truth):
        config = tmp_path / "agent.toml"
        text = config_text(state, ports)
        tail = agent_config(state, mosquitto.port)
        config.write_text(text + tail[tail.index("\n[upstream]") :])
        with_order(config, state)
        run = ("run", "--config", str(config), "--exit-when-idle", "--hold-timeout", "0")
        log = tmp_path / "agent.log"
        first = await run_cli(*run, crash_at="outbox_commit:20", log=log)
        assert first == -signal.SIGKILL, log.read_text()[-3000:]
        await asyncio.sleep(1.5)  # the PLC notices the lost heartbeat and stops the line
        second = await run_cli(*run, log=log)
        assert second == 0, log.read_text()[-3000:]
    with contextlib.closing(open_reader(state)) as reader:
        (expected,) = reader.execute("SELECT count(*) FROM outbox").fetchone()
        (commissioned,) = reader.execute(
            "SELECT count(*) FROM serials WHERE state = 'commissioned'"
        ).fetchone()
        # Serials the printer discarded at the restart end `unused`: no object, no event.
        assert commissioned >= 100 and expected >= commissioned, (commissioned, expected)
        assert await mqtt_consumer.wait_for(lambda: len(mqtt_consumer.unique()) == expected, 30)
        check_oracle(reader, mqtt_consumer.received)
        (pending,) = reader.execute(
            "SELECT count(*) FROM outbox WHERE state = 'pending'"
        ).fetchone()
    assert pending == 0
