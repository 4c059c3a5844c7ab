"""A PLC that speaks the agent's Modbus contract: TCP on a real pymodbus TCP server, RTU on a pty.

It plays the reject gate and the line permit of a ``SimLine`` (``simulators.plc.gate``): every unit
reaching the camera reaches the gate ``gate_delay_s`` later, where it passes only if its verdict
slot holds exactly its trigger with verdict 1. The line runs only while the agent heartbeat (HR 0)
moves, the agent does not request a stop (coil 0), and a client is connected.

``ModbusRtuPlcSim`` is the same PLC on a serial line: a pymodbus RTU server on one pty, joined
in-process to a second pty (a null-modem cable, see ``NullModem``) whose path the agent opens. A
serial line has no connections, so this PLC counts the link as up while requests arrive.

Run standalone with a free-running line: ``python -m simulators.plc.modbus --port 5020``
(add ``--rtu`` for Modbus RTU; it prints the serial device to open).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
import tty
from typing import Any, Self

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.base import ModbusBaseServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from drivers.plc import contract
from drivers.plc.contract import StopCause
from drivers.plc.modbus import registers as reg
from simulators.line import SimLine
from simulators.plc.gate import GatePlcSim, feed_units
from simulators.standalone import run_until_signal

# Function codes used to address the datastore directly (same tables the wire requests hit).
_FC_COILS, _FC_DI, _FC_HR, _FC_IR = 1, 2, 3, 4
COIL_COUNT = reg.COIL_LINE_STOP + 1  # coil 0
DISCRETE_INPUT_COUNT = reg.DI_AGENT_HEARTBEAT_OK + 1  # DI 0..1
# Function code -> how many bits its table holds (coils: FC1 read, FC5/FC15 write; DI: FC2).
_BIT_TABLES = {1: COIL_COUNT, 5: COIL_COUNT, 15: COIL_COUNT, 2: DISCRETE_INPUT_COUNT}


def _registers(address: int, count: int) -> SimData:
    return SimData(address, count=count, values=0, datatype=DataType.REGISTERS)


def _bits(count: int) -> SimData:
    return SimData(0, count=count, values=False, datatype=DataType.BITS)


class PlcMemory(SimCore):
    """The datastore of one PLC, answering ILLEGAL DATA ADDRESS (exception 2) outside the map.

    pymodbus marks registers valid or not one by one, which is right for the register tables, but
    keeps coils and discrete inputs 16 to a register: coils 1..15 and DI 2..15 would answer 0. A
    PLC configured with this map refuses them, so the bit tables are bounded here, bit by bit.
    """

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        if _outside_bits(func_code, address, count):
            return ExcCodes.ILLEGAL_ADDRESS
        return await super().async_getValues(device_id, func_code, address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        if _outside_bits(func_code, address, len(values)):
            return ExcCodes.ILLEGAL_ADDRESS
        return await super().async_setValues(device_id, func_code, address, values)


def _outside_bits(func_code: int, address: int, count: int) -> bool:
    size = _BIT_TABLES.get(func_code)
    return size is not None and (address < 0 or count < 1 or address + count > size)


def build_device(
    ring_size: int, reject_log_size: int = contract.REJECT_LOG_SIZE, device_id: int = 0
) -> SimDevice:
    """The PLC's memory: four separate tables, every address 0-based exactly as on the wire.

    Registers outside the map answer ILLEGAL ADDRESS, as a strict PLC would (the bit tables are
    bounded by ``PlcMemory``). Device id 0 answers every unit id, as most Modbus TCP PLCs do; an
    RTU slave answers its own address only.
    """
    holding = [
        _registers(reg.HR_AGENT_HEARTBEAT, 2),
        _registers(reg.HR_STATUS_BASE, reg.HR_STATUS_COUNT),
        _registers(reg.HR_VERDICT_BASE, reg.VERDICT_SLOT_WIDTH * ring_size),
    ]
    inputs = [
        _registers(0, reg.IR_STATE_COUNT),
        _registers(reg.IR_REJECT_LOG_BASE, reject_log_size * reg.REJECT_LOG_SLOT_WIDTH),
    ]
    coils, discrete = [_bits(16)], [_bits(16)]  # pymodbus's smallest bit block
    return SimDevice(device_id, simdata=(coils, discrete, holding, inputs))


class ModbusPlcSim(GatePlcSim[ModbusBaseServer]):
    def __init__(
        self,
        line: SimLine,
        *,
        gate_delay_s: float = 0.4,
        heartbeat_timeout_s: float = 1.0,
        ring_size: int = contract.DEFAULT_RING_SIZE,
        auto_restart: bool = True,
        reject_log_size: int = contract.REJECT_LOG_SIZE,
    ) -> None:
        super().__init__(
            line,
            gate_delay_s=gate_delay_s,
            heartbeat_timeout_s=heartbeat_timeout_s,
            ring_size=ring_size,
            reject_log_size=reject_log_size,
            auto_restart=auto_restart,
        )
        self.device_id = 0

    # --- lifecycle ----------------------------------------------------------------------------

    @classmethod
    def from_section(cls, line: SimLine, section: Any) -> Self:
        return cls(
            line,
            gate_delay_s=section.gate_delay_s,
            heartbeat_timeout_s=section.heartbeat_timeout_s,
            ring_size=section.ring_size,
            reject_log_size=getattr(section, "reject_log_size", contract.REJECT_LOG_SIZE),
        )

    @property
    def url(self) -> str:
        return f"modbus-tcp://{self.host}:{self.port}"

    def driver_config(self, **overrides: Any) -> dict[str, Any]:
        """A ``[plc]`` config section for ModbusTcpPlc pointing at this simulator."""
        return {
            "type": "modbus-tcp",
            "host": self.host,
            "port": self.port,
            "ring_size": self.ring_size,
            "reject_log_size": self.reject_log_size,
            **overrides,
        }

    def _device(self) -> SimDevice:
        return build_device(self.ring_size, self.reject_log_size, self.device_id)

    def _bounded(self, server: ModbusBaseServer) -> ModbusBaseServer:
        """The server with its datastore bounded to the map bit by bit (``PlcMemory``)."""
        server.context = PlcMemory(self._device())
        return server

    async def _serve(self, host: str, port: int) -> ModbusBaseServer:
        server = self._bounded(ModbusTcpServer(self._device(), address=(host, port)))
        await server.serve_forever(background=True)
        self.host = host
        # With port 0 the OS picks; pymodbus keeps the asyncio.Server as its transport.
        self.port = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return server

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await self._serve(host, port)
        await self._set_ir(reg.IR_RING_SIZE, [self.ring_size])
        await self._set_ir(reg.IR_REJECT_LOG_SIZE, [self.reject_log_size])
        self._start_scan("modbus-plc-sim")

    async def _close(self, server: ModbusBaseServer) -> None:
        await server.shutdown()  # type: ignore[no-untyped-call]

    def drop_link(self) -> None:
        """Close every client connection now, as a pulled cable or a PLC comms reset would."""
        if self._server is None:
            return
        for handler in list(self._server.active_connections.values()):
            handler.close()

    def restore_link(self) -> None:
        """Undo ``drop_link`` where it lasts (a TCP client simply reconnects)."""

    def link_up(self) -> bool:
        """What the PLC can tell about its link to the agent: a TCP connection is open."""
        return bool(self._server and self._server.active_connections)

    async def agent_status(self) -> list[int]:
        """HR 10..19 as the agent last wrote them (the agent's line state and counters)."""
        return [int(v) for v in await self._get(_FC_HR, reg.HR_STATUS_BASE, reg.HR_STATUS_COUNT)]

    # --- the gate's registers -----------------------------------------------------------------

    async def _write_trigger(self, trigger: int) -> None:
        await self._set_ir(reg.IR_TRIGGER_COUNT, list(reg.split_u32(trigger)))

    async def _write_plc_heartbeat(self, value: int) -> None:
        await self._set_ir(reg.IR_PLC_HEARTBEAT, [value])

    async def _read_agent_heartbeat(self) -> int:
        return int((await self._get(_FC_HR, reg.HR_AGENT_HEARTBEAT, 1))[0])

    async def _read_stop_request(self) -> bool:
        return bool((await self._get(_FC_COILS, reg.COIL_LINE_STOP, 1))[0])

    async def _write_watchdog(self, *, running: bool, hb_ok: bool) -> None:
        await self._set(_FC_DI, reg.DI_LINE_RUNNING, [running, hb_ok])

    async def _write_run_state(self, *, running: bool, cause: StopCause) -> None:
        await self._set_ir(reg.IR_LINE_STATE, [int(running)])
        await self._set_ir(reg.IR_STOP_CAUSE, [int(cause)])

    async def _read_slot(self, trigger: int) -> tuple[object, object] | None:
        slot_at = reg.verdict_slot_address(trigger, self.ring_size)
        slot = await self._get(_FC_HR, slot_at, reg.VERDICT_SLOT_WIDTH)
        return reg.decode_verdict_slot([int(v) for v in slot])

    async def _write_passed(self, count: int) -> None:
        await self._set_ir(reg.IR_PASSED, list(reg.split_u32(count)))

    async def _write_rejected(self, count: int) -> None:
        await self._set_ir(reg.IR_REJECTED, list(reg.split_u32(count)))

    async def _write_confirm(self, confirm_number: int, trigger: int) -> None:
        at = reg.reject_log_address(confirm_number, self.reject_log_size)
        await self._set_ir(at, list(reg.split_u32(trigger)))
        await self._set_ir(reg.IR_REJECT_CONFIRMS, list(reg.split_u32(confirm_number)))

    # --- datastore ----------------------------------------------------------------------------

    async def _get(self, fc: int, address: int, count: int) -> list[int] | list[bool]:
        assert self._server is not None
        return await self._server.async_getValues(self.device_id, fc, address, count)

    async def _set(self, fc: int, address: int, values: list[int] | list[bool]) -> None:
        assert self._server is not None
        await self._server.async_setValues(self.device_id, fc, address, values)

    async def _set_ir(self, address: int, values: list[int]) -> None:
        await self._set(_FC_IR, address, values)


# --- Modbus RTU -----------------------------------------------------------------------------------


class NullModem:
    """Two ptys whose master sides are joined in-process: a serial cable between two device paths.

    Each end is a real tty that pyserial opens like any serial port. The slave sides stay open here
    too (never read), so a master never sees EIO while nobody has its port open. ``cut`` drops
    every byte both ways, as a pulled cable or a dead RS-485 transceiver would.
    """

    def __init__(self) -> None:
        self._fds: list[int] = []
        try:
            self._a, a_slave = self._open()
            self._b, b_slave = self._open()
        except BaseException:
            self.close()
            raise
        self.paths = (os.ttyname(a_slave), os.ttyname(b_slave))
        self.cut = False
        self.bytes_carried = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def _open(self) -> tuple[int, int]:
        master, slave = os.openpty()
        self._fds += [master, slave]
        tty.setraw(slave)  # no echo, no line editing, until pyserial sets its own raw mode
        os.set_blocking(master, False)
        return master, slave

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._a, self._pump, self._a, self._b)
        self._loop.add_reader(self._b, self._pump, self._b, self._a)

    def _pump(self, src: int, dst: int) -> None:
        try:
            data = os.read(src, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: the other side went away; nothing to carry
            return
        if self.cut or not data:
            return
        with contextlib.suppress(BlockingIOError):  # a full tty queue loses bytes, as a UART would
            os.write(dst, data)
            self.bytes_carried += len(data)

    def close(self) -> None:
        if self._loop is not None:
            for fd in (self._a, self._b):
                self._loop.remove_reader(fd)
            self._loop = None
        fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


class ModbusRtuPlcSim(ModbusPlcSim):
    """The same PLC as an RTU slave on a serial line (a pty pair); ``device`` is the agent's end."""

    def __init__(
        self,
        line: SimLine,
        *,
        device_id: int = 1,
        baudrate: int = 19200,
        parity: str = "N",
        stopbits: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(line, **kwargs)
        self.device_id = device_id
        self.baudrate = baudrate
        # Linux ptys refuse parity (EINVAL from tcsetattr), so the simulated line is 8N2: the
        # Modbus serial-line spec's framing for "no parity".
        self.parity = parity
        self.stopbits = stopbits
        self.device = ""
        self._modem: NullModem | None = None
        self._last_request = float("-inf")

    @classmethod
    def from_section(cls, line: SimLine, section: Any) -> Self:
        sim = super().from_section(line, section)
        sim.device_id = getattr(section, "device_id", 1)
        sim.baudrate = getattr(section, "baudrate", 19200)
        sim.parity = getattr(section, "parity", "N")
        sim.stopbits = getattr(section, "stopbits", 2)
        return sim

    @property
    def url(self) -> str:
        return f"modbus-rtu://{self.device}?slave={self.device_id}"

    def driver_config(self, **overrides: Any) -> dict[str, Any]:
        """A ``[plc]`` config section for ModbusRtuPlc on the agent's end of the cable."""
        return {
            "type": "modbus-rtu",
            "device": self.device,
            "baudrate": self.baudrate,
            "parity": self.parity,
            "stopbits": self.stopbits,
            "device_id": self.device_id,
            "ring_size": self.ring_size,
            "reject_log_size": self.reject_log_size,
            **overrides,
        }

    async def _serve(self, host: str, port: int) -> ModbusBaseServer:
        modem = NullModem()
        self._modem = modem
        try:
            plc_end, self.device = modem.paths
            modem.start()
            server = self._bounded(
                ModbusSerialServer(
                    self._device(),
                    port=plc_end,
                    baudrate=self.baudrate,
                    parity=self.parity,
                    stopbits=self.stopbits,
                    trace_packet=self._on_packet,
                    trace_pdu=self._on_pdu,
                )
            )
            await server.serve_forever(background=True)
        except BaseException:
            self._modem = None
            modem.close()
            raise
        return server

    async def stop(self) -> None:
        await super().stop()
        modem, self._modem = self._modem, None
        if modem is not None:
            modem.close()

    @property
    def bytes_carried(self) -> int:
        """Bytes the cable carried so far (both ways)."""
        return self._modem.bytes_carried if self._modem is not None else 0

    def _on_packet(self, sending: bool, data: bytes) -> bytes:
        # A slave on a multi-drop bus ignores frames for other addresses (pymodbus would answer
        # them with an exception). A pty delivers each request in one piece, so the address is
        # the first byte of what arrives.
        if not sending and data and data[0] not in (self.device_id, 0):
            return b""
        return data

    def _on_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self._last_request = time.monotonic()
        return pdu

    def drop_link(self) -> None:
        """Cut the cable until ``restore_link``: no byte gets through either way."""
        if self._modem is not None:
            self._modem.cut = True

    def restore_link(self) -> None:
        if self._modem is not None:
            self._modem.cut = False

    def link_up(self) -> bool:
        # No connection on a serial line: the link is up while the master keeps asking.
        return time.monotonic() - self._last_request < self.heartbeat_timeout_s


# --- standalone ---------------------------------------------------------------------------------


async def _report(sim: ModbusPlcSim) -> None:
    while True:
        await asyncio.sleep(1.0)
        state = "running" if sim.running() else "stopped"
        print(
            f"line {state}: trigger {sim.line.trigger_count}, passed {len(sim.passed_triggers)}, "
            f"rejected {len(sim.rejected_triggers)}, stops {sim.stops[-3:]}",
            flush=True,
        )


async def _serve(args: argparse.Namespace) -> None:
    line = SimLine(units_per_min=args.units_per_min)
    sim_class = ModbusRtuPlcSim if args.rtu else ModbusPlcSim
    sim = sim_class(
        line,
        gate_delay_s=args.gate_delay,
        heartbeat_timeout_s=args.heartbeat_timeout,
        ring_size=args.ring_size,
    )
    await sim.start(args.host, args.port)
    try:
        print(f"Modbus PLC simulator on {sim.url} (ring size {sim.ring_size})", flush=True)
        if args.rtu:
            print(f"agent [plc] section: {sim.driver_config()}", flush=True)
        await asyncio.gather(feed_units(line), _report(sim))
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5020)
    parser.add_argument("--ring-size", type=int, default=contract.DEFAULT_RING_SIZE)
    parser.add_argument("--gate-delay", type=float, default=0.4, help="seconds camera→gate")
    parser.add_argument("--heartbeat-timeout", type=float, default=1.0)
    parser.add_argument("--units-per-min", type=float, default=300.0)
    parser.add_argument("--rtu", action="store_true", help="Modbus RTU on a pty instead of TCP")
    args = parser.parse_args(argv)
    run_until_signal(_serve(args))


if __name__ == "__main__":
    main()
