"""An external Modbus master, ``mbpoll`` (Debian package), reads and writes the PLC contract.

mbpoll was not written here, so agreeing with it shows the register map is what the README says
and not merely what our own driver and simulator agree on. The agent side runs our driver against
the simulator; mbpoll, a separate process, checks the addresses, over Modbus TCP and over RTU on
the simulator's pty. Addresses in mbpoll calls are 0-based (``-0``) unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.plc.modbus import ModbusRtuPlc, ModbusTcpPlc
from edge_agent.contracts import AgentLineState, LineStatus, Verdict
from simulators.line import SimLine
from simulators.plc.modbus import ModbusPlcSim, ModbusRtuPlcSim
from simulators.pytest_plugin import require_tool
from tests.helpers.plc import send_unit
from tests.helpers.waiting import until

pytestmark = pytest.mark.requires_tool("mbpoll")

TABLE = {"coil": "0", "discrete": "1", "input": "3", "holding": "4"}
_VALUE = re.compile(r"^\[(\d+)\]:\s+(-?\d+)", re.MULTILINE)


class Mbpoll:
    """Runs mbpoll once per call, as a separate process, against one simulator."""

    def __init__(self, sim: ModbusPlcSim) -> None:
        if isinstance(sim, ModbusRtuPlcSim):
            # The pty carries 8N2 only (Linux ptys refuse parity); slave address as configured.
            self.target = [
                "-m", "rtu", "-b", str(sim.baudrate), "-P", "none", "-s", "2",
                "-a", str(sim.device_id), sim.device,
            ]  # fmt: skip
        else:
            self.target = ["-m", "tcp", "-p", str(sim.port), "-a", "1", sim.host]

    async def run(self, *options: str, values: tuple[int, ...] = ()) -> tuple[int, str]:
        """mbpoll OPTIONS TARGET [VALUES...]; returns (exit status, output)."""
        proc = await asyncio.create_subprocess_exec(
            require_tool("mbpoll"),
            *options,
            "-1",  # one poll, then exit
            "-o", "2",  # answer timeout, seconds
            *self.target,
            *(str(v) for v in values),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace")

    async def read(
        self, table: str, ref: int, count: int = 1, zero_based: bool = True
    ) -> list[int]:
        base = ["-0"] if zero_based else []
        options = [*base, "-t", TABLE[table], "-r", str(ref), "-c", str(count)]
        status, text = await self.run(*options)
        assert status == 0, f"mbpoll {options} failed ({status}):\n{text}"
        found = {int(at): int(value) for at, value in _VALUE.findall(text)}
        # mbpoll prints 16-bit registers as signed decimals.
        return [found[at] & 0xFFFF for at in range(ref, ref + count)]

    async def write(self, table: str, ref: int, *values: int) -> None:
        options = ["-0", "-t", TABLE[table], "-r", str(ref)]
        status, text = await self.run(*options, values=values)
        assert status == 0 and f"Written {len(values)} references" in text, text


@pytest.fixture(params=["modbus-tcp", "modbus-rtu"])
async def setup(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[SimLine, ModbusPlcSim, Any, Mbpoll]]:
    line = SimLine(units_per_min=None)
    sim_class = ModbusRtuPlcSim if request.param == "modbus-rtu" else ModbusPlcSim
    driver = ModbusRtuPlc if request.param == "modbus-rtu" else ModbusTcpPlc
    async with (
        sim_class(line, gate_delay_s=0.05, heartbeat_timeout_s=5.0) as sim,
        driver("plc", sim.driver_config()) as plc,
    ):
        yield line, sim, plc, Mbpoll(sim)


async def test_mbpoll_reads_the_contract_registers(
    setup: tuple[SimLine, ModbusPlcSim, Any, Mbpoll],
) -> None:
    line, sim, plc, mb = setup
    # The agent writes, as it would for unit 5 and a stop request.
    await plc.write_verdict(5, Verdict.PASS)
    await plc.write_verdict(0x0001_0020, Verdict.REJECT)  # 65568 % 32 = slot 0
    await plc.write_status(LineStatus(AgentLineState.RUNNING, 7, 5, 2, 6, 1))
    await plc.request_line_stop(13)
    # Hand the port over: two processes cannot share one end of a serial line.
    await plc.__aexit__(None, None, None)

    # Holding registers (README: HR 1 stop reason, HR 10..19 status, HR 100 + 3k verdict slots).
    assert await mb.read("holding", 1) == [13]
    assert await mb.read("holding", 10, 10) == [1, 1, 0, 7, 0, 5, 0, 2, 0, 6]
    assert await mb.read("holding", 115, 3) == [0, 5, 1]  # slot 5 = trigger 5, pass
    assert await mb.read("holding", 100, 3) == [1, 32, 2]  # slot 0 = trigger 0x00010020, reject
    assert await mb.read("coil", 0) == [1]  # line-stop request
    # The same with mbpoll's default 1-based numbering: every address +1.
    assert await mb.read("holding", 116, 3, zero_based=False) == [0, 5, 1]
    assert await mb.read("input", 11, zero_based=False) == [32]  # IR 10 ring size

    # Input registers: the state block IR 0..12 and the reject log.
    await mb.write("coil", 0, 0)  # mbpoll clears the stop request
    assert await mb.read("coil", 0) == [0]
    assert await send_unit(line) == 1  # no verdict for trigger 1: rejected and confirmed
    await until(lambda: sim.rejected_triggers == [1])
    state = await mb.read("input", 0, 13)
    assert state[2:4] == [0, 1]  # IR 2-3 trigger count
    assert state[4:6] == [0, 0]  # IR 4-5 passed
    assert state[6:8] == [0, 1]  # IR 6-7 rejected
    assert state[8:10] == [0, 1]  # IR 8-9 reject confirms
    assert state[10] == 32  # IR 10 ring size
    assert state[12] == 32  # IR 12 reject log size
    assert await mb.read("input", 200, 2) == [0, 1]  # reject log slot 0 = trigger 1


async def test_mbpoll_beats_and_the_plc_lets_the_line_run(
    setup: tuple[SimLine, ModbusPlcSim, Any, Mbpoll],
) -> None:
    line, sim, plc, mb = setup
    if isinstance(sim, ModbusRtuPlcSim):
        await plc.__aexit__(None, None, None)  # the bus is mbpoll's alone
    # Over TCP the agent stays connected (idle): the PLC runs only with a client connected.
    assert await mb.read("discrete", 0, 2) == [0, 0]  # not running, no agent heartbeat
    # mbpoll plays the agent: HR 0 (the agent heartbeat) changes, the PLC starts the line.
    await mb.write("holding", 0, 41)
    await until(line.running, within=5.0, what="line running after an external heartbeat")
    assert await mb.read("holding", 0) == [41]
    assert await mb.read("discrete", 0, 2) == [1, 1]  # DI 0 running, DI 1 heartbeat OK
    assert (await mb.read("input", 1)) == [1]  # IR 1 line state
    # ...and sets the line-stop coil: the PLC stops with stop cause 2.
    await mb.write("coil", 0, 1)
    await until(lambda: not line.running(), within=5.0, what="line stopped")
    assert await mb.read("input", 11) == [2]
    # Outside the map: ILLEGAL DATA ADDRESS, so an off-by-one shows.
    status, text = await mb.run("-0", "-t", "4", "-r", "99")
    assert status != 0 and "Illegal data address" in text, text


async def test_mbpoll_gets_exception_2_for_every_bit_outside_the_map(
    setup: tuple[SimLine, ModbusPlcSim, Any, Mbpoll],
) -> None:
    # README: coil 0 and DI 0..1 only; pymodbus alone answered 0 for coils 1-15 and DI 2-15.
    _, _, plc, mb = setup
    await plc.__aexit__(None, None, None)  # the bus is mbpoll's alone
    for options in (
        ("-t", "0", "-r", "1"),  # coil 1
        ("-t", "0", "-r", "15"),  # coil 15
        ("-t", "0", "-r", "0", "-c", "2"),  # coils 0..1
        ("-t", "1", "-r", "2"),  # DI 2
        ("-t", "1", "-r", "15"),  # DI 15
        ("-t", "1", "-r", "0", "-c", "3"),  # DI 0..2
        ("-t", "4", "-r", "2"),  # HR 2
        ("-t", "3", "-r", "13"),  # IR 13
    ):
        status, text = await mb.run("-0", *options)
        assert status != 0 and "Illegal data address" in text, (options, text)
    status, text = await mb.run("-0", "-t", "0", "-r", "1", values=(1,))  # write coil 1
    assert status != 0 and "Illegal data address" in text, text
    assert await mb.read("coil", 0) == [0] and await mb.read("discrete", 0, 2) == [0, 0]
