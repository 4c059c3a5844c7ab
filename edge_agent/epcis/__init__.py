"""EPCIS 2.0: events for what the line does to serials, EPC URIs, and documents to send them in.

See :mod:`edge_agent.epcis.events` for the event-ID choice (UUID URN, not the GS1 event hash);
:mod:`edge_agent.epcis.xml12` converts the events to EPCIS 1.2 XML for older level-3 systems.
"""

from __future__ import annotations

from edge_agent.epcis.events import (
    CONTEXT,
    EDGE_NS,
    EPCIS_CONTEXT,
    SCHEMA_VERSION,
    aggregation,
    commissioning,
    decommissioning,
    destroying,
    document,
    document_from_payloads,
    event_time,
    new_event_id,
    object_event,
)
from edge_agent.epcis.uris import sgln_uri, sgtin_uri, sscc_uri

__all__ = [
    "CONTEXT",
    "EDGE_NS",
    "EPCIS_CONTEXT",
    "SCHEMA_VERSION",
    "aggregation",
    "commissioning",
    "decommissioning",
    "destroying",
    "document",
    "document_from_payloads",
    "event_time",
    "new_event_id",
    "object_event",
    "sgln_uri",
    "sgtin_uri",
    "sscc_uri",
]
