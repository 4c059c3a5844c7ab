"""VideoCapture source on real files written by OpenCV (an MJPG video, an image sequence) and on
the MJPEG-over-HTTP camera simulator over loopback through OpenCV's FFmpeg."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from drivers.cameras.videocapture import VideoCaptureSource
from edge_agent.contracts import Frame, FrameSource
from edge_agent.errors import DeviceConnectionError
from edge_agent.registry import driver_class
from edge_agent.vision.decode import ZxingReader
from simulators.cameras.render import render_frame
from simulators.cameras.stream import MjpegCameraSim
from simulators.line import SimLine, SimUnit

pytestmark = pytest.mark.usefixtures("no_leaks")

STEP = 10.0
GTIN = "09506000134352"


def _hri(i: int) -> str:
    return f"(01){GTIN}(17)271231(10)LOT42(21)SN{i:06d}"


def _frame(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return render_frame(
        _hri(i), width=320, height=240, module_px=5, rotation_deg=0, blur=0, rng=rng
    )


def _write_video(path: Path, count: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (320, 240))
    assert writer.isOpened()
    try:
        for i in range(count):
            writer.write(cv2.cvtColor(_frame(i), cv2.COLOR_GRAY2BGR))  # colour, as a USB camera
    finally:
        writer.release()


def _unit(i: int) -> SimUnit:
    return SimUnit(f"SN{i:06d}", GTIN, "LOT42", "271231", time.monotonic())


async def _next(frames: Any) -> Frame:
    frame = await asyncio.wait_for(anext(frames), STEP)
    assert isinstance(frame, Frame)
    return frame


async def _all_frames(source: VideoCaptureSource) -> tuple[list[Frame], Exception]:
    got: list[Frame] = []
    frames = source.frames()
    try:
        while True:
            got.append(await asyncio.wait_for(anext(frames), STEP))
    except DeviceConnectionError as exc:
        return got, exc
    finally:
        await frames.aclose()


def _source(source: int | str, **options: object) -> VideoCaptureSource:
    config = VideoCaptureSource.Config(type="videocapture", source=source, **options)
    return VideoCaptureSource("usb-cam", config)


async def test_mjpg_video_gives_one_gray_frame_per_trigger(tmp_path: Path) -> None:
    video = tmp_path / "line.avi"
    _write_video(video, 12)
    async with _source(str(video), first_trigger=101, backend="any") as source:
        assert isinstance(source, FrameSource)
        frames, end = await _all_frames(source)
    assert "stream ended" in str(end)
    assert [f.trigger for f in frames] == list(range(101, 113))
    assert all(f.image.ndim == 2 and f.image.shape == (240, 320) for f in frames)
    reader = ZxingReader()
    for frame in frames[::4]:
        (read,) = reader.read(frame.image)
        assert read.text == _hri(frame.trigger - 101)
    assert source.frames_received == 12


async def test_image_sequence_pattern(tmp_path: Path) -> None:
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"img_{i:04d}.png"), _frame(i))
    async with _source(str(tmp_path / "img_%04d.png"), backend="images") as source:
        frames, _ = await _all_frames(source)
    assert [f.trigger for f in frames] == [1, 2, 3, 4, 5]
    assert np.array_equal(frames[2].image, _frame(2))


async def test_unopenable_source_is_a_connection_error(tmp_path: Path) -> None:
    with pytest.raises(DeviceConnectionError, match="cannot open"):
        async with _source(str(tmp_path / "missing.avi")):
            pass


def test_config_and_registry() -> None:
    assert driver_class("camera", "videocapture") is VideoCaptureSource
    assert VideoCaptureSource.Config(type="videocapture", source=0).source == 0
    with pytest.raises(ValidationError):
        VideoCaptureSource.Config(type="videocapture", source=0, backend="directshow")
    with pytest.raises(ValidationError):
        VideoCaptureSource.Config(type="videocapture", source=0, exposure=3)
    with pytest.raises(ValidationError, match='type = "mjpeg"'):
        VideoCaptureSource.Config(type="videocapture", source="http://cam/s", backend="mjpeg")


async def test_opencv_ffmpeg_reads_the_stream_and_shuts_down_while_blocked() -> None:
    """The same URL through OpenCV, as a free-running camera would be read: frames are counted.
    Then a read blocks in FFmpeg (no more units): leaving the source must not wait for it."""
    line = SimLine(units_per_min=None)
    async with MjpegCameraSim(line, defect_rate=0.0) as sim:

        async def feed() -> None:
            await asyncio.wait_for(sim.wait_for_client(), STEP)
            for i in range(4):  # FFmpeg only finishes opening once frames flow
                line.unit_printed(_unit(i))
                await asyncio.sleep(0.02)

        feeder = asyncio.create_task(feed())
        try:
            async with _source(sim.url, backend="ffmpeg", open_timeout_s=STEP) as source:
                frames = source.frames()
                got = [await _next(frames) for _ in range(4)]
                blocked = asyncio.create_task(anext(frames))
                await asyncio.sleep(0.3)
                assert not blocked.done()
                blocked.cancel()
                started = time.monotonic()
        finally:
            await feeder
        assert time.monotonic() - started < STEP
    assert [f.trigger for f in got] == [1, 2, 3, 4]
    (read,) = ZxingReader().read(got[0].image)
    assert read.text == _unit(0).hri()


def test_a_config_of_the_old_mjpeg_backend_names_the_new_type() -> None:
    from edge_agent.config.loader import ConfigInvalid, validate_table

    old = {"type": "videocapture", "source": "http://cam/s", "backend": "mjpeg", "reconnects": 2}
    with pytest.raises(ConfigInvalid) as info:
        validate_table(VideoCaptureSource.Config, old, key="camera")
    [problem] = info.value.problems
    assert 'type = "mjpeg"' in problem.detail and "remove the backend" in problem.detail
    new = {k: v for k, v in old.items() if k != "backend"} | {"type": "mjpeg"}
    assert validate_table(driver_class("camera", "mjpeg").Config, new, key="camera").reconnects == 2
