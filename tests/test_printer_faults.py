"""Fault injection across printer protocols: the whole agent against the simulated line.

For every printer type in the simulator catalog and every fault kind, a short batch runs with the
fault injected while units flow, and the outcome must keep the ledger's promises:

* no serial is printed twice (the simulated print head's own record) or sent twice;
* no serial is commissioned without the printer's confirmation (its ``printed`` transition);
* the gate let through exactly the units of commissioned serials;
* a fault that stops printing stops the line, and the alarm names it with the printer's own code.

A lost link with ``printer_reconnect = "stop"`` additionally restarts the agent: the printer's
queue is reconciled with the ledger (``edge_agent/line/printer_reconcile.py``) and the batch
completes, nothing re-sent (in-process reconnect: ``tests/test_printer_reconnect.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_agent.app import Agent
from edge_agent.config import parse_config
from edge_agent.config.models import CameraSim, PlcSim, PrinterSim, SimulatorsSection
from edge_agent.db import open_reader
from edge_agent.demo import demo_config_text
from edge_agent.errors import LineStopped
from edge_agent.reconcile import reconcile
from edge_agent.registry import driver_class
from simulators.catalog import SIMULATOR_TYPES
from simulators.runner import SimulatorSet

UNITS = 30
FAULT_AFTER = 8  # printed units before the fault is injected


# --- how to break each printer ---------------------------------------------------------------


@dataclass(frozen=True)
class Kit:
    """Fault injection for one printer type, in that printer's own terms."""

    codes: dict[str, str]  # fault kind -> the code the printer reports (and the alarm names)
    raise_fault: Callable[[Any, str], None]
    lose_confirmations: Callable[[Any, int], None]
    delay: Callable[[Any, float], None]
    silence: Callable[[Any], None]
    silence_alarm: str  # what the alarm of a printer that stopped answering says
    garbage: bytes
    lost_confirmations_rejected: bool  # True: a lost notice is gone; False: the next poll has it
    overrides: dict[str, Any]  # driver settings that keep timeouts short in tests
    # Printer to camera. A polled printer confirms a missed poll late: the unit must still be
    # on its way to the camera then (a print-and-apply label printer sits well upstream).
    transit_s: float = 0.0
    # A serial link cannot be dropped, only silenced (see test_printer_that_stops_answering):
    # the lost-link scenario runs the printer over TCP
    lost_link_transport: str | None = None


def _stream_kit(
    codes: dict[str, str],
    garbage: bytes,
    silence_alarm: str,
    lost_link_transport: str | None = None,
) -> Kit:
    """ascii, zipher, rci: notification protocols with the same simulator faults API."""

    def silence(sim: Any) -> None:
        sim.faults.reply_delay_s = 60.0

    def delay(sim: Any, seconds: float) -> None:
        sim.faults.reply_delay_s = seconds

    return Kit(
        codes=codes,
        raise_fault=lambda sim, code: sim.faults.raise_fault(code, f"{code} (injected)"),
        lose_confirmations=lambda sim, n: sim.faults.lose_next_confirmations(n),
        delay=delay,
        silence=silence,
        silence_alarm=silence_alarm,
        garbage=garbage,
        lost_confirmations_rejected=True,
        overrides={"reply_timeout_s": 0.5},
        lost_link_transport=lost_link_transport,
    )


def _zpl_raise(sim: Any, code: str) -> None:
    sim.faults.set_flag(code.lower())


def _zpl_delay(sim: Any, seconds: float) -> None:
    sim.faults.reply_delay_s = seconds


KITS: dict[str, Kit] = {
    "ascii": _stream_kit(
        {"ink_out": "INK_OUT", "head_fault": "HEAD_FAULT", "buffer_underrun": "BUFFER_UNDERRUN"},
        b"\x00\xff\xfeGARBAGE|||\r\nACK|NOPE\r\n!PRC|x|\r\n",
        "no reply to REC",
    ),
    "zipher": _stream_kit(
        {"ink_out": "INK_OUT", "head_fault": "HEAD_FAULT", "buffer_underrun": "BUFFER_UNDERRUN"},
        b"\x00\xff\xfeGARBAGE|||\r\nACK|NOPE|\r\nPRC|x|\r\n",
        "no reply to",
    ),
    "rci": _stream_kit(
        {"ink_out": "INK_OUT", "head_fault": "HEAD_FAULT", "buffer_underrun": "BUFFER_UNDERRUN"},
        b"\x00\xff\x1b\x02\x05garbage\x99\x1b\x03\xfe",  # noise, and a frame with a bad checksum
        "no reply to",
        lost_link_transport="tcp",
    ),
    "zpl": Kit(
        # A label printer's equivalents: ribbon out, print head up (open), media (paper) out
        codes={"ink_out": "RIBBON_OUT", "head_fault": "HEAD_UP", "buffer_underrun": "PAPER_OUT"},
        raise_fault=_zpl_raise,
        lose_confirmations=lambda sim, n: sim.faults.lose_status_answers(n),
        delay=_zpl_delay,
        silence=lambda sim: sim.faults.lose_status_answers(10**6),
        silence_alarm="no answer to ~HS",
        garbage=b"\x02\xff\xfe030,1\x03\r\n garbage \x00\x03",
        lost_confirmations_rejected=False,
        overrides={"status_timeout_s": 0.3, "max_missed_status": 3},
        transit_s=1.0,
    ),
}


