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
async def opcua_plc_sim(sim_line: SimLine) -> AsyncIterator[Any]:
    """OPC UA PLC simulator (the contract's nodes, security None); ``.url`` is its endpoint and
    ``driver_config()`` the agent's ``[plc]`` section for it. Starting it takes a few seconds."""
    from simulators.plc.opcua import OpcUaPlcSim

    async with OpcUaPlcSim(sim_line, gate_delay_s=0.3, heartbeat_timeout_s=1.0) as sim:
        yield sim


@pytest_asyncio.fixture
async def camera_sim(sim_line: SimLine) -> AsyncIterator[Any]:
    """TCP frame camera simulator (no defects unless you set them); ``.port`` is its port."""
    from simulators.cameras.tcp import TcpCameraSim

    async with TcpCameraSim(sim_line, defect_rate=0.0) as sim:
        yield sim


@pytest_asyncio.fixture
async def smart_reader_sim(sim_line: SimLine) -> AsyncIterator[Any]:
    """Smart code reader simulator (result strings over TCP, no defects unless you set them);
    ``.driver_config()`` is the agent's ``[camera]`` section for it."""
    from simulators.cameras.smart_reader import SmartReaderSim

    async with SmartReaderSim(sim_line, defect_rate=0.0) as sim:
        yield sim


@pytest_asyncio.fixture
async def directory_camera_sim(sim_line: SimLine) -> AsyncIterator[Any]:
    """Camera writing one PNG per unit into a temporary folder (``.folder``)."""
    from simulators.cameras.directory import DirectoryCameraSim

    async with DirectoryCameraSim(sim_line, defect_rate=0.0) as sim:
        yield sim


@pytest_asyncio.fixture
async def mjpeg_camera_sim(sim_line: SimLine) -> AsyncIterator[Any]:
    """Network camera streaming MJPEG over HTTP (``.url``, no defects unless you set them);
    ``.driver_config()`` is the agent's ``[camera]`` section for it."""
    from simulators.cameras.stream import MjpegCameraSim

    async with MjpegCameraSim(sim_line, defect_rate=0.0) as sim:
        yield sim


@pytest_asyncio.fixture
async def printer_sim(sim_line: SimLine) -> AsyncIterator[Any]:
    """ASCII printer simulator; ``.printed`` lists the serials it printed."""
    from simulators.printers.ascii import AsciiPrinterSim

    async with AsciiPrinterSim(sim_line) as sim:
        yield sim


@pytest_asyncio.fixture
async def capture_sim() -> AsyncIterator[Any]:
    """EPCIS 2.0 capture server simulator; ``.url``, ``.events`` (by eventID), ``.faults``."""
    from simulators.upstream.capture_server import CaptureServerSim

    async with CaptureServerSim() as sim:
        yield sim


@pytest_asyncio.fixture
async def l3_sim() -> AsyncIterator[Any]:
    """L3 site-server simulator on HTTP: ``.add_order(doc)``, ``.driver_config()`` (the agent's
    ``[l3]`` section), ``.returns`` / ``.reports`` / ``.refusals`` (each message once,
    ``.duplicates`` counted), ``.site.pages``, ``.faults``, ``go_away()`` / ``come_back()``.
    ``await l3_sim.attach_mqtt(host, port)`` or ``attach_folder(path)`` serve those transports."""
    from simulators.l3 import L3Sim

    async with L3Sim() as sim:
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


@pytest.fixture
def mosquitto(tmp_path: Path) -> Any:
    """A real Mosquitto broker on a free loopback port (``.port``; ``.stop()``/``.start()``
    restart it with its persisted sessions). Skips without mosquitto, fails if EDGE_AGENT_CI=1."""
    import os

    from simulators.upstream.mosquitto import Mosquitto, find_mosquitto

    if find_mosquitto() is None:
        if os.environ.get("EDGE_AGENT_CI") == "1":
            pytest.fail(
                "mosquitto is not installed but EDGE_AGENT_CI=1 (the CI image must have it)"
            )
        pytest.skip("mosquitto is not installed")
    with Mosquitto(tmp_path / "mosquitto") as broker:
        yield broker


@pytest_asyncio.fixture
async def mqtt_consumer(mosquitto: Any) -> AsyncIterator[Any]:
    """Simulated L3 consumer on ``mosquitto``, confirming events end to end (``.unique()``)."""
    from simulators.upstream.mqtt_consumer import MqttConsumer

    async with MqttConsumer("127.0.0.1", mosquitto.port) as consumer:
        yield consumer
