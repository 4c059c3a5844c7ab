"""Crash safety of the case station (issue 12, point 10): SIGKILL the station process during case
work at three points, restart it, and check against the physical truth that every case is either
fully aggregated with a verified label or not aggregated at all, and that no SSCC is used twice.

The simulated line end (case packer and camera, case PLC, label printer and camera) runs in the
test's event loop, like devices that outlive the agent; the station is its own process,
``python -m edge_agent.aggregation.runner``, killed by ``EDGE_AGENT_CRASH_AT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_agent.aggregation.hierarchy import ContainerState, Hierarchy
from edge_agent.db import open_reader
from edge_agent.ledger import Ledger
from simulators.aggregation.label import label_code
from simulators.aggregation.station import CaseStationSim
from simulators.line import SimUnit
from tests.helpers.aggregation import PREFIX_LENGTH, READ_POINT, aggregation_db, order_spec, plan
from tests.helpers.waiting import bounded, until

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leaks")]

CASE = 4
CASES = 5
SIZE = (1280, 960)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, state_dir: Path, devices: dict[str, dict[str, Any]]) -> Path:
    tables: dict[str, dict[str, Any]] = {
        "agent": {"state_dir": str(state_dir), "log_format": "json"},
        "line": {"read_point": READ_POINT, "company_prefix_length": PREFIX_LENGTH},
        # The unit station's devices (the stations process does not use them)
        "printer": {"type": "zpl", "link": {"kind": "tcp", "port": 9}},
        "camera": {"type": "tcp-frames", "port": 9},
        "plc": {"type": "modbus-tcp", "port": 9},
        "aggregation.case_station": {
            "closing_read_s": 3.0,
            "label_confirm_s": 5.0,
            "label_read_s": 3.0,
        },
    }
    for name, table in devices.items():
        tables[f"aggregation.case_station.{name}"] = table
    path.write_text(
        "".join(
            f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in body.items()) + "\n"
            for name, body in tables.items()
        )
    )
    return path


class Station:
    """The stations process; its output goes to ``log``."""

    def __init__(self, config: Path, log: Path, order_id: str) -> None:
        self.args = [
            sys.executable,
            "-m",
            "edge_agent.aggregation.runner",
            "--config",
            str(config),
            "--order",
            order_id,
        ]
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, crash_at: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_CRASH_AT"}
        if crash_at:
            env["EDGE_AGENT_CRASH_AT"] = crash_at
        with self.log.open("a") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.args, env=env, stdout=out, stderr=out
            )

    async def wait(self, within: float) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), within)

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await self.wait(20)

    def tail(self) -> str:
        return self.log.read_text()[-4000:]


def sscc_of(label: str) -> str | None:
    """The case's code on its label: the SSCC, or ``01<gtin>21<serial>``."""
    return label_code(label)


def pending_gates(state_dir: Path) -> int:
    with contextlib.closing(open_reader(state_dir)) as conn:
        (n,) = conn.execute(
            "SELECT count(*) FROM station_cases s JOIN containers c ON c.epc = s.container "
            "WHERE s.gate = 'pending' AND c.state = 'closed'"
        ).fetchone()
    return int(n)


@pytest.mark.parametrize(
    ("crash_at", "identifier"),
    [
        ("case_reserved:2", "sscc"),
        ("label_printed:2", "sscc"),
        ("case_committed:2", "sscc"),
        ("label_printed:2", "gtin_serial"),  # a case serial printed, never committed: scrapped
    ],
    ids=["sscc-reserved", "label-printed", "case-committed", "case-serial-label-printed"],
)
@bounded(200)
async def test_sigkill_during_case_work_then_restart(
    tmp_path: Path, crash_at: str, identifier: str
) -> None:
    state = tmp_path / "state"
    with aggregation_db(state) as setup:
        aggregation = plan(case=CASE, case_identifier=identifier)
        batch = setup.add_order(order_spec(quantity=CASE * CASES, aggregation=aggregation))
        units = []
        for epc in setup.units(batch, CASE * CASES):
            item = setup.hierarchy.item(epc)
            assert item.serial is not None
            units.append(SimUnit(item.serial, batch.gtin, batch.lot, batch.expiry, 0.0))
    sim = CaseStationSim(
        case_size=CASE, size=SIZE, gate_delay_s=4.0, closing_after_s=0.1, cases_per_min=40
    )
    await sim.start()
    station = Station(write_config(tmp_path / "agent.toml", state, sim.driver_configs()),
                      tmp_path / "station.log", batch.id)  # fmt: skip
    try:
        await station.start(crash_at)
        await until(
            lambda: sim.packer.clients and sim.labels.camera.clients, "station up", within=30
        )
        sim.packer.put(units)
        status = await station.wait(60)
        assert status == -signal.SIGKILL, station.tail()
        await station.start()
        cases = sim.packer.cases
        await until(
            lambda: all(c.verdict is not None for c in cases), "every case at its gate", within=90
        )
        await until(lambda: pending_gates(state) == 0, "gate outcomes settled", within=20)
        assert await station.stop() == 0, station.tail()
    finally:
        if station.proc is not None and station.proc.returncode is None:
            station.proc.kill()
            await station.proc.wait()
        await sim.stop()

    conn = open_reader(state)
    try:
        hierarchy = Hierarchy(
            Ledger(conn, read_point=READ_POINT, company_prefix_length=PREFIX_LENGTH)
        )
        boxes = hierarchy.containers(batch.id, level="case")
        codes = [b.code for b in boxes]
        printed = sim.labels.printer.printed
        assert len(codes) == len(set(codes)), "an SSCC reserved twice"
        assert len(printed) == len(set(printed)), "an SSCC printed twice"
        by_code = {b.code: b for b in boxes}
        assert not [b for b in boxes if b.state == ContainerState.RESERVED], "left reserved"
        assert any(b.state == ContainerState.SCRAPPED for b in boxes) or crash_at.startswith(
            "case_committed"
        ), "the crash left nothing to scrap"
        aggregated = {b.code for b in boxes if b.state == ContainerState.CLOSED}
        carried = set()
        for case in cases:
            inside = {hierarchy.parent_of(ledger_epc(hierarchy, unit)) for unit in case.inside}
            if not case.verdict:  # diverted: none of its units is in a case
                assert inside == {None}, f"case {case.number} was diverted, its units are packed"
                continue
            # passed: fully aggregated, with the label on it, read back
            assert case.labels, f"case {case.number} passed without a label"
            number = printed.index(sscc_of(case.labels[-1]) or "?") + 1
            assert number not in sim.labels.printer.unreadable
            box = by_code[sscc_of(case.labels[-1]) or ""]
            assert box.state == ContainerState.CLOSED, f"case {case.number} passed, {box}"
            assert inside == {box.epc} and box.children == len(case.inside)
            carried.add(box.code)
        assert carried == aggregated, "a case aggregated in the ledger that no passed case carries"
        # the scrapped ones are never on a case that passed
        scrapped = {b.code for b in boxes if b.state == ContainerState.SCRAPPED}
        assert not scrapped & carried
    finally:
        conn.close()


def ledger_epc(hierarchy: Hierarchy, unit: SimUnit) -> str:
    return hierarchy.ledger.epc(unit.gtin, unit.serial)
