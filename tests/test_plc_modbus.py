"""Modbus TCP PLC link against the PLC simulator, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from pymodbus.client import AsyncModbusTcpClient

from drivers.plc.modbus import ModbusTcpPlc, ModbusTcpPlcConfig
from drivers.plc.modbus import registers as reg
from edge_agent.contracts import AgentLineState, LineStatus, Verdict
from edge_agent.errors import ConfigError, DeviceConnectionError, DeviceTimeout, ProtocolError
from simulators.line import SimLine
from simulators.plc.modbus import ModbusPlcSim
from tests.helpers.plc import BEAT_PERIOD_S, beating, free_port, send_unit
from tests.helpers.waiting import until

pytestmark = pytest.mark.usefixtures("no_leaks")

GATE_DELAY_S = 0.05
HEARTBEAT_TIMEOUT_S = 0.3


# --- helpers ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def raw_client(sim: ModbusPlcSim) -> AsyncIterator[AsyncModbusTcpClient]:
    client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=1, retries=0)
    assert await client.connect()
    try:
        yield client
    finally:
        client.close()


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def line() -> SimLine:
    return SimLine(units_per_min=None)


@pytest.fixture
async def sim(line: SimLine) -> AsyncIterator[ModbusPlcSim]:
    async with ModbusPlcSim(
        line, gate_delay_s=GATE_DELAY_S, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S
    ) as plc_sim:
        yield plc_sim


@pytest.fixture
async def plc(sim: ModbusPlcSim) -> AsyncIterator[ModbusTcpPlc]:
    async with ModbusTcpPlc("plc", sim.driver_config(timeout_s=0.5)) as link:
        yield link


# --- connect and config -----------------------------------------------------------------------


async def test_ring_size_mismatch_is_refused_at_connect(sim: ModbusPlcSim) -> None:
    with pytest.raises(ProtocolError, match=r"ring size mismatch.*32.*16"):
        async with ModbusTcpPlc("plc", sim.driver_config(ring_size=16)):
            pass


async def test_smaller_ring_maps_slots_modulo_n(line: SimLine) -> None:
    async with (
        ModbusPlcSim(line, gate_delay_s=GATE_DELAY_S, ring_size=8) as sim,
        ModbusTcpPlc("plc", sim.driver_config()) as plc,
        raw_client(sim) as raw,
    ):
        await plc.write_verdict(9, Verdict.PASS)  # 9 % 8 = slot 1 → HR 103
        assert (await raw.read_holding_registers(103, count=3)).registers == [0, 9, 1]


async def test_verdicts_of_a_group_land_in_their_slots_in_few_requests(line: SimLine) -> None:
    """Consecutive slots share one FC16; a skipped trigger and the ring's wrap start another."""
    async with (
        ModbusPlcSim(line, gate_delay_s=GATE_DELAY_S, ring_size=8) as sim,
        ModbusTcpPlc("plc", sim.driver_config()) as plc,
        raw_client(sim) as raw,
    ):
        requests: list[tuple[int, int]] = []
        write = plc._write_registers

        async def counted(address: int, values: list[int]) -> None:
            requests.append((address, len(values)))
            await write(address, values)

        plc._write_registers = counted  # type: ignore[method-assign]
        verdicts = [(5, Verdict.PASS), (6, Verdict.REJECT), (7, Verdict.PASS), (8, Verdict.PASS)]
        await plc.write_verdicts([*verdicts, (10, Verdict.REJECT)])
        # 5..7 are slots 5..7 (HR 115..123); 8 wraps to slot 0; 10 skips 9
        assert requests == [(115, 9), (100, 3), (106, 3)]
        slots = (await raw.read_holding_registers(100, count=24)).registers
        held = {(slots[3 * k + 1], slots[3 * k + 2]) for k in range(8)}
        assert {(5, 1), (6, 2), (7, 1), (8, 1), (10, 2)} <= held