def printer_types() -> list[str]:
    # Every catalog printer must have a kit: test_every_catalog_printer_has_a_fault_kit
    return sorted(KITS)


# --- running a line ----------------------------------------------------------------------------


def simulators(printer_type: str, transport: str | None = None) -> SimulatorsSection:
    return SimulatorsSection(
        units_per_min=None,
        transit_s=KITS[printer_type].transit_s,
        printer=PrinterSim(type=printer_type, port=0, buffer_size=16, transport=transport),
        camera=CameraSim(port=0, defect_rate=0.0, seed=1),
        plc=PlcSim(port=0, gate_delay_s=0.6, heartbeat_timeout_s=1.0, ring_size=512),
    )


def agent_config(sims: SimulatorSet, state: Path, printer_type: str, **line: Any) -> Any:
    sections = sims.device_configs()
    sections["printer"] = sections["printer"] | KITS[printer_type].overrides
    overrides = {
        "agent": {"state_dir": str(state)},
        "batch": {"target_quantity": UNITS},
        "line": {"verdict_deadline_ms": 500, **line},
        "plc": {"ring_size": 512},
    }
    return parse_config(demo_config_text(), "demo.toml", overrides, sections=sections)


async def until(condition: Callable[[], bool], what: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.005)


async def run_agent(config: Any) -> LineStopped | None:
    try:
        async with asyncio.timeout(30):
            await Agent(config).run()
    except LineStopped as exc:
        return exc
    return None


@contextlib.asynccontextmanager
async def injecting(
    sims: SimulatorSet, inject: Callable[[], Awaitable[None] | None]
) -> AsyncIterator[None]:
    """Inject the fault once FAULT_AFTER units are printed, while the agent runs."""

    async def job() -> None:
        await until(lambda: len(sims.printer.printed) >= FAULT_AFTER, "printed units")
        result = inject()
        if result is not None:
            await result

    task = asyncio.create_task(job())
    try:
        yield
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def operator_reset(sims: SimulatorSet) -> None:
    """What the operator does after a line stop: clear the agent's stop request, acknowledge."""
    plc_config = sims.plc.driver_config()
    cls = driver_class("plc", plc_config["type"])
    async with cls("plc", cls.Config(**plc_config)) as plc:
        await plc.clear_line_stop()
    sims.plc.acknowledge()


class Conveyor:
    """A run permit on the simulated line, as a stopped conveyor: nothing is printed meanwhile."""

    def __init__(self, line: Any) -> None:
        self._line = line
        self._running = True
        line.add_run_permit(lambda: self._running)

    def halt(self) -> None:
        self._running = False
        self._line.notify_run_state()

    def run(self) -> None:
        self._running = True
        self._line.notify_run_state()


def column(conn: sqlite3.Connection, sql: str, *args: Any) -> list[Any]:
    return [row[0] for row in conn.execute(sql, args)]


def check_invariants(state: Path, sims: SimulatorSet) -> dict[str, Any]:
    """The ledger's promises, whatever the fault; returns the reconciliation report."""
    printed = sims.printer.printed
    with contextlib.closing(open_reader(state)) as conn:
        report = reconcile(conn)
        sent = column(conn, "SELECT serial FROM serials WHERE seq IS NOT NULL")
        seqs = column(conn, "SELECT seq FROM serials WHERE seq IS NOT NULL")
        commissioned = column(conn, "SELECT serial FROM serials WHERE state = 'commissioned'")
        confirmed = set(
            column(
                conn,
                "SELECT serial FROM transitions WHERE to_state = 'printed' "
                "AND reason = 'print_confirmed'",
            )
        )
        triggers = column(conn, "SELECT trigger FROM serials WHERE state = 'commissioned'")
    assert len(printed) == len(set(printed)), "a serial was printed twice"
    assert len(seqs) == len(set(seqs)), "a record number was used twice"
    assert set(printed) <= set(sent), "the printer printed a serial the ledger never sent"
    assert set(commissioned) <= confirmed, "a serial was commissioned without confirmation"
    assert set(commissioned) <= set(printed), "a commissioned serial was never printed"
    assert sorted(sims.plc.passed_triggers) == sorted(triggers), "gate and ledger differ"
    assert report["duplicates"] == 0 and report["passed"] == report["serials_commissioned"]
    return report


# --- the matrix --------------------------------------------------------------------------------

pytestmark = pytest.mark.slow
each_printer = pytest.mark.parametrize("printer_type", printer_types())


def test_every_catalog_printer_has_a_fault_kit() -> None:
    missing = sorted(set(SIMULATOR_TYPES["printer"]) - set(KITS))
    assert not missing, f"printer types without fault tests (add a Kit to KITS): {missing}"


@each_printer

