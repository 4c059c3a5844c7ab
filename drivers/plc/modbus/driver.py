"""The PLC verdict link over Modbus (pymodbus 3.16 asyncio clients): TCP here, RTU in ``rtu``.

The agent is the Modbus client; the PLC is the server. The register map lives in ``registers``
and is the same for every transport; ``ModbusPlcBase`` holds everything but the client itself.

Link policy: pymodbus would silently reconnect (background task, or inside the next request) and
retry timed-out requests, which hides a lost PLC for seconds. Here retries are 0 and automatic
reconnects are off: a dropped link is reported once as DeviceConnectionError (also to a request
that was in flight when it dropped), and the call after that makes one reconnect attempt. Failed
attempts back off (``edge_agent.supervisor.RetryWindow``: ``reconnect_backoff_s`` doubling up to
``reconnect_backoff_max_s``, equal jitter); calls inside the back-off window fail at once without
touching the wire, so a caller polling a dead PLC neither blocks nor hammers it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, NoReturn, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.client.base import ModbusBaseClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from drivers.config import validated
from drivers.plc import contract
from drivers.plc.modbus import registers as reg
from edge_agent.contracts import LineStatus, PlcState, Verdict
from edge_agent.errors import (
    DeviceConnectionError,
    DeviceError,
    DeviceTimeout,
    ProtocolError,
)
from edge_agent.supervisor import Backoff, RetryWindow

# Modbus exception codes that describe the path to the PLC rather than the request.
_GATEWAY_PATH_UNAVAILABLE = 0x0A
_GATEWAY_TARGET_NO_RESPONSE = 0x0B
_RESYNC_QUIET_S = 0.2
_MAX_READ = 124  # registers per FC4 read (the protocol allows 125); even, so u32s stay whole
_MAX_WRITE = 123  # registers per FC16 write (the protocol's limit): 41 whole verdict slots


class ModbusCommonConfig(BaseModel):
    """Settings every Modbus transport shares."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float = Field(
        1.0,
        gt=0.0,
        le=30.0,
        description="Connect and per-request answer timeout in seconds; no retries follow",
    )
    ring_size: int = Field(
        contract.DEFAULT_RING_SIZE,
        ge=1,
        le=contract.MAX_RING_SIZE,
        description="Verdict ring size N; must equal the PLC's IR 10, checked at connect",
    )
    reject_log_size: int = Field(
        contract.REJECT_LOG_SIZE,
        ge=1,
        le=contract.MAX_REJECT_LOG_SIZE,
        description="Reject log slots; must equal the PLC's IR 12, checked at connect. Must "
        "exceed the rejects confirmed between two polls (10 per second)",
    )
    reconnect_backoff_s: float = Field(
        0.2,
        gt=0.0,
        le=60.0,
        description="Longest first wait after a failed reconnect attempt (jittered: half to all)",
    )
    reconnect_backoff_max_s: float = Field(
        5.0, gt=0.0, le=600.0, description="The wait doubles per failed attempt up to this"
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> Self:
        if self.reconnect_backoff_max_s < self.reconnect_backoff_s:
            raise ValueError("reconnect_backoff_max_s must be >= reconnect_backoff_s")
        return self


class ModbusTcpPlcConfig(ModbusCommonConfig):
    """``[plc]`` section for ``type = "modbus-tcp"``."""

    type: Literal["modbus-tcp"] = Field(description="Driver type: the PLC speaks Modbus TCP")
    host: str = Field("127.0.0.1", min_length=1, description="PLC IP address or host name")
    port: int = Field(ge=1, le=65535, description="PLC Modbus TCP port (502 on most PLCs)")
    device_id: int = Field(
        1, ge=0, le=255, description="Modbus unit id the PLC answers to (often ignored on TCP)"
    )


Request = Callable[[ModbusBaseClient], Awaitable[ModbusPDU]]


class ModbusPlcBase:
    """PlcLink over Modbus, whatever the transport. ``async with`` connects and checks the ring
    and reject log sizes; exit closes. Subclasses make the client."""

    transport: ClassVar[str] = "Modbus"
    config: Any  # a ModbusCommonConfig subclass with device_id

    def __init__(self, name: str) -> None:
        self.name = name
        self._client: ModbusBaseClient | None = None
        self._drop_unreported = False
        self._open = False  # inside 'async with'; calls outside it never connect implicitly
        self._heartbeat = 0
        self._connect_lock = asyncio.Lock()
        self._retry: RetryWindow | None = None  # made with the config, in the first reconnect
        # One request on the wire at a time: many PLCs (and pymodbus's own server) drop a second
        # request that arrives before the first is answered, which looks like a timeout. On a
        # serial bus it is the protocol itself: one master, one outstanding request.
        self._request_lock = asyncio.Lock()
        # After an abandoned request (timeout, cancellation) the next one waits a moment: the
        # PLC may still be answering it, and would drop a request arriving meanwhile (seen with
        # pymodbus's server: a line-stop request sent right after a cancelled read went
        # unanswered); over RTU, whose answers carry no transaction id, the late answer would
        # even be taken for the next request's.
        self._out_of_step = False

    def _new_client(self) -> ModbusBaseClient:
        raise NotImplementedError

    def _address(self) -> str:
        raise NotImplementedError

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
        client = self._new_client()
        if not await client.connect():
            client.close()
            raise DeviceConnectionError(
                self.name, f"cannot connect to {self.transport} {self._address()}"
            )
        self._client = client
        self._drop_unreported = False
        self._out_of_step = False
        try:
            await self._check_sizes()
            # Start from the PLC's current value so the first beat is always a change.
            self._heartbeat = (await self._read_holding(reg.HR_AGENT_HEARTBEAT, 1))[0]
        except BaseException:
            self._close_client()
            raise

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def _check_sizes(self) -> None:
        state = await self.read_state()
        cfg = self.config
        for what, key, ours, ir in (
            ("verdict ring size", "ring_size", cfg.ring_size, reg.IR_RING_SIZE),
            ("reject log size", "reject_log_size", cfg.reject_log_size, reg.IR_REJECT_LOG_SIZE),
        ):
            if state.extra[key] != ours:
                raise ProtocolError(
                    self.name,
                    f"{what} mismatch: PLC IR {ir} says {state.extra[key]}, config {key} is "
                    f"{ours}; set them equal or verdicts and rejects land in the wrong slots",
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

    async def _ensure_link(self) -> ModbusBaseClient:
        if self._client is not None and self._client.connected:
            return self._client
        if not self._open:
            raise DeviceConnectionError(self.name, "not connected (use 'async with')")
        if self._drop_unreported:
            self._drop_unreported = False
            raise DeviceConnectionError(self.name, f"{self.transport} link to the PLC dropped")
        async with self._connect_lock:
            if self._client is None or not self._client.connected:
                await self._reconnect()
        assert self._client is not None
        return self._client

    @property
    def _backoff(self) -> float:
        """The ceiling of the back-off window opened by the last failed reconnect; 0 = none."""
        return self._retry.backoff.ceiling if self._retry is not None else 0.0

    async def _reconnect(self) -> None:
        if self._retry is None:
            cfg = self.config
            backoff = Backoff(cfg.reconnect_backoff_s, cfg.reconnect_backoff_max_s)
            self._retry = RetryWindow(backoff)
        wait = self._retry.remaining()
        if wait > 0:
            raise DeviceConnectionError(
                self.name, f"{self.transport} link down; next reconnect attempt in {wait:.1f} s"
            )
        try:
            await self._connect()
        except DeviceError:
            self._retry.failed()
            raise
        self._retry.succeeded()

    # --- PlcLink ------------------------------------------------------------------------------

    async def write_verdict(self, trigger: int, verdict: Verdict) -> None:
        address, values = self._encode(
            lambda: (
                reg.verdict_slot_address(trigger, self.config.ring_size),
                reg.encode_verdict_slot(trigger, int(verdict)),
            )
        )
        await self._write_registers(address, values)

    async def write_verdicts(self, verdicts: Sequence[tuple[int, Verdict]]) -> None:
        """Verdicts of consecutive ring slots in one FC16 each (at most _MAX_WRITE registers):
        every slot still arrives whole in one request, and one round trip serves a commit
        group instead of one per unit."""
        try:
            runs = _verdict_runs(verdicts, self.config.ring_size)
        except ValueError as exc:
            raise ProtocolError(self.name, f"cannot encode for the PLC: {exc}") from exc
        for address, values in runs:
            await self._write_registers(address, values)

    async def beat(self) -> None:
        # Advance before writing: after a lost answer the PLC may hold the new value already,
        # and writing it again would look like a stalled heartbeat.
        self._heartbeat = contract.next_heartbeat(self._heartbeat)
        await self._write_registers(reg.HR_AGENT_HEARTBEAT, [self._heartbeat])

    async def read_state(self) -> PlcState:
        registers = await self._read_input(0, reg.IR_STATE_COUNT)
        return reg.decode_state(registers)

    async def recent_rejects(self) -> Sequence[int]:
        # The counter and the log cannot be read in one request; re-read the counter so a
        # confirm landing in between cannot make the newest entry pass for the oldest.
        confirms = await self._read_confirms()
        for _ in range(3):
            ring = await self._read_log()
            after = await self._read_confirms()
            if after == confirms:
                break
            confirms = after
        return reg.decode_reject_log(ring, confirms)

    async def request_line_stop(self, reason_code: int) -> None:
        try:
            contract.check_stop_reason(reason_code)
        except ValueError as exc:
            raise ProtocolError(self.name, str(exc)) from exc
        # Reason first, so the PLC never acts on a stop request with a stale reason.
        await self._write_registers(reg.HR_STOP_REASON, [reason_code])
        await self._write_coil(reg.COIL_LINE_STOP, True)

    async def clear_line_stop(self) -> None:
        await self._write_coil(reg.COIL_LINE_STOP, False)
        await self._write_registers(reg.HR_STOP_REASON, [0])

    async def write_status(self, status: LineStatus) -> None:
        """HR 10..19 in one FC16, so the PLC never sees counters from two different moments."""
        words = reg.encode_status(
            int(status.state),
            status.missing_confirms,
            status.units,
            status.passed,
            status.rejected,
            status.last_trigger,
        )
        await self._write_registers(reg.HR_STATUS_BASE, words)

    # --- requests -----------------------------------------------------------------------------

    def _encode(self, build: Callable[[], tuple[int, list[int]]]) -> tuple[int, list[int]]:
        try:
            return build()
        except ValueError as exc:
            raise ProtocolError(self.name, f"cannot encode for the PLC: {exc}") from exc

    async def _read_log(self) -> list[int]:
        total = self.config.reject_log_size * reg.REJECT_LOG_SLOT_WIDTH
        ring: list[int] = []
        for offset in range(0, total, _MAX_READ):
            count = min(_MAX_READ, total - offset)
            ring += await self._read_input(reg.IR_REJECT_LOG_BASE + offset, count)
        return ring

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
                if self._out_of_step:
                    # Let a late answer to the abandoned request arrive while nothing waits:
                    # pymodbus drops an unsolicited answer instead of pairing it with ours.
                    await asyncio.sleep(min(self.config.timeout_s, _RESYNC_QUIET_S))
                    self._out_of_step = False
                response = await send(client)
        except asyncio.CancelledError:
            self._out_of_step = True
            raise
        except (TimeoutError, ModbusException, OSError) as exc:
            self._out_of_step = True
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


class ModbusTcpPlc(ModbusPlcBase):
    """PlcLink over Modbus TCP."""

    Config: ClassVar[type[ModbusTcpPlcConfig]] = ModbusTcpPlcConfig
    transport = "Modbus TCP"

    def __init__(self, name: str, config: ModbusTcpPlcConfig | Mapping[str, Any]) -> None:
        super().__init__(name)
        self.config: ModbusTcpPlcConfig = validated(ModbusTcpPlcConfig, name, config)

    def _address(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def _new_client(self) -> ModbusBaseClient:
        cfg = self.config
        return AsyncModbusTcpClient(
            cfg.host,
            port=cfg.port,
            name=f"plc:{self.name}",
            timeout=cfg.timeout_s,
            retries=0,
            reconnect_delay=0,  # 0 disables pymodbus's background reconnect task
            trace_connect=self._on_link_change,
        )


def _verdict_runs(
    verdicts: Sequence[tuple[int, Verdict]], ring_size: int
) -> list[tuple[int, list[int]]]:
    """(first register, values) per FC16: runs of verdicts whose slots follow one another in
    the ring (a run breaks where the ring wraps, a trigger is skipped or the request is full)."""
    per_request = _MAX_WRITE // reg.VERDICT_SLOT_WIDTH
    runs: list[tuple[int, list[int]]] = []
    next_address = -1
    for trigger, verdict in verdicts:
        address = reg.verdict_slot_address(trigger, ring_size)
        values = reg.encode_verdict_slot(trigger, int(verdict))
        last = runs[-1][1] if runs else None
        if (
            last is not None
            and address == next_address
            and len(last) < per_request * reg.VERDICT_SLOT_WIDTH
        ):
            last.extend(values)
        else:
            runs.append((address, values))
        next_address = address + reg.VERDICT_SLOT_WIDTH
    return runs
