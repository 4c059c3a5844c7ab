"""The PLC verdict link over Modbus TCP (pymodbus 3.16 asyncio client).

The agent is the Modbus client; the PLC is the server. The register map lives in ``registers``.

Link policy: pymodbus would silently reconnect (background task, or inside the next request) and
retry timed-out requests, which hides a lost PLC for seconds. Here retries are 0 and automatic
reconnects are off: a dropped link is reported once as DeviceConnectionError (also to a request
that was in flight when it dropped), and the call after that makes one quick reconnect attempt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, NoReturn, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from drivers.plc.modbus import registers as reg
from edge_agent.contracts import PlcState, Verdict
from edge_agent.errors import (
    ConfigError,
    DeviceConnectionError,
    DeviceError,
    DeviceTimeout,
    ProtocolError,
)

# Modbus exception codes that describe the path to the PLC rather than the request.
_GATEWAY_PATH_UNAVAILABLE = 0x0A
_GATEWAY_TARGET_NO_RESPONSE = 0x0B


class ModbusTcpPlcConfig(BaseModel):
    """``[plc]`` section for ``type = "modbus-tcp"``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["modbus-tcp"] = Field(description="Driver type: the PLC speaks Modbus TCP")
    host: str = Field("127.0.0.1", min_length=1, description="PLC IP address or host name")
    port: int = Field(ge=1, le=65535, description="PLC Modbus TCP port (502 on most PLCs)")
    device_id: int = Field(
        1, ge=0, le=255, description="Modbus unit id the PLC answers to (often ignored on TCP)"
    )
    timeout_s: float = Field(
        1.0,
        gt=0.0,
        le=30.0,
        description="Connect and per-request answer timeout in seconds; no retries follow",
    )
    ring_size: int = Field(
        reg.DEFAULT_RING_SIZE,
        ge=1,
        le=reg.MAX_RING_SIZE,
        description="Verdict ring size N; must equal the PLC's IR 10, checked at connect",
    )


Request = Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]]


