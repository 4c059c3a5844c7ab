"""OPC UA PLC link against the OPC UA PLC simulator, over real sockets on 127.0.0.1.

An asyncua server takes seconds to build its address space, so one simulator serves the whole
module (module-scoped event loop) and is reset to power-up before each test.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio
from asyncua import Client, ua
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from structlog.testing import capture_logs

from drivers.plc.contract import StopCause
from drivers.plc.opcua import OpcUaPlc, OpcUaPlcConfig
from drivers.plc.opcua import nodes as n
from edge_agent.config import parse_config
from edge_agent.contracts import PlcLink, Verdict
from edge_agent.db import open_reader
from edge_agent.errors import ConfigError, DeviceConnectionError, ProtocolError
from edge_agent.line.stats import LineStats
from edge_agent.reconcile import reconcile
from edge_agent.registry import driver_class
from simulators.demo.line import demo_config_text
from simulators.line import SimLine
from simulators.plc.opcua import OpcUaPlcSim
from simulators.pytest_plugin import inbox_with
from simulators.runner import SimulatorSet
from tests.helpers.line import run_agent
from tests.helpers.plc import free_port, send_unit
from tests.helpers.waiting import until as _until

# Async tests share the module's event loop, and with it the one simulator.
module_loop = pytest.mark.asyncio(loop_scope="module")

GATE_DELAY_S = 0.05
HEARTBEAT_TIMEOUT_S = 0.3
BEAT_PERIOD_S = 0.03

until = functools.partial(_until, within=3.0)


# --- helpers ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def beating(plc: OpcUaPlc, period: float = BEAT_PERIOD_S) -> AsyncIterator[list[float]]:
    sent: list[float] = []

    async def loop() -> None:
        while True:
            with contextlib.suppress(DeviceConnectionError):
                sent.append(time.monotonic())
                await plc.beat()
            await asyncio.sleep(period)

    task = asyncio.create_task(loop())
    try:
        yield sent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def raw_client(sim: OpcUaPlcSim) -> AsyncIterator[tuple[Client, int]]:
    """A plain asyncua client, as a SCADA or a PLC programmer's test tool would use."""
    client = Client(sim.url, timeout=2)
    async with client:
        yield client, await client.get_namespace_index(n.DEFAULT_NAMESPACE_URI)


# --- fixtures ---------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared() -> AsyncIterator[tuple[SimLine, OpcUaPlcSim]]:
    line = SimLine(units_per_min=None)
    async with OpcUaPlcSim(
        line, gate_delay_s=GATE_DELAY_S, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S
    ) as sim:
        yield line, sim


@pytest_asyncio.fixture(loop_scope="module")
async def sim(shared: tuple[SimLine, OpcUaPlcSim]) -> OpcUaPlcSim:
    await shared[1].reset()
    return shared[1]


@pytest.fixture
def line(sim: OpcUaPlcSim) -> SimLine:
    return sim.line


@pytest_asyncio.fixture(loop_scope="module")
async def plc(sim: OpcUaPlcSim) -> AsyncIterator[OpcUaPlc]:
    async with OpcUaPlc("plc", sim.driver_config(timeout_s=0.5)) as link:
        yield link


# --- connect and config -----------------------------------------------------------------------


@module_loop
async def test_implements_plclink_and_is_registered(plc: OpcUaPlc) -> None:
    assert isinstance(plc, PlcLink)
    assert driver_class("plc", "opcua") is OpcUaPlc
    state = await plc.read_state()
    assert state.extra["ring_size"] == 32
    assert (state.trigger_count, state.passed, state.rejected) == (0, 0, 0)


@module_loop
async def test_ring_size_mismatch_is_refused_at_connect(sim: OpcUaPlcSim) -> None:
    with pytest.raises(ProtocolError, match=r"ring size mismatch.*32.*16"):
        async with OpcUaPlc("plc", sim.driver_config(ring_size=16)):
            pass


