"""smart-reader: result-string codec, driver against the reader simulator over loopback TCP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.cameras.smart_reader.codec import (
    FormatError,
    Malformed,
    ReaderResult,
    ResultDecoder,
    ResultFormat,
    encode_result,
    parse_grade,
)
from drivers.cameras.smart_reader.driver import SmartReaderSource
from edge_agent.contracts import Frame, FrameSource
from edge_agent.errors import DeviceConnectionError
from edge_agent.line.verify import BatchIdentity, check_content
from simulators.cameras.smart_reader import READER_DEFECTS, SmartReaderSim
from simulators.line import SimLine, SimUnit
from tests.helpers.line import run_order
from tests.helpers.margins import VERDICT_DEADLINE_MS, plc_sim

pytestmark = pytest.mark.usefixtures("no_leaks")

GTIN = "09506000134352"
STEP = 5.0
ELEMENT = "0109506000134352172712311" + "0LOT42\x1d21SN;00000001"


# --- codec ---------------------------------------------------------------------------------


def test_default_format_round_trip_with_separator_in_the_code() -> None:
    fmt = ResultFormat()
    line = encode_result(fmt, ReaderResult(17, ELEMENT, "]d2", 3.0))
    assert line == b"17;B;]d2" + ELEMENT.encode() + b"\r\n"
    (result,) = ResultDecoder(fmt).feed(line)
    assert result == ReaderResult(17, ELEMENT, "]d2", 3.0)


def test_no_read_numeric_grade_and_substituted_gs() -> None:
    fmt = ResultFormat("TRG={trigger},Q={grade},SYM={symbology},DATA={code}", "\n", "NR", "<GS>")
    decoder = ResultDecoder(fmt)
    got = decoder.feed(b"TRG=5,Q=,SYM=,DATA=NR\nTRG=6,Q=2.5,SYM=]d2,DATA=01095060001343521")
    assert got == [ReaderResult(5, None, "", None)]
    (result,) = decoder.feed(b"0A<GS>21X\n")
    assert result == ReaderResult(6, "010950600013435210A\x1d21X", "]d2", 2.5)
    encoded = encode_result(fmt, result)
    assert encoded == b"TRG=6,Q=2.5,SYM=]d2,DATA=010950600013435210A<GS>21X\n"


@pytest.mark.parametrize(
    "template", ["{code}", "{trigger}", "{trigger};{code};{code}", "{trigger};{colour};{code}"]
)
def test_bad_formats_are_refused(template: str) -> None:
    with pytest.raises(FormatError):
        ResultFormat(template)


def test_malformed_lines_are_reported_and_skipped() -> None:
    decoder = ResultDecoder(ResultFormat(), max_line=100)
    items = decoder.feed(b"garbage\r\nx;A;01\r\n12;Z;01\r\n" + b"9" * 300 + b"\r\n3;A;NoRead\r\n")
    kinds = [type(item).__name__ for item in items]
    assert kinds == ["Malformed", "Malformed", "Malformed", "Malformed", "ReaderResult"]
    assert items[-1] == ReaderResult(3, None, "", 4.0)
    assert decoder.feed(b"4;A;partial") == []
    (tail,) = decoder.close()
    assert isinstance(tail, Malformed) and tail.reason == "truncated line"


def test_grades() -> None:
    assert [parse_grade(g) for g in ("A", "b", "C", "D", "F", "0", "3.5", "")] == [
        4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 3.5, None,
    ]  # fmt: skip
    with pytest.raises(ValueError):
        parse_grade("4.5")


RESULTS = st.builds(
    ReaderResult,
    trigger=st.integers(min_value=0, max_value=10**12 - 1),
    code=st.one_of(
        st.none(),
        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), min_size=1).filter(
            lambda s: s.strip("\x1d") == s and s != "NoRead" and not s.startswith("]")
        ),
    ),
    symbology=st.sampled_from(["", "]d2", "]Q3"]),
    grade=st.one_of(st.none(), st.sampled_from([0.0, 1.0, 2.0, 3.0, 4.0, 2.5])),
)


@settings(max_examples=200, deadline=None)
@given(results=st.lists(RESULTS, max_size=8), cuts=st.lists(st.integers(0, 2000), max_size=6))
def test_any_split_of_a_stream_decodes_to_the_same_results(
    results: list[ReaderResult], cuts: list[int]
) -> None:
    fmt = ResultFormat()
    stream = b"".join(encode_result(fmt, r) for r in results)
    decoder = ResultDecoder(fmt)
    got: list[object] = []
    start = 0
    for cut in [*sorted(c for c in cuts if c <= len(stream)), len(stream)]:
        got += decoder.feed(stream[start:cut])
        start = cut
    expected = [
        r if r.code is not None else ReaderResult(r.trigger, None, "", r.grade) for r in results
    ]
    assert got == expected
    assert decoder.close() == []


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_garbage_never_raises(data: bytes) -> None:
    decoder = ResultDecoder(ResultFormat(), max_line=64)
    for item in decoder.feed(data) + list(decoder.close()):
        assert isinstance(item, Malformed | ReaderResult)


# --- driver against the simulator ----------------------------------------------------------


def _unit(i: int) -> SimUnit:
    return SimUnit(f"SN{i:08d}", GTIN, "LOT42", "271231", time.monotonic())


def _identity() -> BatchIdentity:
    return BatchIdentity(GTIN, "LOT42", "271231")


async def _take(frames: AsyncIterator[Frame], n: int) -> list[Frame]:
    return [await asyncio.wait_for(anext(frames), STEP) for _ in range(n)]


async def _run(
    units: int, **sim_options: object
) -> tuple[SmartReaderSim, list[Frame], SmartReaderSource]:
    line = SimLine(units_per_min=None)
    sim = SmartReaderSim(line, **sim_options)  # type: ignore[arg-type]
    async with sim:
        config = SmartReaderSource.Config(**sim.driver_config())
        async with SmartReaderSource("reader1", config) as source:
            assert isinstance(source, FrameSource)
            await asyncio.wait_for(sim.wait_for_client(), STEP)
            frames = source.frames()
            for i in range(units):
                line.unit_printed(_unit(i))
            got = await _take(frames, units)
            await frames.aclose()
    return sim, got, source


async def test_results_arrive_as_decoded_frames_in_trigger_order() -> None:
    _, frames, source = await _run(30, defect_rate=0.0)
    assert [f.trigger for f in frames] == list(range(1, 31))
    for i, frame in enumerate(frames):
        assert frame.image.size == 0 and frame.source == "reader1"
        assert frame.reads is not None
        (read,) = frame.reads
        assert read.text == _unit(i).hri() and read.symbology == "]d2"
        assert read.grade is not None and read.grade >= 3.0
        check = check_content(frame.reads, _identity(), require_symbology="]d2", min_contrast=0.4)
        assert check.ok and check.serial == f"SN{i:08d}"
    assert source.malformed_count == 0 and source.frames_received == 30


@pytest.mark.parametrize("kind", READER_DEFECTS)
async def test_each_defect_is_rejected_with_its_reason(kind: str) -> None:
    sim, frames, source = await _run(6, defect_rate=1.0, defect_kinds=[kind])
    expected = {
        "unreadable": "no_read",
        "wrong_gtin": "wrong_gtin",
        "wrong_lot": "wrong_lot",
        "wrong_expiry": "wrong_expiry",
        "low_grade": "print_quality",
    }
    for frame in frames:
        assert frame.reads is not None
        grade = frame.reads[0].grade if frame.reads else None
        check = check_content(
            frame.reads,
            _identity(),
            require_symbology="]d2",
            min_contrast=0.4,
            grade=grade,
            min_grade=1.5,
        )
        if frame.trigger not in sim.injected:
            # nothing to duplicate before the first good unit
            assert kind == "duplicate_serial" and frame.trigger == 1 and check.ok
        elif kind in expected:
            assert check.reason == expected[kind], (kind, check)
        else:  # serial defects pass the content check; the runtime catches them by serial
            assert check.ok and check.serial != f"SN{frame.trigger - 1:08d}"
    first = 2 if kind == "duplicate_serial" else 1
    assert sim.injected == dict.fromkeys(range(first, 7), kind)
    if kind == "unreadable":
        assert source.no_reads == 6


async def test_malformed_lines_from_the_reader_are_counted_not_raised() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello\r\n1;A;]d2" + ELEMENT.encode() + b"\r\n\xff\xfe\r\n2;A;NoRead\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        config = SmartReaderSource.Config(type="smart-reader", port=port)
        async with SmartReaderSource("r", config) as source:
            frames = source.frames()
            got = await _take(frames, 2)
            with pytest.raises(DeviceConnectionError):
                await asyncio.wait_for(anext(frames), STEP)
            await frames.aclose()
    finally:
        server.close()
        await server.wait_closed()
    assert [f.trigger for f in got] == [1, 2]
    assert got[1].reads == ()
    assert source.malformed_count == 2


def test_config_is_strict_and_checks_the_format() -> None:
    with pytest.raises(ValidationError, match="needs a \\{trigger\\}"):
        SmartReaderSource.Config(type="smart-reader", port=23, format="{grade};{code}")
    with pytest.raises(ValidationError):
        SmartReaderSource.Config(type="smart-reader", port=23, colour=1)


# --- on the line --------------------------------------------------------------------------------


@pytest.mark.slow
async def test_line_with_a_smart_reader_rejects_exactly_the_defects(
    agent_config_factory: Any, tmp_path: Path
) -> None:
    """Agent + smart reader + printer + PLC simulators: low grades reject with min_grade set."""
    from edge_agent.config.models import CameraSim, PrinterSim, SimulatorsSection
    from edge_agent.db import open_reader
    from simulators.runner import SimulatorSet

    section = SimulatorsSection(
        units_per_min=None,
        printer=PrinterSim(port=0, buffer_size=16),
        camera=CameraSim(type="smart-reader", port=0, defect_rate=0.1, seed=5),
        plc=plc_sim(),
    )
    async with SimulatorSet(section) as sims:
        sims.camera.defect_kinds = ("unreadable", "wrong_lot", "low_grade")
        config = agent_config_factory(
            simulators=sims,
            order={"quantity": 120},
            line={"verdict_deadline_ms": VERDICT_DEADLINE_MS},
            vision={"min_grade": 1.5, "archive_dir": str(tmp_path / "failed")},
        )
        assert config.camera.type_name == "smart-reader"
        await run_order(config)
        injected = dict(sims.camera.injected)
    conn = open_reader(Path(config.model.agent.state_dir))
    try:
        rejects = dict(conn.execute("SELECT trigger, reason FROM units WHERE verdict = 'reject'"))
    finally:
        conn.close()
    expected = {"unreadable": "no_read", "wrong_lot": "wrong_lot", "low_grade": "print_quality"}
    assert set(injected.values()) == set(expected)
    assert rejects == {t: expected[kind] for t, kind in injected.items()}
    sidecars = sorted((tmp_path / "failed").glob("*.json"))
    assert len(sidecars) == len(injected) and not list((tmp_path / "failed").glob("*.png"))


async def test_plugin_fixture(smart_reader_sim: Any, sim_line: SimLine) -> None:
    config = SmartReaderSource.Config(**smart_reader_sim.driver_config())
    async with SmartReaderSource("r", config) as source:
        await asyncio.wait_for(smart_reader_sim.wait_for_client(), STEP)
        frames = source.frames()
        sim_line.unit_printed(_unit(0))
        (frame,) = await _take(frames, 1)
        await frames.aclose()
    assert frame.trigger == 1 and frame.reads is not None and len(frame.reads) == 1
