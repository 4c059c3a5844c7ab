"""EPCIS 2.0 JSON-LD events for what the line does to serials.

``eventID`` is a UUID URN assigned when the event is created and stored with it, so a re-send
after a crash carries the same ID (the upstream de-duplicates on it). The GS1 event-hash ID would
also be stable, but it depends on canonicalising every field; a stored UUID is simpler and the
outbox already guarantees it never changes.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

EPCIS_CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"

# Characters that must be %-escaped in the serial part of an EPC pure identity URI (TDS 2.x).
_URI_ESCAPES = {'"': "%22", "%": "%25", "&": "%26", "/": "%2F", "<": "%3C", ">": "%3E", "?": "%3F"}


def sgtin_uri(gtin: str, serial: str, company_prefix_length: int) -> str:
    """urn:epc:id:sgtin:CompanyPrefix.IndicatorItemRef.Serial for a GTIN-14."""
    indicator, body = gtin[0], gtin[1:13]
    prefix, item_ref = body[:company_prefix_length], indicator + body[company_prefix_length:]
    escaped = "".join(_URI_ESCAPES.get(ch, ch) for ch in serial)
    return f"urn:epc:id:sgtin:{prefix}.{item_ref}.{escaped}"


def _now() -> tuple[str, str]:
    now = datetime.now(UTC).astimezone()
    offset = now.strftime("%z")
    return now.isoformat(timespec="milliseconds"), f"{offset[:3]}:{offset[3:]}"


def object_event(
    *,
    epcs: list[str],
    action: str,
    biz_step: str,
    disposition: str,
    read_point: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    event_time, offset = _now()
    event: dict[str, Any] = {
        "type": "ObjectEvent",
        "eventID": f"urn:uuid:{uuid.uuid4()}",
        "eventTime": event_time,
        "eventTimeZoneOffset": offset,
        "epcList": epcs,
        "action": action,
        "bizStep": biz_step,
        "disposition": disposition,
        "readPoint": {"id": read_point},
    }
    if extra:
        event.update(extra)
    return event


def commissioning(epc: str, read_point: str, lot: str, expiry_iso: str) -> dict[str, Any]:
    return object_event(
        epcs=[epc],
        action="ADD",
        biz_step="commissioning",
        disposition="active",
        read_point=read_point,
        extra={"ilmd": {"cbvmda:lotNumber": lot, "cbvmda:itemExpirationDate": expiry_iso}},
    )


def decommissioning(epc: str, read_point: str, reason: str) -> dict[str, Any]:
    """A serial that will never be in use: rejected at the line or taken back after commissioning."""
    return object_event(
        epcs=[epc],
        action="DELETE",
        biz_step="decommissioning",
        disposition="inactive",
        read_point=read_point,
        extra={"edge:reason": reason},
    )
