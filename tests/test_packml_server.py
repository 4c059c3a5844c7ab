"""The agent's PackML-style OPC UA server: the state machine alone, then a SCADA client (plain
asyncua) against a running agent whose line runs on the simulators over the OPC UA PLC link."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client
from asyncua.crypto.uacrypto import load_certificate
from asyncua.ua.uaerrors import UaStatusCodeError

from drivers.plc.modbus.registers import StopCause
from drivers.plc.opcua.certs import make_test_pki
from edge_agent.app import Agent
from edge_agent.config import parse_config
from edge_agent.config.models import OpcUaServerSection
from edge_agent.demo import demo_config_text
from edge_agent.errors import LineStopped
from edge_agent.line.stats import LineStats
from edge_agent.opcua_server.control import HOLD_CODE
from edge_agent.opcua_server.packml import Command, InvalidTransition, State, StateMachine
from edge_agent.opcua_server.security import certificate_uri
from edge_agent.opcua_server.server import PackMLServer
from simulators.runner import SimulatorSet

NS = "urn:edge-agent:packml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def until(
    condition: Callable[[], bool | Awaitable[bool]], within: float = 10.0, what: str = ""
) -> None:
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what or condition}")
        await asyncio.sleep(0.02)


# --- the state machine ------------------------------------------------------------------------


def test_packml_happy_path_and_hold() -> None:
    seen: list[tuple[State, State]] = []
    m = StateMachine(State.IDLE)
    m.on_change(lambda a, b: seen.append((a, b)))
    assert m.command(Command.START) is State.STARTING
    assert m.complete() is State.EXECUTE
    assert m.command(Command.HOLD) is State.HOLDING
    assert m.complete() is State.HELD
    assert m.command(Command.UNHOLD) is State.UNHOLDING
    assert m.complete() is State.EXECUTE
    assert m.command(Command.COMPLETE) is State.COMPLETING
    assert m.complete() is State.COMPLETE
    assert m.command(Command.RESET) is State.RESETTING
    assert m.complete() is State.IDLE
    assert seen[0] == (State.IDLE, State.STARTING) and len(seen) == 10
    assert (int(State.EXECUTE), int(State.HELD), int(State.STOPPED)) == (6, 11, 2)  # PackML


def test_packml_refuses_commands_out_of_place() -> None:
    m = StateMachine(State.IDLE)
    with pytest.raises(InvalidTransition, match="Hold is not allowed in state Idle"):
        m.command(Command.HOLD)
    for command in (Command.UNHOLD, Command.RESET, Command.CLEAR, Command.UNSUSPEND):
        assert not m.allowed(command)
    assert m.state is State.IDLE
    m.complete()  # not an acting state: nothing happens
    assert m.state is State.IDLE


@pytest.mark.parametrize("state", [s for s in State if s is not State.UNDEFINED])
def test_stop_and_abort_branches(state: State) -> None:
    m = StateMachine(state)
    in_stop_branch = state in (
        State.STOPPING,
        State.STOPPED,
        State.ABORTING,
        State.ABORTED,
        State.CLEARING,
    )
    assert m.allowed(Command.STOP) == (not in_stop_branch)
    assert m.allowed(Command.ABORT) == (state not in (State.ABORTING, State.ABORTED))
    if m.allowed(Command.ABORT):
        m.command(Command.ABORT)
        assert m.complete() is State.ABORTED
        m.command(Command.CLEAR)
        assert m.complete() is State.STOPPED
        m.command(Command.RESET)
        assert m.complete() is State.IDLE


def test_server_section_is_off_by_default_and_needs_a_way_in() -> None:
    section = OpcUaServerSection()
    assert section.enabled is False and section.security_policy == "Basic256Sha256"
    with pytest.raises(ValueError, match="needs certificate"):
        OpcUaServerSection(enabled=True)
    with pytest.raises(ValueError, match="nobody could log in"):
        OpcUaServerSection(enabled=True, security_policy="None")
    OpcUaServerSection(enabled=True, security_policy="None", allow_anonymous=True)


# --- a SCADA client against a running line ----------------------------------------------------


@contextlib.asynccontextmanager
async def running_agent(
    tmp_path: Path, server: dict[str, Any]
) -> AsyncIterator[tuple[SimulatorSet, asyncio.Task[Any], LineStats]]:
    overrides: dict[str, Any] = {
        "agent": {"state_dir": str(tmp_path / "state")},
        "batch": {"target_quantity": 5000},
        "simulators": {
            "units_per_min": 900,
            "printer": {"port": 0},
            "camera": {"port": 0, "defect_rate": 0.0},
            "plc": {"port": 0, "type": "opcua", "heartbeat_timeout_s": 2.0},
        },
        "opcua_server": server,
    }
    base = parse_config(demo_config_text(), "demo.toml", overrides)
    assert base.model.simulators is not None
    async with SimulatorSet(base.model.simulators) as sims:
        config = parse_config(
            demo_config_text(), "demo.toml", overrides, sections=sims.device_configs()
        )
        stats = LineStats()
        task = asyncio.create_task(Agent(config, stats=stats).run())
        try:
            yield sims, task, stats
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, LineStopped):
                await task


async def connect(url: str, **security: Any) -> Client:
    client = Client(url, timeout=5)
    deadline = time.monotonic() + 20.0
    while True:
        try:
            await client.connect()
            return client
        except (OSError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_scada_reads_the_line_and_holds_and_stops_it(tmp_path: Path) -> None:
    port = free_port()
    server = {
        "enabled": True,
        "port": port,
        "security_policy": "None",
        "allow_anonymous": True,
        "update_interval_ms": 50,
        "linger_s": 1.5,
    }
    async with running_agent(tmp_path, server) as (sims, agent, stats):
        client = await connect(f"opc.tcp://127.0.0.1:{port}/edge-agent")
        try:
            ns = await client.get_namespace_index(NS)
            line = client.get_node(f"ns={ns};s=Line")
            names = {(await c.read_browse_name()).Name for c in await line.get_children()}
            assert {"Status", "Admin", "Alarms", "Start", "Stop", "Hold", "Unhold"} <= names

            def node(path: str) -> Any:
                return client.get_node(f"ns={ns};s=Line.{path}")

            async def state() -> str:
                return str(await node("Status.StateName").read_value())

            async def printed() -> int:
                return int(await node("Admin.Printed").read_value())

            await until(lambda: _equals(state(), "Execute"), what="Execute")
            assert await node("Status.BatchId").read_value() == "DEMO-BATCH-0001"
            assert await node("Status.StateCurrent").read_value() == 6
            await until(lambda: _above(printed(), 5), what="units counted")

            # Unhold in Execute is not a PackML transition.
            with pytest.raises(UaStatusCodeError, match="BadInvalidState"):
                await line.call_method(f"{ns}:Unhold")

            await line.call_method(f"{ns}:Hold")
            assert await state() == "Held"
            assert await node("Status.StateCurrent").read_value() == 11
            await until(lambda: not sims.plc.running(), what="the PLC stopped the line")
            assert sims.plc.stops[-1][1] == StopCause.AGENT_REQUEST
            await asyncio.sleep(1.0)  # units in flight are decided and gated meanwhile
            held_at = sims.line.trigger_count
            await asyncio.sleep(0.5)
            assert sims.line.trigger_count == held_at  # the conveyor does not move
            assert not agent.done()

            await line.call_method(f"{ns}:Unhold")
            assert await state() == "Execute"
            await until(lambda: sims.line.trigger_count > held_at + 3, what="line moving again")

            await line.call_method(f"{ns}:Stop")
            assert await state() == "Stopping"
            # The runtime stops through its line-stop path; the server lingers in Stopped.
            await until(lambda: _equals(state(), "Stopped"), what="Stopped")
            messages = await node("Alarms.Messages").read_value()
            assert "operator_stop" in messages[-1]  # the runtime records every line stop
            counts = [
                await node(f"Admin.{x}").read_value() for x in ("Printed", "Passed", "Rejected")
            ]
            assert counts == [stats.units, stats.passed, stats.rejected]
            assert counts[0] == counts[1] + counts[2] > 5
            plc_state = await _plc_stop_reason(sims)
            assert plc_state == 21  # STOP_CODE: the runtime's line-stop request names the operator
            await line.call_method(f"{ns}:Reset")
            assert await state() == "Idle"
            with pytest.raises(LineStopped, match="operator_stop"):
                await asyncio.wait_for(agent, 15.0)
        finally:
            with contextlib.suppress(ConnectionError):
                await client.disconnect()
    assert HOLD_CODE == 20


async def _plc_stop_reason(sims: SimulatorSet) -> int:
    sim = sims.plc
    return int(sim._get(sim._ids["stop_reason"]))


async def _equals(read: Awaitable[Any], expected: Any) -> bool:
    return bool(await read == expected)


async def _above(read: Awaitable[int], limit: int) -> bool:
    return await read > limit


async def test_server_security_sign_and_encrypt_with_users(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki")
    section = OpcUaServerSection(
        enabled=True,
        port=free_port(),
        security_policy="Basic256Sha256",
        security_mode="SignAndEncrypt",
        certificate=pki.server_cert,
        private_key=pki.server_key,
        trust_dir=pki.server_trust,
        users={"mes": {"env": "MES_PASSWORD"}},  # type: ignore[dict-item]
    )
    stats = LineStats()
    stats.record(True, "pass", 1.0)
    stats.record(False, "no_read", 1.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MES_PASSWORD", "mes-pw")
        async with PackMLServer(section, stats, line_id="L7") as server:

            async def client_for(cert: Path, key: Path, password: str) -> Client:
                client = Client(server.url, timeout=5)
                client.set_user("mes")
                client.set_password(password)
                await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key}")
                # The client's ApplicationUri must be its certificate's, or the server refuses.
                client.application_uri = certificate_uri(await load_certificate(cert)) or ""
                return client

            good = await client_for(pki.client_cert, pki.client_key, "mes-pw")
            async with good:
                ns = await good.get_namespace_index(NS)
                reason = good.get_node(f"ns={ns};s=Line.Admin.RejectedByReason.no_read")
                assert await reason.read_value() == 1
                passed = good.get_node(f"ns={ns};s=Line.Admin.Passed")
                assert await passed.read_value() == 1
                # No batch is attached: Start moves to Starting and waits for the batch.
                await good.get_node(f"ns={ns};s=Line").call_method(f"{ns}:Start")
                assert server.machine.state is State.STARTING
            rogue = await client_for(pki.rogue_cert, pki.rogue_key, "mes-pw")
            with pytest.raises(UaStatusCodeError, match="BadCertificateUntrusted"):
                async with rogue:
                    pass
            wrong = await client_for(pki.client_cert, pki.client_key, "guess")
            with pytest.raises(UaStatusCodeError, match="BadUserAccessDenied"):
                async with wrong:
                    pass
