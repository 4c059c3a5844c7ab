"""EPCIS 2.0 JSON-LD events and documents for what a packaging line does to serials.

What becomes of a serial, upstream (CBV 2.0 business steps; each serial printed gets exactly one
of these, and no event contradicts the EPCIS/CBV state model):

- **verified unit**: ObjectEvent ``ADD``, bizStep ``commissioning``, disposition ``active``, lot
  and expiry as ILMD (``cbvmda:lotNumber``, ``cbvmda:itemExpirationDate``);
- **commissioned, then rejected** (the PLC's gate rejected a unit we had passed): ObjectEvent
  ``DELETE``, bizStep ``decommissioning``, disposition ``inactive``; it follows its
  commissioning in the same batch's order;
- **rejected before commissioning** (no read, wrong content, no print confirmation, in flight at
  a restart ...): the serial was, or may have been, printed on a pack that went to the reject
  bin, but it was never commissioned, so there is nothing to ``DELETE`` (a repository that
  checks an EPC's history refuses decommissioning an EPC it never saw added). ObjectEvent
  ``OBSERVE``, bizStep ``destroying``, disposition ``destroyed``: the CBV pattern for an object
  terminated at this point; the serial is retired for good;
- **never printed** (left unsent at batch close, or discarded unprinted from the printer's
  buffer): no event; the batch reconciliation reports it unused, to go back to level 3.
Rejections carry their reason in ``edge:reason``.

Event IDs: every event gets a UUID URN (``urn:uuid:...``) when it is created, and the outbox stores
it with the event, so a re-send after a crash or an outage carries the same ID and the upstream
de-duplicates on it. We do not use the GS1 event-hash ID (``ni:///sha-256;...?ver=CBV2.0``):

- its stability comes from recomputing a canonical form of the whole event, and the reference
  implementation's canonicalisation has changed between versions (normaliser fixes), so two
  parties can compute different hashes for the same event; our ID never has to be recomputed;
- two distinct events with identical content (same serial, same millisecond, same step) would get
  the same hash and the second would be silently de-duplicated away upstream; a random ID keeps
  them apart;
- it needs JSON-LD expansion per event on the hot ingest path; a UUID costs nothing.
Receivers that want the hash can compute it from the event; it is a property of the content, and
the tests check that the GS1 reference generator computes it the same way from every document we
send.

Context: a standalone event (one MQTT message) carries :data:`CONTEXT`; an event inside an
EPCISDocument carries none. :func:`document` lifts the events' contexts into the document's, so
every prefix used (``cbvmda:``, and ``edge:`` = :data:`EDGE_NS` for our extension fields) is
declared once, at the top: the form GS1's examples use, and the only place the reference
event-hash generator reads prefixes from.
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

CBVMDA_IRI = "urn:epcglobal:cbv:mda:"
"""CBV master data attributes (``cbvmda:lotNumber`` ...). The EPCIS 2.0 context defines the
prefix too; it is declared again (identically) so that processors that do not load the context,
such as the GS1 reference event-hash generator, expand it as well."""

CONTEXT: list[Any] = [EPCIS_CONTEXT, {"cbvmda": CBVMDA_IRI, "edge": EDGE_NS}]
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
    """A commissioned serial taken out of use (e.g. the gate rejected a unit we had passed):
    DELETE, bizStep decommissioning, disposition inactive. Only for an EPC that was commissioned."""
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
    """A serial that was never commissioned and is retired with its pack (rejected before
    verification): OBSERVE, bizStep destroying, disposition destroyed. OBSERVE, not DELETE: the
    EPC was never added, so nothing can be removed."""
    return object_event(
        epcs=[epc],
        action="OBSERVE",
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
    """An EPCISDocument carrying ``events`` in order, with their ``eventID`` and content as
    stored. An event's own ``@context`` (a stored event stands alone, for MQTT) is lifted into
    the document's: inside a document an event carries none, and each prefix is declared once
    at the top. A prefix declared differently by two events is refused (ValueError)."""
    context = Context()
    body = [context.lift(event) for event in events]
    return context.envelope(body, sender=sender, receiver=receiver, when=when)


class Context:
    """The document's ``@context``, gathered from the events that go into it."""

    def __init__(self) -> None:
        self.urls: list[str] = [EPCIS_CONTEXT]
        self.terms: dict[str, str] = dict(CONTEXT[1])

    def lift(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """The event without its own ``@context``, which joins the document's."""
        inner = dict(event)
        _merge_context(inner.pop("@context", None), self.urls, self.terms)
        return inner

    def envelope(
        self,
        body: list[dict[str, Any]],
        *,
        sender: str | None = None,
        receiver: str | None = None,
        when: datetime | None = None,
    ) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "@context": [*self.urls, self.terms],
            "type": "EPCISDocument",
            "schemaVersion": SCHEMA_VERSION,
            "creationDate": event_time(when)[0],
        }
        if sender:
            doc["sender"] = sender
        if receiver:
            doc["receiver"] = receiver
        doc["epcisBody"] = {"eventList": body}
        return doc


def _merge_context(context: Any, urls: list[str], terms: dict[str, str]) -> None:
    entries = context if isinstance(context, list) else [] if context is None else [context]
    for entry in entries:
        if isinstance(entry, str):
            if entry not in urls:
                urls.append(entry)
            continue
        for term, iri in dict(entry).items():
            if terms.setdefault(term, iri) != iri:
                raise ValueError(
                    f"prefix {term!r} is declared as {terms[term]!r} and as {iri!r}: "
                    "events of one document must agree"
                )


def document_from_payloads(payloads: Iterable[str], **kwargs: Any) -> dict[str, Any]:
    """:func:`document` for events stored as JSON text (``OutboxEvent.payload``)."""
    return document((json.loads(payload) for payload in payloads), **kwargs)
