"""Aggregation simulators over their real wire protocols: the case packer's case camera
(tcp-frames), the label printer (ZPL on TCP) and label camera, the pallet scanner (lines over TCP
and a pty), each read by the agent's own drivers and decoder."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.cameras.tcp import TcpFrameSource
from drivers.printers.zpl.driver import ZplLabelPrinter
from drivers.scanners.lines import LineScanner
from edge_agent import gs1
from edge_agent.contracts import Frame, LabelPrinter, LogisticLabel, Scanner
from edge_agent.errors import DeviceConnectionError
from edge_agent.vision.multi import read_case
from simulators.aggregation.case_packer import CaseDefect, CasePackerSim
from simulators.aggregation.label import LabelStationSim
from simulators.aggregation.scanner import ScannerSim
from simulators.line import SimLine, SimUnit
from tests.helpers.waiting import bounded, until

pytestmark = pytest.mark.usefixtures("no_leaks")

GTIN = "09506000134352"
SIZE = (1280, 960)
STEP = 10.0


def units(n: int, start: int = 1) -> list[SimUnit]:
    return [SimUnit(f"S{i:011d}", GTIN, "LOT7", "281231", 0.0) for i in range(start, start + n)]


@contextlib.asynccontextmanager
async def packer(**kwargs: object) -> AsyncIterator[tuple[CasePackerSim, TcpFrameSource]]:
    sim = CasePackerSim(SimLine(units_per_min=None), size=SIZE, closing_after_s=0.05, **kwargs)  # type: ignore[arg-type]
    await sim.start()
    try:
        source = TcpFrameSource("case-camera", TcpFrameSource.Config(**sim.driver_config()))
        async with source:
            await asyncio.wait_for(sim.wait_for_client(), STEP)
            yield sim, source
    finally:
        await sim.stop()


async def two_frames(source: TcpFrameSource) -> tuple[Frame, Frame]:
    frames = source.frames()
    first = await asyncio.wait_for(anext(frames), STEP)
    second = await asyncio.wait_for(anext(frames), STEP)
    await frames.aclose()
    return first, second


def serials(frame: Frame) -> list[str]:
    found = []
    for code in read_case(frame.image).codes:
        found.append(gs1.parse_scanned(code.read.raw).get("21") or "?")
    return sorted(found)


@bounded(60)
async def test_a_full_case_is_read_then_read_again_at_closing() -> None:
    async with packer(case_size=12) as (sim, source):
        sim.put(units(12))
        read, closing = await two_frames(source)
    expected = sorted(u.serial for u in units(12))
    assert read.trigger == closing.trigger == 1
    assert read.image.shape == (SIZE[1], SIZE[0])
    assert serials(read) == serials(closing) == expected
    assert sim.cases[0].serials() == set(expected) and sim.cases[0].defect is None


@pytest.mark.parametrize(
    ("defect", "read_count", "closing_count", "inside"),
    [
        (CaseDefect.MISSING_UNIT, 11, 11, 11),
        (CaseDefect.FOREIGN_CODE, 12, 12, 12),
        (CaseDefect.DUPLICATE, 12, 12, 12),
        (CaseDefect.UNREADABLE_CODE, 11, 12, 12),
        (CaseDefect.REMOVED_AFTER_READ, 12, 11, 11),
        (CaseDefect.UNREADABLE_LABEL, 12, 12, 12),
    ],
)
@bounded(60)
async def test_case_defects_show_in_the_frames_and_in_the_truth(
    defect: CaseDefect, read_count: int, closing_count: int, inside: int
) -> None:
    async with packer(case_size=12, seed=3) as (sim, source):
        sim.force(defect)
        sim.put(units(12))
        read, closing = await two_frames(source)
    ours = {u.serial for u in units(12)}
    seen, seen_closing = serials(read), serials(closing)
    assert (len(seen), len(seen_closing)) == (read_count, closing_count)
    case = sim.cases[0]
    assert case.defect is defect and len(case.inside) == inside
    if defect is CaseDefect.FOREIGN_CODE:
        assert len(set(seen) - ours) == 1 and len(case.loose) == 1
    if defect is CaseDefect.DUPLICATE:
        assert len(set(seen)) == 11 and read_case(read.image).duplicates
    if defect in (CaseDefect.MISSING_UNIT, CaseDefect.REMOVED_AFTER_READ):
        assert len(case.loose) == 1 and case.loose[0].serial not in case.serials()


@bounded(60)
async def test_seeded_defects_repeat_and_a_partial_case_is_flushed() -> None:
    def draw(seed: int) -> list[CaseDefect | None]:
        sim = CasePackerSim(SimLine(), case_size=3, defect_rate=0.5, seed=seed, size=SIZE)
        sim.put(units(30))
        sim.flush()
        return [case.defect for case in sim.cases]

    assert draw(7) == draw(7) != draw(8)
    sim = CasePackerSim(SimLine(), case_size=4, size=SIZE)
    sim.put(units(6))
    assert len(sim.cases) == 1
    partial = sim.flush()
    assert partial is not None and len(partial.inside) == 2


@contextlib.asynccontextmanager
async def label_station() -> AsyncIterator[tuple[LabelStationSim, ZplLabelPrinter, TcpFrameSource]]:
    station = LabelStationSim()
    await station.start()
    try:
        configs = station.driver_configs()
        printer = ZplLabelPrinter(
            "label-printer", ZplLabelPrinter.Config(**configs["label_printer"])
        )
        camera = TcpFrameSource("label-camera", TcpFrameSource.Config(**configs["label_camera"]))
        async with printer, camera:
            await asyncio.wait_for(station.camera.wait_for_client(), STEP)
            yield station, printer, camera
    finally:
        await station.stop()


def label(seq: int, sscc: str) -> LogisticLabel:
    return LogisticLabel(seq, sscc, GTIN, 12, "LOT7", "281231")


@bounded(60)
async def test_a_label_printed_in_zpl_is_confirmed_and_read_back_by_the_label_camera() -> None:
    sscc = "009506000100000018"
    async with label_station() as (station, printer, camera):
        assert isinstance(printer, LabelPrinter)
        await printer.print_label(label(1, sscc))
        confirmation = await asyncio.wait_for(anext(printer.confirmations()), STEP)
        frame = await asyncio.wait_for(anext(camera.frames()), STEP)
    assert (confirmation.seq, confirmation.serial) == (1, sscc)
    reads = read_case(frame.image).codes
    assert len(reads) == 1
    content = gs1.parse_scanned(reads[0].read.raw)
    assert dict(content.ais) == {
        "00": sscc,
        "02": GTIN,
        "37": "12",
        "10": "LOT7",
        "17": "281231",
    }
    assert station.printer.printed == [sscc]


@bounded(60)
async def test_a_case_gtin_serial_label_is_printed_in_datamatrix_and_gs1_128_and_read_back() -> (
    None
):
    case_gtin, serial = "19506000134359", "0000000042"
    async with label_station() as (station, printer, camera):
        await printer.print_label(LogisticLabel(1, "", case_gtin, 12, "LOT7", "281231", serial))
        confirmation = await asyncio.wait_for(anext(printer.confirmations()), STEP)
        frame = await asyncio.wait_for(anext(camera.frames()), STEP)
    code = f"01{case_gtin}21{serial}"
    assert (confirmation.seq, confirmation.serial) == (1, code)
    reads = read_case(frame.image).codes
    assert len(reads) == 1
    content = dict(gs1.parse_scanned(reads[0].read.raw).ais)
    assert content == {"01": case_gtin, "21": serial, "10": "LOT7", "17": "281231"}
    assert station.printer.printed == [code]
    # the GS1-128 of the format holds the same element string, with its HRI printed
    from drivers.printers.zpl import codec

    fmt = codec.render_case_label(
        codec.DEFAULT_CASE_TEMPLATE, gtin=case_gtin, serial=serial, lot="LOT7", expiry="281231",
        count=12,
    ).decode()  # fmt: skip
    assert f"^BCN,200,Y,N,N^FD>;>801{case_gtin}17281231>610LOT7>821{serial}^FS" in fmt


def test_a_case_label_template_must_carry_gtin_serial_and_datamatrix() -> None:
    from drivers.printers.zpl import codec

    with pytest.raises(codec.TemplateError, match="serial"):
        codec.check_case_template("^XA^BXN,10,200^FD_101{gtin}^FS^XZ")
    with pytest.raises(codec.TemplateError, match="DataMatrix"):
        codec.check_case_template("^XA^FD{gtin}{serial}^FS^XZ")
    with pytest.raises(codec.TemplateError, match="AI 30"):  # variable measure: count is data
        codec.render_case_label(
            codec.DEFAULT_CASE_TEMPLATE, gtin="99506000134355", serial="1", lot="L",
            expiry="281231", count=3,
        )  # fmt: skip


@bounded(60)
async def test_an_unreadable_label_reads_as_nothing() -> None:
    async with label_station() as (station, printer, camera):
        station.printer.unreadable_next()
        await printer.print_label(label(1, "009506000100000025"))
        frame = await asyncio.wait_for(anext(camera.frames()), STEP)
    assert read_case(frame.image).codes == ()
    assert station.printer.unreadable == {1}


@pytest.mark.parametrize("transport", ["tcp", "serial"])
@bounded(60)
async def test_the_scanner_delivers_one_code_per_line(transport: str) -> None:
    sim = ScannerSim(transport=transport, suffix="\r")
    await sim.start()
    try:
        scanner = LineScanner("pallet-scanner", LineScanner.Config(**sim.driver_config()))
        async with scanner:
            assert isinstance(scanner, Scanner)
            await until(lambda: sim.clients, "the scanner sees its client", within=STEP)
            codes = scanner.codes()
            sim.scan("00009506000100000018")
            sim.send_raw(b"\x00\x01junk\r")  # not a code: counted, skipped
            sim.scan("01" + GTIN + "21ABC\x1d10LOT7", symbology="]d2")
            first = await asyncio.wait_for(anext(codes), STEP)
            second = await asyncio.wait_for(anext(codes), STEP)
            await codes.aclose()
    finally:
        await sim.stop()
    assert first.data == "]C100009506000100000018"
    assert gs1.parse_scanned(first.data).get("00") == "009506000100000018"
    assert gs1.parse_scanned(second.data).get("10") == "LOT7"
    assert scanner.malformed_count == 1


@bounded(60)
async def test_the_scanner_link_dropping_is_an_error_not_an_end() -> None:
    sim = ScannerSim()
    await sim.start()
    scanner = LineScanner("pallet-scanner", LineScanner.Config(**sim.driver_config()))
    try:
        async with scanner:
            codes = scanner.codes()
            await until(lambda: sim.clients, "the scanner sees its client", within=STEP)
            await sim.stop()
            with pytest.raises(DeviceConnectionError):
                await asyncio.wait_for(anext(codes), STEP)
            await codes.aclose()
    finally:
        await sim.stop()


@bounded(60)
async def test_units_the_unit_gate_passes_go_into_cases() -> None:
    from drivers.plc.modbus.driver import ModbusTcpPlc
    from edge_agent.contracts import Verdict
    from simulators.plc.modbus import ModbusPlcSim

    unit_line = SimLine(units_per_min=None)
    gate = ModbusPlcSim(unit_line, gate_delay_s=0.3)
    sim = CasePackerSim(SimLine(), case_size=2, size=SIZE)
    sim.attach_to_unit_line(unit_line, gate)
    await gate.start()
    try:
        async with ModbusTcpPlc("plc", ModbusTcpPlc.Config(**gate.driver_config())) as plc:
            for trigger, verdict in enumerate([Verdict.PASS, Verdict.REJECT, Verdict.PASS], 1):
                await plc.write_verdict(trigger, verdict)
            made = units(3)
            for unit in made:
                unit_line.unit_printed(unit)
            await until(lambda: len(gate.passed_triggers) + len(gate.rejected_triggers) == 3)
    finally:
        await gate.stop()
    assert gate.passed_triggers == [1, 3]
    assert [sorted(c.serials()) for c in sim.cases] == [[made[0].serial, made[2].serial]]


@bounded(60)
async def test_the_station_fixtures_serve_what_their_tables_say(
    case_station_sim: Any, pallet_station_sim: Any
) -> None:
    from edge_agent.aggregation.runner import check_devices
    from edge_agent.config.models import AggregationSection

    section = AggregationSection.model_validate(
        {
            "case_station": case_station_sim.driver_configs(),
            "pallet_station": pallet_station_sim.driver_configs(),
        }
    )
    check_devices(section)
    assert case_station_sim.packer.case_size == 12
    from drivers.plc.modbus.driver import ModbusTcpPlc

    configs = case_station_sim.driver_configs()
    plc = ModbusTcpPlc("case-plc", ModbusTcpPlc.Config(**configs["plc"]))
    source = TcpFrameSource("case-camera", TcpFrameSource.Config(**configs["camera"]))

    async def beat() -> None:  # the case conveyor runs only while the agent beats
        while True:
            await plc.beat()
            await asyncio.sleep(0.1)

    async with plc, source:
        beating = asyncio.create_task(beat())
        await until(lambda: case_station_sim.packer.clients, "camera client")
        case_station_sim.packer.put(units(12))
        frame = await asyncio.wait_for(anext(source.frames()), STEP)
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
    assert frame.image.shape == (1944, 2592) and len(read_case(frame.image).codes) == 12