@pytest.mark.parametrize("kind", ["ink_out", "head_fault", "buffer_underrun"])
async def test_printer_reported_fault_stops_the_line_naming_its_code(
    printer_type: str, kind: str, tmp_path: Path
) -> None:
    kit = KITS[printer_type]
    async with SimulatorSet(simulators(printer_type)) as sims:
        config = agent_config(sims, tmp_path, printer_type)
        code = kit.codes[kind]
        async with injecting(sims, lambda: kit.raise_fault(sims.printer, code)):
            stopped = await run_agent(config)
        await sims.line.drain()
        report = check_invariants(tmp_path, sims)
    assert stopped is not None and stopped.reason == "device_error"
    assert code in str(stopped), f"the alarm does not name {code}: {stopped}"
    assert FAULT_AFTER <= len(sims.printer.printed) < UNITS
    assert report["batch_state"] == "open"


@each_printer
async def test_lost_link_stops_then_restart_reconciles_the_queue(
    printer_type: str, tmp_path: Path
) -> None:
    transport = KITS[printer_type].lost_link_transport
    async with SimulatorSet(simulators(printer_type, transport)) as sims:
        # "stop": no in-process reconnect (tests/test_printer_reconnect.py has that)
        config = agent_config(sims, tmp_path, printer_type, printer_reconnect="stop")
        printer, line = sims.printer, sims.line
        conveyor = Conveyor(line)

        async def pull_the_cable() -> None:
            conveyor.halt()  # records stay queued in the printer across the outage
            await until(lambda: printer.buffered > 0, "records queued in the printer")
            printer.faults.drop_connection()

        async with injecting(sims, pull_the_cable):
            stopped = await run_agent(config)
        assert stopped is not None and stopped.reason == "device_error"
        assert "printer" in str(stopped)
        queued = printer.buffered
        assert queued > 0, "nothing was queued in the printer when the link dropped"
        # The operator clears the conveyor between printer and camera, then resets the stop
        await until(lambda: line.trigger_count == len(printer.printed), "units to clear")
        await line.drain()
        check_invariants(tmp_path, sims)
        printed_before = list(printer.printed)

        await operator_reset(sims)
        restart = asyncio.create_task(run_agent(config))

        def reconciled() -> bool:
            with contextlib.closing(open_reader(tmp_path)) as conn:
                return bool(
                    column(conn, "SELECT 1 FROM serials WHERE reason = 'cleared_from_printer'")
                )

        # The conveyor runs again only once the old queue is cancelled, so none of it can print
        await until(lambda: restart.done() or reconciled(), "the queue to be cancelled")
        conveyor.run()
        assert await restart is None, "the restarted batch did not complete"
        await until(lambda: line.trigger_count == len(printer.printed), "units to clear")
        await line.drain()
        report = check_invariants(tmp_path, sims)
        with contextlib.closing(open_reader(tmp_path)) as conn:
            cleared = column(
                conn, "SELECT serial FROM serials WHERE reason = 'cleared_from_printer'"
            )
    assert report["balanced"], report["problems"]
    assert report["batch_state"] == "closed"
    assert len(cleared) == queued, "the cancelled records are not the ones settled unused"
    assert not set(cleared) & set(printer.printed), "a cancelled record was printed"
    assert printer.printed[: len(printed_before)] == printed_before
    assert len(printer.printed) > len(printed_before)


@each_printer
async def test_printer_that_stops_answering_stops_the_line(
    printer_type: str, tmp_path: Path
) -> None:
    kit = KITS[printer_type]
    async with SimulatorSet(simulators(printer_type)) as sims:
        config = agent_config(sims, tmp_path, printer_type)
        async with injecting(sims, lambda: kit.silence(sims.printer)):
            stopped = await run_agent(config)
        await sims.line.drain()
        report = check_invariants(tmp_path, sims)
    assert stopped is not None and stopped.reason == "device_error"
    assert kit.silence_alarm in str(stopped), stopped
    assert report["batch_state"] == "open"


@each_printer
async def test_slow_replies_garbage_and_lost_confirmations_keep_the_ledger_right(
    printer_type: str, tmp_path: Path
) -> None:
    """Faults the line survives: it completes, balanced, with doubt resolved as rejects."""
    kit = KITS[printer_type]
    async with SimulatorSet(simulators(printer_type)) as sims:
        config = agent_config(sims, tmp_path, printer_type)
        printer = sims.printer

        def inject() -> None:
            kit.delay(printer, 0.02)
            printer.faults.send_garbage(kit.garbage)
            kit.lose_confirmations(printer, 2)

        async with injecting(sims, inject):
            stopped = await run_agent(config)
        await sims.line.drain()
        report = check_invariants(tmp_path, sims)
        with contextlib.closing(open_reader(tmp_path)) as conn:
            unconfirmed = column(
                conn, "SELECT serial FROM serials WHERE reason = 'print_unconfirmed'"
            )
    assert stopped is None, f"the line stopped: {stopped}"
    assert report["balanced"], report["problems"]
    assert report["batch_state"] == "closed"
    if kit.lost_confirmations_rejected:
        assert len(unconfirmed) >= 2, "printed without confirmation, yet not rejected"
