"""GS1 element string → human-readable text with AIs in parentheses, in symbol order."""

from __future__ import annotations

from edge_agent import gs1
from edge_agent.gs1 import GS
from edge_agent.gs1.ais import lookup_prefix


def hri_of(raw: str) -> str:
    """``(01)...(21)...`` for decoded symbol data (GS, byte 0x1D, after variable-length fields).

    Validated parsing first; if the content is not valid GS1 (wrong check digit, unknown AI) the
    fields are still split by the AI table so that the operator sees what was printed, and the
    content check downstream rejects it.
    """
    try:
        return gs1.parse_scanned(raw, check_requisites=False).hri
    except gs1.Gs1Error:
        return _split(raw)


def gs1_fields(raw: str) -> dict[str, str] | None:
    """AI → value of valid decoded symbol data (first occurrence wins), None if it does not
    parse. Only the byte 0x1D separates: ``(`` and ``<GS>`` are data."""
    try:
        parsed = gs1.parse_scanned(raw, check_requisites=False)
    except gs1.Gs1Error:
        return None
    fields: dict[str, str] = {}
    for ai, value in parsed.ais:
        fields.setdefault(ai, value)
    return fields


def _split(raw: str) -> str:
    parts: list[str] = []
    pos = 0
    while pos < len(raw):
        spec = lookup_prefix(raw[pos:])
        if spec is None:
            parts.append(raw[pos:].replace(GS, ""))
            break
        ai = spec.ai
        pos += len(ai)
        end = raw.find(GS, pos)
        if spec.predefined_length:
            end = pos + spec.max_length
        elif end < 0:
            end = len(raw)
        parts.append(f"({ai}){raw[pos:end]}")
        pos = end + 1 if end < len(raw) and raw[end : end + 1] == GS else end
    return "".join(parts)
