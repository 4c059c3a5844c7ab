"""The agent's PackML OPC UA server.

1. The state model alone, against the standard's transitions (OPC 30050 / TR88.00.02-2015) and
   against the table in edge_agent/opcua_server/README.md; hypothesis for command sequences.
2. The controller (commands, acting states, cancellation, failures) on a line whose actions the
   test finishes by hand; hypothesis for interleavings of commands and action completions.
3. Every command from every state through a real asyncua server and client (one server for the
   whole group).
4. A SCADA client (plain asyncua) against running agents whose line runs on the simulators over
   the OPC UA PLC link.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from asyncua import Client
from asyncua.crypto.uacrypto import load_certificate
from asyncua.ua.uaerrors import UaStatusCodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from drivers.plc.modbus.registers import StopCause
from drivers.plc.opcua.certs import make_test_pki
from edge_agent.app import Agent
from edge_agent.config import parse_config
from edge_agent.config.models import OpcUaServerSection
from edge_agent.errors import LineStopped
from edge_agent.line.stats import LineStats
from edge_agent.opcua_server.controller import PackMLController
from edge_agent.opcua_server.packml import (
    ACTING,
    STATE_COMPLETE,
    STATES,
    TRANSITIONS,
    WAIT,
    Command,
    CommandRefused,
    InvalidTransition,
    State,
    StateMachine,
)
from edge_agent.opcua_server.security import certificate_uri
from edge_agent.opcua_server.server import PackMLServer
from edge_agent.stops import StopReason
from simulators.demo.line import demo_config_text
from simulators.pytest_plugin import inbox_with
from simulators.runner import SimulatorSet
from tests.helpers.waiting import until

NS = "urn:edge-agent:packml"
README = Path(__file__).parents[1] / "edge_agent" / "opcua_server" / "README.md"
S, C = State, Command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- 1. the state model -----------------------------------------------------------------------

# The standard's transitions, written out here from OPC 30050's PackML NodeSet (transition names
# such as ExecuteToHolding) without the optional Hold extensions: Stop leaves every sub-state of
# Running, Abort every sub-state of Cleared (Running plus Stopped, Stopping, Clearing).
_RUNNING = [
    "Idle",
    "Starting",
    "Execute",
    "Completing",
    "Complete",
    "Resetting",
    "Holding",
    "Held",
    "Unholding",
    "Suspending",
    "Suspended",
    "Unsuspending",
]
SPEC: dict[tuple[State, Command], State] = {
    (S[a.upper()], C[c.upper()]): S[b.upper()]
    for a, c, b in [
        ("Idle", "Start", "Starting"),
        ("Execute", "Hold", "Holding"),
        ("Held", "Unhold", "Unholding"),
        ("Execute", "Suspend", "Suspending"),
        ("Suspended", "Unsuspend", "Unsuspending"),
        ("Complete", "Reset", "Resetting"),
        ("Stopped", "Reset", "Resetting"),
        ("Aborted", "Clear", "Clearing"),
        *((state, "Stop", "Stopping") for state in _RUNNING),
        *((state, "Abort", "Aborting") for state in [*_RUNNING, "Stopped", "Stopping", "Clearing"]),
    ]
}
SPEC_SC: dict[State, State] = {
    S[a.upper()]: S[b.upper()]
    for a, b in [
        ("Starting", "Execute"),
        ("Execute", "Completing"),
        ("Completing", "Complete"),
        ("Resetting", "Idle"),
        ("Holding", "Held"),
        ("Unholding", "Execute"),
        ("Suspending", "Suspended"),
        ("Unsuspending", "Execute"),
        ("Stopping", "Stopped"),
        ("Aborting", "Aborted"),
        ("Clearing", "Stopped"),
    ]
}
ALL_PAIRS = [(state, command) for state in sorted(STATES) for command in Command]


def test_the_model_is_packml() -> None:
    assert len(STATES) == 17 and S.UNDEFINED not in STATES
    assert dict(TRANSITIONS) == SPEC
    assert dict(STATE_COMPLETE) == SPEC_SC
    assert {s.title for s in WAIT} == {
        "Idle",
        "Held",
        "Suspended",
        "Stopped",
        "Aborted",
        "Complete",
    }
    assert len(ACTING) == 10 and S.EXECUTE not in ACTING | WAIT
    # PackTags numbers, as SCADA faceplates expect them
    assert (S.CLEARING, S.STOPPED, S.EXECUTE, S.HELD, S.COMPLETE) == (1, 2, 6, 11, 17)
    assert [int(c) for c in Command] == list(range(1, 10))


def _readme_table() -> tuple[dict[tuple[State, Command], State], dict[State, State]]:
    text = README.read_text(encoding="utf-8")
    header = next(line for line in text.splitlines() if line.startswith("| State (number) |"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    transitions: dict[tuple[State, Command], State] = {}
    completes: dict[State, State] = {}
    seen: list[State] = []
    for line in text.splitlines():
        match = re.match(r"\| (\w+) \((\d+)\) \|", line)
        if match is None:
            continue
        state = S[match[1].upper()]
        assert int(state) == int(match[2]), line
        seen.append(state)
        cells = dict(
            zip(columns, (cell.strip() for cell in line.strip("|").split("|")), strict=True)
        )
        for command in Command:
            if cells[command.title] != "—":
                transitions[state, command] = S[cells[command.title].upper()]
        if cells["SC →"] != "—":
            completes[state] = S[cells["SC →"].upper()]
    assert sorted(seen) == sorted(STATES), "the README table lists every state once"
    return transitions, completes


def test_readme_table_is_the_model() -> None:
    transitions, completes = _readme_table()
    assert transitions == dict(TRANSITIONS)
    assert completes == dict(STATE_COMPLETE)


@pytest.mark.parametrize(("state", "command"), ALL_PAIRS, ids=lambda x: x.title)
def test_every_command_from_every_state(state: State, command: Command) -> None:
    m = StateMachine(state)
    seen: list[tuple[State, State]] = []
    m.on_change(lambda a, b: seen.append((a, b)))
    target = SPEC.get((state, command))
    if target is None:
        with pytest.raises(InvalidTransition) as refused:
            m.command(command)
        assert refused.value.state is state and refused.value.command is command
        assert f"{command.title} refused in state {state.title}" in str(refused.value)
        assert (m.state, seen) == (state, [])
        return
    assert m.command(command) is target and target in ACTING
    assert m.complete() is SPEC_SC[target]  # acting states complete to their wait state
    assert seen == [(state, target), (target, SPEC_SC[target])]


@pytest.mark.parametrize("state", sorted(WAIT), ids=lambda s: s.title)
def test_wait_states_have_no_state_complete(state: State) -> None:
    with pytest.raises(ValueError, match="wait state"):
        StateMachine(state).complete()


def test_undefined_is_not_a_state() -> None:
    with pytest.raises(ValueError, match="not a PackML state"):
        StateMachine(S.UNDEFINED)


@settings(max_examples=300)
@given(
    st.sampled_from(sorted(STATES)),
    st.lists(st.one_of(st.sampled_from(list(Command)), st.just("SC")), max_size=60),
)
def test_random_command_sequences(start: State, events: list[Command | str]) -> None:
    m = StateMachine(start)
    for event in events:
        before = m.state
        if event == "SC":
            if before in ACTING or before is S.EXECUTE:
                assert m.complete() is SPEC_SC[before]
            else:
                with pytest.raises(ValueError):
                    m.complete()
        else:
            assert isinstance(event, Command)
            if (before, event) in SPEC:
                assert m.command(event) is SPEC[before, event]
            else:
                with pytest.raises(InvalidTransition):
                    m.command(event)
                assert m.state is before
        assert m.state in STATES
        # An acting state always completes, within one step, to a state that is not acting.
        if m.state in ACTING:
            assert SPEC_SC[m.state] not in ACTING


# --- 2. the controller --------------------------------------------------------------------------


class HandLine:
    """LineActions whose actions wait until the test finishes them (``auto``: at once)."""

    def __init__(self) -> None:
        self.auto = False
        self.refusals: dict[Command, str] = {}
        self.pending: tuple[str, asyncio.Future[None]] | None = None
        self.calls: list[str] = []
        self.cancelled: list[str] = []

    def refuses(self, command: Command) -> str | None:
        return self.refusals.get(command)

    async def _act(self, name: str) -> None:
        self.calls.append(name)
        if self.auto:
            return
        done = asyncio.get_running_loop().create_future()
        self.pending = (name, done)
        try:
            await done
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise
        finally:
            if self.pending is not None and self.pending[1] is done:
                self.pending = None

    def finish(self, error: Exception | None = None) -> str:
        assert self.pending is not None, "no action is running"
        name, done = self.pending
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)
        return name

    async def start(self) -> None:
        await self._act("start")

    async def complete(self) -> None:
        await self._act("complete")

    async def reset(self) -> None:
        await self._act("reset")

    async def hold(self) -> None:
        await self._act("hold")

    async def unhold(self) -> None:
        await self._act("unhold")

    async def suspend(self) -> None:
        await self._act("suspend")

    async def unsuspend(self) -> None:
        await self._act("unsuspend")

    async def stop(self) -> None:
        await self._act("stop")

    async def abort(self) -> None:
        await self._act("abort")

    async def clear(self) -> None:
        await self._act("clear")


ACTION = {
    S.STARTING: "start",
    S.COMPLETING: "complete",
    S.RESETTING: "reset",
    S.HOLDING: "hold",
    S.UNHOLDING: "unhold",
    S.SUSPENDING: "suspend",
    S.UNSUSPENDING: "unsuspend",
    S.STOPPING: "stop",
    S.ABORTING: "abort",
    S.CLEARING: "clear",
}


async def spin() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_accepted_command_runs_its_action_then_completes() -> None:
    line = HandLine()
    c = PackMLController(line)
    assert await c.command(C.START) is S.STARTING
    await spin()
    assert (c.state, c.acting, line.calls) == (S.STARTING, S.STARTING, ["start"])
    assert c.last_command == "Start accepted in Idle"
    line.finish()
    assert await c.settled() is S.EXECUTE and c.acting is None


async def test_refusals_change_nothing_and_say_why() -> None:
    line = HandLine()
    line.refusals[C.START] = "no order is ready"
    alarms: list[str] = []
    c = PackMLController(line, alarm=alarms.append)
    with pytest.raises(CommandRefused, match="Start refused in state Idle: no order is ready"):
        await c.command(C.START)
    with pytest.raises(InvalidTransition, match=r"allowed: Start, Stop, Abort"):
        await c.command(C.HOLD)
    assert "Hold refused in state Idle" in c.last_command
    await spin()
    assert (c.state, line.calls, alarms) == (S.IDLE, [], [])


async def test_stop_while_starting_cancels_the_start() -> None:
    line = HandLine()
    c = PackMLController(line)
    await c.command(C.START)
    await spin()
    await c.command(C.STOP)
    await spin()
    assert line.cancelled == ["start"] and c.state is S.STOPPING
    assert line.finish() == "stop"
    assert await c.settled() is S.STOPPED


async def test_a_failing_action_aborts_with_an_alarm() -> None:
    line = HandLine()
    alarms: list[str] = []
    c = PackMLController(line, alarm=alarms.append)
    line.auto = True
    await c.command(C.START)
    await c.settled()
    line.auto = False
    await c.command(C.HOLD)
    await spin()
    line.finish(RuntimeError("PLC write failed"))
    await spin()
    assert c.state is S.ABORTING and alarms == ["packml Holding failed: PLC write failed"]
    line.finish(RuntimeError("PLC gone"))  # a failed abort still ends in Aborted
    assert await c.settled() is S.ABORTED and len(alarms) == 2


async def test_order_done_while_held_completes_after_unhold() -> None:
    line = HandLine()
    line.auto = True
    c = PackMLController(line)
    await c.command(C.START)
    await c.settled()
    await c.command(C.HOLD)
    await c.settled()
    await c.production_complete()
    assert c.state is S.HELD
    await c.command(C.UNHOLD)
    assert await c.settled() is S.COMPLETE  # Unholding → Execute → Completing → Complete
    await c.command(C.RESET)
    assert await c.settled() is S.IDLE
    await c.command(C.START)
    assert await c.settled() is S.EXECUTE  # Reset forgot the done order


async def test_fault_aborts_from_anywhere_but_the_abort_branch() -> None:
    line = HandLine()
    line.auto = True
    c = PackMLController(line)
    await c.fault("lost the PLC")
    assert await c.settled() is S.ABORTED
    await c.fault("again")
    assert c.state is S.ABORTED and line.calls == ["abort"]


class ControllerMachine(RuleBasedStateMachine):
    """Random interleavings of commands, action completions and failures, and line events."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.line = HandLine()
        self.alarms: list[str] = []
        self.c = PackMLController(self.line, alarm=self.alarms.append)

    def run(self, coro: Awaitable[Any]) -> Any:
        async def step() -> Any:
            result = await coro
            await spin()
            return result

        return self.loop.run_until_complete(step())

    @rule(command=st.sampled_from(list(Command)), refused=st.booleans())
    def command(self, command: Command, refused: bool) -> None:
        before = self.c.state
        self.line.refusals = {command: "not now"} if refused else {}
        if refused or (before, command) not in SPEC:
            with pytest.raises(CommandRefused):
                self.run(self.c.command(command))
            assert self.c.state is before
        else:
            assert self.run(self.c.command(command)) is SPEC[before, command]

    @rule(fail=st.booleans())
    def finish_action(self, fail: bool) -> None:
        if self.line.pending is None:
            return
        state = self.c.state
        self.line.finish(RuntimeError("failed") if fail else None)
        self.run(spin())
        if fail and state is not S.ABORTING:
            assert self.c.state is S.ABORTING
        else:
            assert self.c.state in (SPEC_SC[state], S.COMPLETING)  # Execute may lead on

    @rule()
    def production_complete(self) -> None:
        before = self.c.state
        self.run(self.c.production_complete())
        assert self.c.state is (S.COMPLETING if before is S.EXECUTE else before)

    @rule()
    def fault(self) -> None:
        before = self.c.state
        self.run(self.c.fault("line stop"))
        assert self.c.state is (before if before in (S.ABORTING, S.ABORTED) else S.ABORTING)

    @invariant()
    def consistent(self) -> None:
        state = self.c.state
        assert state in STATES
        # An acting state always has its action running; no other state has one.
        assert self.c.acting is (state if state in ACTING else None)
        pending = self.line.pending
        assert (pending[0] if pending else None) == ACTION.get(state)

    def teardown(self) -> None:
        # Every acting state completes: finish whatever runs, the machine comes to rest.
        for _ in range(10):
            if self.line.pending is None:
                break
            self.line.finish()
            self.run(spin())
        assert self.c.state in WAIT | {S.EXECUTE}
        self.run(self.c.close())
        self.loop.close()


ControllerMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None
)
test_controller_interleavings = ControllerMachine.TestCase


# --- 3. every command from every state over OPC UA ---------------------------------------------


class Rig:
    """One server, one client, a line the test finishes by hand."""

    def __init__(self, server: PackMLServer, client: Client, line: HandLine) -> None:
        self.server, self.client, self.line = server, client, line
        self.c = server.controller
        self.ns = 0

    async def open(self) -> None:
        self.ns = await self.client.get_namespace_index(NS)

    def node(self, path: str) -> Any:
        return self.client.get_node(f"ns={self.ns};s=Line.{path}")

    async def call(self, command: Command) -> None:
        await self.client.get_node(f"ns={self.ns};s=Line").call_method(f"{self.ns}:{command.title}")

    async def read_state(self) -> tuple[State, str]:
        number, name = await self.client.read_values(
            [self.node("Status.StateCurrent"), self.node("Status.StateName")]
        )
        return S(number), name

    async def state(self) -> State:
        """The state the server shows (both nodes agree: read right after a method call)."""
        state, name = await self.read_state()
        assert state.title == name
        return state

    async def wait_state(self, state: State) -> None:
        async def there() -> bool:
            return await self.read_state() == (state, state.title)

        await until(there, f"state {state.title}")

    async def rest(self) -> None:
        """Finish every running action: the machine rests in a wait state or Execute."""
        while self.line.pending is not None:
            self.line.finish()
            await spin()
        await self.c.settled()

    async def drive(self, to: State) -> None:
        """Reach ``to`` by commands over OPC UA (and the line's order-done event); an acting
        state is left with its action running."""
        await self.rest()
        self.line.auto = True
        steps = _path(self.c.state, to)
        for i, step in enumerate(steps):
            self.line.auto = i < len(steps) - 1 or to not in ACTING
            if step == "done":
                await self.c.production_complete()
            else:
                assert isinstance(step, Command)
                await self.call(step)
            await spin()
            if self.line.auto:
                await self.c.settled()
        assert self.c.state is to
        self.line.auto = False


