"""Modbus RTU PLC link against the RTU PLC simulator, over a real pty pair (a null-modem cable).

The register map and gate logic are the same as over TCP (tests/test_plc_modbus.py covers them in
depth); these tests show the serial transport carries the contract and fails safe.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import pytest
from pydantic import ValidationError

from drivers.plc.modbus import ModbusRtuPlc, ModbusRtuPlcConfig
from drivers.plc.modbus import registers as reg
from edge_agent.contracts import AgentLineState, LineStatus, PlcLink, PlcStatusLink, Verdict
from edge_agent.errors import ConfigError, DeviceConnectionError, DeviceTimeout
from edge_agent.registry import driver_class
from simulators.line import SimLine
from simulators.plc.modbus import ModbusRtuPlcSim, NullModem
from tests.helpers.plc import beating, send_unit
from tests.helpers.waiting import until

pytestmark = pytest.mark.usefixtures("no_leaks")

GATE_DELAY_S = 0.05
HEARTBEAT_TIMEOUT_S = 0.4


@pytest.fixture
def line() -> SimLine:
    return SimLine(units_per_min=None)


@pytest.fixture
async def sim(line: SimLine) -> AsyncIterator[ModbusRtuPlcSim]:
    async with ModbusRtuPlcSim(
        line, gate_delay_s=GATE_DELAY_S, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S
    ) as plc_sim:
        yield plc_sim


@pytest.fixture
async def plc(sim: ModbusRtuPlcSim) -> AsyncIterator[ModbusRtuPlc]:
    async with ModbusRtuPlc("plc", sim.driver_config(timeout_s=0.3)) as link:
        yield link


async def test_driver_config_names_the_pty_and_the_link_works(
    sim: ModbusRtuPlcSim, plc: ModbusRtuPlc
) -> None:
    cfg = sim.driver_config()
    assert cfg["type"] == "modbus-rtu" and cfg["device"].startswith("/dev/pts/")
    assert driver_class("plc", "modbus-rtu") is ModbusRtuPlc
    assert isinstance(plc, PlcLink) and isinstance(plc, PlcStatusLink)
    state = await plc.read_state()
    assert state.extra == {"ring_size": 32, "reject_log_size": 32}


async def test_gate_over_rtu(line: SimLine, sim: ModbusRtuPlcSim, plc: ModbusRtuPlc) -> None:
    await plc.write_verdict(1, Verdict.PASS)
    await plc.write_verdict(2, Verdict.REJECT)
    for _ in range(3):  # unit 3 has no verdict: rejected
        await send_unit(line)
    await until(lambda: len(sim.passed_triggers) + len(sim.rejected_triggers) == 3)
    assert (sim.passed_triggers, sim.rejected_triggers) == ([1], [2, 3])
    assert list(await plc.recent_rejects()) == [2, 3]
    state = await plc.read_state()
    assert (state.trigger_count, state.passed, state.rejected, state.reject_confirms) == (
        3,
        1,
        2,
        2,
    )
    assert sim.bytes_carried > 0  # it really went through the ptys


async def test_heartbeat_and_status_over_rtu(
    line: SimLine, sim: ModbusRtuPlcSim, plc: ModbusRtuPlc
) -> None:
    assert not line.running()
    async with beating(plc):
        await until(line.running, what="line running")
        await plc.write_status(LineStatus(AgentLineState.RUNNING, 70000, 69990, 10, 70001, 1))
        assert await sim.agent_status() == [1, 1, 1, 4464, 1, 4454, 0, 10, 1, 4465]
        await plc.request_line_stop(12)
        await until(lambda: not line.running(), what="line stopped")
        assert sim.stops[-1][1] == reg.StopCause.AGENT_REQUEST
        await plc.clear_line_stop()
        await until(line.running, what="line running again")


async def test_wrong_slave_address_gets_no_answer(sim: ModbusRtuPlcSim) -> None:
    # An RTU slave answers its own address only: a wrong device_id looks like a dead PLC.
    started = time.monotonic()
    with pytest.raises(DeviceTimeout):
        async with ModbusRtuPlc("plc", sim.driver_config(device_id=7, timeout_s=0.2)):
            pass
    assert time.monotonic() - started < 1.5


async def test_cut_cable_times_out_stops_line_then_recovers(
    line: SimLine, sim: ModbusRtuPlcSim, plc: ModbusRtuPlc
) -> None:
    async with beating(plc):
        await until(line.running, what="line running")
        sim.drop_link()
        # The PLC sees no request for its timeout and stops the line as a link loss.
        await until(lambda: bool(sim.stops), within=HEARTBEAT_TIMEOUT_S + 2.0, what="a stop")
        assert sim.stops[-1][1] == reg.StopCause.LINK_DROPPED
        assert not line.running()
        # The agent side: every request times out (no silent success, no hang).
        with pytest.raises(DeviceTimeout):
            await plc.write_verdict(5, Verdict.PASS)
        sim.restore_link()
        await until(line.running, within=3.0, what="line running after the cable is back")
    await plc.write_verdict(5, Verdict.PASS)


async def test_missing_device_is_connection_error() -> None:
    config = {"type": "modbus-rtu", "device": "/dev/does-not-exist", "timeout_s": 0.2}
    with pytest.raises(DeviceConnectionError, match="cannot connect to Modbus RTU"):
        async with ModbusRtuPlc("plc", config):
            pass


async def test_unplugged_adapter_reconnects_with_backoff(line: SimLine) -> None:
    """The serial device vanishes (USB adapter pulled): the drop is reported and reconnect
    attempts are spaced by the back-off, calls in between failing at once."""
    sim = ModbusRtuPlcSim(line, gate_delay_s=GATE_DELAY_S, heartbeat_timeout_s=1.0)
    await sim.start()
    config = sim.driver_config(timeout_s=0.2, reconnect_backoff_s=0.3)
    try:
        async with ModbusRtuPlc("plc", config) as plc:
            await sim.stop()  # both ptys close: the agent's port now fails
            with pytest.raises((DeviceConnectionError, DeviceTimeout)):
                for _ in range(3):
                    await plc.read_state()
            # Each failed reconnect starts a back-off window in which calls fail at once.
            with pytest.raises(DeviceConnectionError):
                await plc.read_state()
            with pytest.raises(DeviceConnectionError, match="next reconnect attempt"):
                await plc.read_state()
    finally:
        await sim.stop()


def test_rtu_config_is_strict() -> None:
    ok = ModbusRtuPlcConfig.model_validate({"type": "modbus-rtu", "device": "/dev/ttyUSB0"})
    assert (ok.baudrate, ok.bytesize, ok.parity, ok.stopbits, ok.device_id) == (
        19200,
        8,
        "E",
        1,
        1,
    )
    for bad in ({"baudrate": 12345}, {"parity": "X"}, {"device_id": 0}, {"stopbits": 3}):
        with pytest.raises(ValidationError):
            ModbusRtuPlcConfig.model_validate({"type": "modbus-rtu", "device": "/dev/x", **bad})
    with pytest.raises(ConfigError):
        ModbusRtuPlc("plc", {"type": "modbus-rtu"})
    for field in ModbusRtuPlcConfig.model_fields.values():
        assert field.description


async def test_null_modem_carries_bytes_and_can_be_cut() -> None:
    modem = NullModem()
    modem.start()
    a = os.open(modem.paths[0], os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    b = os.open(modem.paths[1], os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:

        async def read_b() -> bytes:
            for _ in range(200):
                try:
                    return os.read(b, 100)
                except BlockingIOError:
                    await asyncio.sleep(0.005)
            return b""

        os.write(a, b"\x01\x03\x00\x00")
        assert await read_b() == b"\x01\x03\x00\x00"
        modem.cut = True
        os.write(a, b"lost")
        await asyncio.sleep(0.05)
        modem.cut = False
        os.write(a, b"ok")
        assert await read_b() == b"ok"
    finally:
        os.close(a)
        os.close(b)
        modem.close()
