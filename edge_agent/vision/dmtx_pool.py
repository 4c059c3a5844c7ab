"""libdmtx (pylibdmtx) as a decoder backend, isolated in a pool of ``spawn``-ed subprocesses.

Why a subprocess: some images make libdmtx fail a C assertion, which aborts the whole process; in
a worker that costs one read and a pool restart instead of the daemon. Why ``spawn``: a forked
child of a threaded asyncio daemon can inherit locks held by other threads.

Two deviations from ``pylibdmtx.decode``:
- the FNC1 substitute is set to GS, otherwise libdmtx drops FNC1 and variable-length GS1 fields
  run together (``10LOT21SER`` instead of ``10LOT<GS>21SER``);
- the search has a hard time budget: libdmtx's own timeout bounds the region search, and the
  caller kills the pool if a worker overruns the budget by more than a margin anyway.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from edge_agent.contracts import CodeRead, GrayImage
from edge_agent.gs1 import GS
from edge_agent.vision.gs1text import hri_of

log = structlog.get_logger("edge_agent.vision.dmtx")

KILL_MARGIN_S = 1.0  # a worker this far past its budget is stuck, not slow: kill the pool
STARTUP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class DmtxHit:
    """What a worker sends back (picklable, no numpy)."""

    data: bytes
    corners: tuple[tuple[int, int], ...]  # TL, TR, BR, BL in image coordinates (y down)
    modules: int  # symbol columns
    rows: int = 0


def dmtx_search(
    pixels: bytes, width: int, height: int, timeout_ms: int, max_count: int
) -> list[DmtxHit]:
    """Runs in the worker process. Top-level so that ``spawn`` can import it by name."""
    from ctypes import POINTER, c_ubyte, cast, string_at

    from pylibdmtx import pylibdmtx as pd
    from pylibdmtx.wrapper import (
        DmtxProperty,
        DmtxUndefined,
        DmtxVector2,
        dmtxDecodeSetProp,
        dmtxMatrix3VMultiplyBy,
        dmtxTimeAdd,
        dmtxTimeNow,
    )

    deadline = dmtxTimeAdd(dmtxTimeNow(), max(1, timeout_ms))
    hits: list[DmtxHit] = []
    buffer = (c_ubyte * len(pixels)).from_buffer_copy(pixels)
    with (
        pd._image(cast(buffer, POINTER(c_ubyte)), width, height, pd._PACK_ORDER[8]) as img,
        pd._decoder(img, 1) as decoder,
    ):
        dmtxDecodeSetProp(decoder, DmtxProperty.DmtxPropFnc1, ord(GS))
        while len(hits) < max_count:
            with pd._region(decoder, deadline) as region:
                if not region:
                    break
                with pd._decoded_matrix_region(decoder, region, DmtxUndefined) as msg:
                    if not msg:
                        continue
                    corners = []
                    for ux, uy in ((0.0, 1.0), (1.0, 1.0), (1.0, 0.0), (0.0, 0.0)):
                        point = DmtxVector2(ux, uy)
                        dmtxMatrix3VMultiplyBy(point, region.contents.fit2raw)
                        # libdmtx puts the origin at the bottom-left of the image
                        corners.append((round(point.X), round(height - 1 - point.Y)))
                    hits.append(
                        DmtxHit(
                            bytes(string_at(msg.contents.output)),
                            tuple(corners),
                            int(region.contents.symbolCols),
                            int(region.contents.symbolRows),
                        )
                    )
    return hits


def abort_worker(*_args: object) -> None:
    """Test hook: dies like libdmtx on a failed C assertion (a search function stand-in)."""
    import os

    os.abort()


def _warm() -> int:
    import pylibdmtx.pylibdmtx  # noqa: F401  (load the shared library once, at start)

    return 0


def code_read(hit: DmtxHit, offset: tuple[int, int] = (0, 0), ms: float = 0.0) -> CodeRead:
    """A worker hit as a CodeRead; a leading FNC1 (GS) marks GS1 DataMatrix (]d2)."""
    data = hit.data.decode("latin-1")
    is_gs1 = data.startswith(GS)
    raw = data[1:] if is_gs1 else data
    dx, dy = offset
    corners = tuple((x + dx, y + dy) for x, y in hit.corners)
    (x0, y0), (x1, y1) = corners[0], corners[1]
    side = float(np.hypot(x1 - x0, y1 - y0))
    return CodeRead(
        text=hri_of(raw) if is_gs1 else raw,
        raw=raw,
        symbology="]d2" if is_gs1 else "]d1",
        corners=corners,
        ms=ms,
        module_size=side / hit.modules if hit.modules > 0 else None,
        strategy="dmtx",
        size=(hit.rows, hit.modules) if hit.rows > 0 and hit.modules > 0 else None,
    )


class DmtxPool:
    """A process pool running ``dmtx_search``; recovers from crashed or stuck workers."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self.restarts = 0  # pools replaced after a crash or a stuck worker
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        # Top-level function run in the worker; tests swap in ``abort_worker``.
        self.search_fn: Callable[..., list[DmtxHit]] = dmtx_search

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                pool = ProcessPoolExecutor(
                    self.workers, mp_context=multiprocessing.get_context("spawn")
                )
                # Start the workers before any budget runs: a spawn and the imports take a
                # second or more on a loaded machine, which a 50 ms search budget must not
                # include (or every first search after a restart would overrun, be killed, and
                # restart the pool again).
                try:
                    for future in [pool.submit(_warm) for _ in range(self.workers)]:
                        future.result(timeout=STARTUP_TIMEOUT_S)
                except (BrokenProcessPool, concurrent.futures.TimeoutError) as exc:
                    _kill(pool)
                    raise DmtxWorkerLost("libdmtx workers did not start") from exc
                self._pool = pool
            return self._pool

    def start(self) -> None:
        """Start the workers now rather than on the first frame that needs them."""
        self._executor()

    def call(self, budget_s: float, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in a worker. A crash or overrun raises ``DmtxWorkerLost`` after the
        pool has been replaced and the new workers started: this frame is lost anyway, so it
        pays for the restart, and the next one finds warm workers."""
        pool = self._executor()
        try:
            future = pool.submit(fn, *args)
        except BrokenProcessPool as exc:
            self._replace(pool, "worker crashed")
            raise DmtxWorkerLost("libdmtx worker crashed") from exc
        except RuntimeError as exc:  # another thread replaced this pool a moment ago
            raise DmtxWorkerLost("libdmtx pool was being replaced") from exc
        try:
            return future.result(timeout=budget_s + KILL_MARGIN_S)
        except BrokenProcessPool as exc:
            self._replace(pool, "worker crashed")
            raise DmtxWorkerLost("libdmtx worker crashed") from exc
        except concurrent.futures.TimeoutError as exc:
            self._replace(pool, "worker overran its budget")
            raise DmtxWorkerLost("libdmtx worker overran its budget") from exc

    def search(self, image: GrayImage, budget_ms: float, max_count: int = 1) -> list[DmtxHit]:
        image = np.ascontiguousarray(image, dtype=np.uint8)
        height, width = image.shape[:2]
        hits: list[DmtxHit] = self.call(
            budget_ms / 1000.0,
            self.search_fn,
            image.tobytes(),
            width,
            height,
            int(budget_ms),
            max_count,
        )
        return hits

    def read(
        self,
        image: GrayImage,
        budget_ms: float,
        max_count: int = 1,
        offset: tuple[int, int] = (0, 0),
    ) -> list[CodeRead]:
        started = time.perf_counter()
        try:
            hits = self.search(image, budget_ms, max_count)
        except DmtxWorkerLost as exc:
            log.error("dmtx_worker_lost", error=str(exc), restarts=self.restarts)
            return []
        ms = (time.perf_counter() - started) * 1000.0
        return [code_read(hit, offset, ms) for hit in hits]

    def _replace(self, broken: ProcessPoolExecutor, why: str) -> None:
        with self._lock:
            if self._pool is not broken:
                return  # another thread saw the same failure and replaces it
            self._pool = None
            self.restarts += 1
        log.warning("dmtx_pool_restart", reason=why, restarts=self.restarts)
        _kill(broken)
        try:
            self._executor()
        except DmtxWorkerLost as exc:  # tried again on the next call
            log.error("dmtx_pool_start_failed", error=str(exc))

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class DmtxWorkerLost(RuntimeError):
    """A libdmtx worker died or hung; its pool has been replaced."""


def _kill(pool: ProcessPoolExecutor) -> None:
    # ProcessPoolExecutor (3.11) cannot cancel a running task; a hung worker must be killed
    # or shutdown would wait for it forever.
    processes = dict(getattr(pool, "_processes", None) or {})
    for process in processes.values():
        if process.is_alive():
            process.kill()
    with contextlib.suppress(OSError):  # pipes already closed by the crash: nothing to release
        pool.shutdown(wait=True, cancel_futures=True)
