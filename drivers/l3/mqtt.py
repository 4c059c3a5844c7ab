"""L3 link over MQTT 5 request/response (aiomqtt on paho), on the upstream broker.

Topics, below ``topic_prefix`` (default ``serialization/{site}/{line}/l3``):

- ``orders`` (or ``orders/<anything>``): L3 publishes order documents, QoS 1. The agent's
  session is persistent and it acknowledges (PUBACK) an order only once it has stored it or
  queued its refusal, so the broker redelivers an order the agent did not finish with;
- ``serials/request``: the agent publishes ``{"request_id", "order_id", "gtin", "count"}`` with
  the MQTT 5 properties Response Topic (``responses/<client id>``) and Correlation Data (the
  request id); L3 answers the page on the Response Topic with the same Correlation Data;
- ``messages/<kind>`` (``serial_return``, ``close_report``, ``order_refused``): the agent
  publishes the message envelope the same way (Correlation Data = the message id); L3's answer
  ``{"message_id": ..., "status": "ok"}`` acknowledges it.

An answer ``{"error": "..."}`` (or none within ``request_timeout_s``, or a lost connection) is a
``DeliveryError``: the service retries with the same id. Everything is QoS 1.

The connection is made by the MQTT forwarder's client factory (``drivers/upstream/mqtt.py``):
the same TLS, credentials, persistent session and the broker's Receive Maximum applied.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal, Self

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import Field

from drivers.l3 import wire
from drivers.upstream.mqtt import MqttConfig, MqttForwarder
from edge_agent.config.models import L3Section, SecretRef
from edge_agent.contracts import L3Message, LineContext, SerialPage
from edge_agent.errors import DeliveryError

log = structlog.get_logger("drivers.l3.mqtt")


class MqttL3Config(L3Section):
    """``[l3]`` with ``type = "mqtt"``."""

    type: Literal["mqtt"] = Field(description="L3 link over MQTT 5 request/response")
    host: str = Field(min_length=1, description="Broker host name or IP address")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual with TLS)")
    topic_prefix: str = Field(
        "serialization/{site}/{line}/l3",
        min_length=1,
        description="Topics of the link are below this; {site} and {line} are filled in",
    )
    client_id: str | None = Field(
        None,
        max_length=128,
        description="MQTT client id, stable for the persistent session; must differ from the "
        "forwarder's (default edge-agent-<site>-<line>-l3)",
    )
    session_expiry_s: int = Field(
        7 * 86400,
        ge=0,
        le=4_294_967_295,
        description="How long the broker keeps the session (orders, answers) while offline",
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive")
    max_inflight: int = Field(
        20, ge=1, le=65535, description="QoS 1 publishes in flight (lowered to Receive Maximum)"
    )
    username: str | None = Field(None, max_length=256, description="Broker user name")
    password: SecretRef | None = Field(None, description="Broker password, by reference")
    tls: bool = Field(False, description="Connect with TLS")
    ca_file: Path | None = Field(None, description="CA bundle that signed the broker certificate")
    cert_file: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS")
    key_file: Path | None = Field(None, description="Private key (PEM) of the client certificate")


class MqttL3Link:
    Config = MqttL3Config

    def __init__(
        self,
        config: MqttL3Config,
        *,
        context: LineContext | None = None,
        site: str = "SITE-01",
        line: str = "LINE-01",
    ) -> None:
        if context is not None:  # the core's way (contracts.L3LinkFactory); site/line: older
            site, line = context.site, context.line
        self.config = config
        self.name = config.name
        self.client_id = config.client_id or f"edge-agent-{site}-{line}-l3"
        self.prefix = config.topic_prefix.format(site=site, line=line).rstrip("/")
        self.response_topic = f"{self.prefix}/responses/{self.client_id}"
        self._factory = MqttForwarder(
            self.name, self._connection_config(), context=LineContext(site, line)
        )
        self._client: aiomqtt.Client | None = None
        self._listener: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()
        self._answers: dict[str, asyncio.Future[Any]] = {}
        self._orders: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
        # QoS 1 publishes waiting for their PUBACK, kept within the broker's Receive Maximum
        # (the window the forwarder's client factory reads from the CONNACK)
        self._in_flight = 0
        self.most_in_flight = 0  # the highest it ever was, for tests and diagnostics
        self._window_free = asyncio.Condition()

    def _connection_config(self) -> MqttConfig:
        c = self.config
        return MqttConfig(
            type="mqtt",
            host=c.host,
            port=c.port,
            client_id=self.client_id,
            protocol="5",
            session_expiry_s=c.session_expiry_s,
            keepalive_s=c.keepalive_s,
            timeout_s=c.request_timeout_s,
            max_inflight=c.max_inflight,
            username=c.username,
            password=c.password,
            tls=c.tls,
            ca_file=c.ca_file,
            cert_file=c.cert_file,
            key_file=c.key_file,
        )

    @property
    def connected(self) -> bool:
        return self._client is not None and not self._client._disconnected.done()

    async def __aenter__(self) -> Self:
        return self  # connects on demand: a broker down at start never delays the agent

    async def __aexit__(self, *exc: object) -> None:
        await self._disconnect()

    # --- the contract -------------------------------------------------------------------------

    async def orders(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            client = await self._connected()
            message = await self._next_order(client)
            try:
                document = wire.decode(bytes(message.payload))
            except wire.WireError:
                # Handed on as text: the service refuses it, so L3 learns it was unreadable.
                document = bytes(message.payload).decode("utf-8", "replace")
            yield document
            # The agent asks for the next one only after it handled this one: acknowledge.
            if client is self._client and self.connected and message.qos > 0:
                client._client.ack(message.mid, message.qos)

    async def request_serials(
        self, order_id: str, gtin: str, count: int, request_id: str
    ) -> SerialPage:
        body = wire.serial_request(order_id, gtin, count, request_id)
        answer = await self._ask(f"{self.prefix}/serials/request", body, request_id)
        try:
            return wire.parse_page(answer)
        except wire.WireError as exc:
            raise self._error(f"serial request {request_id}: {exc}") from exc

    async def deliver(self, message: L3Message) -> None:
        body = wire.message_document(message)
        answer = await self._ask(f"{self.prefix}/messages/{message.kind}", body, message.id)
        if not isinstance(answer, dict) or answer.get("status") != "ok":
            raise self._error(f"{message.kind} {message.id}: L3 answered {answer!r}")

    # --- request / response -------------------------------------------------------------------

    async def _ask(self, topic: str, body: dict[str, Any], correlation: str) -> Any:
        client = await self._connected()
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._answers[correlation] = answer
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.response_topic
        props.CorrelationData = correlation.encode()
        props.ContentType = wire.CONTENT_TYPE
        props.PayloadFormatIndicator = 1
        try:
            async with asyncio.timeout(self.config.request_timeout_s):
                await self._publish(client, topic, wire.encode(body), props)
                await asyncio.wait(
                    (answer, client._disconnected), return_when=asyncio.FIRST_COMPLETED
                )
        except TimeoutError as exc:
            raise self._error(
                f"no answer on {self.response_topic} within {self.config.request_timeout_s:g} s"
            ) from exc
        except aiomqtt.MqttError as exc:
            await self._disconnect()
            raise self._error(f"publish to {topic} failed: {exc}") from exc
        finally:
            self._answers.pop(correlation, None)
            if not answer.done():
                answer.cancel()
        if answer.cancelled():
            raise self._error("the connection to the broker was lost")
        result = answer.result()
        if isinstance(result, dict) and "error" in result:
            raise self._error(f"L3 could not answer: {result['error']}")
        return result

    async def _publish(
        self, client: aiomqtt.Client, topic: str, payload: bytes, props: Properties
    ) -> None:
        """One QoS 1 publish, waiting first while the broker's Receive Maximum is used up (an
        MQTT 5 broker may disconnect a client that sends more)."""
        async with self._window_free:
            await self._window_free.wait_for(lambda: self._in_flight < self._factory._window)
            self._in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self._in_flight)
        try:
            await client.publish(topic, payload, qos=1, properties=props)
        finally:
            async with self._window_free:
                self._in_flight -= 1
                self._window_free.notify_all()

    # --- connection ---------------------------------------------------------------------------

    async def _connected(self) -> aiomqtt.Client:
        async with self._connecting:
            if self._client is not None and self.connected:
                return self._client
            await self._disconnect()
            client = self._factory._make_client(aiomqtt.ProtocolVersion.V5)
            client._client.manual_ack_set(True)  # orders are acknowledged once handled
            try:
                await client.__aenter__()
                await client.subscribe(self.response_topic, qos=1)
                await client.subscribe(f"{self.prefix}/orders/#", qos=1)
            except aiomqtt.MqttError as exc:
                with contextlib.suppress(Exception):
                    await client.__aexit__(None, None, None)
                raise self._error(
                    f"cannot connect to {self.config.host}:{self.config.port}: {exc}"
                ) from exc
            self._client = client
            self._listener = asyncio.create_task(self._listen(client), name=f"{self.name}-rx")
            log.info("l3_mqtt_connected", link=self.name, client_id=self.client_id)
            return client

    async def _next_order(self, client: aiomqtt.Client) -> aiomqtt.Message:
        getter = asyncio.ensure_future(self._orders.get())
        try:
            await asyncio.wait((getter, client._disconnected), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter.cancelled():
            raise self._error("the connection to the broker was lost")
        return getter.result()

    async def _listen(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            async for message in client.messages:
                if message.topic.matches(self.response_topic):
                    self._on_answer(message)
                    if message.qos > 0:
                        client._client.ack(message.mid, message.qos)
                else:
                    await self._orders.put(message)

    def _on_answer(self, message: aiomqtt.Message) -> None:
        correlation = getattr(message.properties, "CorrelationData", None)
        key = bytes(correlation).decode("utf-8", "replace") if correlation else None
        waiting = self._answers.get(key) if key is not None else None
        if waiting is None or waiting.done():
            log.debug("l3_mqtt_stale_answer", link=self.name, correlation=key)
            return  # an answer to a request given up on: the retry asks again, same id
        try:
            waiting.set_result(wire.decode(bytes(message.payload)))
        except wire.WireError as exc:
            waiting.set_result({"error": f"unreadable answer ({exc})"})

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
        # Orders received but not handled are not acknowledged: the broker sends them again.
        self._orders = asyncio.Queue()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)

    def _error(self, message: str) -> DeliveryError:
        return DeliveryError(message, upstream=self.name)
