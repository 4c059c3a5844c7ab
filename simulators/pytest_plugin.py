"""pytest fixtures for integrators: real device simulators on loopback, and the agent itself.

Installed with the package and registered under the ``pytest11`` entry point, so any test suite
in an environment with the agent installed can use them::

    async def test_my_line(printer_sim, camera_sim, plc_sim, agent_config_factory, agent_runner):
        config = agent_config_factory(printer=printer_sim, camera=camera_sim, plc=plc_sim)
        run = await agent_runner(config)
        assert run.report["balanced"]

Fixtures are function-scoped and need pytest-asyncio (``asyncio_mode = "auto"`` or the
``@pytest.mark.asyncio`` marker). The device simulators of one test share ``sim_line``, one
simulated conveyor, and their defaults agree with each other and with ``agent_config_factory``
(the PLC's verdict ring and gate delay, the printer's buffer).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

from simulators.line import SimLine
from simulators.system_tools import TOOLS, find_tool

if TYPE_CHECKING:
    from edge_agent.config import LoadedConfig
    from edge_agent.errors import LineStopped
    from edge_agent.line.stats import LineStats

# The PLC simulators' defaults, the demo's: a gate delay (camera to reject gate) that leaves the
# agent's verdict deadline (300 ms) its margin, and a verdict ring larger than the units an
# unpaced line puts between camera and gate in that time (a slot reused early rejects its unit).
PLC_GATE_DELAY_S = 0.6
PLC_HEARTBEAT_TIMEOUT_S = 1.0
PLC_RING_SIZE = 512

CI_ENV = "EDGE_AGENT_CI"  # set to 1 where every tool must be present (.ci/run): fail, never skip


def require_tool(name: str) -> str:
    """The installed system tool ``name`` (see ``simulators.system_tools.TOOLS``); when it is
    missing, the test is skipped with the Debian package to install, or fails if EDGE_AGENT_CI=1.
    Tests can also say ``@pytest.mark.requires_tool("mosquitto")``."""
    found = find_tool(name)
    if found is not None:
        return found
    tool = TOOLS[name]
    what = f"{name} ({tool.purpose}) is not installed: {tool.install}"
    if os.environ.get(CI_ENV) == "1":
        pytest.fail(f"{what}; {CI_ENV}=1 requires it", pytrace=False)
    pytest.skip(what)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires_tool(*names): the test needs these system tools (mosquitto, mbpoll, libdmtx);"
        " skipped with the package name when one is missing, failed if EDGE_AGENT_CI=1",
    )


@pytest.hookimpl(tryfirst=True)  # before fixtures are set up
def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("requires_tool"):
        for name in marker.args:
            require_tool(name)


@pytest.fixture
def sim_line() -> SimLine:
    """A simulated conveyor with no speed limit."""
    return SimLine(units_per_min=None)


@pytest_asyncio.fixture
async def plc_sim(sim_line: SimLine) -> AsyncIterator[Any]:
    """Modbus TCP PLC simulator (the PLC contract of the README): ``.port``, ``.driver_config()``
    (the agent's ``[plc]`` section), ``.passed_triggers`` / ``.rejected_triggers`` (the gate's
    decisions) and ``await .gates_settled()``. Gate delay 0.6 s, verdict ring of 512 slots."""
    from simulators.plc.modbus import ModbusPlcSim

    async with ModbusPlcSim(
        sim_line,
        gate_delay_s=PLC_GATE_DELAY_S,
        heartbeat_timeout_s=PLC_HEARTBEAT_TIMEOUT_S,
        ring_size=PLC_RING_SIZE,
    ) as sim:
        yield sim


@pytest_asyncio.fixture
async def opcua_plc_sim(sim_line: SimLine) -> AsyncIterator[Any]:
    """OPC UA PLC simulator (the contract's nodes, security None); ``.url`` is its endpoint and
    ``driver_config()`` the agent's ``[plc]`` section for it. Starting it takes a few seconds."""
    from simulators.plc.opcua import OpcUaPlcSim

    async with OpcUaPlcSim(
        sim_line,
        gate_delay_s=PLC_GATE_DELAY_S,
        heartbeat_timeout_s=PLC_HEARTBEAT_TIMEOUT_S,
        ring_size=PLC_RING_SIZE,
    ) as sim:
        yield sim


@pytest_asyncio.fixture
async def camera_sim(sim_line: SimLine) -> AsyncIterator[Any]:
    """TCP frame camera simulator (no defects unless you set ``.defect_rate``); ``.port``,
    ``.driver_config()``, ``.injected`` (trigger -> defect kind)."""
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


@pytest_asyncio.fixture
async def case_station_sim() -> AsyncIterator[Any]:
    """The simulated case station (``simulators.aggregation.station.CaseStationSim``): case
    packer and 5 MP case camera (tcp-frames), case PLC (Modbus TCP, case count as trigger, gate
    4 s after the camera), label printer (ZPL) and label camera. ``.packer.put(units)`` fills
    cases of 12, ``.packer.force(defect, ...)`` injects case defects, ``.driver_configs()`` are
    the ``[aggregation.case_station]`` device tables, ``.ground_truth()`` what each case holds."""
    from simulators.aggregation.station import CaseStationSim

    sim = CaseStationSim(gate_delay_s=4.0)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@pytest_asyncio.fixture
async def pallet_station_sim(case_station_sim: Any) -> AsyncIterator[Any]:
    """The simulated pallet station behind ``case_station_sim``: cases that pass the case gate
    are scanned (lines over TCP, ``]C1`` + AI 00) onto the pallet being built; a pallet label
    printer and camera. ``.driver_configs()`` are the ``[aggregation.pallet_station]`` tables."""
    from simulators.aggregation.station import PalletStationSim

    sim = PalletStationSim()
    sim.attach(case_station_sim)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@pytest_asyncio.fixture
async def scanner_sim() -> AsyncIterator[Any]:
    """A barcode scanner sending one code per line over TCP; ``.scan(data)``, ``.driver_config()``
    (a ``scanner`` device table, type ``lines``)."""
    from simulators.aggregation.scanner import ScannerSim

    sim = ScannerSim()
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


Device = Any  # a simulator (anything with driver_config()) or a device section as a dict


def _section(device: Device) -> dict[str, Any]:
    return dict(device) if isinstance(device, Mapping) else dict(device.driver_config())


# The order a test's agent packs unless the test says otherwise (``order=`` of the factory).
DEFAULT_ORDER: dict[str, Any] = {
    "id": "DEMO-BATCH-0001",
    "product": {"gtin": "09506000134352", "description": "Demo tablets 20 mg"},
    "lot": "DEMO24A",
    "expiry": "281231",
    "quantity": 2000,
    "serials": {"source": "generate", "length": 12},
    "market": "DE",
}


def order_for(**changes: Any) -> dict[str, Any]:
    """``DEFAULT_ORDER`` with ``changes`` (a ``serials`` table merges into its serials)."""
    order = {**DEFAULT_ORDER, **changes}
    if "serials" in changes:
        order["serials"] = {**DEFAULT_ORDER["serials"], **changes["serials"]}
    return order


def drop_order(inbox: Path, order: Mapping[str, Any]) -> Path:
    """Put an order file into an inbox folder as a sender must: written aside, then renamed."""
    inbox.mkdir(parents=True, exist_ok=True)
    path = inbox / f"{order['id']}.json"
    tmp = inbox / f".{order['id']}.json.part"
    tmp.write_text(json.dumps(order, indent=2), encoding="utf-8")
    tmp.replace(path)
    return path


def inbox_with(folder: Path, **order: Any) -> dict[str, Any]:
    """An ``[orders]`` table whose inbox ``folder`` holds ``order_for(**order)``."""
    drop_order(folder, order_for(**order))
    return {"inbox": str(folder)}


@pytest.fixture
def agent_config_factory(tmp_path: Path) -> Callable[..., LoadedConfig]:
    """Build a validated agent config (``edge_agent.config.LoadedConfig``) for these simulators::

        agent_config_factory(printer=printer_sim, camera=camera_sim, plc=plc_sim,
                             order={"quantity": 50}, line={...}, upstream={...})

    ``printer``, ``camera``, ``plc``: a simulator (its ``driver_config()`` becomes the device
    section) or a section as a dict, e.g. ``plc_sim.driver_config(timeout_s=0.3)``; a device
    left out keeps the demo config's section. ``simulators``: a ``SimulatorSet`` instead of the
    three. ``forwarders``: simulators or tables for ``[[upstream.forwarders]]``. ``order``: the
    work order the agent finds in its inbox (``[orders] inbox`` under ``tmp_path``), changes to
    ``DEFAULT_ORDER``; ``order=None`` drops none. Any other keyword merges into that section of
    the demo config (``edge_agent/resources/demo.toml``); the state directory is a fresh one
    under the test's ``tmp_path``.
    """
    from edge_agent.config import parse_config
    from edge_agent.errors import ConfigError
    from simulators.demo.line import demo_config_text

    def factory(
        *,
        printer: Device = None,
        camera: Device = None,
        plc: Device = None,
        simulators: Any = None,
        forwarders: Iterable[Device] = (),
        order: Mapping[str, Any] | None = MappingProxyType({}),
        **sections: dict[str, Any],
    ) -> LoadedConfig:
        if simulators is not None:
            printer = printer or simulators.printer
            camera = camera or simulators.camera
            plc = plc or simulators.plc
        devices = {"printer": printer, "camera": camera, "plc": plc}
        replaced = {kind: _section(d) for kind, d in devices.items() if d is not None}
        merged: dict[str, Any] = {
            "agent": {"state_dir": str(tmp_path / "state")},
            "orders": {"inbox": str(tmp_path / "inbox")},
        }
        for key, value in sections.items():
            merged[key] = {**merged.get(key, {}), **value}
        tables = [_section(f) for f in forwarders]
        if tables:
            upstream = merged.setdefault("upstream", {})
            upstream["forwarders"] = [*upstream.get("forwarders", []), *tables]
        config = parse_config(demo_config_text(), "demo.toml", merged, sections=replaced)
        gate_delay_s = getattr(plc, "gate_delay_s", None)
        deadline_ms = config.model.line.verdict_deadline_ms
        if gate_delay_s is not None and deadline_ms >= gate_delay_s * 1000:
            raise ConfigError(
                f"verdict_deadline_ms ({deadline_ms:g}) must be shorter than the PLC "
                f"simulator's gate delay ({gate_delay_s * 1000:g} ms), or the gate rejects units "
                "whose pass is still on its way",
                key="line.verdict_deadline_ms",
            )
        inbox = config.model.orders.inbox
        if order is not None and inbox is not None:
            drop_order(inbox, order_for(**order))
        return config

    return factory


@dataclass
class AgentRun:
    """What one run of the agent did (``agent_runner``)."""

    config: LoadedConfig
    stats: LineStats  # the line's counters and alarms, as the agent kept them
    stopped: LineStopped | None  # the stop the order was held with (``.reason``); None: closed
    report: dict[str, Any]  # the reconciliation, as ``edge-agent batch report --json`` prints
    order_id: str | None = None  # the order the run ended on


@pytest.fixture
def agent_runner(sim_line: SimLine) -> Callable[..., Awaitable[AgentRun]]:
    """Run the agent daemon (``edge_agent.app.Agent.serve``) on a config until its orders are
    done or one is held (a line stop): ``run = await agent_runner(config)``. It returns once the
    simulated PLC of the test has decided every unit at its gate, with the reconciliation of the
    last order read from the state database."""
    from edge_agent.app import Agent, UntilIdle
    from edge_agent.db import open_reader
    from edge_agent.errors import LineStopped
    from edge_agent.line.stats import LineStats
    from edge_agent.reconcile import latest_batch_id, reconcile
    from edge_agent.stops import StopReason

    async def run(config: LoadedConfig, *, timeout_s: float = 300.0) -> AgentRun:
        stats = LineStats()
        stopped: LineStopped | None = None
        async with asyncio.timeout(timeout_s):
            served = await Agent(config, stats=stats).serve(until_idle=UntilIdle(0))
        if served.hold is not None:
            stopped = LineStopped(StopReason(served.hold.reason), served.hold.detail)
        await sim_line.settled()  # every unit at the camera and decided at the PLC's gate
        conn = open_reader(Path(config.model.agent.state_dir))
        try:
            order_id = served.waiting.id if served.waiting is not None else latest_batch_id(conn)
            report = reconcile(conn, order_id)
        finally:
            conn.close()
        return AgentRun(config, stats, stopped, report, order_id)

    return run


def _mosquitto(workdir: Path, *, tuned: bool) -> Any:
    from simulators.upstream.mosquitto import Mosquitto

    require_tool("mosquitto")
    return Mosquitto(workdir, tuned=tuned)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Any:
    """A real Mosquitto broker on a free loopback port with mosquitto's stock limits (Receive
    Maximum 20, 1,000 queued messages per client): ``.port``; ``.stop()``/``.start()`` restart
    it with its persisted sessions. Skips without mosquitto, fails if EDGE_AGENT_CI=1."""
    with _mosquitto(tmp_path / "mosquitto", tuned=False) as broker:
        yield broker


@pytest.fixture
def mosquitto_tuned(tmp_path: Path) -> Any:
    """Like ``mosquitto``, with the limits lifted (no in-flight or queue limit, autosave every
    second): for a test that needs that and says why; ``mosquitto`` is what users run."""
    with _mosquitto(tmp_path / "mosquitto-tuned", tuned=True) as broker:
        yield broker


@pytest_asyncio.fixture
async def mqtt_consumer(mosquitto: Any) -> AsyncIterator[Any]:
    """Simulated L3 consumer on ``mosquitto``, confirming events end to end (``.unique()``)."""
    from simulators.upstream.mqtt_consumer import MqttConsumer

    async with MqttConsumer("127.0.0.1", mosquitto.port) as consumer:
        yield consumer
