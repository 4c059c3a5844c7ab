"""EPCIS 1.2 XML for level-3 systems that do not take EPCIS 2.0 JSON-LD yet.

Converts the events this agent produces (ObjectEvent, AggregationEvent as built by
:mod:`edge_agent.epcis.events`) from their stored JSON-LD form; the JSON-LD stays the record.
EPCIS 1.2 has no JSON-LD context, so short CBV names become CBV 1.x URNs
(``commissioning`` → ``urn:epcglobal:cbv:bizstep:commissioning``), the eventID moves into
``baseExtension``, ILMD into ``extension``, and ``edge:`` fields become elements of the
:data:`~edge_agent.epcis.events.EDGE_NS` namespace after the standard fields (EPCIS 1.2 allows
user extensions there).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from edge_agent.epcis.events import EDGE_NS, event_time

EPCIS_NS = "urn:epcglobal:epcis:xsd:1"
CBVMDA_NS = "urn:epcglobal:cbv:mda"
_PREFIXES = {"cbvmda": CBVMDA_NS, "edge": EDGE_NS}
_BIZSTEP = "urn:epcglobal:cbv:bizstep:"
_DISP = "urn:epcglobal:cbv:disp:"

# Field order of the EPCIS 1.2 XSD, before extension / user fields.
_ORDER = {
    "ObjectEvent": ("epcList", "action", "bizStep", "disposition", "readPoint", "bizLocation"),
    "AggregationEvent": (
        "parentID",
        "childEPCs",
        "action",
        "bizStep",
        "disposition",
        "readPoint",
        "bizLocation",
    ),
}
_KNOWN = {"@context", "type", "eventID", "eventTime", "eventTimeZoneOffset", "ilmd"}


for _prefix, _uri in (("epcis", EPCIS_NS), *_PREFIXES.items()):
    ET.register_namespace(_prefix, _uri)


class Unsupported(ValueError):
    """The event has a shape this converter does not map to EPCIS 1.2."""


def _qname(name: str) -> str:
    prefix, _, local = name.partition(":")
    if prefix not in _PREFIXES or not local:
        raise Unsupported(f"no EPCIS 1.2 namespace for field {name!r}")
    return f"{{{_PREFIXES[prefix]}}}{local}"


def _vocab(value: str, base: str) -> str:
    return value if ":" in value else base + value


def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    element = ET.SubElement(parent, tag)
    element.text = text
    return element


def _event(parent: ET.Element, event: Mapping[str, Any]) -> None:
    kind = event.get("type")
    if kind not in _ORDER:
        raise Unsupported(f"event type {kind!r} is not converted to EPCIS 1.2")
    unknown = [k for k in event if k not in _KNOWN and k not in _ORDER[kind] and ":" not in k]
    if unknown:
        raise Unsupported(f"{kind} fields not converted to EPCIS 1.2: {', '.join(unknown)}")
    element = ET.SubElement(parent, kind)
    _text(element, "eventTime", event["eventTime"])
    _text(element, "eventTimeZoneOffset", event["eventTimeZoneOffset"])
    if "eventID" in event:
        _text(ET.SubElement(element, "baseExtension"), "eventID", event["eventID"])
    for field in _ORDER[kind]:
        if field not in event:
            continue
        value = event[field]
        if field in ("epcList", "childEPCs"):
            holder = ET.SubElement(element, field)
            for epc in value:
                _text(holder, "epc", epc)
        elif field in ("readPoint", "bizLocation"):
            _text(ET.SubElement(element, field), "id", value["id"])
        elif field == "bizStep":
            _text(element, field, _vocab(value, _BIZSTEP))
        elif field == "disposition":
            _text(element, field, _vocab(value, _DISP))
        else:
            _text(element, field, value)
    if event.get("ilmd"):
        if kind != "ObjectEvent":
            raise Unsupported("ILMD belongs to ObjectEvents")
        ilmd = ET.SubElement(ET.SubElement(element, "extension"), "ilmd")
        for key, value in event["ilmd"].items():
            _text(ilmd, _qname(key), str(value))
    for key, value in event.items():
        if ":" in key:
            _text(element, _qname(key), str(value))


def document_xml(events: Iterable[Mapping[str, Any]], *, when: datetime | None = None) -> bytes:
    """An EPCIS 1.2 ``EPCISDocument`` (UTF-8 XML with declaration) holding ``events`` in order."""
    root = ET.Element(
        f"{{{EPCIS_NS}}}EPCISDocument",
        {"schemaVersion": "1.2", "creationDate": event_time(when)[0]},
    )
    event_list = ET.SubElement(ET.SubElement(root, "EPCISBody"), "EventList")
    for event in events:
        _event(event_list, event)
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data
