"""Start the simulators a config names, wired to one simulated conveyor."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from edge_agent.config.models import SimulatorsSection
from simulators.line import SimLine


@dataclass
class SimulatorSet:
    section: SimulatorsSection
    line: SimLine = field(init=False)
    printer: Any = None
    camera: Any = None
    plc: Any = None
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def __aenter__(self) -> SimulatorSet:
        from simulators.cameras.tcp import TcpCameraSim
        from simulators.plc.modbus import ModbusPlcSim
        from simulators.printers.ascii import AsciiPrinterSim

        s = self.section
        self.line = SimLine(units_per_min=s.units_per_min, transit_s=s.transit_s)
        host = s.host
        # The PLC registers its trigger listener first: it must see a unit before the camera does.
        if s.plc is not None:
            self.plc = ModbusPlcSim(
                self.line,
                gate_delay_s=s.plc.gate_delay_s,
                heartbeat_timeout_s=s.plc.heartbeat_timeout_s,
                ring_size=s.plc.ring_size,
            )
            await self._start(self.plc, host, s.plc.port)
        if s.camera is not None:
            c = s.camera
            self.camera = TcpCameraSim(
                self.line, defect_rate=c.defect_rate, seed=c.seed, width=c.width, height=c.height
            )
            await self._start(self.camera, host, c.port)
        if s.printer is not None:
            self.printer = AsciiPrinterSim(self.line, buffer_size=s.printer.buffer_size)
            await self._start(self.printer, host, s.printer.port)
        return self

    async def _start(self, sim: Any, host: str, port: int) -> None:
        await sim.start(host=host, port=port)
        self._stack.push_async_callback(sim.stop)

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def ports(self) -> dict[str, int]:
        return {
            name: sim.port
            for name, sim in (("printer", self.printer), ("camera", self.camera), ("plc", self.plc))
            if sim is not None
        }

    def ground_truth(self) -> dict[str, Any]:
        """What physically happened on the simulated line, for reconciliation against the agent."""
        truth: dict[str, Any] = {"units_triggered": self.line.trigger_count}
        if self.printer is not None:
            printed = list(self.printer.printed)
            truth["printed"] = len(printed)
            truth["printed_twice"] = len(printed) - len(set(printed))
        if self.camera is not None:
            truth["injected_defects"] = dict(self.camera.injected)
        if self.plc is not None:
            truth["gate_passed"] = list(self.plc.passed_triggers)
            truth["gate_rejected"] = list(self.plc.rejected_triggers)
        return truth
