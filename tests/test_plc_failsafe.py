"""The PLC contract fails safe on both sides, over Modbus TCP and Modbus RTU (pty).

The acceptance cases of the PLC issue, and where each is shown:

* agent killed → the PLC stops the line within its heartbeat timeout:
  ``test_killed_agent_stops_the_line`` (a real ``edge-agent run`` process, SIGKILLed); an agent
  that stays connected but stops beating: ``test_plc_modbus.py::test_heartbeat_loss_stops_line_with_cause_1``.
* PLC link lost → the agent stops accepting units: Modbus TCP in
  ``test_line_runtime.py::test_lost_plc_link_stops_the_line``; Modbus RTU (cut cable) in
  ``test_cut_rtu_cable_stops_the_agent`` here; a lost PLC heartbeat is a line stop too
  (``LineRuntime._heartbeat``).
* verdict late → unit rejected: at the PLC (a verdict written after the unit reached the gate
  cannot pass it) in ``test_verdict_after_the_gate_is_a_reject`` (also over OPC UA); in the
  agent (a verdict not ready within ``verdict_deadline_ms`` is written as a reject) in
  ``test_slow_decode_is_rejected_late``.
* missing reject confirms → alarm, line stop after N in a row:
  ``test_missing_reject_confirms_stop_the_line``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.plc.modbus import registers as reg
from edge_agent.config.models import CameraSim, PlcSim, PrinterSim, SimulatorsSection
from edge_agent.contracts import PlcState, Verdict
from edge_agent.db import open_db
from edge_agent.ledger import Ledger, SerialState, UnitOutcome
from edge_agent.line.job import LineJob
from edge_agent.line.runtime import LineRuntime
from edge_agent.line.stats import LineStats
from edge_agent.reconcile import reconcile
from edge_agent.registry import driver_class
from edge_agent.stops import StopReason
from edge_agent.vision.pipeline import DecodePipeline
from simulators.line import SimLine
from simulators.pytest_plugin import drop_order, order_for
from simulators.runner import SimulatorSet, simulator_class
from tests.helpers.line import (
    check_gate_matches_ledger,
    column,
    gates_settled,
    resume_agent,
    run_agent,
    state_db,
    units_by_trigger,
)
from tests.helpers.plc import send_unit
from tests.helpers.waiting import until

pytestmark = pytest.mark.slow

TRANSPORTS = ["modbus-tcp", "modbus-rtu"]
HEARTBEAT_TIMEOUT_S = 1.0
READ_POINT = "urn:epc:id:sgln:0950600.01340.T"


def job_of(batch: Any) -> LineJob:
    return LineJob(batch.id, batch.gtin, batch.lot, batch.expiry, batch.target)


def simulators(plc_type: str, *, defect_rate: float = 0.0, seed: int = 1, **line: Any) -> Any:
    return SimulatorsSection(
        units_per_min=line.get("units_per_min"),
        printer=PrinterSim(port=0, buffer_size=16),
        camera=CameraSim(port=0, defect_rate=defect_rate, seed=seed),
        plc=PlcSim(
            type=plc_type,
            port=0,
            gate_delay_s=0.6,
            heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
            ring_size=512,
        ),
    )


def make_config(factory: Any, sims: SimulatorSet, units: int, **line: Any) -> Any:
    """Agent config on these simulators, with every device section the simulator's own."""
    from edge_agent.config import parse_config
    from simulators.demo.line import demo_config_text

    line = {"verdict_deadline_ms": 500, **line}
    state_dir = factory().model.agent.state_dir  # the fixture's temporary state directory
    sections = sims.device_configs()
    sections["plc"] = sims.plc.driver_config(timeout_s=0.3)
    overrides = {
        "agent": {"state_dir": str(state_dir)},
        "orders": {"inbox": str(state_dir.parent / "inbox")},
        "line": line,
    }
    drop_order(state_dir.parent / "inbox", order_for(quantity=units))
    return parse_config(demo_config_text(), "demo.toml", overrides, sections=sections)


async def hr(sims: SimulatorSet, address: int, count: int = 1) -> list[int]:
    return [int(v) for v in await sims.plc._get(3, address, count)]


# --- PLC side: no heartbeat, no line -----------------------------------------------------------


