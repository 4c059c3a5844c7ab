"""EPCIS 2.0 JSON-LD events and documents for what a packaging line does to serials.

Event IDs: every event gets a UUID URN (``urn:uuid:...``) when it is created, and the outbox stores
it with the event, so a re-send after a crash or an outage carries the same ID and the upstream
de-duplicates on it. We do not use the GS1 event-hash ID (``ni:///sha-256;...?ver=CBV2.0``):

- its stability comes from recomputing a canonical form of the whole event, and the reference
  implementation's canonicalisation has changed between versions (normaliser fixes), so two
  parties can compute different hashes for the same event; our ID never has to be recomputed;
- two distinct events with identical content (same serial, same millisecond, same step — e.g. a
  decommissioning sent again by an operator correction) would get the same hash and the second
  would be silently de-duplicated away upstream; a random ID keeps them apart;
- it needs JSON-LD expansion per event on the hot ingest path; a UUID costs nothing.
Receivers that want the hash can compute it from the event; it is a property of the content.

Extension fields of ours use the ``edge:`` prefix, declared in every event's and document's
``@context`` as :data:`EDGE_NS`, so JSON-LD processors (and EPCIS 1.2 XML converters) expand them
to a proper namespace instead of dropping an undefined term.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

EPCIS_CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
EDGE_NS = "urn:serialization-edge-agent:epcis:"
"""Namespace of the agent's user extension fields (``edge:reason`` ...). A URN: it names, it
does not pretend to be a resolvable web address."""

CONTEXT: list[Any] = [EPCIS_CONTEXT, {"edge": EDGE_NS}]
SCHEMA_VERSION = "2.0"

Action = Literal["ADD", "OBSERVE", "DELETE"]


def event_time(when: datetime | None = None) -> tuple[str, str]:
    """(eventTime, eventTimeZoneOffset) for ``when`` (default: now, in the local time zone).

    An aware ``when`` keeps its own offset; a naive one is taken as local time. Milliseconds:
    what EPCIS repositories keep.
    """
    moment = when or datetime.now()
    if moment.tzinfo is None:
        moment = moment.astimezone()
    offset = moment.strftime("%z")
    return moment.isoformat(timespec="milliseconds"), f"{offset[:3]}:{offset[3:]}"


def new_event_id() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _common(event_type: str, when: datetime | None) -> dict[str, Any]:
    time_text, offset = event_time(when)
    return {
        "@context": list(CONTEXT),
        "type": event_type,
        "eventID": new_event_id(),
        "eventTime": time_text,
        "eventTimeZoneOffset": offset,
    }


def _where(event: dict[str, Any], read_point: str, biz_location: str | None) -> None:
    event["readPoint"] = {"id": read_point}
    if biz_location:
        event["bizLocation"] = {"id": biz_location}


def object_event(
    *,
    epcs: Sequence[str],
    action: Action,
    biz_step: str,
    disposition: str,
    read_point: str,
    biz_location: str | None = None,
    when: datetime | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    event = _common("ObjectEvent", when)
    event.update(
        {"epcList": list(epcs), "action": action, "bizStep": biz_step, "disposition": disposition}
    )
    _where(event, read_point, biz_location)
    if extra:
        event.update(extra)
    return event


def commissioning(
    epc: str,
    read_point: str,
    lot: str,
    expiry_iso: str,
    *,
    biz_location: str | None = None,
    when: datetime | None = None,
) -> dict[str, Any]:
    """The unit exists and is verified: ADD, bizStep commissioning, disposition active, with the
    lot and expiry as instance master data (ILMD)."""
    return object_event(
        epcs=[epc],
        action="ADD",
        biz_step="commissioning",
        disposition="active",
        read_point=read_point,
        biz_location=biz_location,
        when=when,
        extra={"ilmd": {"cbvmda:lotNumber": lot, "cbvmda:itemExpirationDate": expiry_iso}},
    )


def decommissioning(
    epc: str,
    read_point: str,
    reason: str,
    *,
    biz_location: str | None = None,
    when: datetime | None = None,
) -> dict[str, Any]:
    """A serial that will never be in use: rejected at the line or taken back after commissioning.
    CBV: bizStep decommissioning goes with disposition inactive."""
    return object_event(
        epcs=[epc],
        action="DELETE",
        biz_step="decommissioning",
        disposition="inactive",
        read_point=read_point,
        biz_location=biz_location,
        when=when,
        extra={"edge:reason": reason},
    )


def destroying(
    epc: str,
    read_point: str,
    reason: str,
    *,
    biz_location: str | None = None,
    when: datetime | None = None,
) -> dict[str, Any]:
    """The unit was physically destroyed (e.g. a rejected pack sent to waste). CBV: bizStep
    destroying goes with disposition destroyed."""
    return object_event(
        epcs=[epc],
        action="DELETE",
        biz_step="destroying",
        disposition="destroyed",
        read_point=read_point,
        biz_location=biz_location,
        when=when,
        extra={"edge:reason": reason},
    )


def aggregation(
    parent: str,
    children: Sequence[str],
    read_point: str,
    *,
    action: Action = "ADD",
    biz_step: str = "packing",
    disposition: str = "in_progress",
    biz_location: str | None = None,
    when: datetime | None = None,
) -> dict[str, Any]:
    """Children packed into (ADD) or taken out of (DELETE, bizStep unpacking) a parent, e.g.
    SGTINs into a case SSCC. ``children`` may be empty only for DELETE (unpack everything)."""
    if not children and action != "DELETE":
        raise ValueError("an ADD or OBSERVE aggregation needs at least one child")
    event = _common("AggregationEvent", when)
    event.update(
        {
            "parentID": parent,
            "childEPCs": list(children),
            "action": action,
            "bizStep": biz_step,
            "disposition": disposition,
        }
    )
    _where(event, read_point, biz_location)
    return event


def document(
    events: Iterable[Mapping[str, Any]],
    *,
    sender: str | None = None,
    receiver: str | None = None,
    when: datetime | None = None,
) -> dict[str, Any]:
    """An EPCISDocument carrying ``events`` in order, unchanged (each keeps its own ``@context``
    and ``eventID``: the payload the outbox stored is the payload delivered)."""
    doc: dict[str, Any] = {
        "@context": list(CONTEXT),
        "type": "EPCISDocument",
        "schemaVersion": SCHEMA_VERSION,
        "creationDate": event_time(when)[0],
    }
    if sender:
        doc["sender"] = sender
    if receiver:
        doc["receiver"] = receiver
    doc["epcisBody"] = {"eventList": [dict(event) for event in events]}
    return doc


def document_from_payloads(payloads: Iterable[str], **kwargs: Any) -> dict[str, Any]:
    """:func:`document` for events stored as JSON text (``OutboxEvent.payload``)."""
    return document((json.loads(payload) for payload in payloads), **kwargs)
