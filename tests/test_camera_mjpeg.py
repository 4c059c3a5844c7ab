"""The "mjpeg" camera (MJPEG over HTTP, the agent's own client): its part parser on bytes alone,
and the driver against the MJPEG camera simulator over loopback HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.cameras.mjpeg import (
    Malformed,
    MultipartParser,
    Part,
    boundary_from_content_type,
    encode_part,
)
from drivers.cameras.mjpeg.driver import MjpegSource
from edge_agent.contracts import Frame, FrameSource
from edge_agent.errors import DeviceConnectionError, ProtocolError
from edge_agent.registry import driver_class
from edge_agent.vision.decode import ZxingReader
from simulators.cameras.stream import MjpegCameraSim
from simulators.line import SimLine, SimUnit
from simulators.pytest_plugin import inbox_with
from tests.helpers.line import run_agent, run_order
from tests.helpers.margins import PLC_RING_SIZE, plc_sim

pytestmark = pytest.mark.usefixtures("no_leaks")

STEP = 10.0
GTIN = "09506000134352"


def test_config_and_registry() -> None:
    assert driver_class("camera", "mjpeg") is MjpegSource
    with pytest.raises(ValidationError, match="http"):
        MjpegSource.Config(type="mjpeg", source="/dev/video0")
    with pytest.raises(ValidationError):
        MjpegSource.Config(type="mjpeg", source="http://cam/s", backend="mjpeg")


# --- MJPEG part parser ---------------------------------------------------------------------


def _stream(bodies: list[bytes], boundary: bytes = b"frame") -> bytes:
    parts = [encode_part(b, boundary, {"X-Trigger": str(i + 1)}) for i, b in enumerate(bodies)]
    return b"".join(parts)


@settings(max_examples=60, deadline=None)
@given(
    bodies=st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
)
def test_parser_gives_the_same_parts_for_any_chunking(bodies: list[bytes], cuts: list[int]) -> None:
    data = _stream(bodies)
    edges = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    parser = MultipartParser(b"frame")
    items = [i for a, b in itertools.pairwise(edges) for i in parser.feed(data[a:b])]
    assert items == [
        Part(
            {"content-type": "image/jpeg", "content-length": str(len(b)), "x-trigger": str(n + 1)},
            b,
        )
        for n, b in enumerate(bodies)
    ]


@settings(max_examples=60, deadline=None)
@given(junk=st.binary(max_size=200), body=st.binary(min_size=1, max_size=200))
def test_parser_survives_junk_and_resyncs_at_the_next_boundary(junk: bytes, body: bytes) -> None:
    parser = MultipartParser(b"frame")
    items = parser.feed(junk + b"\r\n" + _stream([body]))
    parts = [i for i in items if isinstance(i, Part)]
    assert all(isinstance(i, Part | Malformed) for i in items)
    assert parts[-1:] == [Part(parts[-1].headers, body)] if parts else True
    if b"--frame" not in junk and b"\nframe" not in junk and not junk.startswith(b"frame"):
        assert [p.body for p in parts] == [body]


def test_parser_without_content_length_and_with_dashed_boundary() -> None:
    data = b"--myb\nContent-Type: image/jpeg\n\nAAA\r\n--myb\r\nX-Trigger: 2\r\n\r\nBB\n--myb\n"
    parser = MultipartParser(b"--myb")  # some cameras put the dashes into the parameter
    assert [p.body for p in parser.feed(data) if isinstance(p, Part)] == [b"AAA", b"BB"]
    assert boundary_from_content_type('multipart/x-mixed-replace;boundary="myb"') == b"myb"
    assert boundary_from_content_type("image/jpeg") is None
    too_long = MultipartParser(b"frame", max_part_bytes=1024)
    items = too_long.feed(b"--frame\r\nContent-Length: 999999\r\n\r\n" + _stream([b"ok"]))
    assert isinstance(items[0], Malformed) and "Content-Length" in items[0].reason


# --- MJPEG camera simulator over loopback HTTP ---------------------------------------------


def _unit(i: int) -> SimUnit:
    return SimUnit(f"SN{i:06d}", GTIN, "LOT42", "271231", time.monotonic())


async def _next(frames: Any) -> Frame:
    frame = await asyncio.wait_for(anext(frames), STEP)
    assert isinstance(frame, Frame)
    return frame


@contextlib.asynccontextmanager
async def _streaming(sim: MjpegCameraSim, **options: Any) -> Any:
    config = MjpegSource.Config(**sim.driver_config(**options))
    async with MjpegSource("ip-cam", config) as source:
        await asyncio.wait_for(sim.wait_for_client(), STEP)
        frames = source.frames()
        try:
            yield source, frames
        finally:
            await frames.aclose()


async def test_stream_frames_carry_the_camera_trigger_and_repeats_are_discarded() -> None:
    line = SimLine(units_per_min=None)
    async with MjpegCameraSim(line, defect_rate=0.0, repeat_every_s=0.05) as sim:
        async with _streaming(sim) as (source, frames):
            assert isinstance(source, FrameSource)
            for i in range(3):
                line.unit_printed(_unit(i))
            got = [await _next(frames) for _ in range(3)]
            await asyncio.sleep(0.4)  # idle: the camera repeats its last frame as keep-alive
            line.trigger_count += 2  # two triggers the camera saw but never sent
            line.unit_printed(_unit(3))
            got.append(await _next(frames))
        assert sim.repeats_sent > 0
        assert source.repeats_discarded > 0
    assert [f.trigger for f in got] == [1, 2, 3, 6]
    assert source.frames_missed == 2 and source.malformed_count == 0
    (read,) = ZxingReader().read(got[3].image)
    assert read.text == _unit(3).hri()


async def test_injected_defects_are_rejected_by_the_agent(tmp_path: Path) -> None:
    from edge_agent.config import parse_config
    from edge_agent.config.models import CameraSim, PrinterSim, SimulatorsSection
    from edge_agent.db import open_reader
    from simulators.demo.line import demo_config_text
    from simulators.runner import SimulatorSet

    section = SimulatorsSection(
        units_per_min=None,
        printer=PrinterSim(port=0, buffer_size=16),
        camera=CameraSim(type="mjpeg", port=0, defect_rate=0.15, seed=3),
        plc=plc_sim(),
    )
    async with SimulatorSet(section) as sims:
        sims.camera.defect_kinds = ("unreadable", "wrong_gtin")
        overrides = {
            "agent": {"state_dir": str(tmp_path / "state")},
            "orders": inbox_with(tmp_path / "inbox", quantity=60),
            "plc": {"ring_size": PLC_RING_SIZE},
        }
        # The demo's [camera] table is replaced, not merged: it has host/port, this has a URL.
        config = parse_config(
            demo_config_text(), "demo.toml", overrides, sections=sims.device_configs()
        )
        assert config.camera.type_name == "mjpeg"
        await asyncio.wait_for(run_order(config), 60)
        injected = dict(sims.camera.injected)
    conn = open_reader(Path(config.model.agent.state_dir))
    try:
        rejects = dict(conn.execute("SELECT trigger, reason FROM units WHERE verdict = 'reject'"))
        units = conn.execute("SELECT count(*) FROM units").fetchone()[0]
    finally:
        conn.close()
    expected = {"unreadable": "no_read", "wrong_gtin": "wrong_gtin"}
    assert units == 60 and injected
    assert rejects == {t: expected[kind] for t, kind in injected.items()}


async def test_a_dropped_counted_stream_stops_the_line_balanced(tmp_path: Path) -> None:
    from edge_agent.config import parse_config
    from edge_agent.config.models import CameraSim, PrinterSim, SimulatorsSection
    from edge_agent.db import open_reader
    from edge_agent.line.stats import LineStats
    from edge_agent.reconcile import reconcile
    from simulators.demo.line import demo_config_text
    from simulators.runner import SimulatorSet

    section = SimulatorsSection(
        units_per_min=1200,
        printer=PrinterSim(port=0, buffer_size=16),
        camera=CameraSim(type="mjpeg", port=0, defect_rate=0.0),
        plc=plc_sim(),
    )
    stats = LineStats()
    async with SimulatorSet(section) as sims:
        sections = sims.device_configs()
        sections["camera"] |= {"trigger_header": None}  # counted frames: no safe reconnect
        overrides = {
            "agent": {"state_dir": str(tmp_path / "state")},
            "orders": inbox_with(tmp_path / "inbox", quantity=500),
        }
        config = parse_config(demo_config_text(), "demo.toml", overrides, sections=sections)

        async def cut_when_running() -> None:
            while stats.units < 10:  # noqa: ASYNC110 - polling a plain counter
                await asyncio.sleep(0.02)
            await sims.camera.drop_clients()

        cutter = asyncio.create_task(cut_when_running())
        try:
            stopped = await asyncio.wait_for(run_agent(config, stats), 60)
            assert stopped is not None and "closed the stream" in str(stopped)
        finally:
            cutter.cancel()
    conn = open_reader(Path(config.model.agent.state_dir))
    try:
        report = reconcile(conn)
    finally:
        conn.close()
    assert report["balanced"], report["problems"]
    assert 10 <= report["units"] < 500


async def test_dropped_stream_is_a_connection_error_without_reconnects() -> None:
    line = SimLine(units_per_min=None)
    async with (
        MjpegCameraSim(line, defect_rate=0.0) as sim,
        _streaming(sim, reconnects=0) as (_, frames),
    ):
        line.unit_printed(_unit(0))
        assert (await _next(frames)).trigger == 1
        await sim.drop_clients()
        with pytest.raises(DeviceConnectionError, match="closed the stream"):
            await _next(frames)


async def test_counted_frames_never_reconnect() -> None:
    line = SimLine(units_per_min=None)
    async with MjpegCameraSim(line, defect_rate=0.0) as sim:
        async with _streaming(sim, trigger_header=None, first_trigger=41) as (_, frames):
            line.unit_printed(_unit(0))
            assert (await _next(frames)).trigger == 41
            await sim.drop_clients()
            with pytest.raises(DeviceConnectionError):
                await _next(frames)
        assert sim.requests == 1


async def test_reconnect_keeps_the_numbering_then_a_dead_camera_is_reported() -> None:
    line = SimLine(units_per_min=None)
    sim = MjpegCameraSim(line, defect_rate=0.0)
    await sim.start()
    try:
        async with _streaming(sim, reconnects=2) as (source, frames):
            line.unit_printed(_unit(0))
            assert (await _next(frames)).trigger == 1
            await sim.drop_clients()
            waiting = asyncio.create_task(_next(frames))
            await asyncio.wait_for(_reconnected(sim), STEP)
            line.unit_printed(_unit(1))
            frame = await waiting
            assert frame.trigger == 2
            (read,) = ZxingReader().read(frame.image)
            assert read.text == _unit(1).hri()
            await sim.stop()
            with pytest.raises(DeviceConnectionError, match="cannot open"):
                await _next(frames)
        assert source.frames_received == 2
    finally:
        await sim.stop()


async def test_a_camera_counter_going_back_stops_the_stream() -> None:
    line = SimLine(units_per_min=None)
    async with MjpegCameraSim(line, defect_rate=0.0) as sim, _streaming(sim) as (_, frames):
        for i in range(2):
            line.unit_printed(_unit(i))
        assert [(await _next(frames)).trigger for _ in range(2)] == [1, 2]
        await sim.drop_clients()  # the camera reboots ...
        line.trigger_count = sim._last_queued = 0  # ... and counts from 1 again
        waiting = asyncio.create_task(_next(frames))
        await asyncio.wait_for(_reconnected(sim), STEP)
        line.unit_printed(_unit(2))
        with pytest.raises(ProtocolError, match="went back from 2 to 1"):
            await waiting


async def _reconnected(sim: MjpegCameraSim) -> None:
    while sim.requests < 2 or not sim.clients:  # noqa: ASYNC110 - the driver reconnects on its own
        await asyncio.sleep(0.02)


async def test_wrong_path_is_not_a_stream() -> None:
    async with MjpegCameraSim(SimLine(units_per_min=None)) as sim:
        url = sim.url.replace("stream.mjpg", "nothing")
        config = MjpegSource.Config(type="mjpeg", source=url)
        with pytest.raises(DeviceConnectionError, match="HTTP 404"):
            async with MjpegSource("ip-cam", config):
                pass


async def test_plugin_fixture(mjpeg_camera_sim: Any, sim_line: SimLine) -> None:
    async with _streaming(mjpeg_camera_sim) as (_, frames):
        sim_line.unit_printed(_unit(7))
        assert (await _next(frames)).trigger == 1
