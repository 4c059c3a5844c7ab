"""The PLC verdict link over OPC UA: the agent is an asyncua client writing the PLC's nodes.

Same contract as Modbus (``nodes`` holds the node set). A verdict is one Write of one
``UInt32[2]`` slot node; the stop request writes reason and flag in one Write call, reason first;
the state is one Read call of eight nodes, the reject log one Read of counter and log together.

Link policy, as for Modbus: asyncua's own auto-reconnect is off (it would block requests for
seconds while it retries). A lost link is reported once as DeviceConnectionError; later calls try
to reconnect, no more often than the supervisor's capped, jittered exponential backoff allows
(``edge_agent.supervisor.RetryWindow``), and fail fast with DeviceConnectionError in between.
The runtime treats that as a lost PLC link and stops the line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NoReturn, Self, TypeVar

import structlog
from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState
from asyncua.crypto import uacrypto
from pydantic import ConfigDict, Field

from drivers.config import validated
from drivers.plc import contract
from drivers.plc.opcua import nodes as n
from drivers.plc.opcua.refusals import PlcClient, agent_validator, explain
from drivers.plc.opcua.security import SecuritySettings, configure_client, warn_if_insecure
from edge_agent import tls
from edge_agent.config.models import SecretRef
from edge_agent.contracts import PlcState, Verdict
from edge_agent.errors import (
    ConfigError,
    DeviceConnectionError,
    DeviceTimeout,
    EdgeAgentError,
    ProtocolError,
)
from edge_agent.supervisor import Backoff, RetryWindow

if TYPE_CHECKING:
    from edge_agent.contracts import LineStatus

log = structlog.get_logger("drivers.plc.opcua")
T = TypeVar("T")

# Status codes that say the session/channel/path is gone rather than the request being wrong.
_LINK_CODES = {
    ua.StatusCodes.BadSessionIdInvalid,
    ua.StatusCodes.BadSessionClosed,
    ua.StatusCodes.BadSessionNotActivated,
    ua.StatusCodes.BadSecureChannelIdInvalid,
    ua.StatusCodes.BadSecureChannelClosed,
    ua.StatusCodes.BadConnectionClosed,
    ua.StatusCodes.BadServerNotConnected,
    ua.StatusCodes.BadCommunicationError,
    ua.StatusCodes.BadShutdown,
    ua.StatusCodes.BadServerHalted,
    ua.StatusCodes.BadNotConnected,
}
_AUTH_CODES = {
    ua.StatusCodes.BadUserAccessDenied,
    ua.StatusCodes.BadIdentityTokenRejected,
    ua.StatusCodes.BadIdentityTokenInvalid,
    ua.StatusCodes.BadCertificateUntrusted,
    ua.StatusCodes.BadCertificateInvalid,
    ua.StatusCodes.BadSecurityChecksFailed,
}


class OpcUaPlcConfig(SecuritySettings):
    """``[plc]`` section for ``type = "opcua"``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["opcua"] = Field(description="Driver type: the PLC is an OPC UA server")
    url: str = Field(
        pattern=r"^opc\.tcp://[^/\s]+(/\S*)?$",
        description="Endpoint URL of the PLC, e.g. opc.tcp://192.168.10.20:4840",
    )
    namespace_uri: str = Field(
        n.DEFAULT_NAMESPACE_URI,
        min_length=1,
        description="Namespace URI of the contract nodes; its index is looked up at connect",
    )
    nodes: n.NodeIds = Field(default_factory=n.NodeIds, description="Node ids of the contract")
    timeout_s: float = Field(
        1.0, gt=0.0, le=30.0, description="Per-request answer timeout in seconds; no retries"
    )
    connect_timeout_s: float = Field(
        5.0, gt=0.0, le=120.0, description="Whole connect (channel, session, checks) timeout"
    )
    ring_size: int = Field(
        contract.DEFAULT_RING_SIZE,
        ge=1,
        le=contract.MAX_RING_SIZE,
        description="Verdict ring size N; must equal the PLC's RingSize node",
    )
    reject_log_size: int = Field(
        contract.REJECT_LOG_SIZE,
        ge=1,
        le=contract.MAX_REJECT_LOG_SIZE,
        description="Reject log slots; must equal the length of the PLC's RejectLog array, "
        "checked at connect. Must exceed the rejects confirmed between two polls",
    )
    reconnect_min_s: float = Field(
        0.2,
        gt=0.0,
        le=60.0,
        description="Longest wait after the first failed reconnect (jittered: half to all); "
        "doubles per failure",
    )
    reconnect_max_s: float = Field(
        5.0, gt=0.0, le=300.0, description="Cap of the backoff between reconnect attempts"
    )
    username: str | None = Field(None, min_length=1, description="User name authentication")
    password: SecretRef | None = Field(None, description="Password of 'username', by reference")
    user_certificate: str | None = Field(
        None, description="User certificate (X509 identity token) file; needs user_private_key"
    )
    user_private_key: str | None = Field(None, description="Private key of user_certificate")


