"""Start the simulators a config names, wired to one simulated conveyor.

Each ``[simulators.<kind>]`` section names the simulator ``type`` (the same names as the agent's
driver types). A simulator class provides:

- ``from_section(line, section)``: build it from its config section;
- ``await start(host=..., port=...)`` / ``await stop()``;
- ``driver_config()``: the agent's ``[printer]``/``[camera]``/``[plc]`` section that talks to it
  (type, address or serial device, and the settings the simulator needs, e.g. ring size).

A new simulated device is one class plus one line in ``simulators.catalog.SIMULATOR_TYPES``.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field
from typing import Any

from edge_agent.config.models import SimulatorsSection
from simulators.catalog import SIMULATOR_TYPES
from simulators.line import SimLine


def simulator_class(kind: str, type_name: str) -> Any:
    types = SIMULATOR_TYPES[kind]
    if type_name not in types:
        raise ValueError(
            f"no {kind} simulator of type {type_name!r}; known: {', '.join(sorted(types))}"
        )
    module_name, _, attr = types[type_name].partition(":")
    return getattr(importlib.import_module(module_name), attr)


@dataclass
class SimulatorSet:
    section: SimulatorsSection
    line: SimLine = field(init=False)
    printer: Any = None
    camera: Any = None
    plc: Any = None
    l3: Any = None
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def __aenter__(self) -> SimulatorSet:
        s = self.section
        self.line = SimLine(units_per_min=s.units_per_min, transit_s=s.transit_s)
        # The PLC registers its trigger listener first: it must see a unit before the camera does.
        try:
            for kind in ("plc", "camera", "printer", "l3"):
                sub = getattr(s, kind)
                if sub is None:
                    continue
                # [simulators.l3] stays a raw table: the simulator validates it (L3SimConfig)
                raw = isinstance(sub, dict)
                type_name = sub.get("type", "http") if raw else sub.type
                port = sub.get("port", 0) if raw else getattr(sub, "port", 0)
                sim = simulator_class(kind, type_name).from_section(self.line, sub)
                await sim.start(host=s.host, port=port)
                self._stack.push_async_callback(sim.stop)
                setattr(self, kind, sim)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def _sims(self) -> list[tuple[str, Any]]:
        pairs = (
            ("printer", self.printer),
            ("camera", self.camera),
            ("plc", self.plc),
            ("l3", self.l3),
        )
        return [(name, sim) for name, sim in pairs if sim is not None]

    def ports(self) -> dict[str, int]:
        return {name: sim.port for name, sim in self._sims() if getattr(sim, "port", None)}

    def device_configs(self) -> dict[str, dict[str, Any]]:
        """The agent's device sections that talk to these simulators."""
        return {name: sim.driver_config() for name, sim in self._sims()}

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
        if self.l3 is not None:
            truth["l3"] = self.l3.ground_truth()
        return truth
