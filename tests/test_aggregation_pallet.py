"""The pallet station (issue 12, points 5 and 10): a pallet whose labels keep failing holds for a
person with an alarm that says what failed and what to do, keeping its scanned cases; SIGKILL of
the stations process during pallet work (SSCC reserved, label printed, label verified and not
committed), then a restart: every pallet is fully aggregated with a verified label or not at all,
no SSCC is used twice, the cases' memberships are intact. And the runner's station trouble is
an alarm, never an exit.

The simulated pallet scanner, label printer and label camera run in the test's event loop, like
devices that outlive the agent; the killed station is ``python -m edge_agent.aggregation.runner``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.aggregation.hierarchy import ContainerState, Hierarchy
from edge_agent.aggregation.runner import StationRunner, device, label_reader
from edge_agent.aggregation.station import LabelPath, PalletStation, StationTimings
from edge_agent.alarms import AlarmBoard, AlarmKind
from edge_agent.config import parse_config
from edge_agent.config.models import VisionSection
from edge_agent.db import open_reader
from edge_agent.ledger import Ledger
from simulators.aggregation.station import PalletStationSim
from tests.helpers.aggregation import (
    PREFIX_LENGTH,
    READ_POINT,
    AggSetup,
    aggregation_db,
    order_spec,
    plan,
)
from tests.helpers.waiting import bounded, until
from tests.test_aggregation_crash import Station

pytestmark = pytest.mark.usefixtures("no_leaks")

CASE, PER_PALLET, PALLETS = 3, 2, 3
TIMINGS = StationTimings(label_confirm_s=5.0, label_read_s=3.0)


def closed_cases(setup: AggSetup, order_id: str, count: int) -> list[str]:
    """``count`` closed cases of the order (as the case station leaves them): their SSCCs."""
    batch = setup.ledger.batch(order_id)
    assert batch is not None
    units = setup.units(batch, count * CASE)
    codes = []
    for n in range(count):
        box = setup.hierarchy.open_container(order_id, "case")
        setup.hierarchy.pack(box.epc, units[n * CASE : (n + 1) * CASE], close=True)
        codes.append(box.code)
    return codes


def memberships(hierarchy: Hierarchy, order_id: str) -> dict[str, set[str]]:
    return {
        box.code: set(hierarchy.children(box.epc))
        for box in hierarchy.containers(order_id, level="case")
    }


@contextlib.asynccontextmanager
async def pallet_station(
    setup: AggSetup, order_id: str, sim: PalletStationSim, **kwargs: Any
) -> AsyncIterator[PalletStation]:
    configs = sim.driver_configs()
    async with contextlib.AsyncExitStack() as stack:
        scanner = await stack.enter_async_context(device("scanner", configs["scanner"], "s"))
        printer = await stack.enter_async_context(
            device("label_printer", configs["label_printer"], "lp")
        )
        camera = await stack.enter_async_context(device("camera", configs["label_camera"], "lc"))
        labels = LabelPath(printer, camera, label_reader(VisionSection()), TIMINGS)
        yield PalletStation(setup.hierarchy, order_id, scanner=scanner, labels=labels, **kwargs)


async def stop_task(task: asyncio.Task[Any]) -> None:
    for _ in range(20):
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=1.0)
        if done:
            return
    raise AssertionError("the station did not stop on cancel")


@bounded(120)
async def test_failed_pallet_labels_hold_the_station_until_the_alarm_is_acknowledged(
    tmp_path: Path,
) -> None:
    with aggregation_db(tmp_path / "state") as setup:
        batch = setup.add_order(order_spec(quantity=60, aggregation=plan(CASE, PER_PALLET)))
        codes = closed_cases(setup, batch.id, PER_PALLET)
        sim = PalletStationSim()
        await sim.start()
        try:
            async with pallet_station(
                setup, batch.id, sim, attempts=2, hold_poll_s=0.05
            ) as station:
                task = asyncio.create_task(station.run())
                try:
                    await until(lambda: sim.scanner.clients, "scanner connected")
                    sim.labels.printer.unreadable_next(2)  # both attempts fail
                    for code in codes:
                        sim.scanner.scan("00" + code)
                    await until(lambda: station.held is not None, "the station holds", within=60)
                    board = AlarmBoard(setup.conn)
                    (alarm,) = [a for a in board.active() if a.order_id == batch.id]
                    assert alarm.kind == AlarmKind.PALLET_LABEL_FAILED
                    assert "2 pallet labels in a row failed" in alarm.message
                    assert "label_unreadable" in alarm.message
                    assert "check the pallet label printer" in alarm.message.lower()
                    assert "acknowledge this alarm" in alarm.message
                    assert "2 scanned cases stay on the pallet" in alarm.message
                    # held: the scans are kept, nothing is packed, both SSCCs scrapped
                    assert len(station.scanned()) == PER_PALLET
                    boxes = setup.hierarchy.containers(batch.id, level="pallet")
                    assert [b.state for b in boxes] == [ContainerState.SCRAPPED] * 2
                    await asyncio.sleep(0.5)
                    assert station.held is not None and len(sim.labels.printer.printed) == 2
                    board.acknowledge(alarm.id, "api:supervisor")
                    await until(lambda: station.stats.pallets == 1, "the pallet closed", within=30)
                finally:
                    await stop_task(task)
        finally:
            await sim.stop()
        assert station.held is None
        alarm_now = AlarmBoard(setup.conn).get(alarm.id)
        assert alarm_now is not None and not alarm_now.active
        boxes = setup.hierarchy.containers(batch.id, level="pallet")
        assert [b.state for b in boxes] == [ContainerState.SCRAPPED] * 2 + [ContainerState.CLOSED]
        printed = sim.labels.printer.printed
        assert printed == [b.code for b in boxes] and len(set(printed)) == 3
        on_pallet = {
            setup.hierarchy.container(e).code for e in setup.hierarchy.children(boxes[2].epc)
        }
        assert on_pallet == set(codes) and station.scanned() == []


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))  # a TOML basic string: the scanner's suffix is "\r\n"


def write_config(path: Path, state_dir: Path, devices: dict[str, dict[str, Any]]) -> Path:
    """Only a pallet station: the killed process does pallet work and nothing else."""
    tables: dict[str, dict[str, Any]] = {
        "agent": {"state_dir": str(state_dir), "log_format": "json"},
        "line": {"read_point": READ_POINT, "company_prefix_length": PREFIX_LENGTH},
        "printer": {"type": "zpl", "link": {"kind": "tcp", "port": 9}},
        "camera": {"type": "tcp-frames", "port": 9},
        "plc": {"type": "modbus-tcp", "port": 9},
        "aggregation.pallet_station": {"label_confirm_s": 5.0, "label_read_s": 3.0},
    }
    for name, table in devices.items():
        tables[f"aggregation.pallet_station.{name}"] = table
    path.write_text(
        "".join(
            f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in body.items()) + "\n"
            for name, body in tables.items()
        )
    )
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    "crash_at",
    ["pallet_reserved:2", "label_printed:2", "pallet_label_verified:2"],
    ids=["sscc-reserved", "label-printed", "before-commit"],
)
@bounded(200)
async def test_sigkill_during_pallet_work_then_restart(tmp_path: Path, crash_at: str) -> None:
    state = tmp_path / "state"
    with aggregation_db(state) as setup:
        batch = setup.add_order(order_spec(quantity=60, aggregation=plan(CASE, PER_PALLET)))
        codes = closed_cases(setup, batch.id, PER_PALLET * PALLETS)
        cases_before = memberships(setup.hierarchy, batch.id)
    sim = PalletStationSim()
    await sim.start()
    config = write_config(tmp_path / "agent.toml", state, sim.driver_configs())
    station = Station(config, tmp_path / "station.log", batch.id)

    def pallets_closed() -> int:
        with contextlib.closing(open_reader(state)) as conn:
            (n,) = conn.execute(
                "SELECT count(*) FROM containers WHERE level = 'pallet' AND state = 'closed'"
            ).fetchone()
        return int(n)

    async def scan(pallet: int) -> None:
        for code in codes[pallet * PER_PALLET : (pallet + 1) * PER_PALLET]:
            sim.scanner.scan("00" + code)

    try:
        await station.start(crash_at)
        await until(lambda: sim.scanner.clients and sim.labels.camera.clients, "up", within=30)
        await scan(0)
        await until(lambda: pallets_closed() == 1, "the first pallet closed", within=30)
        await scan(1)  # its pallet work is killed
        assert await station.wait(60) == -signal.SIGKILL, station.tail()
        await station.start()
        await until(lambda: pallets_closed() == 2, "the second pallet closed", within=60)
        await until(lambda: sim.scanner.clients, "scanner connected again", within=30)
        await scan(2)
        await until(lambda: pallets_closed() == 3, "the third pallet closed", within=30)
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
        boxes = hierarchy.containers(batch.id, level="pallet")
        by_code = {b.code: b for b in boxes}
        printed = sim.labels.printer.printed
        assert len(by_code) == len(boxes), "an SSCC reserved twice"
        assert len(printed) == len(set(printed)), "an SSCC printed twice"
        assert not [b for b in boxes if b.state == ContainerState.RESERVED], "left reserved"
        scrapped = [b for b in boxes if b.state == ContainerState.SCRAPPED]
        closed = [b for b in boxes if b.state == ContainerState.CLOSED]
        assert len(closed) == PALLETS and len(scrapped) == 1, [(b.code, b.state) for b in boxes]
        if crash_at.startswith("pallet_reserved"):
            assert scrapped[0].code not in printed  # killed before its label was printed
        else:
            assert scrapped[0].code in printed  # printed, never committed: scrapped
        for n, pallet in enumerate(closed):
            # fully aggregated: its cases, and a label that was printed readable for it
            assert pallet.code in printed
            assert printed.index(pallet.code) + 1 not in sim.labels.printer.unreadable
            on_it = {hierarchy.container(epc).code for epc in hierarchy.children(pallet.epc)}
            assert on_it == set(codes[n * PER_PALLET : (n + 1) * PER_PALLET])
            assert pallet.children == PER_PALLET
        assert memberships(hierarchy, batch.id) == cases_before, "a case's units changed"
        for code in codes:  # every case on exactly one pallet
            assert hierarchy.container(code).parent in {p.epc for p in closed}
        (scans,) = conn.execute("SELECT count(*) FROM pallet_scans").fetchone()
        assert scans == 0
    finally:
        conn.close()


@bounded(60)
async def test_station_trouble_is_an_alarm_and_the_runner_keeps_trying(tmp_path: Path) -> None:
    """Devices that do not answer: the station's down alarm names the station, the order and
    what to check; the runner keeps going (never an exit)."""
    state = tmp_path / "state"
    with aggregation_db(state) as setup:
        batch = setup.add_order(order_spec(quantity=60, aggregation=plan(CASE, PER_PALLET)))
        closed = "\n".join(
            [
                "[aggregation.pallet_station]",
                'scanner = { type = "lines", link = { kind = "tcp", host = "127.0.0.1", '
                "port = 9 } }",
                'label_printer = { type = "zpl", link = { kind = "tcp", port = 9 } }',
                'label_camera = { type = "tcp-frames", port = 9 }',
            ]
        )
        text = "\n".join(
            [
                "[agent]",
                f'state_dir = "{state}"',
                "[line]",
                f'read_point = "{READ_POINT}"',
                f"company_prefix_length = {PREFIX_LENGTH}",
                "[printer]",
                'type = "zpl"',
                'link = { kind = "tcp", port = 9 }',
                "[camera]",
                'type = "tcp-frames"',
                "port = 9",
                "[plc]",
                'type = "modbus-tcp"',
                "port = 9",
                closed,
                "",
            ]
        )
        model = parse_config(text, "line.toml").model
        runner = StationRunner(model, ledger=setup.ledger, alarms=AlarmBoard(setup.conn))
        task = asyncio.create_task(runner.run())
        try:
            board = AlarmBoard(setup.conn)
            await until(
                lambda: any(a.kind == AlarmKind.PALLET_STATION_DOWN for a in board.active()),
                "the station's alarm",
                within=30,
            )
            (alarm,) = board.active()
            assert alarm.order_id == batch.id
            assert alarm.message.startswith(f"pallet station down for order {batch.id}: ")
            assert "[aggregation.pallet_station]" in alarm.message
            await asyncio.sleep(1.0)
            assert not task.done() and runner.order_id == batch.id
            (again,) = board.active()
            assert again.id == alarm.id  # one alarm while it stays down, not a flood
        finally:
            await stop_task(task)
        assert runner.pallet_station is None