def _path(start: State, to: State) -> list[Command | str]:
    """Shortest way from a resting state to ``to``: commands, and "done" for Execute's SC. Each
    step enters an acting state, which (but for the last one) completes at once."""

    def moves(state: State) -> list[tuple[Command | str, State]]:
        found: list[tuple[Command | str, State]] = [
            (command, SPEC[state, command]) for command in Command if (state, command) in SPEC
        ]
        if state is S.EXECUTE:
            found.append(("done", S.COMPLETING))
        return found

    queue: deque[tuple[State, list[Command | str]]] = deque([(start, [])])
    seen = {start}
    while queue:
        state, path = queue.popleft()
        if state is to:
            return path
        for move, acting in moves(state):
            if acting is to:
                return [*path, move]
            rested = SPEC_SC[acting]
            if rested not in seen:
                seen.add(rested)
                queue.append((rested, [*path, move]))
    raise AssertionError(f"no way from {start.title} to {to.title}")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def rig() -> AsyncIterator[Rig]:
    section = OpcUaServerSection(
        enabled=True,
        port=free_port(),
        security_policy="None",
        allow_anonymous=True,
        update_interval_ms=20,
    )
    line, stats = HandLine(), LineStats()
    controller = PackMLController(line, alarm=stats.alarms.append)
    async with PackMLServer(section, stats, controller) as server:
        client = Client(server.url, timeout=5)
        async with client:
            r = Rig(server, client, line)
            await r.open()
            yield r
        await server.controller.close()


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("state", sorted(STATES, key=lambda s: s.title), ids=lambda s: s.title)
async def test_every_command_over_opcua(rig: Rig, state: State) -> None:
    for command in Command:
        await rig.drive(state)
        await rig.wait_state(state)
        target = SPEC.get((state, command))
        if target is None:
            with pytest.raises(UaStatusCodeError, match="BadInvalidState"):
                await rig.call(command)
            assert await rig.state() is state  # nothing changed
            refused = await rig.node("Status.LastCommand").read_value()
            assert refused.startswith(f"{command.title} refused in state {state.title}")
            continue
        await rig.call(command)
        assert await rig.state() is target  # Good once the acting state is entered
        assert rig.line.pending is not None and rig.line.pending[0] == ACTION[target]
        rig.line.finish()
        await rig.wait_state(SPEC_SC[target])
    if state is S.EXECUTE:  # and its SC: the order is done
        await rig.drive(S.EXECUTE)
        await rig.c.production_complete()
        await rig.wait_state(S.COMPLETING)
        rig.line.finish()
        await rig.wait_state(S.COMPLETE)


