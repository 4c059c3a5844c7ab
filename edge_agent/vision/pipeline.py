"""The decode pipeline the line runs: a fast pass, then fallbacks only while the budget lasts.

Measured on this machine class: one zxing-cpp pass restricted to DataMatrix reads most frames in
about a millisecond on a VGA frame or a crop, but a full 5 MP frame costs tens of ms and still
misses low-contrast codes; the fallbacks (global binarizer, CLAHE, 2x upscale, libdmtx) are
complementary but each costs time. So:

1. the ROI from the config is cut out;
2. a small frame is decoded whole; a large one is first searched on a downscaled copy
   (``locate``) and each candidate region is decoded at full resolution;
3. only if that found nothing (the rare reject path) do the fallbacks run, in the configured
   order, each only while the per-frame budget remains.

A frame without a code therefore costs the localisation and a few quick passes, a readable frame
one pass. ``DecodePipeline`` is a ``CodeReader``: synchronous, thread-safe (zxing-cpp releases the
GIL), meant to be called from a thread pool off the event loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import structlog
import zxingcpp

from edge_agent.config.models import VisionSection
from edge_agent.contracts import CodeRead, GrayImage
from edge_agent.vision.decode import DATAMATRIX, barcode_read, symbol_contrast
from edge_agent.vision.dmtx_pool import DmtxPool
from edge_agent.vision.grid import Marks, marks, read_sampled
from edge_agent.vision.locate import Region, locate

log = structlog.get_logger("edge_agent.vision.pipeline")

LOCATE_ABOVE_PX = 640 * 480  # frames larger than VGA are localised first
MAX_UPSCALE_PX = LOCATE_ABOVE_PX  # a larger target is not worth enlarging
# A larger candidate crop is not enlarged either: what the upscale reads there (codes of 4-8 px
# modules with a texture) the two smoothing passes read for a fifth of the cost, measured on the
# wide set; below it are the codes of 2-3 px modules that need the enlargement.
MAX_UPSCALE_CROP_PX = 300 * 300
# Fallbacks try only the best candidates: on a frame without a code every candidate is printed
# text, and trying them all is what would make such frames slow. CLAHE (a few ms per crop) only
# the very best; the 2x upscale the best two (it is only done on small crops, and a symbol of
# 2 px modules beside a line of text ranks second as often as first). The smoothing and the
# global binarizer only the best: on the wide set, given all the time they want, the two codes
# they read on the second candidate the upscale reads there too, and on a 5 MP frame the
# second candidate (a long line of text) cost them 2.3 ms that the grid stage lacked for a
# long DMRE under perspective (frame 447: 6.3 ms fast pass, 4.0 + 2.3 ms for these two stages,
# 13 ms for the grid stage; 2.3 of them on the text).
FALLBACK_TARGETS = {
    "denoise": 1,
    "global-binarizer": 1,
    "clahe": 1,
    "upscale": 2,
    "grid": 2,
    "dmtx": 1,
}
# The fast pass tries candidates after the best one only within this share of the budget.
FAST_SHARE = 1 / 3
# Candidates a large frame's fast pass may try (within FAST_SHARE after the first): on the wide
# set the code ranks first in 543 of 560 frames, but a thin low-contrast DMRE (8x120) beside
# bold text ranked fifth, and a candidate of text costs the fast pass a few tenths of a ms.
LOCATE_CANDIDATES = 6
# A best candidate of dots skips zxing-cpp's rotated search only when its crop is larger than
# this (pixels), where that search costs 3-7 ms.
ROTATED_SKIP_PX = 512 * 512
# A stage that needs about this long is not started with less of the budget left: it would
# only push the frame past its budget (the frame is a no-read either way).
STAGE_MS = {"grid": 6.0, "upscale": 3.0, "clahe": 3.0, "dmtx": 2.0}
# The last step a stage starts overruns what was left by up to about this (measured on the wide
# benchmark set: 2.7 ms at most, a grid step or a zxing pass on a large crop): the cascade plans
# to end this much before the budget, so that the frame does not end after it. At most a tenth
# of the budget (a small budget of a test is not eaten by it).
OVERRUN_MS = 2.5
# CLAHE and its zxing pass cost about this per megapixel of the crop (a long text line of a 5 MP
# frame is a third of one): started with less, the frame would end past its budget.
STAGE_MS_PER_MPX = {"clahe": 16.0}


@dataclass(frozen=True)
class _Target:
    """An image to decode and where it sits in the full frame."""

    image: GrayImage
    offset: tuple[int, int]
    located: bool = False  # a candidate crop of a large frame (modules >= 3 px by design)
    rank: int = 0  # among the frame's candidates, best first
    # What is learnt of it on the way (its dark marks), for the stages after.
    memo: dict[str, Marks] = field(default_factory=dict, compare=False)

    def marks(self) -> Marks:
        """Its dark marks (``grid.marks``), taken once."""
        found = self.memo.get("marks")
        if found is None:
            found = self.memo["marks"] = marks(self.image)
        return found

    @property
    def dotted(self) -> bool:
        """Whether this is the best candidate of a large frame and a symbol of dots
        (``grid.Marks.dotted``)."""
        return self.located and self.rank == 0 and self.marks().dotted


Stage = Callable[["DecodePipeline", _Target, float], list[CodeRead]]


class DecodePipeline:
    """Configured from ``[vision]``; see the module docstring for the cascade."""

    def __init__(
        self,
        section: VisionSection | None = None,
        *,
        dmtx: DmtxPool | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        """``clock`` is what the frame budget is counted in: wall time on the line (the verdict
        has a deadline). A benchmark on a shared machine may count this thread's CPU time
        (``time.thread_time``): what the cascade would do on a core of its own."""
        self.section = section or VisionSection()
        self._clock = clock
        uses_dmtx = self.section.backend == "dmtx" or "dmtx" in self.section.fallbacks
        self._owns_dmtx = dmtx is None and uses_dmtx
        self.dmtx = (
            dmtx
            if dmtx is not None
            else (DmtxPool(self.section.dmtx_workers) if uses_dmtx else None)
        )

    def start(self) -> None:
        """Start the libdmtx workers now rather than on the first frame that needs them."""
        if self.dmtx is not None:
            self.dmtx.start()

    def close(self) -> None:
        if self.dmtx is not None and self._owns_dmtx:
            self.dmtx.close()

    def read(self, image: GrayImage) -> Sequence[CodeRead]:
        started = time.perf_counter()
        budget_s = self.section.frame_budget_ms / 1000.0
        fast_until = self._clock() + FAST_SHARE * budget_s
        deadline = self._clock() + budget_s - min(OVERRUN_MS / 1000.0, 0.1 * budget_s)
        timings: list[tuple[str, float]] = []
        full = np.ascontiguousarray(image, dtype=np.uint8)
        frame = _Target(full, (0, 0))
        if self.section.roi is not None:
            frame = _roi(frame.image, self.section.roi)
        targets = self._targets(frame, timings)
        stages = list(dict.fromkeys([self.section.backend, *self.section.fallbacks]))
        # The fast pass tries the best candidate whatever the clock says (a late frame is
        # rejected by the verdict deadline anyway), the others while its share of the budget
        # lasts: most of them are lines of text, and a long one costs as much as a frame.
        reads = self._run(stages[0], targets, deadline, timings, fast_until=fast_until)
        if reads:
            return self._finished(reads, full, started, timings)
        # Fallbacks stop when the budget is spent.
        for name, chosen in self._plan(stages[1:], targets, deadline):
            if self._left_ms(deadline) <= 0:
                break
            if self._left_ms(deadline) < STAGE_MS.get(name, 0.0):
                continue
            reads = self._run(name, chosen, deadline, timings)
            if reads:
                break
        return self._finished(reads, full, started, timings)

    def _run(
        self,
        name: str,
        targets: Sequence[_Target],
        deadline: float,
        timings: list[tuple[str, float]],
        *,
        fast_until: float | None = None,
    ) -> list[CodeRead]:
        """Stage ``name`` on ``targets`` in turn: the fast pass (``fast_until`` given) while its
        share of the budget lasts, a fallback while the budget does."""
        stage_started = time.perf_counter()
        fast = fast_until is not None
        reads: list[CodeRead] = []
        for target in targets:
            if not fast and self._left_ms(deadline) < _needs_ms(name, target):
                break
            reads = _merge(reads, _STAGES[name](self, target, deadline))
            if len(reads) >= self.section.max_codes:
                break
            if fast_until is not None and self._clock() >= fast_until:
                break
            if not fast and self._left_ms(deadline) < STAGE_MS.get(name, 0.0):
                break
        timings.append((name, (time.perf_counter() - stage_started) * 1000.0))
        return reads

    def _plan(
        self, fallbacks: Sequence[str], targets: list[_Target], deadline: float
    ) -> list[tuple[str, list[_Target]]]:
        """The fallbacks in order, each with the candidates it tries; the grid stage first on
        a best candidate of dots (``grid.Marks.dotted``: inkjet and dot peen, which the
        smoothing passes rarely read and the grid stage does, given the time they took)."""
        plan = [(name, targets[: FALLBACK_TARGETS[name]]) for name in fallbacks]
        if (
            "grid" not in fallbacks
            or not targets
            or self._left_ms(deadline) < STAGE_MS["grid"]
            or not targets[0].dotted
        ):
            return plan
        at = list(fallbacks).index("grid")
        plan[at] = ("grid", plan[at][1][1:])
        return [("grid", targets[:1]), *plan]

    def _finished(
        self,
        reads: list[CodeRead],
        full: GrayImage,
        started: float,
        timings: list[tuple[str, float]],
    ) -> list[CodeRead]:
        ms = (time.perf_counter() - started) * 1000.0
        return [
            replace(
                read,
                contrast=symbol_contrast(full, read.corners),
                ms=ms,
                timings=tuple(timings),
            )
            for read in reads
        ]

    def _targets(self, frame: _Target, timings: list[tuple[str, float]]) -> list[_Target]:
        height, width = frame.image.shape[:2]
        if height == 0 or width == 0:  # an ROI outside this frame
            return []
        small = height * width <= LOCATE_ABOVE_PX
        if self.section.max_codes > 1 or small or self.section.locate == "off":
            return [frame]
        started = time.perf_counter()
        regions = locate(
            frame.image, max_regions=max(LOCATE_CANDIDATES, self.section.max_codes + 3)
        )
        timings.append(("locate", (time.perf_counter() - started) * 1000.0))
        return [_crop(frame, region, rank) for rank, region in enumerate(regions)]

    def _left_ms(self, deadline: float) -> float:
        return (deadline - self._clock()) * 1000.0

    # --- stages ---------------------------------------------------------------------------

    def _zxing(
        self,
        target: _Target,
        *,
        binarizer: zxingcpp.Binarizer = zxingcpp.Binarizer.LocalAverage,
        image: GrayImage | None = None,
        scale: float = 1.0,
        strategy: str = "zxing",
        try_rotate: bool = True,
    ) -> list[CodeRead]:
        multi = self.section.max_codes > 1
        barcodes = zxingcpp.read_barcodes(
            target.image if image is None else image,
            formats=DATAMATRIX,
            try_rotate=try_rotate,
            # A case of many codes: every code is big enough at full size, and the downscaled
            # search pyramid would double the cost of a 5 MP frame.
            try_downscale=not multi,
            try_invert=False,
            text_mode=zxingcpp.TextMode.HRI,
            binarizer=binarizer,
        )
        return [
            barcode_read(b, scale=scale, offset=target.offset, strategy=strategy)
            for b in barcodes
            if b.valid
        ]

    def _stage_zxing(self, target: _Target, deadline: float) -> list[CodeRead]:
        # zxing's rotated search costs two thirds of a pass (2.4 vs 0.8 ms on the line's VGA
        # frames, both reading all of them), and only some symbols need it (the wide set reads
        # 88.6% without it): a frame pays for it only when the plain pass found nothing. A case
        # frame of many codes searches rotated at once: a partial plain read would end it.
        if self.section.max_codes == 1:
            reads = self._zxing(target, try_rotate=False)
            if reads or (target.image.size > ROTATED_SKIP_PX and target.dotted):
                # Nor does the rotated search read a symbol of separated dots (it has no edges
                # to trace): on the wide set (seed 1) no dotted best candidate is read by
                # either pass, and on a large crop the rotated one costs 6.5-7 ms (5 MP frames'
                # inkjet 26x64 and dot-peen 8x144). A smaller crop keeps it: it is cheap there,
                # and it reads a low-contrast printed symbol whose noise splits it into as many
                # marks (seed 7, low_contrast 34: 184 marks, 487x489 px).
                return reads
        return self._zxing(target)

    def _stage_denoise(self, target: _Target, deadline: float) -> list[CodeRead]:
        # Sensor noise on low-contrast codes breaks the local binarizer's module edges; a 3x3
        # Gaussian restores them and, at 3 px and more per module, keeps the modules apart.
        smooth = np.asarray(cv2.GaussianBlur(target.image, (3, 3), 0), dtype=np.uint8)
        reads = self._zxing(target, image=smooth, strategy="denoise")
        if reads or not target.located or self._left_ms(deadline) <= 0:
            return reads
        # Then at the scale of the modules' texture: inkjet dots, glints and grain inside
        # modules of 4-8 px merge at sigma 1.2 px, which the 3x3 leaves apart. Measured on the
        # wide set: it reads 55 of the 169 codes the fast pass misses (the 3x3: 36), for about
        # 0.7 ms a crop, most of them otherwise only read by the 2x upscale or the grid stage.
        wider = np.asarray(cv2.GaussianBlur(target.image, (0, 0), 1.2), dtype=np.uint8)
        return self._zxing(target, image=wider, strategy="denoise")

    def _stage_global(self, target: _Target, deadline: float) -> list[CodeRead]:
        # The local binarizer now and then loses small blurred modules; the global one reads
        # most of those, and some low-contrast codes, for well under a ms.
        reads = self._zxing(
            target, binarizer=zxingcpp.Binarizer.GlobalHistogram, strategy="global-binarizer"
        )
        if reads or not target.located or self._left_ms(deadline) <= 0:
            return reads
        # And on the crop averaged down 2x (the same texture as above, averaged away instead of
        # blurred): a quarter of the pixels, so about 0.2 ms; 41 of the 169 on the wide set.
        half = np.asarray(
            cv2.resize(target.image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA),
            dtype=np.uint8,
        )
        return self._zxing(
            target,
            image=half,
            scale=0.5,
            binarizer=zxingcpp.Binarizer.GlobalHistogram,
            strategy="global-binarizer",
        )

    def _stage_clahe(self, target: _Target, deadline: float) -> list[CodeRead]:
        # Contrast normalisation: low contrast and uneven light flattened tile by tile.
        clahe = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8))
        normalised = np.asarray(clahe.apply(target.image), dtype=np.uint8)
        return self._zxing(target, image=normalised, strategy="clahe")

    def _stage_upscale(self, target: _Target, deadline: float) -> list[CodeRead]:
        # Small modules and damaged ones (scratches eat into 3 px modules) sample better at 2x.
        # Only the best candidate of a large frame (FALLBACK_TARGETS) and never a big target:
        # enlarging costs a few ms on every frame without a code.
        height, width = target.image.shape[:2]
        if height * width > (MAX_UPSCALE_CROP_PX if target.located else MAX_UPSCALE_PX):
            return []
        big = np.asarray(
            cv2.resize(target.image, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR),
            dtype=np.uint8,
        )
        reads = self._zxing(target, image=big, scale=2.0, strategy="upscale")
        if not reads and target.located and self._left_ms(deadline) > 0:
            reads = self._zxing(
                target,
                image=big,
                scale=2.0,
                binarizer=zxingcpp.Binarizer.GlobalHistogram,
                strategy="upscale",
            )
        return reads

    def _stage_grid(self, target: _Target, deadline: float) -> list[CodeRead]:
        # Inkjet and dot-peen dots, missing dots, damaged timing: our own grid fit, with
        # zxing-cpp decoding the redrawn symbol (edge_agent/vision/grid.py). It wants one
        # symbol at the centre of its image: a whole small frame is first searched.
        def time_left() -> float:
            return self._left_ms(deadline)

        if target.located:
            return read_sampled(
                target.image, target.offset, time_left=time_left, found=target.marks()
            )
        reads: list[CodeRead] = []
        for region in locate(target.image, max_regions=FALLBACK_TARGETS["grid"]):
            if reads or self._left_ms(deadline) < STAGE_MS["grid"]:
                break
            crop = _crop(target, region)
            reads = read_sampled(crop.image, crop.offset, time_left=time_left)
        return reads

    def _stage_dmtx(self, target: _Target, deadline: float) -> list[CodeRead]:
        if self.dmtx is None:
            return []
        budget = self.section.dmtx_timeout_ms
        if self.section.backend != "dmtx":  # as a fallback: only what is left of the frame
            budget = min(budget, self._left_ms(deadline))
        if budget <= 1:
            return []
        return self.dmtx.read(target.image, budget, self.section.max_codes, target.offset)


_STAGES: dict[str, Stage] = {
    "zxing": DecodePipeline._stage_zxing,
    "denoise": DecodePipeline._stage_denoise,
    "global-binarizer": DecodePipeline._stage_global,
    "clahe": DecodePipeline._stage_clahe,
    "upscale": DecodePipeline._stage_upscale,
    "grid": DecodePipeline._stage_grid,
    "dmtx": DecodePipeline._stage_dmtx,
}


def _needs_ms(name: str, target: _Target) -> float:
    """About how long stage ``name`` takes on ``target``."""
    pixels = float(target.image.shape[0] * target.image.shape[1])
    return max(STAGE_MS.get(name, 0.0), STAGE_MS_PER_MPX.get(name, 0.0) * pixels / 1e6)


def _roi(image: GrayImage, roi: tuple[int, int, int, int]) -> _Target:
    x, y, width, height = roi
    return _Target(np.ascontiguousarray(image[y : y + height, x : x + width]), (x, y))


def _crop(frame: _Target, region: Region, rank: int = 0) -> _Target:
    x, y = frame.offset
    return _Target(
        np.ascontiguousarray(region.crop(frame.image)),
        (x + region.x, y + region.y),
        located=True,
        rank=rank,
    )


def _merge(reads: list[CodeRead], new: list[CodeRead]) -> list[CodeRead]:
    """Add ``new`` reads, dropping ones of a symbol already read (overlapping crops). The same
    content elsewhere in the frame is kept: a duplicated code is a finding, not noise."""
    merged = list(reads)
    for read in new:
        cx, cy = centre(read.corners)
        if not any(
            old.raw == read.raw
            and math.dist(centre(old.corners), (cx, cy)) < max(4.0, _side(old) / 2)
            for old in merged
        ):
            merged.append(read)
    return merged


def centre(corners: Sequence[tuple[int, int]]) -> tuple[float, float]:
    """Mean of the corners (plain Python: numpy costs more than the arithmetic for 4 points)."""
    return sum(x for x, _ in corners) / len(corners), sum(y for _, y in corners) / len(corners)


def _side(read: CodeRead) -> float:
    return math.dist(read.corners[0], read.corners[1])


def build_reader(section: VisionSection) -> DecodePipeline:
    """The line's reader for the ``[vision]`` section."""
    return DecodePipeline(section)
