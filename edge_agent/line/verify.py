"""Verdict rules for one unit: what the camera read against what the batch says it must be.

Every outcome carries a reason code; the runtime, the ledger and reports key on them, so existing
codes never change meaning. In the order they are checked:

- ``no_read``: nothing decoded; ``multiple_codes``: more than one symbol in the unit's frame.
- ``not_gs1_datamatrix``: the symbology identifier is not the required one (``]d2`` by default).
- ``bad_gs1``: the data is not a valid GS1 element string (syntax, check digit, date, charset...).
- ``missing_ai``: a required AI (01, 17, 10, 21 by default) is absent.
- ``wrong_gtin`` / ``wrong_lot`` / ``wrong_expiry``: differs from the batch.
- ``bad_serial``: the serial does not have the configured format.
- ``low_contrast``: symbol contrast measured by the decoder below the minimum.
- ``print_quality``: print-quality grade below the configured minimum (``edge_agent.vision.grade``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent import gs1
from edge_agent.contracts import CodeRead

REQUIRED_AIS = ("01", "17", "10", "21")

REASONS = (
    "ok",
    "no_read",
    "multiple_codes",
    "not_gs1_datamatrix",
    "bad_gs1",
    "missing_ai",
    "wrong_gtin",
    "wrong_lot",
    "wrong_expiry",
    "bad_serial",
    "low_contrast",
    "print_quality",
)


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
    detail: str = ""  # what exactly was wrong, for logs and the failed-frame archive


def serial_regex(length: int, alphabet: str) -> str:
    """The serial format of generated serials: exactly ``length`` characters of ``alphabet``."""
    return f"[{re.escape(alphabet)}]{{{length}}}"


def check_content(
    reads: Sequence[CodeRead],
    batch: BatchIdentity,
    *,
    require_symbology: str | None,
    min_contrast: float,
    serial_pattern: str | re.Pattern[str] | None = None,
    required_ais: Sequence[str] = REQUIRED_AIS,
    grade: float | None = None,
    min_grade: float | None = None,
) -> ContentCheck:
    """Never raises, whatever the reads contain: any doubt is a reject with a reason.

    ``grade`` is the overall print-quality grade (0..4) if the symbol was graded; with
    ``min_grade`` set, an ungraded symbol is a reject too (no grade, no proof of quality).
    """
    if not reads:
        return ContentCheck(False, "no_read", None, None)
    if len(reads) > 1:
        return ContentCheck(False, "multiple_codes", None, reads[0].text, f"{len(reads)} codes")
    read = reads[0]
    if require_symbology and read.symbology != require_symbology:
        detail = f"symbology {read.symbology!r}, need {require_symbology!r}"
        return ContentCheck(False, "not_gs1_datamatrix", None, read.text, detail)
    try:
        content = gs1.parse_scanned(read.raw)  # symbol data: only 0x1D separates
    except gs1.Gs1Error as exc:
        return ContentCheck(False, "bad_gs1", None, read.text, str(exc))
    except Exception as exc:  # a parser defect must still end in a reject, never a crash
        return ContentCheck(False, "bad_gs1", None, read.text, f"parser error: {exc!r}")
    serial = content.get("21")
    missing = [ai for ai in required_ais if content.get(ai) is None]
    if missing:
        detail = "missing AI " + ", ".join(f"({ai})" for ai in missing)
        return ContentCheck(False, "missing_ai", serial, read.text, detail)
    for ai, expected, reason in (
        ("01", batch.gtin, "wrong_gtin"),
        ("10", batch.lot, "wrong_lot"),
        ("17", batch.expiry, "wrong_expiry"),
    ):
        found = content.get(ai)
        if found != expected and (found is not None or ai in required_ais):
            detail = f"({ai}) is {found!r}, batch has {expected!r}"
            return ContentCheck(False, reason, serial, read.text, detail)
    serial_ok = serial is None or serial_pattern is None or re.fullmatch(serial_pattern, serial)
    if not serial_ok:
        pattern = getattr(serial_pattern, "pattern", serial_pattern)
        detail = f"serial {serial!r} does not match {pattern!r}"
        return ContentCheck(False, "bad_serial", serial, read.text, detail)
    if read.contrast is not None and read.contrast < min_contrast:
        detail = f"contrast {read.contrast:.2f} < {min_contrast:.2f}"
        return ContentCheck(False, "low_contrast", serial, read.text, detail)
    if min_grade is not None and (grade is None or grade < min_grade):
        shown = "none" if grade is None else f"{grade:.1f}"
        detail = f"grade {shown} < {min_grade:.1f}"
        return ContentCheck(False, "print_quality", serial, read.text, detail)
    return ContentCheck(True, "ok", serial, read.text)


def serial_pattern_for(pattern: str | None, source: str, length: int, alphabet: str) -> str | None:
    """The configured serial regex; for 'generated', the format of generated serials (no check
    when serials come from an L3 list: their format is L3's)."""
    if pattern != "generated":
        return pattern
    return serial_regex(length, alphabet) if source == "generate" else None
