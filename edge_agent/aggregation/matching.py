"""What a case station decides from what its cameras read: pure, no I/O.

A case frame is accepted only on an exact match: the expected count of codes, no content twice,
every code a unit of this order that is commissioned and in no parent. A label read back is good
only when it holds exactly one code whose content is the label that was printed. Anything else is
a reason, which the station gives the PLC as a reject and the log as ``reason``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edge_agent import gs1
from edge_agent.contracts import CodeRead, LogisticLabel
from edge_agent.errors import AggregationRefused, RefusalReason


class CaseReason(enum.StrEnum):
    """Why a case was rejected (or ``accepted``)."""

    ACCEPTED = "accepted"
    COUNT = "count_mismatch"  # fewer or more codes read than the case must hold
    DUPLICATE = "duplicate_code"  # the same content read twice in the case
    FOREIGN = "foreign_code"  # a code that is not a unit of this order (or not GS1)
    NOT_COMMISSIONED = "not_commissioned"  # a unit of this order that may not be packed
    ALREADY_PACKED = "already_packed"  # a unit already in another case
    CHANGED = "changed_before_closing"  # the closing read differs from the read
    NO_CLOSING_READ = "no_closing_read"  # the closing frame did not come in time
    NO_LABEL = "label_not_printed"  # the printer failed or did not confirm in time
    LABEL_UNREADABLE = "label_unreadable"  # the label camera read nothing (or no frame)
    LABEL_MISMATCH = "label_mismatch"  # it read a label, not the one printed
    REFUSED = "refused"  # the hierarchy refused the commit (its reason is logged)
    STATION_ERROR = "station_error"  # a device or storage error while handling the case


@dataclass(frozen=True)
class UnitRef:
    """A unit of the ledger as a station sees it."""

    epc: str
    order_id: str
    commissioned: bool
    packed: bool


@dataclass(frozen=True)
class CaseMatch:
    reason: CaseReason
    units: tuple[str, ...] = ()  # unit EPCs, in reading order, when accepted
    contents: frozenset[str] = frozenset()  # raw contents read (to compare two reads)
    detail: str = ""
    packable: tuple[str, ...] = ()  # units of this order read that could be packed (loose now)

    @property
    def accepted(self) -> bool:
        return self.reason is CaseReason.ACCEPTED


Resolve = Callable[[str], UnitRef | None]
"""Raw code content → the ledger's unit, or None when the ledger knows no such unit."""


def match_case(
    reads: Sequence[CodeRead], *, expected: int, order_id: str, resolve: Resolve
) -> CaseMatch:
    """The case decision for one frame's reads (see the module docstring)."""
    contents = [read.raw for read in reads]
    seen = frozenset(contents)
    refs = {raw: resolve(raw) for raw in seen}
    packable = tuple(
        dict.fromkeys(
            unit.epc
            for raw in contents
            if (unit := refs[raw]) is not None
            and unit.order_id == order_id
            and unit.commissioned
            and not unit.packed
        )
    )

    def refuse(reason: CaseReason, detail: str) -> CaseMatch:
        return CaseMatch(reason, contents=seen, detail=detail, packable=packable)

    if len(seen) != len(contents):
        twice = sorted({c for c in contents if contents.count(c) > 1})
        return refuse(CaseReason.DUPLICATE, _shown(twice))
    for raw in contents:
        unit = refs[raw]
        if unit is None or unit.order_id != order_id:
            return refuse(CaseReason.FOREIGN, _shown([raw]))
        if not unit.commissioned:
            return refuse(CaseReason.NOT_COMMISSIONED, unit.epc)
        if unit.packed:
            return refuse(CaseReason.ALREADY_PACKED, unit.epc)
    if len(packable) != expected:
        return refuse(
            CaseReason.COUNT, f"read {len(packable)} unit codes, the case holds {expected}"
        )
    return CaseMatch(CaseReason.ACCEPTED, packable, seen, packable=packable)


def same_case(first: CaseMatch, closing: Sequence[CodeRead]) -> bool:
    """The closing read shows exactly what the read showed (no unit taken out or added)."""
    contents = [read.raw for read in closing]
    return len(contents) == len(first.contents) and frozenset(contents) == first.contents


def check_label(label: LogisticLabel, reads: Sequence[CodeRead]) -> tuple[CaseReason, str]:
    """ACCEPTED when the label camera read exactly the label printed."""
    if not reads:
        return CaseReason.LABEL_UNREADABLE, "no code on the label frame"
    if len(reads) > 1:
        return CaseReason.LABEL_MISMATCH, f"{len(reads)} codes on the label frame"
    try:
        content = dict(gs1.parse_scanned(reads[0].raw, check_requisites=False).ais)
    except gs1.Gs1Error as exc:
        return CaseReason.LABEL_MISMATCH, f"not GS1 data ({exc})"
    if content != label.ais:
        return CaseReason.LABEL_MISMATCH, f"read {_shown([reads[0].text])}, printed {label.code}"
    return CaseReason.ACCEPTED, ""


def refusal_reason(exc: AggregationRefused) -> CaseReason:
    if exc.reason is RefusalReason.ALREADY_PACKED:
        return CaseReason.ALREADY_PACKED
    if exc.reason is RefusalReason.NOT_COMMISSIONED:
        return CaseReason.NOT_COMMISSIONED
    return CaseReason.REFUSED


def _shown(contents: Sequence[str]) -> str:
    return ", ".join(c.replace(gs1.GS, "<GS>") for c in contents)[:300]