async def test_reject_log_size_is_configurable_and_checked(line: SimLine) -> None:
    async with ModbusPlcSim(line, gate_delay_s=GATE_DELAY_S, reject_log_size=4) as sim:
        assert sim.driver_config()["reject_log_size"] == 4
        with pytest.raises(ProtocolError, match=r"reject log size mismatch.*IR 12 says 4"):
            async with ModbusTcpPlc("plc", sim.driver_config(reject_log_size=32)):
                pass
        async with ModbusTcpPlc("plc", sim.driver_config()) as plc, raw_client(sim) as raw:
            assert (await raw.read_input_registers(12)).registers == [4]
            assert (await raw.read_input_registers(200 + 2 * 4)).isError()  # log ends at IR 207
            for _ in range(6):
                await send_unit(line)
            await until(lambda: len(sim.rejected_triggers) == 6)
            assert list(await plc.recent_rejects()) == [3, 4, 5, 6]
            # Confirm 5 wrapped into slot j = (5 - 1) % 4 = 0.
            assert (await raw.read_input_registers(200, count=2)).registers == [0, 5]


async def test_large_reject_log_is_read_in_chunks(line: SimLine) -> None:
    # 300 slots = 600 registers: more than one Modbus read (125 registers at most) can carry.
    async with (
        ModbusPlcSim(line, gate_delay_s=GATE_DELAY_S, reject_log_size=300) as sim,
        ModbusTcpPlc("plc", sim.driver_config()) as plc,
    ):
        for _ in range(3):
            await send_unit(line)
        await until(lambda: len(sim.rejected_triggers) == 3)
        assert list(await plc.recent_rejects()) == [1, 2, 3]


async def test_agent_status_registers(plc: ModbusTcpPlc, sim: ModbusPlcSim) -> None:
    status = LineStatus(AgentLineState.STOPPED, 2**32 + 5, 3, 2, 0x0001_0002, 70000)
    await plc.write_status(status)
    async with raw_client(sim) as raw:
        words = (await raw.read_holding_registers(10, count=10)).registers
    # HR 10 state, HR 11 missing confirms (saturates), then u32s high word first (wrapping).
    assert words == [2, 65535, 0, 5, 0, 3, 0, 2, 1, 2]
    assert await sim.agent_status() == words


async def test_reconnect_backs_off() -> None:
    """A PLC that is gone: each failed reconnect doubles the wait (up to the maximum), and calls
    inside the wait fail at once without touching the network."""
    own_line = SimLine(units_per_min=None)
    sim = ModbusPlcSim(own_line)
    await sim.start()
    config = sim.driver_config(timeout_s=0.2, reconnect_backoff_s=0.1, reconnect_backoff_max_s=0.3)
    try:
        async with ModbusTcpPlc("plc", config) as plc:
            await sim.stop()  # the PLC goes away for good (its port closes)
            with pytest.raises(DeviceConnectionError):  # the drop, reported once
                for _ in range(100):
                    await plc.read_state()
                    await asyncio.sleep(0.01)
            waits = []
            for _ in range(4):
                with pytest.raises(DeviceConnectionError, match="cannot connect"):
                    await _poll_until_attempt(plc)
                waits.append(plc._backoff)
            assert waits == [0.1, 0.2, 0.3, 0.3]
            with pytest.raises(DeviceConnectionError, match="next reconnect attempt in"):
                await plc.read_state()
    finally:
        await sim.stop()


async def _poll_until_attempt(plc: ModbusTcpPlc) -> None:
    """Call until a real reconnect attempt is made (calls inside the back-off fail at once)."""
    while True:
        try:
            await plc.read_state()
        except DeviceConnectionError as exc:
            if "next reconnect attempt" not in str(exc):
                raise
        await asyncio.sleep(0.01)


async def test_connect_failure_is_device_connection_error() -> None:
    config = {"type": "modbus-tcp", "port": free_port(), "timeout_s": 0.5}
    with pytest.raises(DeviceConnectionError, match="cannot connect"):
        async with ModbusTcpPlc("plc", config):
            pass


