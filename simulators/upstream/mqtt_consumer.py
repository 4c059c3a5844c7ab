"""A simulated Level 3 consumer of the agent's MQTT events, with the end-to-end ack side.

This is the receiving half integrators copy. The contract (``delivery = "end-to-end"``):

1. Subscribe with QoS 1 on a persistent session (stable client id, clean start off, a session
   expiry), so events published while you are away are queued for you.
2. For each event (one EPCIS 2.0 event per message, JSON): store it durably, de-duplicating on
   ``eventID`` (the agent delivers at least once; a re-sent event carries the same ID).
3. Only then confirm it: publish ``{"acked": ["<eventID>", ...]}`` with QoS 1 on the ack topic:
   the message's MQTT 5 Response Topic property (the agent's ``ack_topic``, always set by an
   MQTT 5 agent); for an agent on MQTT 3.1.1, which cannot send properties, the ``ack_topic``
   configured here (the same as the agent's). Confirm a duplicate again: the agent re-sends
   exactly because a confirmation was lost. Batching several IDs in one confirmation is fine.
4. An event you can never accept (invalid): ``{"rejected": {"<eventID>": "why"}}``. The agent
   dead-letters it and raises an alarm instead of re-sending it forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import aiomqtt


@dataclass
class Received:
    topic: str
    event_id: str
    payload: str


@dataclass
class MqttConsumer:
    host: str
    port: int
    topic: str = "serialization/+/+/events"
    client_id: str = "l3-consumer"
    ack_topic: str | None = None  # for MQTT 3.1.1 agents (no Response Topic): the agent's ack_topic
    ack: bool = True  # False: behave like a receiver that never confirms
    reject: Callable[[dict[str, Any]], str | None] = lambda _event: None
    ack_interval_s: float = 0.05
    received: list[Received] = field(default_factory=list)
    _pending_acks: dict[str, dict[str, Any]] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    _stopping: bool = False

    # --- what arrived ---------------------------------------------------------------------------

    def unique(self) -> dict[str, str]:
        """eventID → payload, first copy kept (the de-duplicated set)."""
        out: dict[str, str] = {}
        for r in self.received:
            out.setdefault(r.event_id, r.payload)
        return out

    def first_seen_order(self) -> list[str]:
        return list(self.unique())

    async def wait_for(self, predicate: Callable[[], bool], within_s: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while not predicate():
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.2))
        return True

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name="mqtt-consumer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping = True
        while self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=1.0)

    async def _run(self) -> None:
        while True:  # reconnect: the broker may be restarted under us
            if self._stopping:  # a cancel can be lost inside wait_for (Python 3.11)
                raise asyncio.CancelledError
            try:
                await self._session()
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.2)

    async def _session(self) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        async with aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
            timeout=5,
        ) as client:
            await client.subscribe(self.topic, qos=1)
            self.connected.set()
            acks = asyncio.create_task(self._acks(client))
            try:
                async for message in client.messages:
                    self._on_event(message)
            finally:
                acks.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await acks

    def _on_event(self, message: aiomqtt.Message) -> None:
        text = bytes(message.payload).decode()
        event = json.loads(text)
        event_id = str(event["eventID"])
        # (a real L3 system commits the event to its own store here, before confirming)
        self.received.append(Received(str(message.topic), event_id, text))
        ack_topic = getattr(message.properties, "ResponseTopic", None) or self.ack_topic
        self._changed.set()
        if ack_topic is None:
            return  # nowhere to confirm it (a 3.1.1 agent and no ack_topic here): it is re-sent
        pending = self._pending_acks.setdefault(ack_topic, {"acked": [], "rejected": {}})
        why = self.reject(event)
        if why is None:
            pending["acked"].append(event_id)
        else:
            pending["rejected"][event_id] = why

    async def _acks(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(self.ack_interval_s)
            if not self.ack:
                self._pending_acks.clear()
                continue
            batches, self._pending_acks = self._pending_acks, {}
            for topic, body in batches.items():
                await client.publish(topic, json.dumps(body), qos=1)
