"""The L3 site server on an MQTT broker (an aiomqtt client), the protocol of
``drivers/l3/mqtt.py``: it publishes orders (QoS 1) and answers requests on their MQTT 5
Response Topic with their Correlation Data. It can fail (error answers), be slow, lose answers
and go away (disconnect) and come back."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers.l3 import wire
from simulators.l3.site import L3Site

log = structlog.get_logger("simulators.l3.mqtt")

DEFAULT_PREFIX = "serialization/{site}/{line}/l3"


class L3MqttResponder:
    def __init__(
        self,
        site: L3Site,
        host: str,
        port: int,
        *,
        prefix: str = DEFAULT_PREFIX,
        site_id: str = "SITE-01",
        line_id: str = "LINE-01",
        client_id: str = "l3-site-simulator",
        retain_orders: bool = False,
    ) -> None:
        self.site = site
        self.host, self.port = host, port
        self.prefix_template = prefix
        self.prefix = prefix.format(site=site_id, line=line_id).rstrip("/")
        self.client_id = client_id
        self.retain_orders = retain_orders
        self.answered = 0
        self._client: aiomqtt.Client | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._outgoing: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    @property
    def running(self) -> bool:
        return self._client is not None

    def driver_config(self, **overrides: Any) -> dict[str, Any]:
        """The agent's ``[l3]`` section that talks to this responder through the broker."""
        return {
            "type": "mqtt",
            "host": self.host,
            "port": self.port,
            "topic_prefix": self.prefix_template,
            **overrides,
        }

    def offer(self, document: dict[str, Any]) -> None:
        """Publish this order (now, or once connected)."""
        self._outgoing.put_nowait(document)

    async def start(self) -> None:
        client = aiomqtt.Client(
            self.host, self.port, identifier=self.client_id, protocol=aiomqtt.ProtocolVersion.V5
        )
        await client.__aenter__()
        await client.subscribe(f"{self.prefix}/serials/request", qos=1)
        await client.subscribe(f"{self.prefix}/messages/+", qos=1)
        self._client = client
        self._tasks = [
            asyncio.create_task(self._listen(client), name="l3-sim-mqtt-rx"),
            asyncio.create_task(self._publish_orders(client), name="l3-sim-mqtt-orders"),
        ]

    async def stop(self) -> None:
        client, self._client = self._client, None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if client is not None:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)

    async def _publish_orders(self, client: aiomqtt.Client) -> None:
        while True:
            document = await self._outgoing.get()
            topic = f"{self.prefix}/orders/{document.get('id', 'order')}"
            try:
                await client.publish(topic, wire.encode(document), qos=1, retain=self.retain_orders)
            except aiomqtt.MqttError:
                self._outgoing.put_nowait(document)  # sent again after come_back()
                return
            self.site.acknowledge_order(str(document.get("id")))

    async def _listen(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            async for message in client.messages:
                await self._handle(client, message)

    async def _handle(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        props = message.properties
        reply_to = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        if not reply_to:
            log.warning("l3_sim_request_without_response_topic", topic=str(message.topic))
            return
        answer = self._answer(str(message.topic), bytes(message.payload))
        if answer is None:
            return  # served, answer lost
        if self.site.faults.delay_s:
            await asyncio.sleep(self.site.faults.delay_s)
        out = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if correlation is not None:
            out.CorrelationData = correlation
        out.ContentType = wire.CONTENT_TYPE
        await client.publish(reply_to, answer, qos=1, properties=out)
        self.answered += 1

    def _answer(self, topic: str, payload: bytes) -> bytes | None:
        site = self.site
        try:
            document = wire.decode(payload)
            if topic.endswith("/serials/request"):
                if site.take_fault("fail_requests"):
                    return wire.encode({"error": "simulated failure"})
                page = site.serve(wire.parse_serial_request(document))
                if site.take_fault("lose_answers"):
                    return None
                if site.take_fault("garbage_answers"):
                    return b"<html>proxy error</html>"
                return wire.encode(wire.page_document(page))
            if site.take_fault("fail_messages"):
                return wire.encode({"error": "simulated failure"})
            message = wire.parse_message(document)
            fresh = site.receive(message)
            if site.take_fault("lose_message_answers"):
                return None
            answer = {"message_id": message["message_id"], "status": "ok", "duplicate": not fresh}
            return wire.encode(answer)
        except wire.WireError as exc:
            return wire.encode({"error": str(exc)})