@pytest.mark.asyncio(loop_scope="module")
async def test_line_refusal_and_failure_over_opcua(rig: Rig) -> None:
    await rig.drive(S.IDLE)
    rig.line.refusals[C.START] = "no order is ready"
    try:
        with pytest.raises(UaStatusCodeError, match="BadInvalidState"):
            await rig.call(C.START)
    finally:
        rig.line.refusals.clear()
    assert await rig.state() is S.IDLE
    last = await rig.node("Status.LastCommand").read_value()
    assert last == "Start refused in state Idle: no order is ready"
    await rig.call(C.START)
    rig.line.finish(RuntimeError("printer did not answer"))
    await rig.wait_state(S.ABORTING)
    rig.line.finish()
    await rig.wait_state(S.ABORTED)
    messages = await rig.node("Alarms.Messages").read_value()
    assert messages[-1] == "packml Starting failed: printer did not answer"


# --- 4. a SCADA client against running agents ---------------------------------------------------


@contextlib.asynccontextmanager
async def running_agent(
    tmp_path: Path, server: dict[str, Any], *, quantity: int = 5000
) -> AsyncIterator[tuple[SimulatorSet, asyncio.Task[Any], LineStats, Agent]]:
    overrides: dict[str, Any] = {
        "agent": {"state_dir": str(tmp_path / "state")},
        "orders": {**inbox_with(tmp_path / "inbox", quantity=quantity), "inbox_poll_s": 0.05},
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
        agent = Agent(config, stats=stats)
        task = asyncio.create_task(agent.serve())
        try:
            yield sims, task, stats, agent
        finally:
            agent.request_stop(LineStopped(StopReason.SHUTDOWN, "test over"))
            with contextlib.suppress(asyncio.CancelledError, LineStopped):
                await asyncio.wait_for(task, 30.0)


def ready_order(agent: Agent) -> bool:
    return agent.commands is not None and agent.commands.store.next_ready() is not None


async def connect(url: str) -> Client:
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


class Scada:
    def __init__(self, client: Client, ns: int) -> None:
        self.client, self.ns = client, ns

    def node(self, path: str) -> Any:
        return self.client.get_node(f"ns={self.ns};s=Line.{path}")

    async def call(self, name: str) -> None:
        await self.client.get_node(f"ns={self.ns};s=Line").call_method(f"{self.ns}:{name}")

    async def state(self) -> str:
        return str(await self.node("Status.StateName").read_value())

    async def wait(self, name: str, within: float = 15.0) -> None:
        async def there() -> bool:
            return await self.state() == name

        await until(there, name, within=within)

    async def printed(self) -> int:
        return int(await self.node("Admin.Printed").read_value())


@contextlib.asynccontextmanager
async def scada(port: int) -> AsyncIterator[Scada]:
    client = await connect(f"opc.tcp://127.0.0.1:{port}/edge-agent")
    try:
        yield Scada(client, await client.get_namespace_index(NS))
    finally:
        with contextlib.suppress(ConnectionError):
            await client.disconnect()


def server_options(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "port": port,
        "security_policy": "None",
        "allow_anonymous": True,
        "update_interval_ms": 50,
        **extra,
    }


@pytest.mark.slow
async def test_scada_drives_a_waiting_line_through_its_states(tmp_path: Path) -> None:
    """Stop and Abort while Idle, then Start, Hold, Suspend and Stop on the running line, and
    Start refused once no order is left; the server stays up with the daemon."""
    port = free_port()
    options = server_options(port, wait_for_start=True)
    async with running_agent(tmp_path, options) as (sims, task, stats, agent), scada(port) as ua:
        assert await ua.state() == "Idle"
        with pytest.raises(UaStatusCodeError, match="BadInvalidState"):
            await ua.call("Hold")
        await ua.call("Stop")  # nothing runs yet: Stopping completes at once
        await ua.wait("Stopped")
        await ua.call("Reset")
        await ua.wait("Idle")
        await ua.call("Abort")
        await ua.wait("Aborted")
        assert (await sims.plc.agent_status())["stop_reason"] == 22
        await ua.call("Clear")
        await ua.wait("Stopped")
        await ua.call("Reset")
        await ua.wait("Idle")
        assert await ua.printed() == 0 and not sims.plc.running()

        await until(lambda: ready_order(agent), "the order from the inbox")
        await ua.call("Start")
        await ua.wait("Execute")
        assert await ua.node("Status.BatchId").read_value() == "DEMO-BATCH-0001"
        await until(lambda: sims.plc.running(), "the PLC runs the line")
        await until(lambda: _above(ua.printed(), 5), "units counted")

        for pause, resume, paused in (
            ("Hold", "Unhold", "Held"),
            ("Suspend", "Unsuspend", "Suspended"),
        ):
            await ua.call(pause)
            await ua.wait(paused)
            assert not sims.plc.running()  # Held means the PLC reported the line stopped
            assert sims.plc.stops[-1][1] == StopCause.AGENT_REQUEST
            assert (await sims.plc.agent_status())["stop_reason"] == 20
            await asyncio.sleep(1.0)  # a unit the printer had started still reaches the camera
            held_at = sims.line.trigger_count
            await asyncio.sleep(0.5)
            assert sims.line.trigger_count == held_at  # the conveyor does not move
            await ua.call(resume)
            await ua.wait("Execute")
            await until(lambda at=held_at: sims.line.trigger_count > at + 3, "line moving again")
        assert not task.done()

        await ua.call("Stop")
        assert await ua.state() == "Stopping"
        await ua.wait("Stopped")  # the runtime has stopped through its line-stop path
        messages = await ua.node("Alarms.Messages").read_value()
        assert "operator_stop" in messages[-1]
        assert (await sims.plc.agent_status())["stop_reason"] == 21
        counts = [
            await ua.node(f"Admin.{x}").read_value() for x in ("Printed", "Passed", "Rejected")
        ]
        assert counts == [stats.units, stats.passed, stats.rejected]
        assert counts[0] == counts[1] + counts[2] > 5

        await ua.call("Reset")
        await ua.wait("Idle")
        with pytest.raises(UaStatusCodeError, match="BadInvalidState"):
            await ua.call("Start")  # the order has ended: nothing to start
        assert await ua.state() == "Idle"
        last = await ua.node("Status.LastCommand").read_value()
        assert last.startswith("Start refused in state Idle: no order is ready to start")
        assert not task.done()  # the daemon, and its server, stay up


@pytest.mark.slow
async def test_scada_sees_a_batch_start_and_complete_by_itself(tmp_path: Path) -> None:
    port = free_port()
    options = server_options(port)
    async with (
        running_agent(tmp_path, options, quantity=40) as (_, task, _stats, _agent),
        scada(port) as ua,
    ):
        await ua.wait("Complete", within=30.0)  # Starting → Execute → Completing → Complete
        assert await ua.printed() >= 40
        await ua.call("Abort")
        await ua.wait("Aborted")
        await ua.call("Clear")
        await ua.wait("Stopped")
        await ua.call("Reset")
        await ua.wait("Idle")
        with pytest.raises(UaStatusCodeError, match="BadInvalidState"):
            await ua.call("Start")
        assert not task.done()


@pytest.mark.slow
async def test_the_server_stays_up_across_three_orders_and_shows_each(tmp_path: Path) -> None:
    """One server for the daemon's life: each order in turn is the current one, runs to
    Complete by itself, and the server answers all along (issue 11)."""
    from simulators.pytest_plugin import drop_order, order_for

    port = free_port()
    async with (
        running_agent(tmp_path, server_options(port), quantity=20) as (_, task, _stats, agent),
        scada(port) as ua,
    ):
        seen = []
        for number in (1, 2, 3):
            if number > 1:  # the next order arrives once the one before has ended
                order_id = f"WO-PACKML-{number}"
                drop_order(tmp_path / "inbox", order_for(id=order_id, quantity=20))
                await until(
                    lambda order_id=order_id: agent.commands is not None
                    and agent.commands.store.find(order_id) is not None,
                    "the next order stored",
                    within=30,
                )

            async def current_order_completed(known: int = len(seen)) -> bool:
                order = str(await ua.node("Status.BatchId").read_value())
                done = await ua.state() == "Complete"
                return done and bool(order) and order not in seen[:known]

            await until(current_order_completed, f"order {number} complete", within=60)
            seen.append(str(await ua.node("Status.BatchId").read_value()))
            assert not task.done()
        assert len(set(seen)) == 3, seen
        assert await ua.printed() >= 20


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
                # No line attached: every action completes at once.
                await good.get_node(f"ns={ns};s=Line").call_method(f"{ns}:Start")
                assert await server.controller.settled() is State.EXECUTE
            rogue = await client_for(pki.rogue_cert, pki.rogue_key, "mes-pw")
            with pytest.raises(UaStatusCodeError, match="BadCertificateUntrusted"):
                async with rogue:
                    pass
            wrong = await client_for(pki.client_cert, pki.client_key, "guess")
            with pytest.raises(UaStatusCodeError, match="BadUserAccessDenied"):
                async with wrong:
                    pass
            await server.controller.close()


def test_server_section_is_off_by_default_and_needs_a_way_in() -> None:
    section = OpcUaServerSection()
    assert section.enabled is False and section.security_policy == "Basic256Sha256"
    with pytest.raises(ValueError, match="needs certificate"):
        OpcUaServerSection(enabled=True)
    with pytest.raises(ValueError, match="nobody could log in"):
        OpcUaServerSection(enabled=True, security_policy="None")
    OpcUaServerSection(enabled=True, security_policy="None", allow_anonymous=True)
