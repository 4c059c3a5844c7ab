"""MQTT forwarder (aiomqtt 2.x on paho-mqtt 2.x): one EPCIS event per QoS 1 message.

Why it reaches below aiomqtt: ``aiomqtt.Client.publish`` waits for each PUBACK in turn and
ignores its reason code, so a publish the broker refused (MQTT 5 reason code >= 0x80, e.g. 0x87
"not authorized") would look delivered. This driver publishes through the underlying paho client
(``client._client.publish``) and chains its own ``on_publish`` callback in front of aiomqtt's to
read every PUBACK's reason code. aiomqtt still owns the socket and the connection.

In-flight window: QoS 1 publishes awaiting their PUBACK are bounded here, by the smaller of
``max_inflight`` and the Receive Maximum the broker announced in its CONNACK (MQTT 5; mosquitto's
default is 20, absent means 65,535). The window is only known after the CONNACK, and paho cannot
change its own limit on an open connection (it raises), so paho runs unlimited
(``max_inflight_messages=0``) and the driver publishes the next event as each PUBACK frees a slot,
in outbox order.

Client logs: paho reports connection trouble through the client's logger, and a fault repeats
the same line at every attempt. Each distinct warning or error is logged once per episode (until
a delivery succeeds again); the forwarder loop logs the outage itself (``upstream_unavailable``).

Delivery levels (``delivery``):

- ``broker``: an event is done at a positive PUBACK. Fast, but a broker can still lose it
  (a queue dropped when full, in-memory state lost on a crash between autosaves).
- ``end-to-end``: an event is done only when the receiver confirms its eventID on the ack topic
  (see ``simulators/upstream/mqtt_consumer.py``). Until then it stays pending and is re-sent
  after ``ack_timeout_s``. The receiver may also reject an event as invalid (dead letter).
  When a whole batch goes unconfirmed, ``deliver`` raises ``DeliveryError`` (the loop backs off
  and logs that upstream is away) and sends one event at a time until a confirmation arrives.
  Where confirmations go: ``ack_topic``. On MQTT 5 every event message names it in its Response
  Topic property, so a receiver answers where the message says; on 3.1.1 the receiver is
  configured with the same topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import aiomqtt
import structlog
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt import client as mqtt_client
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field

from edge_agent import tls
from edge_agent.config.loader import validate_table
from edge_agent.config.models import SecretRef
from edge_agent.contracts import Delivery, LineContext, OutboxEvent
from edge_agent.crashpoints import crash_point
from edge_agent.errors import ConfigError, DeliveryError

log = structlog.get_logger("drivers.upstream.mqtt")

_MAX_REMEMBERED = 200_000  # end-to-end confirmations kept for events not (yet) asked about
# MQTT 5 PUBACK reason codes that say "this message is wrong", not "try later": dead letter.
_INVALID_PAYLOAD = {0x99: "payload format invalid"}
# unsupported protocol version: 0x84 from an MQTT 5 broker, 1 from a 3.1.1-only broker
_CONNACK_BAD_PROTOCOL = {0x84, 0x01}
_RECEIVE_MAXIMUM_ABSENT = 65_535  # MQTT 5 §3.2.2.3.3: no Receive Maximum in the CONNACK


class _PackedOnce(Properties):
    """Publish properties shared by every message, packed once: paho packs a Properties object
    on every publish, which costs more than the publish itself at thousands per second."""

    _packed: bytes | None = None

    def pack(self) -> bytes:
        if self._packed is None:
            object.__setattr__(self, "_packed", super().pack())  # type: ignore[no-untyped-call]
        assert self._packed is not None
        return self._packed


def _publish_properties(response_topic: str) -> Properties:
    props = _PackedOnce(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.PayloadFormatIndicator = 1  # UTF-8 text
    props.ContentType = "application/ld+json"  # one EPCIS 2.0 event, eventID inside
    props.ResponseTopic = response_topic  # where the receiver confirms it (end-to-end)
    props.pack()
    return props


class _OncePerEpisode(logging.Filter):
    """Lets each distinct client warning or error through once until :meth:`reset` (a delivery
    succeeded): a broker or network fault repeats the same line at every attempt."""

    _MAX_DISTINCT = 100

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        text = f"{record.levelno}:{record.getMessage()}"
        if text in self.seen or len(self.seen) >= self._MAX_DISTINCT:
            self.suppressed += 1
            return False
        self.seen.add(text)
        return True

    def reset(self) -> int:
        """End the episode; returns how many repeats were held back in it."""
        suppressed, self.suppressed = self.suppressed, 0
        self.seen.clear()
        return suppressed


class MqttConfig(BaseModel):
    """``[[upstream.forwarders]]`` table for ``type = "mqtt"``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["mqtt"] = Field(description="Forwarder type: publish events to an MQTT broker")
    host: str = Field(min_length=1, description="Broker host name or IP address")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual with TLS)")
    topic: str = Field(
        "serialization/{site}/{line}/events",
        min_length=1,
        description="Topic template; {site}, {line} and {batch} are filled in",
    )
    delivery: Literal["broker", "end-to-end"] = Field(
        "broker",
        description="broker = done at a positive PUBACK; end-to-end = done when the receiver "
        "confirms the eventID on ack_topic",
    )
    ack_topic: str = Field(
        "serialization/{site}/{line}/acks",
        min_length=1,
        description="end-to-end: topic the receiver publishes its confirmations on ({site}, "
        "{line} filled in); sent as the Response Topic of every event message (MQTT 5)",
    )
    ack_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="end-to-end: re-send an event not confirmed this long"
    )
    client_id: str | None = Field(
        None,
        max_length=128,
        description="MQTT client id; must be stable for the persistent session "
        "(default edge-agent-<site>-<line>)",
    )
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        "auto", description="MQTT version; auto = 5, falling back to 3.1.1 if the broker refuses"
    )
    session_expiry_s: int = Field(
        7 * 86400,
        ge=0,
        le=4_294_967_295,
        description="How long the broker keeps the session (subscriptions, queued acks) offline",
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive")
    timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Connect timeout, and longest wait for the next PUBACK while publishes are "
        "in flight",
    )
    max_inflight: int = Field(
        100,
        ge=1,
        le=65535,
        description="QoS 1 publishes awaiting PUBACK at once, lowered to the Receive Maximum "
        "the broker announces on connect; a larger window helps on high-latency links",
    )
    username: str | None = Field(None, max_length=256, description="Broker user name")
    password: SecretRef | None = Field(None, description="Broker password, by reference")
    tls: bool = Field(False, description="Connect with TLS")
    ca_file: Path | None = Field(None, description="CA bundle that signed the broker certificate")
    cert_file: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS")
    key_file: Path | None = Field(None, description="Private key (PEM) of the client certificate")


