"""DirectoryFrameSource on real folders."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from drivers.cameras.directory import DirectoryFrameSource
from edge_agent.contracts import Frame, FrameSource
from edge_agent.vision.decode import ZxingReader
from simulators.cameras.directory import DirectoryCameraSim
from simulators.line import SimLine, SimUnit
from tests.helpers.waiting import until

pytestmark = pytest.mark.usefixtures("no_leaks")

STEP = 5.0  # generous timeout so a broken test fails instead of hanging


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(24, 32), dtype=np.uint8)


def _encoded(image: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def _names(folder: Path, pattern: str = "*") -> list[str]:
    return sorted(p.name for p in folder.glob(pattern))


def _source(path: Path, **options: object) -> DirectoryFrameSource:
    config = DirectoryFrameSource.Config(
        type="directory", path=path, poll_interval_s=0.005, **options
    )
    return DirectoryFrameSource("cam-dir", config)


class Collector:
    """Runs ``frames()`` in a task and keeps what it yields."""

    def __init__(self, source: DirectoryFrameSource) -> None:
        self.source = source
        self.frames: list[Frame] = []
        self._queue: asyncio.Queue[Frame] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        frames: AsyncIterator[Frame] = self.source.frames()
        async for frame in frames:
            self.frames.append(frame)
            self._queue.put_nowait(frame)

    async def take(self, n: int) -> list[Frame]:
        return [await asyncio.wait_for(self._queue.get(), STEP) for _ in range(n)]

    async def polls(self, n: int) -> None:
        """Let the source look at the folder ``n`` more times."""
        await until(lambda start=self.source.polls: self.source.polls >= start + n)


def test_config_validation(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        DirectoryFrameSource.Config(type="directory", path=tmp_path, trigger_regex=r"\d+")
    with pytest.raises(ValidationError):
        DirectoryFrameSource.Config(type="directory", path=tmp_path, pattern="sub/*.png")
    with pytest.raises(ValidationError):
        DirectoryFrameSource.Config(type="directory", path=tmp_path, after_read="shred")
    with pytest.raises(ValidationError):
        DirectoryFrameSource.Config(type="directory", path=tmp_path, speed=1)


async def test_partial_file_is_not_yielded_early(tmp_path: Path) -> None:
    image = _image(1)
    data = _encoded(image)
    target = tmp_path / "img_000017.png"
    async with _source(tmp_path, bad_after_s=600) as source, Collector(source) as got:
        assert isinstance(source, FrameSource)
        target.write_bytes(data[: len(data) // 2])
        await got.polls(10)
        assert got.frames == []
        with target.open("ab") as f:
            f.write(data[len(data) // 2 :])
        (frame,) = await got.take(1)
        await got.polls(5)
    assert frame.trigger == 17 and frame.source == "cam-dir"
    assert np.array_equal(frame.image, image)
    assert len(got.frames) == 1
    assert source.malformed_count == 0


async def test_format_that_cannot_prove_completeness_waits_to_settle(tmp_path: Path) -> None:
    image = _image(2)
    (tmp_path / "5.tif").write_bytes(_encoded(image, ".tif"))
    async with _source(tmp_path, pattern="*.tif") as source, Collector(source) as got:
        (frame,) = await got.take(1)
        assert source.polls >= 2  # read only once unchanged across two polls
    assert frame.trigger == 5 and np.array_equal(frame.image, image)


async def test_settle_time_covers_a_slow_writer(tmp_path: Path) -> None:
    """A TIFF written in chunks with pauses longer than the poll interval is read only whole."""
    image = _image(12)
    data = _encoded(image, ".tif")
    target = tmp_path / "12.tif"
    async with (
        _source(tmp_path, pattern="*.tif", settle_s=0.3, bad_after_s=600) as source,
        Collector(source) as got,
    ):
        for start in range(0, len(data), len(data) // 4):
            with target.open("ab") as f:
                f.write(data[start : start + len(data) // 4])
            await got.polls(4)  # several polls see the same partial file
        (frame,) = await got.take(1)
    assert np.array_equal(frame.image, image)
    assert source.malformed_count == 0 and len(got.frames) == 1


@pytest.mark.parametrize("ext", [".jpg", ".bmp"])
async def test_self_delimiting_formats_are_not_read_early(tmp_path: Path, ext: str) -> None:
    image = _image(3)
    data = _encoded(image, ext)
    target = tmp_path / f"9{ext}"
    async with (
        _source(tmp_path, pattern=f"*{ext}", settle_s=0, bad_after_s=600) as source,
        Collector(source) as got,
    ):
        target.write_bytes(data[: len(data) - 7])
        await got.polls(10)  # unchanged for many polls, but provably incomplete
        assert got.frames == []
        with target.open("ab") as f:
            f.write(data[len(data) - 7 :])
        (frame,) = await got.take(1)
    assert frame.trigger == 9
    if ext == ".bmp":
        assert np.array_equal(frame.image, image)


async def test_temporary_names_are_ignored_until_renamed(tmp_path: Path) -> None:
    image = _image(4)
    async with (
        _source(tmp_path, pattern="*.tif", bad_after_s=0) as source,
        Collector(source) as got,
    ):
        (tmp_path / ".21.tif").write_bytes(_encoded(image, ".tif")[:100])
        (tmp_path / "~22.tif").write_bytes(b"partial")
        await got.polls(5)
        assert got.frames == [] and source.malformed_count == 0
        (tmp_path / ".21.tif").write_bytes(_encoded(image, ".tif"))
        (tmp_path / ".21.tif").rename(tmp_path / "21.tif")
        (frame,) = await got.take(1)
    assert frame.trigger == 21 and np.array_equal(frame.image, image)
    assert (tmp_path / "~22.tif").exists()


async def test_big_burst_is_taken_in_bounded_polls_in_order(tmp_path: Path) -> None:
    for trigger in np.random.default_rng(5).permutation(120):
        (tmp_path / f"{trigger:04d}.png").write_bytes(_encoded(_image(int(trigger))))
    async with _source(tmp_path, max_per_poll=16) as source, Collector(source) as got:
        frames = await got.take(120)
    assert [f.trigger for f in frames] == list(range(120))
    assert source.polls >= 120 // 16


@pytest.mark.parametrize("folder", ["done", "bad"])
async def test_done_and_bad_folders_are_bounded(tmp_path: Path, folder: str) -> None:
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "old.png").write_bytes(b"from an earlier run")
    for trigger in range(12):
        content = _encoded(_image(trigger)) if folder == "done" else b"not an image"
        (tmp_path / f"{trigger:03d}.png").write_bytes(content)
    options = {"after_read": "move", "keep_files": 5, "bad_after_s": 0}
    async with _source(tmp_path, **options) as source, Collector(source) as got:
        if folder == "done":
            await got.take(12)
        else:
            await until(lambda: source.malformed_count == 12)
        await got.polls(2)
    assert _names(tmp_path / folder) == [f"{t:03d}.png" for t in range(7, 12)]


async def test_burst_is_yielded_once_each_in_trigger_order(tmp_path: Path) -> None:
    order = np.random.default_rng(3).permutation(50)
    for trigger in order:
        (tmp_path / f"cam_{trigger:04d}.png").write_bytes(_encoded(_image(int(trigger))))
    async with _source(tmp_path) as source, Collector(source) as got:
        frames = await got.take(50)
        # A second burst while running: each file exactly once, order across polls not promised.
        for trigger in range(100, 150):
            (tmp_path / f"cam_{trigger:04d}.png").write_bytes(_encoded(_image(trigger)))
        await got.take(50)
        await got.polls(5)
    assert [f.trigger for f in frames] == list(range(50))
    assert all(np.array_equal(f.image, _image(f.trigger)) for f in frames)
    assert sorted(f.trigger for f in got.frames) == [*range(50), *range(100, 150)]
    assert source.frames_received == 100


@pytest.mark.parametrize("mode", ["delete", "move", "keep"])
async def test_after_read_modes(tmp_path: Path, mode: str) -> None:
    names = [f"{t}.png" for t in (3, 1, 2)]
    for t, name in enumerate(names):
        (tmp_path / name).write_bytes(_encoded(_image(t)))
    async with _source(tmp_path, after_read=mode) as source, Collector(source) as got:
        frames = await got.take(3)
        await got.polls(5)  # kept files must not come back
    assert [f.trigger for f in frames] == [1, 2, 3]
    assert len(got.frames) == 3
    left = _names(tmp_path, "*.png")
    done = _names(tmp_path / "done") if mode == "move" else []
    if mode == "delete":
        assert left == []
    elif mode == "move":
        assert left == [] and done == sorted(names)
    else:
        assert left == sorted(names)


async def test_rewritten_file_in_keep_mode_is_a_new_frame(tmp_path: Path) -> None:
    target = tmp_path / "8.png"
    target.write_bytes(_encoded(_image(1)))
    async with _source(tmp_path, after_read="keep") as source, Collector(source) as got:
        await got.take(1)
        await got.polls(3)
        target.write_bytes(_encoded(_image(2)))
        (again,) = await got.take(1)
    assert again.trigger == 8 and np.array_equal(again.image, _image(2))


async def test_undecodable_file_goes_to_bad(tmp_path: Path) -> None:
    (tmp_path / "4.png").write_bytes(b"this is not an image")
    (tmp_path / "no_trigger.png").write_bytes(_encoded(_image(0)))
    (tmp_path / "6.png").write_bytes(_encoded(_image(6)))
    async with _source(tmp_path, bad_after_s=0) as source, Collector(source) as got:
        (frame,) = await got.take(1)
        await until(lambda: source.malformed_count == 2)
        await got.polls(3)
    assert frame.trigger == 6
    assert _names(tmp_path / "bad") == ["4.png", "no_trigger.png"]
    assert _names(tmp_path, "*.png") == []
    assert len(got.frames) == 1


# --- against the folder camera simulator on the simulated line ------------------------------


@pytest.mark.parametrize("slow_writes", [False, True])
async def test_driver_against_the_folder_camera_simulator(slow_writes: bool) -> None:
    line = SimLine(units_per_min=None)
    sim = DirectoryCameraSim(line, defect_rate=0.0, slow_writes=slow_writes)
    units = [
        SimUnit(f"SN{i:06d}", "09506000134352", "LOT1", "271231", time.monotonic())
        for i in range(8)
    ]
    async with sim:
        config = DirectoryFrameSource.Config(**sim.driver_config(bad_after_s=600))
        async with DirectoryFrameSource("cam-dir", config) as source, Collector(source) as got:
            for unit in units:
                line.unit_printed(unit)
            frames = await got.take(8)
            await got.polls(3)
        folder = sim.folder
        assert folder is not None and _names(folder) == []  # read files are deleted
    assert folder is not None and not folder.exists()  # the simulator's temporary folder
    assert [f.trigger for f in frames] == list(range(1, 9))
    assert source.malformed_count == 0 and len(got.frames) == 8
    reader = ZxingReader()
    for frame in frames:
        (read,) = reader.read(frame.image)
        assert read.text == units[frame.trigger - 1].hri()


async def test_plugin_fixture(directory_camera_sim: DirectoryCameraSim, sim_line: SimLine) -> None:
    config = DirectoryFrameSource.Config(**directory_camera_sim.driver_config())
    async with DirectoryFrameSource("d", config) as source, Collector(source) as got:
        sim_line.unit_printed(SimUnit("S1", "09506000134352", "L", "271231", time.monotonic()))
        (frame,) = await got.take(1)
    assert frame.trigger == 1
