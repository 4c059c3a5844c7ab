"""Many codes in one frame: a case of 10-100 units seen from above (for aggregation).

Every code is reported with its position; a content seen more than once is flagged on each of
its reads, because a duplicated serial in a case is a compliance failure to be shown, not merged
away. The whole frame is decoded in one zxing-cpp pass without the downscale pyramid: at 5 MP a
case of 100 codes takes about as long as a single-code frame's full search.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from edge_agent.config.models import VisionSection
from edge_agent.contracts import CodeRead, GrayImage
from edge_agent.vision.pipeline import DecodePipeline, centre

DEFAULT_MAX_CODES = 200


@dataclass(frozen=True)
class PlacedCode:
    read: CodeRead
    center: tuple[float, float]  # symbol centre in frame pixels
    duplicate: bool  # the same content was read elsewhere in this frame


@dataclass(frozen=True)
class CaseRead:
    codes: tuple[PlacedCode, ...]  # in reading order: top to bottom, then left to right
    duplicates: dict[str, int]  # content (raw) → times seen, for contents seen more than once
    ms: float

    @property
    def unique(self) -> int:
        return len({code.read.raw for code in self.codes})


def read_case(
    image: GrayImage, reader: DecodePipeline | None = None, *, row_tolerance: float = 0.5
) -> CaseRead:
    """All codes in ``image``. ``reader`` must be configured for many codes (``max_codes`` > 1);
    by default one is built with ``max_codes`` = 200."""
    if reader is None:
        reader = DecodePipeline(VisionSection(max_codes=DEFAULT_MAX_CODES, fallbacks=[]))
    reads = list(reader.read(image))
    counts = Counter(read.raw for read in reads)
    placed = [PlacedCode(read, _center(read), counts[read.raw] > 1) for read in reads]
    placed.sort(key=lambda code: _reading_order(code, row_tolerance))
    ms = reads[0].ms if reads else 0.0
    return CaseRead(tuple(placed), {raw: n for raw, n in counts.items() if n > 1}, ms)


def _center(read: CodeRead) -> tuple[float, float]:
    return centre(read.corners)


def _reading_order(code: PlacedCode, row_tolerance: float) -> tuple[int, float]:
    # Rows: centres within ``row_tolerance`` symbol heights count as one row.
    size = max(float(code.read.module_size or 0.0) * 20, 1.0)
    return int(code.center[1] // (size * (1 + row_tolerance))), code.center[0]