@module_loop
async def test_reject_log_size_mismatch_is_refused_at_connect(sim: OpcUaPlcSim) -> None:
    # The PLC's RejectLog holds 32 values; an agent set for 16 would read confirms into the
    # wrong slots, so it refuses to connect, as over Modbus (IR 12).
    with pytest.raises(ProtocolError, match=r"reject log size mismatch.*holds 32.*is 16"):
        async with OpcUaPlc("plc", sim.driver_config(reject_log_size=16)):
            pass


@module_loop
async def test_reject_log_of_another_size_works_when_both_sides_agree() -> None:
    line = SimLine(units_per_min=None)
    async with OpcUaPlcSim(line, gate_delay_s=GATE_DELAY_S, reject_log_size=8) as small:
        assert small.driver_config()["reject_log_size"] == 8
        with pytest.raises(ProtocolError, match=r"reject log size mismatch.*holds 8.*is 32"):
            async with OpcUaPlc("plc", {**small.driver_config(), "reject_log_size": 32}):
                pass
        async with OpcUaPlc("plc", small.driver_config()) as plc:
            for _ in range(10):
                await send_unit(line)
            await until(lambda: len(small.rejected_triggers) == 10)
            assert list(await plc.recent_rejects()) == list(range(3, 11))


@module_loop
async def test_unknown_namespace_is_refused_at_connect(sim: OpcUaPlcSim) -> None:
    with pytest.raises(ProtocolError, match="namespace 'urn:nope' not on the PLC"):
        async with OpcUaPlc("plc", sim.driver_config(namespace_uri="urn:nope")):
            pass


@module_loop
async def test_connect_failure_is_device_connection_error_and_backs_off() -> None:
    config = {"type": "opcua", "url": f"opc.tcp://127.0.0.1:{free_port()}", "timeout_s": 0.5}
    config["security_policy"] = "None"
    started = time.monotonic()
    with pytest.raises(DeviceConnectionError):
        async with OpcUaPlc("plc", config):
            pass
    assert time.monotonic() - started < 3.0