class OpcUaPlc:
    """PlcLink over OPC UA. ``async with`` connects and checks the ring size; exit closes."""

    Config: ClassVar[type[OpcUaPlcConfig]] = OpcUaPlcConfig

    def __init__(self, name: str, config: OpcUaPlcConfig | Mapping[str, Any]) -> None:
        self.name = name
        self.config = validated(OpcUaPlcConfig, name, config)
        self._client: Client | None = None
        self._open = False
        self._heartbeat = 0
        cfg = self.config
        self._retry = RetryWindow(Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s))
        self._connect_lock = asyncio.Lock()
        self._ids: dict[str, ua.NodeId] = {}
        self._slots: list[ua.NodeId] = []
        self._closing: set[asyncio.Task[None]] = set()

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        warn_if_insecure(self.config, "plc link", device=self.name, url=self.config.url)
        await self._connect()
        self._open = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._open = False
        await self._close_client()
        if self._closing:  # dead clients still being torn down: no task outlives the link
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def _connect(self) -> None:
        await self._close_client()
        cfg = self.config
        client = PlcClient(cfg.url, timeout=cfg.timeout_s, watchdog_intervall=cfg.timeout_s)
        client.name = client.description = f"edge-agent plc link {self.name}"
        client.session_timeout = 60_000  # ms; most servers cap it, asyncua warns when they do
        try:
            await asyncio.wait_for(self._open_session(client), cfg.connect_timeout_s)
        except BaseException as exc:
            await _quiet_disconnect(client)
            if isinstance(exc, EdgeAgentError | asyncio.CancelledError):
                raise
            if isinstance(exc, Exception):
                refusal = explain(exc, client.step, cfg)
                if refusal is not None:
                    raise DeviceConnectionError(
                        self.name, f"connect to {cfg.url}: {refusal}"
                    ) from exc
                self._raise_mapped(f"connect to {cfg.url}", exc, connecting=True)
            raise
        self._client = client
        self._retry.succeeded()
        log.info("plc_link_up", device=self.name, url=cfg.url, policy=cfg.security_policy)

    async def _open_session(self, client: Client) -> None:
        cfg = self.config
        await configure_client(client, cfg)
        if client.certificate_validator is not None:  # its refusals are the agent's own
            client.certificate_validator = agent_validator(client.certificate_validator)
        if cfg.username is not None:
            client.set_user(cfg.username)
            if cfg.password is not None:
                client.set_password(cfg.password.resolve_for("password"))
        client.user_certificate, client.user_private_key = await self._user_identity()
        await client.connect()
        namespaces = await client.get_namespace_array()
        if cfg.namespace_uri not in namespaces:
            raise ProtocolError(
                self.name,
                f"namespace {cfg.namespace_uri!r} not on the PLC (it has {namespaces}); "
                "set namespace_uri or give node ids with ns=/nsu=",
            )
        self._resolve_nodes(namespaces.index(cfg.namespace_uri), namespaces)
        plc_ring, hb, log_ring = await client.read_values(
            [
                client.get_node(self._ids[field])
                for field in ("ring_size", "agent_heartbeat", "reject_log")
            ]
        )
        if plc_ring != cfg.ring_size:
            raise ProtocolError(
                self.name,
                f"verdict ring size mismatch: PLC RingSize says {plc_ring}, config ring_size is "
                f"{cfg.ring_size}; set them equal or verdicts land in the wrong slots",
            )
        self._check_log_size(log_ring)
        # Start from the PLC's value so the first beat is always a change.
        self._heartbeat = int(hb or 0)

    def _check_log_size(self, log_ring: Any) -> None:
        size = len(log_ring) if isinstance(log_ring, list | tuple) else None
        if size != self.config.reject_log_size:
            node = self.config.nodes.reject_log
            raise ProtocolError(
                self.name,
                f"reject log size mismatch: the PLC's {node} holds {size} values, config "
                f"reject_log_size is {self.config.reject_log_size}; set them equal or rejects "
                "land in the wrong slots",
            )

    async def preflight(self) -> None:
        """The files and password this link reads when it connects, without connecting
        (``contracts.Preflight``); the channel's own certificate, key and trust list are checked
        by the core for every OPC UA security section."""
        if self.config.password is not None:
            self.config.password.resolve_for("password")
        await self._user_identity()

    async def _user_identity(self) -> tuple[Any, Any]:
        """The X509 user identity (certificate, private key), or (None, None)."""
        cfg = self.config
        if cfg.user_certificate is None:
            return None, None
        cert = await _load_file("user_certificate", cfg.user_certificate, "certificate")
        key = None
        if cfg.user_private_key is not None:
            key = await _load_file("user_private_key", cfg.user_private_key, "private key")
        return cert, key

    def _resolve_nodes(self, ns: int, namespaces: Sequence[str]) -> None:
        ids = self.config.nodes
        try:
            self._ids = {
                field: n.node_id(getattr(ids, field), ns, namespaces)
                for field in n.NodeIds.model_fields
                if field != "verdict_slot"
            }
            self._slots = [
                n.node_id(n.slot_node_text(ids.verdict_slot, k), ns, namespaces)
                for k in range(self.config.ring_size)
            ]
        except (ValueError, ua.UaError) as exc:
            raise ProtocolError(self.name, f"bad node id in config: {exc}") from exc

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await _quiet_disconnect(client)

    async def _ensure_link(self) -> Client:
        client = self._client
        if client is not None and client.state is UaClientState.CONNECTED:
            return client
        if not self._open:
            raise DeviceConnectionError(self.name, "not connected (use 'async with')")
        if client is not None:
            # The first call after a drop reports it; the one after that reconnects at once.
            log.warning("plc_link_lost", device=self.name, url=self.config.url)
            await self._close_client()
            raise DeviceConnectionError(self.name, "OPC UA link to the PLC dropped")
        async with self._connect_lock:
            if self._client is None:
                if self._retry.remaining() > 0:
                    raise DeviceConnectionError(self.name, "OPC UA link down; reconnect pending")
                try:
                    await self._connect()
                except DeviceConnectionError:
                    self._retry.failed()
                    raise
        assert self._client is not None
        return self._client

    # --- PlcLink ------------------------------------------------------------------------------

    async def write_verdict(self, trigger: int, verdict: Verdict) -> None:
        try:
            value = n.encode_verdict(trigger, int(verdict))
            slot = n.verdict_slot(trigger, self.config.ring_size)
        except ValueError as exc:
            raise ProtocolError(self.name, f"cannot encode for the PLC: {exc}") from exc
        await self._write(f"write verdict slot {slot}", lambda: [self._slots[slot]], [value])

    async def beat(self) -> None:
        # Advance before writing: after a lost answer the PLC may hold the new value already.
        self._heartbeat = contract.next_heartbeat(self._heartbeat)
        await self._write(
            "write heartbeat",
            lambda: self._nodes("agent_heartbeat"),
            [n.datavalue(self._heartbeat, n.UInt16)],
        )

    async def read_state(self) -> PlcState:
        values = await self._read("read state", lambda: self._nodes(*n.STATE_FIELDS))
        return self._decode("state", lambda: n.decode_state(values))

    async def recent_rejects(self) -> Sequence[int]:
        # Counter and log in one Read: the PLC updates both in one scan, so they agree.
        confirms, ring = await self._read(
            "read reject log", lambda: self._nodes("reject_confirms", "reject_log")
        )
        self._check_log_size(ring)  # a PLC program download may have changed it
        return self._decode("reject log", lambda: n.decode_reject_log(list(ring), int(confirms)))

    async def write_status(self, status: LineStatus) -> None:
        """The agent's line state and counters for the PLC/HMI, in one Write call."""
        await self._write(
            "write status", lambda: self._nodes(*n.STATUS_FIELDS), n.encode_status(status)
        )

    async def request_line_stop(self, reason_code: int) -> None:
        try:
            contract.check_stop_reason(reason_code)
        except ValueError as exc:
            raise ProtocolError(self.name, str(exc)) from exc
        # One Write call, reason first: the server applies the values in order.
        await self._write(
            "write line stop",
            lambda: self._nodes("stop_reason", "line_stop_request"),
            [n.datavalue(reason_code, n.UInt16), n.datavalue(True, n.Boolean)],
        )

    async def clear_line_stop(self) -> None:
        await self._write(
            "clear line stop",
            lambda: self._nodes("line_stop_request", "stop_reason"),
            [n.datavalue(False, n.Boolean), n.datavalue(0, n.UInt16)],
        )

    # --- requests -----------------------------------------------------------------------------

    def _decode(self, what: str, build: Callable[[], T]) -> T:
        try:
            return build()
        except (ValueError, TypeError) as exc:
            raise ProtocolError(self.name, f"PLC {what} malformed: {exc}") from exc

    def _nodes(self, *fields: str) -> list[ua.NodeId]:
        return [self._ids[field] for field in fields]

    async def _read(self, what: str, node_ids: Callable[[], list[ua.NodeId]]) -> list[Any]:
        # Node ids are resolved once the link is up: a reconnect may renumber namespaces.
        async def send(client: Client) -> list[Any]:
            ids = node_ids()
            results = await client.uaclient.read_attributes(ids, ua.AttributeIds.Value)
            values = []
            for node_id, result in zip(ids, results, strict=True):
                if result.StatusCode is not None and not result.StatusCode.is_good():
                    raise ProtocolError(
                        self.name, f"{what}: {node_id.to_string()} is {result.StatusCode.name}"
                    )
                values.append(result.Value.Value if result.Value is not None else None)
            return values

        return await self._request(what, send)

    async def _write(
        self, what: str, node_ids: Callable[[], list[ua.NodeId]], values: list[ua.DataValue]
    ) -> None:
        async def send(client: Client) -> None:
            ids = node_ids()
            results = await client.uaclient.write_attributes(ids, values, ua.AttributeIds.Value)
            for node_id, status in zip(ids, results, strict=True):
                if not status.is_good():
                    raise ProtocolError(
                        self.name, f"{what}: {node_id.to_string()} refused: {status.name}"
                    )

        await self._request(what, send)

    async def _request(self, what: str, send: Callable[[Client], Awaitable[T]]) -> T:
        client = await self._ensure_link()
        try:
            return await send(client)
        except EdgeAgentError:
            raise
        except Exception as exc:
            self._raise_mapped(what, exc)

    def _raise_mapped(self, what: str, exc: Exception, *, connecting: bool = False) -> NoReturn:
        if isinstance(exc, ua.UaStatusCodeError):
            code = exc.code
            if code in _AUTH_CODES:
                raise DeviceConnectionError(
                    self.name, f"{what}: refused by the PLC ({ua.StatusCode(code).name})"
                ) from exc
            if code in _LINK_CODES or connecting:
                self._mark_down()
                raise DeviceConnectionError(
                    self.name, f"{what}: link lost ({ua.StatusCode(code).name})"
                ) from exc
            raise ProtocolError(self.name, f"{what}: {ua.StatusCode(code).name}") from exc
        if isinstance(exc, TimeoutError):
            if connecting:
                raise DeviceConnectionError(self.name, f"{what}: no answer (timeout)") from exc
            raise DeviceTimeout(
                self.name, f"{what}: no answer within {self.config.timeout_s} s"
            ) from exc
        if connecting and isinstance(exc, ua.UaError) and "No matching endpoints" in str(exc):
            cfg = self.config
            raise DeviceConnectionError(
                self.name,
                f"{what}: the PLC offers no endpoint with security_policy "
                f"{cfg.security_policy!r}, security_mode {cfg.security_mode!r}",
            ) from exc
        if isinstance(exc, ConnectionError | OSError | ua.UaError):
            self._mark_down()
            raise DeviceConnectionError(self.name, f"{what}: link lost ({exc!r})") from exc
        raise ProtocolError(self.name, f"{what}: {exc!r}") from exc

    def _mark_down(self) -> None:
        """This error is the report of the drop; the next call reconnects."""
        client, self._client = self._client, None
        if client is not None:
            log.warning("plc_link_lost", device=self.name, url=self.config.url)
            task = asyncio.get_running_loop().create_task(_quiet_disconnect(client))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)


async def _load_file(key: str, path: str, what: str) -> Any:
    """A certificate or private key (PEM or DER) as asyncua loads it; ConfigError naming the file
    and key when it cannot be read or parsed."""
    load = uacrypto.load_certificate if what == "certificate" else uacrypto.load_private_key
    tls.readable(Path(path), key)
    try:
        return await load(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc.strerror})", key=key) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not a {what} (PEM or DER): {exc}", key=key) from None


async def _quiet_disconnect(client: Client) -> None:
    """Close a client whose link may be dead, without asyncua's error logs for the dead parts."""
    logger = logging.getLogger("asyncua.client")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), 2.0)
        client.disconnect_socket()
    finally:
        logger.setLevel(level)
