"""A PLC that speaks the agent's Modbus TCP contract, on a real pymodbus TCP server.

It plays the reject gate and the line permit of a ``SimLine``: every unit reaching the camera is
recorded and reaches the gate ``gate_delay_s`` later, where it passes only if its verdict slot holds
exactly its trigger with verdict 1. The line runs only while the agent heartbeat (HR 0) moves, the
agent does not request a stop (coil 0), and a client is connected.

Simplification: gates fire on time even while the line is stopped (units already past the camera
are judged as if the conveyor coasted), which keeps tests deterministic.

Run standalone with a free-running line: ``python -m simulators.plc.modbus --port 5020``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import deque
from typing import Any, Self

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.plc.modbus import registers as reg
from drivers.plc.modbus.registers import StopCause
from simulators.line import SimLine, SimUnit

TICK_S = 0.01

# Function codes used to address the datastore directly (same tables the wire requests hit).
_FC_COILS, _FC_DI, _FC_HR, _FC_IR = 1, 2, 3, 4


def _registers(address: int, count: int) -> SimData:
    return SimData(address, count=count, values=0, datatype=DataType.REGISTERS)


def _bits(count: int) -> SimData:
    return SimData(0, count=count, values=False, datatype=DataType.BITS)


def build_device(ring_size: int) -> SimDevice:
    """The PLC's memory: four separate tables, every address 0-based exactly as on the wire.

    Addresses outside the map answer ILLEGAL ADDRESS, as a strict PLC would.
    """
    holding = [
        _registers(reg.HR_AGENT_HEARTBEAT, 2),
        _registers(reg.HR_VERDICT_BASE, reg.VERDICT_SLOT_WIDTH * ring_size),
    ]
    inputs = [
        _registers(0, reg.IR_STATE_COUNT),
        _registers(reg.IR_REJECT_LOG_BASE, reg.REJECT_LOG_SIZE * reg.REJECT_LOG_SLOT_WIDTH),
    ]
    # id 0 answers every unit id, as most Modbus TCP PLCs do.
    return SimDevice(0, simdata=([_bits(16)], [_bits(16)], holding, inputs))


class ModbusPlcSim:
    def __init__(
        self,
        line: SimLine,
        *,
        gate_delay_s: float = 0.4,
        heartbeat_timeout_s: float = 1.0,
        ring_size: int = reg.DEFAULT_RING_SIZE,
        auto_restart: bool = True,
    ) -> None:
        reg.check_ring_size(ring_size)
        self.line = line
        self.gate_delay_s = gate_delay_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.ring_size = ring_size
        self.auto_restart = auto_restart
        # Ground truth for tests.
        self.passed_triggers: list[int] = []
        self.rejected_triggers: list[int] = []
        self.stops: list[tuple[float, int]] = []
        self.withhold_confirms = False
        self.host = "127.0.0.1"
        self.port = 0
        self._server: ModbusTcpServer | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self._gates: deque[tuple[float, int]] = deque()
        self._running = False
        self._start_allowed = True  # cleared by a stop without auto_restart
        self._stopped_at = 0.0
        self._agent_hb = 0  # HR 0 powers up as 0; only a change counts as a beat
        self._agent_hb_changed_at = float("-inf")
        self._plc_hb = 0
        self._passed = 0
        self._rejected = 0
        self._confirms = 0
        line.on_trigger(self.on_unit)
        line.add_run_permit(self.running)

    # --- lifecycle ----------------------------------------------------------------------------

    @classmethod
    def from_section(cls, line: SimLine, section: Any) -> ModbusPlcSim:
        return cls(
            line,
            gate_delay_s=section.gate_delay_s,
            heartbeat_timeout_s=section.heartbeat_timeout_s,
            ring_size=section.ring_size,
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
            **overrides,
        }

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        server = ModbusTcpServer(build_device(self.ring_size), address=(host, port))
        await server.serve_forever(background=True)
        self._server = server
        self.host = host
        # With port 0 the OS picks; pymodbus keeps the asyncio.Server as its transport.
        self.port = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        await self._set_ir(reg.IR_RING_SIZE, [self.ring_size])
        self._tick_task = asyncio.create_task(self._tick_loop(), name="modbus-plc-sim")

    async def stop(self) -> None:
        task, self._tick_task = self._tick_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]
        self._gates.clear()
        if self._running:
            self._running = False
            self.line.notify_run_state()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def drop_link(self) -> None:
        """Close every client connection now, as a pulled cable or a PLC comms reset would."""
        if self._server is None:
            return
        for handler in list(self._server.active_connections.values()):
            handler.close()

    def acknowledge(self) -> None:
        """The operator's reset: without auto_restart, allows the line to start once more."""
        self._start_allowed = True

    # --- line side ----------------------------------------------------------------------------

    def running(self) -> bool:
        return self._running

    async def on_unit(self, trigger: int, unit: SimUnit) -> None:
        if self._server is None:
            return
        trigger &= reg.U32_MAX  # the PLC's counter is u32 and wraps
        await self._set_ir(reg.IR_TRIGGER_COUNT, list(reg.split_u32(trigger)))
        self._gates.append((time.monotonic() + self.gate_delay_s, trigger))

    # --- scan cycle ---------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            await self._tick(time.monotonic())
            await asyncio.sleep(TICK_S)

    async def _tick(self, now: float) -> None:
        self._plc_hb = reg.next_heartbeat(self._plc_hb)
        await self._set_ir(reg.IR_PLC_HEARTBEAT, [self._plc_hb])
        await self._run_due_gates(now)
        hb_ok = await self._watch_agent_heartbeat(now)
        stop_requested = (await self._get(_FC_COILS, reg.COIL_LINE_STOP, 1))[0]
        await self._update_run_state(now, hb_ok=hb_ok, stop_requested=bool(stop_requested))
        await self._set(_FC_DI, reg.DI_LINE_RUNNING, [self._running, hb_ok])

    async def _watch_agent_heartbeat(self, now: float) -> bool:
        value = (await self._get(_FC_HR, reg.HR_AGENT_HEARTBEAT, 1))[0]
        if value != self._agent_hb:
            self._agent_hb = value
            self._agent_hb_changed_at = now
        return now - self._agent_hb_changed_at < self.heartbeat_timeout_s

    async def _update_run_state(self, now: float, *, hb_ok: bool, stop_requested: bool) -> None:
        connected = bool(self._server and self._server.active_connections)
        if self._running:
            cause = self._stop_cause(
                hb_ok=hb_ok, stop_requested=stop_requested, connected=connected
            )
            if cause is not StopCause.NONE:
                await self._stop_line(now, cause)
        elif self._may_start(hb_ok=hb_ok, stop_requested=stop_requested, connected=connected):
            await self._start_line()

    @staticmethod
    def _stop_cause(*, hb_ok: bool, stop_requested: bool, connected: bool) -> StopCause:
        if stop_requested:
            return StopCause.AGENT_REQUEST
        if not connected:
            return StopCause.LINK_DROPPED
        if not hb_ok:
            return StopCause.HEARTBEAT_LOST
        return StopCause.NONE

    def _may_start(self, *, hb_ok: bool, stop_requested: bool, connected: bool) -> bool:
        # A restart needs a beat after the stop: proof the agent is alive now, not before.
        beat_since_stop = self._agent_hb_changed_at > self._stopped_at
        return (
            hb_ok and beat_since_stop and connected and not stop_requested and self._start_allowed
        )

    async def _stop_line(self, now: float, cause: StopCause) -> None:
        self._running = False
        self._stopped_at = now
        self.stops.append((now, int(cause)))
        if not self.auto_restart:
            self._start_allowed = False
        await self._publish_run_state(cause)

    async def _start_line(self) -> None:
        self._running = True
        await self._publish_run_state(StopCause.NONE)

    async def _publish_run_state(self, cause: StopCause) -> None:
        await self._set_ir(reg.IR_LINE_STATE, [int(self._running)])
        await self._set_ir(reg.IR_STOP_CAUSE, [int(cause)])
        self.line.notify_run_state()

    async def _run_due_gates(self, now: float) -> None:
        while self._gates and self._gates[0][0] <= now:
            _, trigger = self._gates.popleft()
            await self._gate(trigger)

    async def _gate(self, trigger: int) -> None:
        slot_at = reg.verdict_slot_address(trigger, self.ring_size)
        slot = await self._get(_FC_HR, slot_at, reg.VERDICT_SLOT_WIDTH)
        if reg.gate_passes(slot, trigger):
            self.passed_triggers.append(trigger)
            self._passed = (self._passed + 1) & reg.U32_MAX
            await self._set_ir(reg.IR_PASSED, list(reg.split_u32(self._passed)))
            return
        self.rejected_triggers.append(trigger)
        self._rejected = (self._rejected + 1) & reg.U32_MAX
        await self._set_ir(reg.IR_REJECTED, list(reg.split_u32(self._rejected)))
        if not self.withhold_confirms:
            await self._confirm_reject(trigger)

    async def _confirm_reject(self, trigger: int) -> None:
        self._confirms = (self._confirms + 1) & reg.U32_MAX
        # Log entry before the counter, so a reader that sees the count also sees the entry.
        await self._set_ir(reg.reject_log_address(self._confirms), list(reg.split_u32(trigger)))
        await self._set_ir(reg.IR_REJECT_CONFIRMS, list(reg.split_u32(self._confirms)))

    # --- datastore ----------------------------------------------------------------------------

    async def _get(self, fc: int, address: int, count: int) -> list[int] | list[bool]:
        assert self._server is not None
        return await self._server.async_getValues(0, fc, address, count)

    async def _set(self, fc: int, address: int, values: list[int] | list[bool]) -> None:
        assert self._server is not None
        await self._server.async_setValues(0, fc, address, values)

    async def _set_ir(self, address: int, values: list[int]) -> None:
        await self._set(_FC_IR, address, values)


# --- standalone ---------------------------------------------------------------------------------


async def _feed(line: SimLine) -> None:
    """Print units forever, as a printer would, at the line's pace (waits while it is stopped)."""
    serial = 0
    while True:
        await line.next_slot()
        serial += 1
        line.unit_printed(
            SimUnit(f"{serial:012d}", "09506000134352", "SIMLOT", "301231", time.monotonic())
        )


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
    sim = ModbusPlcSim(
        line,
        gate_delay_s=args.gate_delay,
        heartbeat_timeout_s=args.heartbeat_timeout,
        ring_size=args.ring_size,
    )
    await sim.start(args.host, args.port)
    try:
        print(f"Modbus PLC simulator on {sim.url} (ring size {sim.ring_size})", flush=True)
        await asyncio.gather(_feed(line), _report(sim))
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5020)
    parser.add_argument("--ring-size", type=int, default=reg.DEFAULT_RING_SIZE)
    parser.add_argument("--gate-delay", type=float, default=0.4, help="seconds camera→gate")
    parser.add_argument("--heartbeat-timeout", type=float, default=1.0)
    parser.add_argument("--units-per-min", type=float, default=300.0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