@module_loop
async def test_silent_server_is_a_connection_error_within_the_connect_timeout() -> None:
    async def accept_and_ignore(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(accept_and_ignore, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = {
        "type": "opcua",
        "url": f"opc.tcp://127.0.0.1:{port}",
        "security_policy": "None",
        "timeout_s": 0.2,
        "connect_timeout_s": 0.5,
    }
    try:
        started = time.monotonic()
        with pytest.raises(DeviceConnectionError):
            async with OpcUaPlc("plc", config):
                pass
        assert time.monotonic() - started < 2.0
    finally:
        server.close()
        await server.wait_closed()


def test_config_is_strict_and_security_is_never_none_by_default() -> None:
    url = "opc.tcp://10.0.0.5:4840"
    with pytest.raises(ValidationError, match="needs certificate, private_key, trust_dir"):
        OpcUaPlcConfig.model_validate({"type": "opcua", "url": url})
    with pytest.raises(ConfigError, match=r"security_policy = 'None' explicitly"):
        OpcUaPlc("plc", {"type": "opcua", "url": url})
    ok = OpcUaPlcConfig.model_validate({"type": "opcua", "url": url, "security_policy": "None"})
    assert (ok.timeout_s, ok.ring_size, ok.namespace_uri) == (1.0, 32, n.DEFAULT_NAMESPACE_URI)
    for bad in ({"retries": 3}, {"url": "http://x"}, {"ring_size": 0}, {"nodes": {"x": "s=y"}}):
        with pytest.raises(ValidationError):
            OpcUaPlcConfig.model_validate(
                {"type": "opcua", "url": url, "security_policy": "None", **bad}
            )
    with pytest.raises(ValidationError, match=r"'\{k\}'"):
        n.NodeIds(verdict_slot="s=Slot")
    for model in (OpcUaPlcConfig, n.NodeIds):
        for field in model.model_fields.values():
            assert field.description


@module_loop
async def test_security_none_logs_a_warning_at_start(sim: OpcUaPlcSim) -> None:
    with capture_logs() as logs:
        async with OpcUaPlc("plc", sim.driver_config()):
            pass
    warnings = [e for e in logs if e["event"] == "opcua_security_none"]
    assert warnings and warnings[0]["log_level"] == "warning"


@module_loop
async def test_bad_values_are_protocol_errors(plc: OpcUaPlc) -> None:
    with pytest.raises(ProtocolError):
        await plc.write_verdict(-1, Verdict.PASS)
    with pytest.raises(ProtocolError):
        await plc.write_verdict(2**32, Verdict.PASS)
    with pytest.raises(ProtocolError):
        await plc.request_line_stop(0)
    # The PLC refuses a write to a node it owns (read-only for clients).
    with pytest.raises(ProtocolError, match=r"BadUserAccessDenied|BadNotWritable"):
        await plc._write("probe", lambda: plc._nodes("passed"), [n.datavalue(5, n.UInt32)])
    await plc.beat()  # the link survives all of that


# --- line permit (the reject gate and the rest of the contract: test_plc_links.py) -------------


@module_loop
async def test_line_stop_request_and_clear(line: SimLine, sim: OpcUaPlcSim, plc: OpcUaPlc) -> None:
    async with raw_client(sim) as (raw, ns), beating(plc):
        await until(line.running, what="line running")
        await plc.request_line_stop(7)
        await until(lambda: bool(sim.stops), what="a stop")
        assert sim.stops[-1][1] == StopCause.AGENT_REQUEST
        reason = raw.get_node(f"ns={ns};s=Agent.StopReason")
        flag = raw.get_node(f"ns={ns};s=Agent.LineStopRequest")
        assert await raw.read_values([reason, flag]) == [7, True]
        state = await plc.read_state()
        assert (state.running, state.stop_cause) == (False, StopCause.AGENT_REQUEST)
        await plc.clear_line_stop()
        assert await raw.read_values([reason, flag]) == [0, False]
        await until(line.running, what="line running again")
        assert (await plc.read_state()).stop_cause == StopCause.NONE
        assert len(sim.stops) == 1


@module_loop
async def test_server_gone_backs_off_between_reconnects() -> None:
    # Its own simulator (not the shared one): it goes away for good halfway through.
    sim = OpcUaPlcSim(SimLine(units_per_min=None), gate_delay_s=GATE_DELAY_S)
    try:
        await sim.start()
        plc = OpcUaPlc(
            "plc", sim.driver_config(timeout_s=0.3, reconnect_min_s=5.0, reconnect_max_s=10.0)
        )
        async with plc:
            await sim.stop()
            with pytest.raises(DeviceConnectionError):
                for _ in range(50):  # the drop is seen by the next request or by the watchdog
                    await plc.read_state()
                    await asyncio.sleep(0.02)
            with pytest.raises(DeviceConnectionError):
                await plc.read_state()  # a reconnect attempt: refused
            started = time.monotonic()
            with pytest.raises(DeviceConnectionError, match="reconnect pending"):
                await plc.read_state()  # within the backoff: fails fast, no attempt
            assert time.monotonic() - started < 1.0
    finally:
        await sim.stop()


# --- the node set, read with a plain client ---------------------------------------------------


@module_loop
async def test_node_ids_match_the_readme(line: SimLine, sim: OpcUaPlcSim, plc: OpcUaPlc) -> None:
    async with raw_client(sim) as (raw, ns):

        async def read(name: str) -> Any:
            return await raw.get_node(f"ns={ns};s={name}").read_value()

        assert await read("Plc.RingSize") == 32
        await plc.write_verdict(5, Verdict.PASS)
        assert await read("Agent.Verdict[5]") == [5, 1]
        await plc.write_verdict(0x0001_0020, Verdict.REJECT)  # 65568 % 32 == 0
        assert await read("Agent.Verdict[0]") == [65568, 2]
        slot = raw.get_node(f"ns={ns};s=Agent.Verdict[0]")
        assert await slot.read_data_type_as_variant_type() == ua.VariantType.UInt32

        before = await read("Agent.Heartbeat")
        await plc.beat()
        await plc.beat()
        assert await read("Agent.Heartbeat") == (before + 2) & 0xFFFF

        await plc.write_status(
            SimpleNamespace(
                state=1, missing_confirms=2, units=10, passed=8, rejected=2, last_trigger=10
            )
        )
        assert [
            await read(x)
            for x in (
                "Agent.State",
                "Agent.MissingConfirms",
                "Agent.Units",
                "Agent.Passed",
                "Agent.Rejected",
                "Agent.LastTrigger",
            )
        ] == [1, 2, 10, 8, 2, 10]

        # A plain client's write of one slot is a verdict the gate honours.
        await raw.get_node(f"ns={ns};s=Agent.Verdict[1]").write_value(
            ua.DataValue(ua.Variant([1, 1], ua.VariantType.UInt32))
        )
        assert await send_unit(line) == 1
        await until(lambda: sim.passed_triggers == [1])
        assert await send_unit(line) == 2  # no verdict → reject, confirmed
        await until(lambda: sim.rejected_triggers == [2])
        assert [await read(x) for x in ("Plc.TriggerCount", "Plc.Passed", "Plc.Rejected")] == [
            2,
            1,
            1,
        ]
        assert await read("Plc.RejectConfirms") == 1
        assert (await read("Plc.RejectLog"))[0] == 2

        hb = await read("Plc.Heartbeat")
        await until(lambda: _changed(read("Plc.Heartbeat"), hb), what="PLC heartbeat moving")
        async with beating(plc):
            await until(line.running, what="line running")
            assert await read("Plc.LineState") == 1
            assert await read("Plc.StopCause") == 0
            assert await read("Plc.AgentHeartbeatOk") is True


async def _changed(read: Awaitable[Any], before: Any) -> bool:
    return bool((await read) != before)


# --- pure helpers -----------------------------------------------------------------------------

u32 = st.integers(0, n.U32_MAX)


def test_node_id_parsing() -> None:
    assert n.node_id("s=Agent.Heartbeat", 3) == ua.NodeId("Agent.Heartbeat", 3)
    assert n.node_id("i=1001", 2) == ua.NodeId(1001, 2)
    assert n.node_id("ns=5;s=DB1.Beat", 3) == ua.NodeId("DB1.Beat", 5)
    assert n.node_id("nsu=urn:x;s=Beat", 3, ["http://opcfoundation.org/UA/", "urn:x"]) == (
        ua.NodeId("Beat", 1)
    )
    with pytest.raises(ValueError, match="not on the server"):
        n.node_id("nsu=urn:y;s=Beat", 3, ["urn:x"])
    assert n.slot_node_text('s="DB10"."Verdict"[{k}]', 7) == 's="DB10"."Verdict"[7]'


@given(u32, st.sampled_from([0, 1, 2]), u32)
def test_slot_encoding_and_gate_rule(trigger: int, verdict: int, other: int) -> None:
    value = n.encode_verdict(trigger, verdict).Value
    assert value is not None and value.Value == [trigger, verdict]
    assert value.VariantType == ua.VariantType.UInt32
    assert n.gate_passes(value.Value, trigger) == (verdict == n.VERDICT_PASS)
    if other != trigger:
        assert not n.gate_passes([other, n.VERDICT_PASS], trigger)


@given(st.one_of(st.none(), st.lists(st.integers(0, 5), max_size=4)), u32)
def test_gate_rejects_garbage(slot: list[int] | None, trigger: int) -> None:
    expected = slot is not None and len(slot) == 2 and slot == [trigger, 1]
    assert n.gate_passes(slot, trigger) == expected


@given(st.lists(u32, max_size=80), st.sampled_from([1, 8, 32]))
def test_reject_log_decodes_latest_oldest_first(rejected: list[int], size: int) -> None:
    ring = [0] * size
    for number, trigger in enumerate(rejected, start=1):
        ring[n.reject_log_index(number, size)] = trigger
    assert n.decode_reject_log(ring, len(rejected)) == rejected[-size:]


def test_decode_state_refuses_garbage() -> None:
    good = [1, 1, 2, 3, 4, 5, 32, 0]
    state = n.decode_state(good)
    assert (state.heartbeat, state.running, state.trigger_count, state.reject_confirms) == (
        1,
        True,
        2,
        5,
    )
    with pytest.raises(ValueError):
        n.decode_state(good[:-1])
    with pytest.raises(ValueError):
        n.decode_state([*good[:-1], "x"])


@module_loop
async def test_verdict_after_the_gate_is_a_reject(
    line: SimLine, sim: OpcUaPlcSim, plc: OpcUaPlc
) -> None:
    trigger = await send_unit(line)
    await until(lambda: sim.rejected_triggers == [trigger], what="the gate")
    await plc.write_verdict(trigger, Verdict.PASS)  # too late: the unit is gone
    await asyncio.sleep(2 * GATE_DELAY_S)
    assert sim.passed_triggers == []
    assert list(await plc.recent_rejects()) == [trigger]


# --- the agent over the OPC UA link -----------------------------------------------------------


@pytest.mark.slow
async def test_agent_over_opcua_a_lost_link_stops_the_line(tmp_path: Path) -> None:
    """The whole line over the OPC UA link; pulling the cable mid-batch stops the agent, the PLC
    stops the line, and every unit the gate passed is a commissioned serial."""
    overrides: dict[str, Any] = {
        "agent": {"state_dir": str(tmp_path)},
        "orders": inbox_with(tmp_path / "inbox", quantity=400),
        "line": {"verdict_deadline_ms": 500},
        "simulators": {
            "units_per_min": None,
            "printer": {"port": 0},
            "camera": {"port": 0, "defect_rate": 0.0},
            "plc": {"port": 0, "type": "opcua"},
        },
    }
    base = parse_config(demo_config_text(), "demo.toml", overrides)
    assert base.model.simulators is not None
    async with SimulatorSet(base.model.simulators) as sims:
        config = parse_config(
            demo_config_text(), "demo.toml", overrides, sections=sims.device_configs()
        )
        assert config.model.plc["type"] == "opcua"
        agent = asyncio.create_task(run_agent(config))
        await until(lambda: len(sims.plc.passed_triggers) >= 40, within=30.0, what="units passed")
        sims.plc.drop_link()
        stopped = await asyncio.wait_for(agent, 30.0)
        assert stopped is not None
        await until(
            lambda: (
                len(sims.plc.passed_triggers) + len(sims.plc.rejected_triggers)
                >= sims.line.trigger_count
            ),
            what="the gate to settle",
        )
        triggered = sims.line.trigger_count
        await asyncio.sleep(0.3)
        assert sims.line.trigger_count == triggered, "the line kept running"
        assert sims.plc.stops and not sims.plc.running()
        with contextlib.closing(open_reader(tmp_path)) as conn:
            commissioned = [
                row[0]
                for row in conn.execute("SELECT trigger FROM serials WHERE state = 'commissioned'")
            ]
            report = reconcile(conn)
        assert sorted(sims.plc.passed_triggers) == sorted(commissioned)
    assert stopped.reason == "device_error" and "plc" in str(stopped)
    assert triggered < 400
    assert report["passed"] == report["serials_commissioned"] >= 40


@module_loop
async def test_drop_during_request_is_connection_error_not_timeout(
    sim: OpcUaPlcSim, plc: OpcUaPlc
) -> None:
    sim.drop_link()  # no await in between: the request goes out on a connection being closed
    with pytest.raises(DeviceConnectionError):
        await plc.write_verdict(1, Verdict.PASS)
        await plc.write_verdict(2, Verdict.PASS)  # if the first one still got through


@pytest.mark.slow
async def test_missing_reject_confirms_stop_the_line_over_opcua(tmp_path: Path) -> None:
    overrides: dict[str, Any] = {
        "agent": {"state_dir": str(tmp_path)},
        "orders": inbox_with(tmp_path / "inbox", quantity=200),
        "line": {
            "verdict_deadline_ms": 500,
            "max_missing_confirms": 3,
            "reject_confirm_timeout_ms": 800,  # above the 0.6 s gate delay
            "max_consecutive_rejects": 50,
        },
        "simulators": {
            "units_per_min": None,
            "printer": {"port": 0},
            "camera": {"port": 0, "defect_rate": 0.3, "seed": 5},
            "plc": {"port": 0, "type": "opcua"},
        },
    }
    base = parse_config(demo_config_text(), "demo.toml", overrides)
    assert base.model.simulators is not None
    async with SimulatorSet(base.model.simulators) as sims:
        sims.plc.withhold_confirms = True  # the reject sensor sees nothing leave
        config = parse_config(
            demo_config_text(), "demo.toml", overrides, sections=sims.device_configs()
        )
        stats = LineStats()
        stopped = await asyncio.wait_for(run_agent(config, stats), 60.0)
        assert stopped is not None
        await until(lambda: bool(sims.plc.stops), what="the PLC acting on the stop request")
        status = await sims.plc.agent_status()
        stops = list(sims.plc.stops)
    assert stopped.reason == "reject_confirm_missing"
    assert StopCause.AGENT_REQUEST in [cause for _, cause in stops]
    assert status["stop_reason"] == 13  # StopReason.REJECT_CONFIRM_MISSING
    # The PLC reads where the agent stands: stopped (2), 3 confirms missing in a row.
    assert status["agent_state"] == 2 and status["agent_missing_confirms"] >= 3
    assert status["agent_units"] == stats.units


@pytest.mark.slow
async def test_killed_agent_stops_the_opcua_line(tmp_path: Path) -> None:
    """A real `edge-agent run` process drives the line over OPC UA; SIGKILL it."""
    overrides: dict[str, Any] = {
        "agent": {"state_dir": str(tmp_path / "state")},
        "simulators": {
            "units_per_min": 1200,
            "printer": {"port": 0},
            "camera": {"port": 0, "defect_rate": 0.0},
            "plc": {"port": 0, "type": "opcua", "heartbeat_timeout_s": 1.0},
        },
    }
    base = parse_config(demo_config_text(), "demo.toml", overrides)
    assert base.model.simulators is not None
    async with SimulatorSet(base.model.simulators) as sims:
        lines = [demo_config_text()]
        for kind, section in sims.device_configs().items():
            body = "".join(f"{k} = {json.dumps(v)}\n" for k, v in section.items())
            lines.append(f"[{kind}]\n{body}")
        text = "\n".join(lines)
        for kind in ("printer", "camera", "plc"):  # drop the demo's own device sections
            text = _without_section(text, kind)
        text = text.replace('state_dir = "demo-state"', f'state_dir = "{tmp_path / "state"}"')
        text += "\n[orders]\n" + "".join(
            f"{k} = {json.dumps(v)}\n"
            for k, v in inbox_with(tmp_path / "inbox", quantity=100_000).items()
        )
        config = tmp_path / "agent.toml"
        config.write_text(text)
        out = (tmp_path / "agent.out").open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config),
            stdout=out, stderr=out,
        )  # fmt: skip
        try:
            await until(
                lambda: sims.line.trigger_count >= 10 or proc.returncode is not None,
                within=30.0,
                what="the agent process running the line",
            )
            assert proc.returncode is None, (tmp_path / "agent.out").read_text()
            assert sims.plc.running() and not sims.plc.stops
            killed_at = time.monotonic()
            proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 10)
            await until(lambda: bool(sims.plc.stops), within=4.0, what="the PLC stopping")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            out.close()
        stopped_at, cause = sims.plc.stops[0]
        assert cause in (StopCause.LINK_DROPPED, StopCause.HEARTBEAT_LOST)
        assert stopped_at - killed_at <= 1.0 + 0.5
        await asyncio.sleep(0.2)
        await sims.line.drain()
        triggered = sims.line.trigger_count
        await asyncio.sleep(0.3)
        assert sims.line.trigger_count == triggered, "the line kept running"


def _without_section(text: str, name: str) -> str:
    """Drop the first ``[name]`` table of a TOML text (the demo's, before ours is appended)."""
    start = text.index(f"\n[{name}]\n")
    end = text.index("\n[", start + 1)
    return text[:start] + text[end:]


async def test_pytest_plugin_fixture(opcua_plc_sim: OpcUaPlcSim, sim_line: SimLine) -> None:
    assert opcua_plc_sim.line is sim_line
    async with OpcUaPlc("plc", opcua_plc_sim.driver_config()) as plc:
        assert (await plc.read_state()).extra["ring_size"] == opcua_plc_sim.ring_size == 512