async def test_silent_plc_is_device_timeout() -> None:
    handler_done = asyncio.Event()

    async def accept_and_ignore(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # swallow requests until the client gives up and closes
        writer.close()
        await writer.wait_closed()
        handler_done.set()

    server = await asyncio.start_server(accept_and_ignore, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = {"type": "modbus-tcp", "port": port, "timeout_s": 0.2}
    try:
        started = time.monotonic()
        with pytest.raises(DeviceTimeout):
            async with ModbusTcpPlc("plc", config):
                pass
        assert time.monotonic() - started < 1.0  # no hidden retries
        await asyncio.wait_for(handler_done.wait(), 2.0)
    finally:
        server.close()
        await server.wait_closed()


def test_config_is_strict() -> None:
    ok = ModbusTcpPlc.Config.model_validate({"type": "modbus-tcp", "port": 502})
    assert (ok.host, ok.device_id, ok.timeout_s, ok.ring_size) == ("127.0.0.1", 1, 1.0, 32)
    with pytest.raises(ValidationError):
        ModbusTcpPlcConfig.model_validate({"type": "modbus-tcp", "port": 502, "retries": 3})
    with pytest.raises(ValidationError):
        ModbusTcpPlcConfig.model_validate({"type": "modbus-tcp", "port": 502, "ring_size": 0})
    with pytest.raises(ConfigError):
        ModbusTcpPlc("plc", {"type": "modbus-tcp", "port": 70000})
    for field in ModbusTcpPlcConfig.model_fields.values():
        assert field.description


async def test_bad_values_are_protocol_errors(plc: ModbusTcpPlc) -> None:
    with pytest.raises(ProtocolError):
        await plc.write_verdict(-1, Verdict.PASS)
    with pytest.raises(ProtocolError):
        await plc.write_verdict(2**32, Verdict.PASS)
    with pytest.raises(ProtocolError):
        await plc.request_line_stop(0)
    # An exception response from the PLC (HR 99 is outside the map).
    with pytest.raises(ProtocolError, match="exception 2"):
        await plc._read_holding(99, 1)
    await plc.beat()  # the link survives all of that


# --- line permit (the reject gate and the rest of the contract: test_plc_links.py) -------------


async def test_no_restart_without_auto_restart() -> None:
    # A separate line and sim: the fixture's sim already holds a permit on `line`.
    own_line = SimLine(units_per_min=None)
    async with (
        ModbusPlcSim(own_line, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S, auto_restart=False) as sim,
        ModbusTcpPlc("plc2", sim.driver_config()) as plc2,
        beating(plc2),
    ):
        await until(own_line.running, what="line running")
        await plc2.request_line_stop(1)
        await until(lambda: bool(sim.stops))
        await plc2.clear_line_stop()
        await asyncio.sleep(3 * BEAT_PERIOD_S)
        assert not own_line.running()  # latched until the operator resets
        sim.acknowledge()
        await until(own_line.running, what="line running after reset")


async def test_drop_during_request_is_connection_error_not_timeout(
    sim: ModbusPlcSim, plc: ModbusTcpPlc
) -> None:
    sim.drop_link()  # no await in between: the request goes out on a socket being closed
    with pytest.raises(DeviceConnectionError):
        await plc.write_verdict(1, Verdict.PASS)


# --- the wire map, read with a plain client ---------------------------------------------------


async def test_register_addresses_match_the_readme(
    line: SimLine, sim: ModbusPlcSim, plc: ModbusTcpPlc
) -> None:
    async with raw_client(sim) as raw:

        async def hr(address: int, count: int = 1) -> list[int]:
            return list((await raw.read_holding_registers(address, count=count)).registers)

        async def ir(address: int, count: int = 1) -> list[int]:
            return list((await raw.read_input_registers(address, count=count)).registers)

        assert await ir(10) == [32]  # IR 10: ring size (mbpoll: 11)
        assert await ir(12) == [32]  # IR 12: reject log size
        assert (await raw.read_holding_registers(99)).isError()  # nothing off by one below HR 100

        await plc.write_verdict(5, Verdict.PASS)
        assert await hr(115, 3) == [0, 5, 1]
        await plc.write_verdict(0x0001_0020, Verdict.REJECT)  # 65568 % 32 == 0
        assert await hr(100, 3) == [1, 0x20, 2]

        await plc.beat()
        await plc.beat()
        assert await hr(0) == [2]
        await plc.request_line_stop(7)
        assert await hr(1) == [7]
        assert (await raw.read_coils(0)).bits[0] is True
        await plc.clear_line_stop()
        assert await hr(1) == [0]
        assert (await raw.read_coils(0)).bits[0] is False

        # A raw FC16 to HR 100 is slot 0 as the gate sees it.
        assert not (await raw.write_registers(100, [0, 32, 1])).isError()
        line.trigger_count = 31
        assert await send_unit(line) == 32
        await until(lambda: sim.passed_triggers == [32])
        assert await ir(2, 2) == [0, 32]  # IR 2-3: trigger count
        assert await ir(4, 2) == [0, 1]  # IR 4-5: passed

        assert await send_unit(line) == 33  # no verdict → reject, confirmed
        await until(lambda: sim.rejected_triggers == [33])
        assert await ir(6, 2) == [0, 1]  # IR 6-7: rejected
        assert await ir(8, 2) == [0, 1]  # IR 8-9: confirms
        assert await ir(200, 2) == [0, 33]  # reject log slot j = (1 - 1) % 32 = 0

        hb_before = (await ir(0))[0]
        await until(lambda: _changed(ir(0), hb_before), what="PLC heartbeat IR 0 moving")

        async with beating(plc):
            await until(line.running, what="line running")
            assert await ir(1) == [1]
            assert await ir(11) == [0]
            bits = (await raw.read_discrete_inputs(0, count=2)).bits[:2]
            assert bits == [True, True]  # DI 0 running, DI 1 agent heartbeat OK


README = Path(__file__).resolve().parents[1] / "README.md"
_TABLES = {"holding": "hr", "coil": "coil", "input": "ir", "discrete": "di"}


def readme_register_map(ring_size: int, log_size: int) -> dict[str, set[int]]:
    """Every address the README's register map lists, per table, for ring N and log M."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### Register map (Modbus TCP and RTU)", 1)[1].split("\n### ", 1)[0]
    addresses: dict[str, set[int]] = {table: set() for table in _TABLES.values()}
    for row in section.splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0].split(" ")[0] not in _TABLES:
            continue
        table = _TABLES[cells[0].split(" ")[0]]
        for part in cells[1].split(","):
            addresses[table] |= _expand_address(part.strip(), ring_size, log_size)
    return addresses


def _expand_address(text: str, ring_size: int, log_size: int) -> set[int]:
    """ "0", "12–13", "100 + 3·k … 102 + 3·k" (every slot k < N), "201 + 2·j" (j < M)."""

    def value(expr: str, k: int) -> int:
        base, _, step = expr.partition("+")
        factor = step.strip().split("·")[0] if step else "0"
        return int(base) + int(factor) * k

    variable = "k" if "k" in text else "j" if "j" in text else ""
    count = {"k": ring_size, "j": log_size, "": 1}[variable]
    first, _, last = text.replace("…", "–").partition("–")
    found: set[int] = set()
    for k in range(count):
        found |= set(range(value(first, k), value(last or first, k) + 1))
    return found


@pytest.mark.parametrize(("ring_size", "log_size"), [(32, 32), (5, 3)])
async def test_every_address_answers_as_the_readme_register_map_says(
    line: SimLine, ring_size: int, log_size: int
) -> None:
    """A plain pymodbus client probes every address of every table up to past the end of the
    map: addresses the README lists answer, all others answer exception 2 (as a PLC configured
    with this map does; pymodbus alone answered 0 for coils 1-15 and DI 2-15)."""
    expected = readme_register_map(ring_size, log_size)
    assert expected["coil"] == {0} and expected["di"] == {0, 1}
    assert max(expected["hr"]) == 102 + 3 * (ring_size - 1)
    assert max(expected["ir"]) == 201 + 2 * (log_size - 1)
    sim = ModbusPlcSim(line, ring_size=ring_size, reject_log_size=log_size)
    async with sim, raw_client(sim) as raw:
        read = {
            "hr": raw.read_holding_registers,
            "ir": raw.read_input_registers,
            "coil": raw.read_coils,
            "di": raw.read_discrete_inputs,
        }
        for table, addresses in expected.items():
            answered = set()
            for address in range(max(addresses) + 40):
                response = await read[table](address, count=1)
                if response.isError():
                    assert response.exception_code == 2, (table, address, response)
                else:
                    answered.add(address)
            assert answered == addresses, table
        # A request running past the end of a table is refused whole, writes too.
        assert (await raw.read_coils(0, count=2)).exception_code == 2
        assert (await raw.read_discrete_inputs(1, count=2)).exception_code == 2
        assert (await raw.write_coil(1, True)).exception_code == 2
        assert (await raw.write_coils(0, [False, True])).exception_code == 2
        assert (await raw.write_register(2, 1)).exception_code == 2
        assert not (await raw.write_coil(0, True)).isError()
        assert (await raw.read_coils(0, count=1)).bits[0] is True


async def _changed(read: Awaitable[list[int]], before: int) -> bool:
    return (await read)[0] != before


# --- pure helpers -----------------------------------------------------------------------------

u32 = st.integers(0, reg.U32_MAX)
ring_sizes = st.integers(1, reg.MAX_RING_SIZE)


@given(u32)
def test_u32_split_join_roundtrip(value: int) -> None:
    high, low = reg.split_u32(value)
    assert 0 <= high <= reg.U16_MAX and 0 <= low <= reg.U16_MAX
    assert reg.join_u32(high, low) == value


@given(st.one_of(st.integers(max_value=-1), st.integers(min_value=reg.U32_MAX + 1)))
def test_split_refuses_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        reg.split_u32(value)


@given(u32, st.sampled_from([0, 1, 2]))
def test_slot_encode_decode_roundtrip(trigger: int, verdict: int) -> None:
    slot = reg.encode_verdict_slot(trigger, verdict)
    assert len(slot) == reg.VERDICT_SLOT_WIDTH
    assert reg.decode_verdict_slot(slot) == (trigger, verdict)
    assert reg.gate_passes(slot, trigger) == (verdict == reg.VERDICT_PASS)


@given(u32, u32, st.lists(st.integers(0, reg.U16_MAX), min_size=3, max_size=3))
def test_gate_passes_only_exact_trigger_with_pass(trigger: int, other: int, garbage: Any) -> None:
    if other != trigger:
        assert not reg.gate_passes(reg.encode_verdict_slot(other, reg.VERDICT_PASS), trigger)
    held, verdict = reg.decode_verdict_slot(garbage)
    assert reg.gate_passes(garbage, trigger) == (held == trigger and verdict == 1)


@given(u32, ring_sizes)
def test_ring_index_and_address(trigger: int, ring_size: int) -> None:
    k = reg.verdict_slot(trigger, ring_size)
    assert 0 <= k < ring_size
    assert reg.verdict_slot_address(trigger, ring_size) == 100 + 3 * k
    # The same slot comes back exactly every N triggers.
    if trigger + ring_size <= reg.U32_MAX:
        assert reg.verdict_slot(trigger + ring_size, ring_size) == k


@given(st.lists(u32, max_size=80), st.integers(1, 64))
def test_reject_log_decodes_latest_oldest_first(rejected: list[int], size: int) -> None:
    ring = [0] * (size * reg.REJECT_LOG_SLOT_WIDTH)
    for number, trigger in enumerate(rejected, start=1):  # the PLC side, entry by entry
        at = reg.reject_log_address(number, size) - reg.IR_REJECT_LOG_BASE
        ring[at : at + 2] = reg.split_u32(trigger)
    assert reg.decode_reject_log(ring, len(rejected)) == rejected[-size:]


@given(st.integers(0, 3), st.integers(0, 2**40), st.integers(0, 2**33))
def test_status_words(state: int, units: int, missing: int) -> None:
    words = reg.encode_status(state, missing, units, units // 2, units // 3, units + 1)
    assert len(words) == reg.HR_STATUS_COUNT and all(0 <= w <= reg.U16_MAX for w in words)
    assert words[0] == state and words[1] == min(missing, reg.U16_MAX)
    assert reg.join_u32(words[2], words[3]) == units % 2**32


@given(st.integers(0, reg.U16_MAX))
def test_heartbeat_wraps(value: int) -> None:
    nxt = reg.next_heartbeat(value)
    assert nxt != value and 0 <= nxt <= reg.U16_MAX
    assert nxt == (0 if value == reg.U16_MAX else value + 1)
