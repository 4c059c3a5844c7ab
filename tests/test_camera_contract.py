"""The FrameSource contract, run against every registered camera driver and a simulator.

Each test runs once per camera type of ``edge_agent.registry``: frames come in trigger order, one
per unit, grayscale (or, from a reader that decodes itself, with its reads), named after the
source; an unentered source never connects implicitly; an unreachable camera is a connection
error; leaving a source that waits for a unit never hangs; nothing is left running. How to run
each type against a simulator is in ``KITS`` (a new camera type adds one entry, and
``test_every_registered_camera_has_a_kit`` fails until it does).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from edge_agent import registry
from edge_agent.contracts import Frame, FrameSource
from edge_agent.errors import DeviceConnectionError
from simulators.cameras.directory import DirectoryCameraSim
from simulators.cameras.smart_reader import SmartReaderSim
from simulators.cameras.stream import MjpegCameraSim
from simulators.cameras.tcp import TcpCameraSim
from simulators.line import SimLine, SimUnit

pytestmark = pytest.mark.usefixtures("no_leaks")

STEP_S = 10.0
GTIN = "09506000134352"


@dataclass(frozen=True)
class Kit:
    simulator: Callable[[SimLine], Any]
    config: Callable[[Any], dict[str, Any]]  # the driver's section for a started simulator
    decodes: bool = False  # the device decodes: frames carry reads, not an image


KITS: dict[str, Kit] = {
    "tcp-frames": Kit(
        lambda line: TcpCameraSim(line, defect_rate=0.0), lambda s: s.driver_config()
    ),
    "smart-reader": Kit(
        lambda line: SmartReaderSim(line, defect_rate=0.0), lambda s: s.driver_config(), True
    ),
    "directory": Kit(
        lambda line: DirectoryCameraSim(line, defect_rate=0.0), lambda s: s.driver_config()
    ),
    "mjpeg": Kit(lambda line: MjpegCameraSim(line, defect_rate=0.0), lambda s: s.driver_config()),
    # OpenCV's FFmpeg on the same stream, as a free-running camera is read: frames are counted
    "videocapture": Kit(
        lambda line: MjpegCameraSim(line, defect_rate=0.0),
        lambda s: {
            "type": "videocapture",
            "source": s.url,
            "backend": "ffmpeg",
            "open_timeout_s": STEP_S,
        },
    ),
}
CAMERA_TYPES = sorted(registry.BUILTIN["camera"])


def _unit(i: int) -> SimUnit:
    return SimUnit(f"SN{i:06d}", GTIN, "LOT42", "271231", time.monotonic())


def _source(type_name: str, config: dict[str, Any], name: str = "cam") -> Any:
    driver = registry.driver_class("camera", type_name)
    return driver(name, driver.Config(**config))


def test_every_registered_camera_has_a_kit() -> None:
    missing = sorted(set(CAMERA_TYPES) - set(KITS))
    assert not missing, f"camera types without a contract kit (add one to KITS): {missing}"


@pytest.mark.parametrize("type_name", CAMERA_TYPES)
async def test_one_frame_per_unit_in_trigger_order(type_name: str) -> None:
    kit, line = KITS[type_name], SimLine(units_per_min=None)
    async with kit.simulator(line) as sim:
        source = _source(type_name, kit.config(sim))
        assert isinstance(source, FrameSource) and source.name == "cam"
        # Some cameras finish opening only once frames flow (FFmpeg): enter while units come
        entering = asyncio.create_task(source.__aenter__())
        try:
            await asyncio.wait_for(sim.wait_for_client(), STEP_S)
            for i in range(4):
                line.unit_printed(_unit(i))
                await asyncio.sleep(0.02)
            await asyncio.wait_for(entering, STEP_S)
            frames = source.frames()
            got: list[Frame] = [await asyncio.wait_for(anext(frames), STEP_S) for _ in range(4)]
            await frames.aclose()
        finally:
            if entering.done() and entering.exception() is None:
                await source.__aexit__(None, None, None)
            else:
                entering.cancel()
    assert [f.trigger for f in got] == [1, 2, 3, 4]
    assert all(f.source == "cam" for f in got)
    for i, frame in enumerate(got):
        if kit.decodes:
            assert frame.reads is not None and frame.reads[0].text == _unit(i).hri()
        else:
            assert frame.image.ndim == 2 and frame.image.dtype == np.uint8 and frame.image.size
    assert source.malformed_count == 0 and source.frames_received == 4


@pytest.mark.parametrize("type_name", CAMERA_TYPES)
async def test_an_unentered_source_never_connects(type_name: str) -> None:
    kit = KITS[type_name]
    async with kit.simulator(SimLine(units_per_min=None)) as sim:
        source = _source(type_name, kit.config(sim))
        frames = source.frames()
        with pytest.raises(DeviceConnectionError):
            await asyncio.wait_for(anext(frames), STEP_S)
        await frames.aclose()


@pytest.mark.parametrize("type_name", CAMERA_TYPES)
async def test_an_unreachable_camera_is_a_connection_error(type_name: str) -> None:
    kit = KITS[type_name]
    async with kit.simulator(SimLine(units_per_min=None)) as sim:
        config = kit.config(sim)
    # The simulator is gone: its port refuses, its folder is removed
    with pytest.raises(DeviceConnectionError):
        async with _source(type_name, config):
            pass


@pytest.mark.parametrize("type_name", sorted(set(CAMERA_TYPES) - {"videocapture"}))
async def test_leaving_a_source_that_waits_for_a_unit_does_not_hang(type_name: str) -> None:
    """A triggered camera is silent between units, for hours in a stop: shutdown must not wait.
    (OpenCV's FFmpeg cannot finish opening an idle stream: its own test covers shutdown.)"""
    kit = KITS[type_name]
    async with kit.simulator(SimLine(units_per_min=None)) as sim:
        started = time.monotonic()
        async with _source(type_name, kit.config(sim)) as source:
            consumer = asyncio.create_task(anext(source.frames()))
            await asyncio.sleep(0.3)  # blocked waiting for a unit that never comes
            assert not consumer.done()
            consumer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(consumer, STEP_S)
        assert time.monotonic() - started < STEP_S