def _toml(sections: dict[str, dict[str, Any]]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    return "".join(
        f"[{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in body.items()) + "\n"
        for name, body in sections.items()
    )


@pytest.mark.parametrize("plc_type", TRANSPORTS)
async def test_killed_agent_stops_the_line(plc_type: str, tmp_path: Path) -> None:
    """A real agent process runs the line; SIGKILL leaves no chance to say goodbye."""
    section = simulators(plc_type, units_per_min=1200)
    async with SimulatorSet(section) as sims:
        config = tmp_path / "agent.toml"
        config.write_text(
            _toml(
                {
                    "agent": {"state_dir": str(tmp_path / "state"), "log_format": "json"},
                    "line": {
                        "verdict_deadline_ms": 500,
                        "heartbeat_interval_ms": 100,
                        "read_point": "urn:epc:id:sgln:0950600.01340.DEMO",
                    },
                    "orders": {"inbox": str(tmp_path / "inbox")},
                    "printer": sims.printer.driver_config(),
                    "camera": sims.camera.driver_config(),
                    "plc": sims.plc.driver_config(),
                }
            )
        )
        drop_order(tmp_path / "inbox", order_for(id="KILL-1", quantity=100_000))
        log = (tmp_path / "agent.out").open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge_agent.cli",
            "run",
            "--config",
            str(config),
            stdout=log,
            stderr=log,
        )
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
            await until(lambda: bool(sims.plc.stops), within=HEARTBEAT_TIMEOUT_S + 3.0)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            log.close()
        stopped_at, cause = sims.plc.stops[0]
        # TCP: the socket closes with the process (cause 3 at once); RTU: silence on the bus.
        assert cause in (reg.StopCause.LINK_DROPPED, reg.StopCause.HEARTBEAT_LOST)
        assert stopped_at - killed_at <= HEARTBEAT_TIMEOUT_S + 0.5  # + scan time under load
        # The printer may finish the slot it was in when the line stopped; then nothing moves.
        await asyncio.sleep(0.2)
        await sims.line.drain()
        triggered = sims.line.trigger_count
        await asyncio.sleep(0.3)
        assert sims.line.trigger_count == triggered, "the line kept running"
        assert not sims.plc.running()


# --- agent side: no PLC, no units ---------------------------------------------------------------


async def test_cut_rtu_cable_stops_the_agent(agent_config_factory: Any) -> None:
    """The cable is cut mid-batch: the agent stops, the PLC stops the line, and passes whose
    verdict write was lost stay unsettled in the ledger until the link is back; the restarted
    agent settles them from the PLC's reject log and finishes the batch."""
    units = 150
    async with SimulatorSet(simulators("modbus-rtu")) as sims:
        config = make_config(agent_config_factory, sims, units)

        async def cut_the_cable() -> None:
            await until(lambda: sims.line.trigger_count >= 40, within=30.0)
            sims.plc.drop_link()

        injector = asyncio.ensure_future(cut_the_cable())
        try:
            stopped = await asyncio.wait_for(run_agent(config), 60)
        finally:
            injector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await injector
        await until(lambda: bool(sims.plc.stops), within=HEARTBEAT_TIMEOUT_S + 2.0)
        await asyncio.sleep(0.2)  # the printer may finish the slot it was in
        await sims.line.drain()
        triggered = sims.line.trigger_count
        await asyncio.sleep(0.3)
        assert sims.line.trigger_count == triggered, "the line kept running"
        assert stopped is not None and stopped.reason == "device_error"
        assert "no answer" in str(stopped)
        # A serial PLC cannot tell a cut cable from a dead agent: both are silence.
        silent = (reg.StopCause.HEARTBEAT_LOST, reg.StopCause.LINK_DROPPED)
        assert sims.plc.stops[-1][1] in silent
        assert not sims.plc.running()
        assert triggered < units
        with state_db(config) as conn:
            unsettled = column(
                conn, "SELECT trigger FROM units WHERE verdict = 'pass' AND verdict_written = 0"
            )
        # Only units decided around the cut can be unsettled, never one the PLC let through
        # without a written pass.
        assert set(sims.plc.passed_triggers).isdisjoint(unsettled) or all(
            t <= triggered for t in unsettled
        )

        sims.plc.restore_link()
        # restart, and the operator resumes the order: the lost writes are settled first
        assert await asyncio.wait_for(resume_agent(config), 90) is None
        await gates_settled(sims)
        with state_db(config) as conn:
            report = reconcile(conn)
            check_gate_matches_ledger(conn, sims)  # the lost writes are settled as rejects

    assert report["balanced"], report["problems"]
    assert report["batch_state"] == "closed"


# --- late verdicts ------------------------------------------------------------------------------


# The PLC-side rule is transport-neutral: include OPC UA when its driver is present.
GATE_TRANSPORTS = TRANSPORTS + (["opcua"] if importlib.util.find_spec("drivers.plc.opcua") else [])


