"""The PlcLink contract, run against every registered PLC driver and its catalog simulator.

Back to back, parameterised by type (modbus-tcp, modbus-rtu over a pty null modem, opcua): the
reject gate (pass only an explicit pass for exactly this unit), the reject log, the line permit
(heartbeat, stop request), a dropped link reported once then reconnected, and no implicit
connect. What differs on each wire (register addresses, node ids, RTU timing) stays in
``test_plc_modbus.py``, ``test_plc_rtu.py`` and ``test_plc_opcua.py``. A new PLC type is in this
suite as soon as it has a registry line and a catalog line (and a ``SLACK`` entry below).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from drivers.plc.contract import DEFAULT_RING_SIZE, StopCause
from edge_agent import registry
from edge_agent.contracts import PlcLink, PlcStatusLink, Verdict
from edge_agent.errors import DeviceConnectionError
from simulators.catalog import SIMULATOR_TYPES
from simulators.line import SimLine
from simulators.runner import simulator_class
from tests.helpers.plc import beating, send_unit
from tests.helpers.waiting import until

pytestmark = pytest.mark.asyncio(loop_scope="module")  # one OPC UA server for the module

GATE_DELAY_S = 0.05
HEARTBEAT_TIMEOUT_S = 0.3
PLC_TYPES = sorted(registry.BUILTIN["plc"])
# How late after the last beat a PLC may notice it is gone: its scan plus the wire's latency
SLACK = {"modbus-tcp": 0.2, "modbus-rtu": 0.3, "opcua": 0.5}
# How a dropped link reads on the next call; a serial line has no link to drop (test_plc_rtu)
DROPPED = {"modbus-tcp": "dropped", "opcua": r"dropped|link lost"}
# Why the PLC stops when the agent goes quiet: on a serial bus a silent master is a lost link
SILENT_AGENT = {"modbus-rtu": StopCause.LINK_DROPPED}


def _simulator(type_name: str) -> Any:
    return simulator_class("plc", type_name)(
        SimLine(units_per_min=None),
        gate_delay_s=GATE_DELAY_S,
        heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared() -> AsyncIterator[dict[str, Any]]:
    """Starting an OPC UA server takes seconds: one for the module (made when first needed),
    reset for each test."""
    sims: dict[str, Any] = {}
    yield sims
    for started in sims.values():
        await started.stop()


@pytest_asyncio.fixture(params=PLC_TYPES, loop_scope="module")
async def sim(request: pytest.FixtureRequest, shared: dict[str, Any]) -> AsyncIterator[Any]:
    if request.param == "opcua":
        if "opcua" not in shared:
            shared["opcua"] = _simulator("opcua")
            await shared["opcua"].start()
        await shared["opcua"].reset()
        yield shared["opcua"]
        return
    async with _simulator(request.param) as fresh:
        yield fresh


@pytest_asyncio.fixture(loop_scope="module")
async def plc(sim: Any) -> AsyncIterator[Any]:
    driver = _driver(sim)
    async with driver("plc", sim.driver_config(timeout_s=0.5)) as link:
        yield link


def _driver(sim: Any) -> Any:
    return registry.driver_class("plc", sim.driver_config()["type"])


async def test_every_registered_plc_has_a_simulator() -> None:
    missing = sorted(set(PLC_TYPES) - set(SIMULATOR_TYPES["plc"]))
    assert not missing, f"PLC types without a simulator in simulators.catalog: {missing}"
    assert set(SLACK) == set(PLC_TYPES), "give a new PLC type its SLACK"


async def test_implements_plclink_and_publishes_its_status(plc: Any) -> None:
    assert isinstance(plc, PlcLink) and isinstance(plc, PlcStatusLink)
    state = await plc.read_state()
    assert state.extra["ring_size"] == DEFAULT_RING_SIZE


async def test_calls_outside_async_with_do_not_connect(sim: Any) -> None:
    link = _driver(sim)("plc", sim.driver_config())
    with pytest.raises(DeviceConnectionError, match="not connected"):
        await link.beat()


# --- the reject gate --------------------------------------------------------------------------


async def test_pass_verdict_passes(sim: Any, plc: Any) -> None:
    await plc.write_verdict(1, Verdict.PASS)
    trigger = await send_unit(sim.line)
    assert trigger == 1
    await until(lambda: trigger in sim.passed_triggers + sim.rejected_triggers)
    assert sim.passed_triggers == [1]
    assert sim.rejected_triggers == []
    state = await plc.read_state()
    assert (state.trigger_count, state.passed, state.rejected) == (1, 1, 0)


async def test_a_verdict_written_as_the_camera_sees_the_unit_passes(sim: Any, plc: Any) -> None:
    # The agent's path: the camera sees the unit, the verdict goes out before the gate.
    async def decide(trigger: int, unit: Any) -> None:
        await plc.write_verdict(trigger, Verdict.PASS)

    sim.line.on_trigger(decide)
    trigger = await send_unit(sim.line)
    await until(lambda: trigger in sim.passed_triggers + sim.rejected_triggers)
    assert (sim.passed_triggers, sim.rejected_triggers) == ([trigger], [])


async def test_no_verdict_rejects(sim: Any, plc: Any) -> None:
    trigger = await send_unit(sim.line)
    await until(lambda: sim.rejected_triggers == [trigger])
    assert sim.passed_triggers == []
    assert list(await plc.recent_rejects()) == [trigger]


async def test_verdict_for_other_trigger_in_same_slot_rejects(sim: Any, plc: Any) -> None:
    await plc.write_verdict(1 + DEFAULT_RING_SIZE, Verdict.PASS)  # slot 1, wrong trigger
    assert await send_unit(sim.line) == 1
    await until(lambda: sim.rejected_triggers == [1])
    assert sim.passed_triggers == []


async def test_reject_verdict_is_rejected_and_confirmed(sim: Any, plc: Any) -> None:
    await plc.write_verdict(1, Verdict.PASS)
    await plc.write_verdict(2, Verdict.REJECT)
    await send_unit(sim.line)
    await send_unit(sim.line)
    await until(lambda: len(sim.passed_triggers) + len(sim.rejected_triggers) == 2)
    assert (sim.passed_triggers, sim.rejected_triggers) == ([1], [2])
    assert list(await plc.recent_rejects()) == [2]
    state = await plc.read_state()
    assert (state.passed, state.rejected, state.reject_confirms) == (1, 1, 1)


async def test_reject_log_keeps_latest_32_oldest_first(sim: Any, plc: Any) -> None:
    for _ in range(40):
        await send_unit(sim.line)
    await until(lambda: len(sim.rejected_triggers) == 40)
    assert list(await plc.recent_rejects()) == list(range(9, 41))


async def test_withheld_confirms_are_not_reported(sim: Any, plc: Any) -> None:
    sim.withhold_confirms = True
    await plc.write_verdict(1, Verdict.REJECT)
    await send_unit(sim.line)
    await until(lambda: sim.rejected_triggers == [1])
    assert list(await plc.recent_rejects()) == []
    state = await plc.read_state()
    assert (state.rejected, state.reject_confirms) == (1, 0)


# --- the line permit --------------------------------------------------------------------------


async def test_the_line_waits_for_the_first_heartbeat_and_stops_without_one(
    sim: Any, plc: Any
) -> None:
    type_name = sim.driver_config()["type"]
    assert not sim.running()  # the line waits for the first beat
    async with beating(plc) as sent:
        await until(sim.line.running, what="line running")
    assert sim.stops == []
    last_beat = sent[-1]
    await until(lambda: bool(sim.stops), within=2 * HEARTBEAT_TIMEOUT_S + 1.0, what="a stop")
    stopped_at, cause = sim.stops[-1]
    silent = SILENT_AGENT.get(type_name, StopCause.HEARTBEAT_LOST)
    assert cause == silent
    slack = SLACK[type_name]
    assert HEARTBEAT_TIMEOUT_S - 0.02 <= stopped_at - last_beat <= HEARTBEAT_TIMEOUT_S + slack
    assert not sim.line.running()
    state = await plc.read_state()
    assert (state.running, state.stop_cause) == (False, silent)
    async with beating(plc):  # auto_restart: beats again, runs again
        await until(sim.line.running, what="line running again")


async def test_line_stop_request_and_clear(sim: Any, plc: Any) -> None:
    async with beating(plc):
        await until(sim.line.running, what="line running")
        await plc.request_line_stop(7)
        await until(lambda: bool(sim.stops), what="a stop")
        assert sim.stops[-1][1] == StopCause.AGENT_REQUEST
        state = await plc.read_state()
        assert (state.running, state.stop_cause) == (False, StopCause.AGENT_REQUEST)
        await plc.clear_line_stop()

        async def running_again() -> bool:
            return bool((await plc.read_state()).running)

        await until(running_again, what="line running again")
        assert (await plc.read_state()).stop_cause == StopCause.NONE
        assert len(sim.stops) == 1


async def test_a_dropped_link_is_reported_once_then_reconnected(sim: Any, plc: Any) -> None:
    dropped = DROPPED.get(sim.driver_config()["type"])
    if dropped is None:
        pytest.skip("a serial line has no link to drop (test_plc_rtu cuts its cable)")
    async with beating(plc):
        await until(sim.line.running, what="line running")
    sim.drop_link()
    await until(lambda: bool(sim.stops), what="a stop")
    assert sim.stops[-1][1] == StopCause.LINK_DROPPED
    with pytest.raises(DeviceConnectionError, match=dropped):
        await plc.read_state()
    # The drop was reported; the next call makes one reconnect attempt, which succeeds here.
    state = await plc.read_state()
    assert state.stop_cause == StopCause.LINK_DROPPED
    async with beating(plc):
        await until(sim.line.running, what="line running after reconnect")
