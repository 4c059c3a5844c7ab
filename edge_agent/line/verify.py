"""Verdict rules for one unit: what the camera read against what the batch says it must be."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent import gs1
from edge_agent.contracts import CodeRead

REQUIRED_AIS = ("01", "17", "10", "21")


@dataclass(frozen=True)
class BatchIdentity:
    gtin: str
    lot: str
    expiry: str


@dataclass(frozen=True)
class ContentCheck:
    """Outcome of checking the symbol's content; ``serial`` is None when it could not be read."""

    ok: bool
    reason: str
    serial: str | None
    text: str | None


def check_content(
    reads: Sequence[CodeRead],
    batch: BatchIdentity,
    *,
    require_symbology: str | None,
    min_contrast: float,
) -> ContentCheck:
    if not reads:
        return ContentCheck(False, "no_read", None, None)
    if len(reads) > 1:
        return ContentCheck(False, "multiple_codes", None, reads[0].text)
    read = reads[0]
    if require_symbology and read.symbology != require_symbology:
        return ContentCheck(False, "not_gs1_datamatrix", None, read.text)
    try:
        content = gs1.parse(read.raw)
    except gs1.Gs1Error:
        return ContentCheck(False, "bad_gs1", None, read.text)
    serial = content.get("21")
    if any(content.get(ai) is None for ai in REQUIRED_AIS):
        return ContentCheck(False, "missing_ai", serial, read.text)
    for ai, expected, reason in (
        ("01", batch.gtin, "wrong_gtin"),
        ("10", batch.lot, "wrong_lot"),
        ("17", batch.expiry, "wrong_expiry"),
    ):
        if content.get(ai) != expected:
            return ContentCheck(False, reason, serial, read.text)
    if read.contrast is not None and read.contrast < min_contrast:
        return ContentCheck(False, "low_contrast", serial, read.text)
    return ContentCheck(True, "ok", serial, read.text)
