"""Simulated camera that writes one image file per unit into a folder ("directory").

It reuses the frame camera's production (``simulators.cameras.tcp``: defects, rendering, strict
trigger order) and, instead of sending a frame over TCP, writes ``unit_<trigger>.png`` the way
careful cameras and FTP uploads do: under a hidden temporary name first, renamed when complete.
``slow_writes`` makes it write the final name directly in chunks with pauses instead, the way
careless ones do, to exercise the driver's completeness checks.

The folder is a fresh temporary one unless given; it is removed on ``stop()`` if it was created.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from simulators.cameras.tcp import TcpCameraSim, _Look
from simulators.line import SimLine

_TRIGGER_BYTES = 8


class DirectoryCameraSim(TcpCameraSim):
    def __init__(
        self,
        line: SimLine,
        *,
        folder: Path | None = None,
        slow_writes: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(line, **options)
        self.folder = folder
        self.slow_writes = slow_writes
        self._created = False
        self.files_written = 0

    @classmethod
    def from_section(cls, line: SimLine, section: Any) -> DirectoryCameraSim:
        return cls(
            line,
            defect_rate=section.defect_rate,
            seed=section.seed,
            width=section.width,
            height=section.height,
        )

    def driver_config(self, **overrides: Any) -> dict[str, Any]:
        """A ``[camera]`` section for DirectoryFrameSource reading this simulator's folder."""
        return {
            "type": "directory",
            "path": str(self.folder),
            "pattern": "unit_*.png",
            "trigger_regex": r"unit_(\d+)",
            "poll_interval_s": 0.005,
        } | overrides

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="camera-sim-"))
            self._created = True
        self.folder.mkdir(parents=True, exist_ok=True)
        await super().start(host, port)  # the TCP side stays idle; it keeps the lifecycle shared

    async def stop(self) -> None:
        await super().stop()
        if self._created and self.folder is not None:
            await asyncio.to_thread(shutil.rmtree, self.folder, True)

    async def wait_for_client(self) -> None:
        return None  # a folder needs no connection

    def _produce(self, trigger: int, look: _Look, rng: np.random.Generator) -> bytes:
        """Worker thread: the PNG of one unit, prefixed with its trigger for ``_deliver``."""
        image = self._render(trigger, look, rng)
        ok, png = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        assert ok
        return trigger.to_bytes(_TRIGGER_BYTES, "big") + png.tobytes()

    async def _deliver(self, data: bytes) -> None:
        trigger = int.from_bytes(data[:_TRIGGER_BYTES], "big")
        png = data[_TRIGGER_BYTES:]
        try:
            if self.slow_writes:
                await self._write_slowly(trigger, png)
            else:
                await asyncio.to_thread(self._write, trigger, png)
        except OSError:
            self.frames_dropped += 1
            return
        self.frames_sent += 1
        self.files_written += 1

    def _path(self, trigger: int) -> Path:
        assert self.folder is not None
        return self.folder / f"unit_{trigger:08d}.png"

    def _write(self, trigger: int, png: bytes) -> None:
        final = self._path(trigger)
        temporary = final.with_name("." + final.name)
        temporary.write_bytes(png)
        os.replace(temporary, final)

    async def _write_slowly(self, trigger: int, png: bytes) -> None:
        final = self._path(trigger)
        step = max(1, len(png) // 3)
        for start in range(0, len(png), step):
            with final.open("ab") as f:
                f.write(png[start : start + step])
            await asyncio.sleep(0.01)
