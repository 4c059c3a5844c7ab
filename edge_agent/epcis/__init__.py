"""EPCIS 2.0: events for what the line does to serials, EPC URIs, and documents to send them in.

See :mod:`edge_agent.epcis.events` for which event each serial gets (commissioning, decommissioning
after a commissioning, destroying for a serial never commissioned), the document form (one
``@context``, at the top) and the event-ID choice (UUID URN, not the GS1 event hash);
:mod:`edge_agent.epcis.xml12` converts the events to EPCIS 1.2 XML for older level-3 systems.
"""

from __future__ import annotations

from edge_agent.epcis.events import (
    CBVMDA_IRI,
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
    "CBVMDA_IRI",
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