class MqttForwarder:
    """Forwarder over MQTT. ``async with`` does not connect: ``deliver`` connects on demand,
    so a broker that is down at start never delays the line; the forwarder loop backs off."""

    Config: ClassVar[type[MqttConfig]] = MqttConfig

    def __init__(
        self,
        name: str,
        config: MqttConfig | Mapping[str, Any],
        *,
        context: LineContext | None = None,
        site: str = "SITE",
        line: str = "LINE",
    ) -> None:
        if context is not None:  # the core's way (contracts.ForwarderFactory); site/line: older
            site, line = context.site, context.line
        self.name = name
        self.config = _validated(name, config)
        self.site, self.line = site, line
        self.client_id = self.config.client_id or f"edge-agent-{site}-{line}"
        self._client: aiomqtt.Client | None = None
        self._listener: asyncio.Task[None] | None = None
        self._pubacks: dict[int, asyncio.Future[int]] = {}  # mid -> its PUBACK reason code
        self._window = self.config.max_inflight  # set from the broker's CONNACK on connect
        self._puback_seen: asyncio.Future[None] | None = None  # woken by the next PUBACK
        self._broker_refused = False  # a PUBACK >= 0x80 came: stop publishing this batch
        self._ack_topic = self._topic(self.config.ack_topic, None)
        self._properties = _publish_properties(self._ack_topic)
        self._log_filter = _OncePerEpisode()
        # a logger of this forwarder's own (outside the logging registry, so a forwarder made
        # again under the same name starts a fresh episode), under drivers.upstream.mqtt.client
        self._client_log = logging.Logger(f"{__name__}.client.{name}")
        self._client_log.parent = logging.getLogger(f"{__name__}.client")
        self._client_log.addFilter(self._log_filter)
        # end-to-end bookkeeping: confirmations may arrive before, during or after a deliver
        self._confirmed: dict[str, None] = {}  # insertion-ordered, so the oldest can go
        self._refused: dict[str, str] = {}
        self._sent_at: dict[str, float] = {}
        self._ack_arrived = asyncio.Event()
        # end-to-end: one event at a time while the receiver is silent or not yet heard on a connection
        self._probing = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._disconnect()

    # --- delivery -----------------------------------------------------------------------------

    async def deliver(self, events: Sequence[OutboxEvent]) -> Delivery:
        client = await self._connected()
        e2e = self.config.delivery == "end-to-end"
        result = Delivery()
        now = time.monotonic()
        to_send = []
        for event in events:
            if e2e and self._settled(event.event_id, result):
                continue
            sent = self._sent_at.get(event.event_id)
            if sent is None or now - sent >= self.config.ack_timeout_s:
                to_send.append(event)
        if e2e and self._probing:
            # The receiver confirmed nothing last time: send one event, not the whole batch
            # again, so an outage of the receiver does not fill the broker with duplicates.
            to_send = to_send[:1]
        codes = await self._exchange(client, to_send)
        failure = None
        for event, code in zip(to_send, codes, strict=True):
            if code is None:
                failure = failure or "no PUBACK (connection lost or timed out)"
            elif code in _INVALID_PAYLOAD:
                result.rejected[event.event_id] = f"broker: {_INVALID_PAYLOAD[code]}"
            elif code >= 0x80:
                failure = failure or f"broker refused {event.event_id} (reason code 0x{code:02X})"
            elif not e2e:
                result.delivered.append(event.event_id)
            else:
                self._sent_at[event.event_id] = time.monotonic()
        if e2e and failure is None:
            await self._await_confirmations(events, result)
            if to_send and not (result.delivered or result.rejected):
                self._probing = True
                failure = f"the receiver confirmed nothing within {self.config.ack_timeout_s}s"
        if failure is not None and not (result.delivered or result.rejected):
            raise DeliveryError(failure, upstream=self.name)
        self._episode_over()
        # Partial success is reported (and recorded); the rest stays pending and is retried.
        return result

    async def _exchange(
        self, client: aiomqtt.Client, events: Sequence[OutboxEvent]
    ) -> list[int | None]:
        """Publish ``events`` in order, never more than the window awaiting PUBACK, and return
        each one's PUBACK reason code, or None where none came: the link dropped, no PUBACK for
        ``timeout_s``, or the broker refused an earlier one (it may close the link right after,
        so the rest of the batch is not published)."""
        paho = client._client
        props = self._properties if paho.protocol == aiomqtt.ProtocolVersion.V5.value else None
        dropped = client._disconnected
        self._broker_refused = False
        acks: list[asyncio.Future[int]] = []
        alive = not dropped.done()
        for event in events:
            while alive and len(self._pubacks) >= self._window:
                alive = await self._next_puback(dropped)
            if not alive or self._broker_refused:
                break
            topic = self._topic(self.config.topic, event.batch_id)
            info = paho.publish(topic, event.payload.encode(), qos=1, properties=props)
            if info.rc != 0:
                await self._disconnect()
                raise DeliveryError(f"publish failed (paho rc {info.rc})", upstream=self.name)
            acks.append(
                self._pubacks.setdefault(info.mid, asyncio.get_running_loop().create_future())
            )
        crash_point("forward_published")
        while alive and self._pubacks and not self._broker_refused:
            alive = await self._next_puback(dropped)
        codes: list[int | None] = [
            f.result() if f.done() and not f.cancelled() else None for f in acks
        ]
        codes += [None] * (len(events) - len(acks))
        if None in codes:
            await self._disconnect()  # the link is unusable: the next deliver reconnects
        return codes

    async def _next_puback(self, dropped: asyncio.Future[None]) -> bool:
        """Wait for the next PUBACK; False when the link dropped or none came in ``timeout_s``."""
        seen = self._puback_seen = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait(
                (seen, dropped), timeout=self.config.timeout_s, return_when="FIRST_COMPLETED"
            )
        finally:
            self._puback_seen = None
        return seen.done() and not dropped.done()

    def _episode_over(self) -> None:
        """A delivery succeeded: repeated client log lines may be logged again."""
        suppressed = self._log_filter.reset()
        if suppressed:
            log.info("mqtt_client_log_repeats_suppressed", forwarder=self.name, count=suppressed)

    def _settled(self, event_id: str, result: Delivery) -> bool:
        if event_id in self._confirmed:
            del self._confirmed[event_id]
            self._sent_at.pop(event_id, None)
            result.delivered.append(event_id)
            return True
        if event_id in self._refused:
            self._sent_at.pop(event_id, None)
            result.rejected[event_id] = self._refused.pop(event_id)
            return True
        return False

    async def _await_confirmations(self, events: Sequence[OutboxEvent], result: Delivery) -> None:
        waiting = [e.event_id for e in events if e.event_id in self._sent_at]
        deadline = time.monotonic() + self.config.ack_timeout_s
        while waiting:
            waiting = [i for i in waiting if not self._settled(i, result)]
            left = deadline - time.monotonic()
            if not waiting or left <= 0:
                return
            self._ack_arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ack_arrived.wait(), min(left, 0.5))
            if self._client is None or self._client._disconnected.done():
                return  # the connection dropped: the next deliver reconnects

    # --- connection ---------------------------------------------------------------------------

    async def _connected(self) -> aiomqtt.Client:
        client = self._client
        if client is not None and not client._disconnected.done():
            return client
        await self._disconnect()
        versions = {
            "5": [aiomqtt.ProtocolVersion.V5],
            "3.1.1": [aiomqtt.ProtocolVersion.V311],
            "auto": [aiomqtt.ProtocolVersion.V5, aiomqtt.ProtocolVersion.V311],
        }[self.config.protocol]
        for version in versions:
            client = self._make_client(version)
            try:
                await self._open(client)
            except MqttConnectError as exc:
                rc: Any = exc.rc
                code = int(getattr(rc, "value", rc) or 0)
                if code in _CONNACK_BAD_PROTOCOL and version != versions[-1]:
                    continue
                raise DeliveryError(
                    f"broker refused the connection: {exc}", upstream=self.name
                ) from exc
            except aiomqtt.MqttError as exc:
                raise DeliveryError(
                    f"cannot connect to {self.config.host}:{self.config.port}: {exc}",
                    upstream=self.name,
                ) from exc
            break
        assert client is not None
        self._hook_pubacks(client)
        self._client = client
        if self.config.delivery == "end-to-end":
            await self._subscribe_acks(client)
            # A broker that restarted may have lost the receiver's session: until the
            # receiver is back on its subscription, what is published is dropped and only
            # comes again after its confirmation timeout, behind later events of its batch.
            # So one event goes first, alone, and the window opens when it is confirmed.
            self._probing = True
        log.debug("mqtt_connected", forwarder=self.name, client_id=self.client_id)
        return client

    def _make_client(self, version: aiomqtt.ProtocolVersion) -> aiomqtt.Client:
        cfg = self.config
        v5 = version == aiomqtt.ProtocolVersion.V5
        props = None
        if v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = cfg.session_expiry_s
        password, tls_context = self._credentials()
        client = aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=self.client_id,
            protocol=version,
            clean_session=None if v5 else False,
            # paho refuses clean_start on 3.1.1: there clean_session=False is the same promise
            clean_start=False if v5 else mqtt_client.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
            keepalive=cfg.keepalive_s,
            timeout=cfg.timeout_s,
            username=cfg.username,
            password=password,
            tls_context=tls_context,
            # unlimited in paho: the window is applied in _exchange, once the CONNACK is known
            max_inflight_messages=0,
            logger=self._client_log,
        )
        self._hook_connack(client)
        return client

    async def preflight(self) -> None:
        """The password and TLS files, read as a connect reads them (``contracts.Preflight``)."""
        self._password()
        if self.config.tls:
            self._tls_context()

    def _credentials(self) -> tuple[str | None, ssl.SSLContext | None]:
        """Read at every connect, so a rotated secret is picked up. A missing file or variable
        is a DeliveryError naming it and its key: the loop backs off and logs it once."""
        try:
            return self._password(), self._tls_context() if self.config.tls else None
        except ConfigError as exc:
            raise DeliveryError(f"{exc.key}: {exc.detail}", upstream=self.name) from exc

    def _password(self) -> str | None:
        ref = self.config.password
        return None if ref is None else ref.resolve_for("password")

    def _tls_context(self) -> ssl.SSLContext:
        cfg = self.config
        return tls.client_context(
            ca_file=cfg.ca_file, cert_file=cfg.cert_file, key_file=cfg.key_file
        )

    @staticmethod
    async def _open(client: aiomqtt.Client) -> None:
        """Connect; a failed attempt is released, or its socket stays open and polled: every
        retry would leak three descriptors, and a half-handled packet makes paho's reader spin."""
        try:
            await client.__aenter__()
        except BaseException:
            _release(client)
            raise

    def _hook_connack(self, client: aiomqtt.Client) -> None:
        """Size the in-flight window from the CONNACK: ``max_inflight``, lowered to the broker's
        Receive Maximum (MQTT 5). A broker may disconnect a client that exceeds it. Nothing
        here may raise: an exception inside a paho callback leaves the packet unhandled."""
        paho = client._client
        inner: Any = paho.on_connect

        def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
            receive_max = getattr(props, "ReceiveMaximum", None)
            if not isinstance(receive_max, int) or receive_max <= 0:
                receive_max = _RECEIVE_MAXIMUM_ABSENT
            self._window = min(self.config.max_inflight, receive_max)
            inner(c, userdata, flags, reason, props)

        paho.on_connect = on_connect

    def _hook_pubacks(self, client: aiomqtt.Client) -> None:
        paho = client._client
        inner: Any = paho.on_publish

        def on_publish(c: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
            future = self._pubacks.pop(mid, None)
            if future is not None and not future.done():
                code = int(getattr(reason, "value", reason))
                future.set_result(code)
                if code >= 0x80:
                    self._broker_refused = True
                seen = self._puback_seen
                if seen is not None and not seen.done():
                    seen.set_result(None)
            if inner is not None:
                inner(c, userdata, mid, reason, props)

        paho.on_publish = on_publish

    async def _subscribe_acks(self, client: aiomqtt.Client) -> None:
        try:
            await client.subscribe(self._ack_topic, qos=1)
        except aiomqtt.MqttError as exc:
            await self._disconnect()
            raise DeliveryError(
                f"cannot subscribe to the ack topic: {exc}", upstream=self.name
            ) from exc
        self._listener = asyncio.create_task(self._listen(client), name=f"{self.name}-acks")

    async def _listen(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            async for message in client.messages:
                self._on_ack(message.payload)

    def _on_ack(self, payload: Any) -> None:
        """``{"acked": [eventID, ...], "rejected": {eventID: reason}}`` from the receiver."""
        try:
            body = json.loads(bytes(payload))
            acked = [str(i) for i in body.get("acked", [])]
            refused = {str(k): str(v) for k, v in dict(body.get("rejected", {})).items()}
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("mqtt_bad_ack", forwarder=self.name, error=repr(exc))
            return
        self._probing = False
        self._confirmed.update(dict.fromkeys(acked))
        if len(self._confirmed) > _MAX_REMEMBERED:
            # confirmations of re-sent duplicates are never asked about again: forget the oldest
            for event_id in list(self._confirmed)[: _MAX_REMEMBERED // 2]:
                del self._confirmed[event_id]
        for event_id, why in refused.items():
            self._refused[event_id] = f"receiver: {why}"
        self._ack_arrived.set()

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        for future in self._pubacks.values():
            future.cancel()
        self._pubacks.clear()
        self._sent_at.clear()  # not confirmed on this connection: send again on the next
        if client is None:
            return
        with contextlib.suppress(aiomqtt.MqttError, OSError, asyncio.TimeoutError):
            await client.__aexit__(None, None, None)
        _release(client)

    def _topic(self, template: str, batch: str | None) -> str:
        return template.format(site=self.site, line=self.line, batch=batch or "none")


def _release(client: aiomqtt.Client) -> None:
    """Close what paho holds open for a connection that is over (its socket, which aiomqtt polls,
    and its wake-up socket pair), and retrieve the dropped-link error: a lost link is expected."""
    with contextlib.suppress(Exception):
        client._client._reset_sockets()
    dropped = client._disconnected
    if dropped.done() and not dropped.cancelled():
        dropped.exception()


def _validated(name: str, config: MqttConfig | Mapping[str, Any]) -> MqttConfig:
    if isinstance(config, MqttConfig):
        return config
    # As the config loader validates: strict, and errors that never show a secret's value.
    return validate_table(MqttConfig, config, key=name)