class ModbusTcpPlc:
    """PlcLink over Modbus TCP. ``async with`` connects and checks the ring size; exit closes."""

    Config: ClassVar[type[ModbusTcpPlcConfig]] = ModbusTcpPlcConfig

    def __init__(self, name: str, config: ModbusTcpPlcConfig | Mapping[str, Any]) -> None:
        self.name = name
        self.config = _validated(name, config)
        self._client: AsyncModbusTcpClient | None = None
        self._drop_unreported = False
        self._open = False  # inside 'async with'; calls outside it never connect implicitly
        self._heartbeat = 0
        self._connect_lock = asyncio.Lock()
        # One request on the wire at a time: many PLCs (and pymodbus's own server) drop a second
        # request that arrives before the first is answered, which looks like a timeout.
        self._request_lock = asyncio.Lock()

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._connect()
        self._open = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._open = False
        self._close_client()

    async def _connect(self) -> None:
        self._close_client()
        cfg = self.config
        client = AsyncModbusTcpClient(
            cfg.host,
            port=cfg.port,
            name=f"plc:{self.name}",
            timeout=cfg.timeout_s,
            retries=0,
            reconnect_delay=0,  # 0 disables pymodbus's background reconnect task
            trace_connect=self._on_link_change,
        )
        if not await client.connect():
            client.close()
            raise DeviceConnectionError(
                self.name, f"cannot connect to Modbus TCP {cfg.host}:{cfg.port}"
            )
        self._client = client
        self._drop_unreported = False
        try:
            await self._check_ring_size()
            # Start from the PLC's current value so the first beat is always a change.
            self._heartbeat = (await self._read_holding(reg.HR_AGENT_HEARTBEAT, 1))[0]
        except BaseException:
            self._close_client()
            raise

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def _check_ring_size(self) -> None:
        plc_ring = (await self._read_input(reg.IR_RING_SIZE, 1))[0]
        if plc_ring != self.config.ring_size:
            raise ProtocolError(
                self.name,
                f"verdict ring size mismatch: PLC IR {reg.IR_RING_SIZE} says {plc_ring}, "
                f"config ring_size is {self.config.ring_size}; set them equal or verdicts "
                "land in the wrong slots",
            )

    def _on_link_change(self, connected: bool) -> None:
        """pymodbus calls this on connect/disconnect; deliberate closes never reach it."""
        if connected:
            return
        self._drop_unreported = self._open  # while connecting, the failing call reports it
        # pymodbus leaves an in-flight request waiting for the full timeout on a dead socket;
        # fail it now so the caller sees the drop as what it is.
        future = getattr(getattr(self._client, "ctx", None), "response_future", None)
        if isinstance(future, asyncio.Future) and not future.done():
            future.set_exception(ConnectionException("connection lost while waiting for answer"))
            future.exception()  # mark retrieved: if nobody awaits it, asyncio must not log it

    async def _ensure_link(self) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        if not self._open:
            raise DeviceConnectionError(self.name, "not connected (use 'async with')")
        if self._drop_unreported:
            self._drop_unreported = False
            raise DeviceConnectionError(self.name, "Modbus TCP link to the PLC dropped")
        async with self._connect_lock:
            if self._client is None or not self._client.connected:
                await self._connect()
        assert self._client is not None
        return self._client

    # --- PlcLink ------------------------------------------------------------------------------

    async def write_verdict(self, trigger: int, verdict: Verdict) -> None:
        address, values = self._encode(
            lambda: (
                reg.verdict_slot_address(trigger, self.config.ring_size),
                reg.encode_verdict_slot(trigger, int(verdict)),
            )
        )
        await self._write_registers(address, values)

    async def beat(self) -> None:
        # Advance before writing: after a lost answer the PLC may hold the new value already,
        # and writing it again would look like a stalled heartbeat.
        self._heartbeat = reg.next_heartbeat(self._heartbeat)
        await self._write_registers(reg.HR_AGENT_HEARTBEAT, [self._heartbeat])

    async def read_state(self) -> PlcState:
        registers = await self._read_input(0, reg.IR_STATE_COUNT)
        return reg.decode_state(registers)

    async def recent_rejects(self) -> Sequence[int]:
        # The counter and the log cannot be read in one request; re-read the counter so a
        # confirm landing in between cannot make the newest entry pass for the oldest.
        confirms = await self._read_confirms()
        for _ in range(3):
            ring = await self._read_input(
                reg.IR_REJECT_LOG_BASE, reg.REJECT_LOG_SIZE * reg.REJECT_LOG_SLOT_WIDTH
            )
            after = await self._read_confirms()
            if after == confirms:
                break
            confirms = after
        return reg.decode_reject_log(ring, confirms)

    async def request_line_stop(self, reason_code: int) -> None:
        if not 1 <= reason_code <= reg.U16_MAX:
            raise ProtocolError(self.name, f"line-stop reason code {reason_code} not in 1..65535")
        # Reason first, so the PLC never acts on a stop request with a stale reason.
        await self._write_registers(reg.HR_STOP_REASON, [reason_code])
        await self._write_coil(reg.COIL_LINE_STOP, True)

    async def clear_line_stop(self) -> None:
        await self._write_coil(reg.COIL_LINE_STOP, False)
        await self._write_registers(reg.HR_STOP_REASON, [0])

    # --- requests -----------------------------------------------------------------------------

    def _encode(self, build: Callable[[], tuple[int, list[int]]]) -> tuple[int, list[int]]:
        try:
            return build()
        except ValueError as exc:
            raise ProtocolError(self.name, f"cannot encode for the PLC: {exc}") from exc

    async def _read_confirms(self) -> int:
        high, low = await self._read_input(reg.IR_REJECT_CONFIRMS, 2)
        return reg.join_u32(high, low)

    async def _read_input(self, address: int, count: int) -> list[int]:
        dev = self.config.device_id
        what = f"read IR {address}..{address + count - 1}"
        response = await self._request(
            what, lambda c: c.read_input_registers(address, count=count, device_id=dev)
        )
        return self._registers(what, response, count)

    async def _read_holding(self, address: int, count: int) -> list[int]:
        dev = self.config.device_id
        what = f"read HR {address}..{address + count - 1}"
        response = await self._request(
            what, lambda c: c.read_holding_registers(address, count=count, device_id=dev)
        )
        return self._registers(what, response, count)

    async def _write_registers(self, address: int, values: list[int]) -> None:
        dev = self.config.device_id
        # Always FC16, even for one register: a verdict slot must arrive in one request.
        await self._request(
            f"write HR {address}", lambda c: c.write_registers(address, values, device_id=dev)
        )

    async def _write_coil(self, address: int, value: bool) -> None:
        dev = self.config.device_id
        await self._request(
            f"write coil {address}", lambda c: c.write_coil(address, value, device_id=dev)
        )

    def _registers(self, what: str, response: ModbusPDU, count: int) -> list[int]:
        registers = list(response.registers)
        if len(registers) != count:
            raise ProtocolError(self.name, f"{what}: got {len(registers)} registers")
        return registers

    async def _request(self, what: str, send: Request) -> ModbusPDU:
        """Run one request; every pymodbus failure leaves here as an edge_agent error."""
        client = await self._ensure_link()
        try:
            async with self._request_lock:
                response = await send(client)
        except (TimeoutError, ModbusException, OSError) as exc:
            self._raise_mapped(what, exc)
        if response is None:
            raise ProtocolError(self.name, f"{what}: no response PDU")
        if response.isError():
            raise self._error_response(what, response)
        return response

    def _raise_mapped(self, what: str, exc: Exception) -> NoReturn:
        client = self._client
        link_down = client is None or not client.connected
        # TimeoutError is an OSError since 3.10, so it must be told apart first.
        if not link_down and (
            isinstance(exc, TimeoutError)
            or (isinstance(exc, ModbusIOException) and "No response" in str(exc))
        ):
            raise DeviceTimeout(
                self.name, f"{what}: no answer within {self.config.timeout_s} s"
            ) from exc
        if link_down or isinstance(exc, ConnectionException | OSError):
            self._drop_unreported = False  # this error is the report
            raise DeviceConnectionError(self.name, f"{what}: link lost ({exc})") from exc
        raise ProtocolError(self.name, f"{what}: {exc}") from exc

    def _error_response(self, what: str, response: ModbusPDU) -> DeviceError:
        code = response.exception_code
        text = f"{what}: PLC answered Modbus exception {code}"
        if code == _GATEWAY_PATH_UNAVAILABLE:
            return DeviceConnectionError(self.name, text + " (gateway path unavailable)")
        if code == _GATEWAY_TARGET_NO_RESPONSE:
            return DeviceTimeout(self.name, text + " (gateway target did not respond)")
        return ProtocolError(self.name, text)


def _validated(name: str, config: ModbusTcpPlcConfig | Mapping[str, Any]) -> ModbusTcpPlcConfig:
    if isinstance(config, ModbusTcpPlcConfig):
        return config
    try:
        return ModbusTcpPlcConfig.model_validate(dict(config))
    except ValidationError as exc:
        raise ConfigError(str(exc), key=name) from exc
