"""pytest fixtures for integrators: real device simulators on loopback.

Installed with the package and registered under the ``pytest11`` entry point, so any test suite
in an environment with the agent installed can use them::

    async def test_my_plc_code(plc_sim, sim_line): ...

Fixtures are function-scoped and need pytest-asyncio (``asyncio_mode = "auto"`` or the
``@pytest.mark.asyncio`` marker).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from simulators.line import SimLine


@pytest.fixture
def sim_line() -> SimLine:
    """A simulated conveyor with no speed limit."""
    return SimLine(units_per_min=None)


@pytest_asyncio.fixture
async def plc_sim(sim_line: SimLine) -> AsyncIterator[Any]:
    """Modbus TCP PLC simulator (the PLC contract of the README); ``.port`` is its port."""
    from simulators.plc.modbus import ModbusPlcSim

    async with ModbusPlcSim(sim_line, gate_delay_s=0.3, heartbeat_timeout_s=1.0) as sim:
        yield sim


@pytest_asyncio.fixture
async def camera_sim(sim_line: SimLine) -> AsyncIterator[Any]:
    """TCP frame camera simulator (no defects unless you set them); ``.port`` is its port."""
    from simulators.cameras.tcp import TcpCameraSim

    async with TcpCameraSim(sim_line, defect_rate=0.0) as sim:
        yield sim


@pytest_asyncio.fixture
async def printer_sim(sim_line: SimLine) -> AsyncIterator[Any]:
    """ASCII printer simulator; ``.printed`` lists the serials it printed."""
    from simulators.printers.ascii import AsciiPrinterSim

    async with AsciiPrinterSim(sim_line) as sim:
        yield sim


@pytest_asyncio.fixture
async def zipher_printer_sim(sim_line: SimLine) -> AsyncIterator[Any]:
    """Zipher-style text printer simulator on TCP; ``.driver_config()`` is the [printer] section."""
    from simulators.printers.zipher import ZipherPrinterSim

    async with ZipherPrinterSim(sim_line) as sim:
        yield sim


@pytest_asyncio.fixture
async def rci_printer_sim(sim_line: SimLine) -> AsyncIterator[Any]:
    """Binary "rci" printer simulator on a pty; ``.device`` is the serial port to open."""
    from simulators.printers.rci import RciPrinterSim

    async with RciPrinterSim(sim_line) as sim:
        yield sim


@pytest_asyncio.fixture
async def zpl_printer_sim(sim_line: SimLine) -> AsyncIterator[Any]:
    """Zebra ZPL label printer simulator on TCP; ``.driver_config()`` is the [printer] section."""
    from simulators.printers.zpl import ZplPrinterSim

    async with ZplPrinterSim(sim_line) as sim:
        yield sim


@pytest.fixture
def agent_config_factory(tmp_path: Path) -> Any:
    """Build a validated agent config pointing at simulator ports: ``factory(ports, **overrides)``."""
    from edge_agent.config import parse_config
    from edge_agent.demo import demo_config_text

    def factory(ports: dict[str, int], **overrides: Any) -> Any:
        merged: dict[str, Any] = {"agent": {"state_dir": str(tmp_path / "state")}}
        merged.update({kind: {"port": port} for kind, port in ports.items()})
        for key, value in overrides.items():
            merged[key] = {**merged.get(key, {}), **value}
        return parse_config(demo_config_text(), "demo.toml", merged)

    return factory