@pytest.fixture(params=GATE_TRANSPORTS)
async def plc_pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[SimLine, Any, Any]]:
    line = SimLine(units_per_min=None)
    sim = simulator_class("plc", request.param)(line, gate_delay_s=0.05, heartbeat_timeout_s=5.0)
    async with sim, driver_class("plc", request.param)("plc", sim.driver_config()) as plc:
        yield line, sim, plc


async def test_verdict_after_the_gate_is_a_reject(plc_pair: tuple[SimLine, Any, Any]) -> None:
    line, sim, plc = plc_pair
    trigger = await send_unit(line)
    await until(lambda: trigger in sim.rejected_triggers, what="the gate without a verdict")
    await plc.write_verdict(trigger, Verdict.PASS)  # too late: the unit is gone
    on_time = await send_unit(line)
    await plc.write_verdict(on_time, Verdict.PASS)
    await until(lambda: on_time in sim.passed_triggers + sim.rejected_triggers)
    assert sim.rejected_triggers == [trigger]
    assert sim.passed_triggers == [on_time]
    assert list(await plc.recent_rejects()) == [trigger]


async def test_slow_decode_is_rejected_late(
    agent_config_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decoder stalls on a few frames for longer than the gate delay: those units (and the
    ones queued behind them) are rejected, by the agent as late and physically at the gate."""
    read = DecodePipeline.read
    calls = [0]

    def stalling_read(self: DecodePipeline, image: Any) -> Any:
        calls[0] += 1
        if calls[0] in (30, 31):  # after warm-up, two units in the middle of the batch
            time.sleep(0.9)
        return read(self, image)

    monkeypatch.setattr(DecodePipeline, "read", stalling_read)
    async with SimulatorSet(simulators("modbus-tcp")) as sims:
        config = make_config(agent_config_factory, sims, 80, max_consecutive_rejects=50)
        stats = LineStats()
        assert await run_agent(config, stats) is None
        await gates_settled(sims)
        with state_db(config) as conn:
            report = reconcile(conn)
            decided = units_by_trigger(conn)
            check_gate_matches_ledger(conn, sims)

    late = {t for t, (verdict, reason) in decided.items() if reason == "late_verdict"}
    assert late, f"no late verdicts; reasons: {stats.by_reason}"
    assert all(decided[t][0] == "reject" for t in late)
    assert late <= set(sims.plc.rejected_triggers)
    assert report["balanced"], report["problems"]


# --- reject confirms ---------------------------------------------------------------------------


@pytest.mark.parametrize("plc_type", TRANSPORTS)
async def test_missing_reject_confirms_stop_the_line(
    plc_type: str, agent_config_factory: Any
) -> None:
    # A paced line: at full speed 200 units can be through before the third confirm is due.
    paced = simulators(plc_type, defect_rate=0.3, seed=5, units_per_min=3000)
    async with SimulatorSet(paced) as sims:
        sims.plc.withhold_confirms = True  # the reject sensor sees nothing leave
        config = make_config(
            agent_config_factory,
            sims,
            200,
            max_missing_confirms=3,
            reject_confirm_timeout_ms=800,  # above the 0.6 s gate delay
            max_consecutive_rejects=50,
        )
        stats = LineStats()
        stopped = await asyncio.wait_for(run_agent(config, stats), 60)
        await gates_settled(sims)
        await until(  # the PLC acts on the stop request at its next scan
            lambda: int(reg.StopCause.AGENT_REQUEST) in [cause for _, cause in sims.plc.stops],
            what="the PLC stopping on the agent's request",
        )
        stop_reason = await hr(sims, reg.HR_STOP_REASON)
        status = await sims.plc.agent_status()
        with state_db(config) as conn:
            commissioned = column(conn, "SELECT trigger FROM serials WHERE state = 'commissioned'")
    # Nothing passed the gate without a commissioned serial. The converse needs the confirms this
    # test withholds: a pass that reached the PLC too late (a loaded machine) is rejected at the
    # gate, and only its confirm would tell the agent; the missing confirms stop the line instead.
    assert set(sims.plc.passed_triggers) <= set(commissioned)

    assert stopped is not None and stopped.reason == "reject_confirm_missing"
    missing = [a for a in stats.alarms if a.startswith("reject_confirm_missing: trigger")]
    assert len(missing) >= 3, stats.alarms  # each missing confirm is an alarm of its own
    assert stop_reason == [StopReason.REJECT_CONFIRM_MISSING.code] == [13]
    # The PLC can read why and where the agent stands: state STOPPED, 3 missing in a row.
    assert status[0] == reg.AgentState.STOPPED and status[1] >= 3
    assert reg.join_u32(status[2], status[3]) == stats.units
    assert sims.line.trigger_count < 200


# --- settling passes whose PLC write may be lost ------------------------------------------------


class FrozenPlc:
    """A PLC link that only answers the two questions settlement asks (no wire needed here)."""

    def __init__(self, rejected: int, confirms: int, log: list[int]) -> None:
        self.state = PlcState(0, False, 3, 3 - rejected, rejected, confirms)
        self.log = log

    async def read_state(self) -> PlcState:
        return self.state

    async def recent_rejects(self) -> list[int]:
        return self.log


@pytest.mark.parametrize(
    ("rejected", "confirms", "still_unsettled"),
    [(1, 1, []), (2, 1, [1, 3])],  # every reject confirmed / one reject not confirmed
)
async def test_passes_settle_only_on_a_complete_reject_log(
    agent_config_factory: Any, rejected: int, confirms: int, still_unsettled: list[int]
) -> None:
    """Three committed passes whose writes may have been lost; the log shows trigger 2 rejected.
    With every gate reject confirmed, 1 and 3 are known to have passed. With a reject still
    unconfirmed, "not in the log" proves nothing: 1 and 3 stay unsettled, with an alarm."""
    config = agent_config_factory()
    ledger = Ledger(
        open_db(config.model.agent.state_dir), read_point=READ_POINT, company_prefix_length=7
    )
    try:
        batch = ledger.open_batch("B1", "09506000134352", "LOT1", "281231", 10)
        serials = []
        for trigger in (1, 2, 3):
            ledger.ensure_allocated(batch, 1, length=10, alphabet="0123456789ABCDEF")
            taken = ledger.take_for_print(batch)
            assert taken is not None
            ledger.mark_printed(batch, taken[1])
            ledger.commit_outcomes(batch, [UnitOutcome(trigger, True, "ok", taken[1])])
            serials.append(taken[1])
        stats = LineStats()
        plc = FrozenPlc(rejected, confirms, [2])
        runtime = LineRuntime(
            config.model,
            ledger,
            job_of(batch),
            printer=None,
            camera=None,
            plc=plc,
            reader=None,
            stats=stats,
        )  # type: ignore[arg-type]
        runtime.batch = batch
        await runtime._settle_unwritten_passes(ledger.unwritten_passes(batch))
        assert [t for t, _ in ledger.unwritten_passes(batch)] == still_unsettled
        assert ledger.state_of(batch.gtin, serials[1]) == SerialState.REJECTED
        for serial in (serials[0], serials[2]):
            assert ledger.state_of(batch.gtin, serial) == SerialState.COMMISSIONED
        assert bool(still_unsettled) == any("passes_unverifiable" in a for a in stats.alarms)
    finally:
        ledger.conn.close()


async def test_a_confirm_landing_between_counter_and_log_is_not_skipped(
    agent_config_factory: Any,
) -> None:
    """The counter says 2 new confirms; by the time the log is read a third has landed. All
    three passes the gate rejected must be decommissioned, none skipped."""
    config = agent_config_factory()
    ledger = Ledger(
        open_db(config.model.agent.state_dir), read_point=READ_POINT, company_prefix_length=7
    )
    try:
        batch = ledger.open_batch("B1", "09506000134352", "LOT1", "281231", 10)
        serials = []
        for trigger in (1, 2, 3):
            ledger.ensure_allocated(batch, 1, length=10, alphabet="0123456789ABCDEF")
            taken = ledger.take_for_print(batch)
            assert taken is not None
            ledger.mark_printed(batch, taken[1])
            ledger.commit_outcomes(batch, [UnitOutcome(trigger, True, "ok", taken[1])])
            ledger.mark_verdicts_written(batch, [trigger])
            serials.append(taken[1])
        plc = FrozenPlc(rejected=2, confirms=2, log=[1, 2, 3])
        runtime = LineRuntime(
            config.model, ledger, job_of(batch), printer=None, camera=None, plc=plc, reader=None
        )  # type: ignore[arg-type]
        runtime.batch = batch
        runtime._confirms_seen = 0
        await runtime._poll_rejects()
        for serial in serials:
            assert ledger.state_of(batch.gtin, serial) == SerialState.REJECTED
        plc.state = PlcState(0, False, 3, 0, 3, 3)  # the next poll sees the third: no repeat
        await runtime._poll_rejects()
        assert runtime.stats.by_reason["rejected_at_gate"] == 3
    finally:
        ledger.conn.close()
