"""Shared helpers for the EPCIS tests: GS1's reference event-hash generator on our documents, and
a checker of each serial's event history against the EPCIS/CBV state model."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

CONFORMANCE = Path(__file__).resolve().parents[2].parent / "shared" / "conformance"

# (action, bizStep, disposition) of each step of a serial's life, and the EPC state it needs
_STEPS = {
    ("ADD", "commissioning", "active"): (None, "commissioned"),
    ("DELETE", "decommissioning", "inactive"): ("commissioned", "decommissioned"),
    ("OBSERVE", "destroying", "destroyed"): (None, "destroyed"),
    # aggregation: a QA sample is observed (it stays commissioned until its decommissioning);
    # a commissioned unit destroyed is DELETEd
    ("OBSERVE", "sampling", "non_sellable_other"): ("commissioned", "commissioned"),
    ("DELETE", "destroying", "destroyed"): ("commissioned", "destroyed"),
}


def reference_prehashes(document: Mapping[str, Any]) -> list[str]:
    """The reference generator's canonical pre-hash string of every event of an EPCIS 2.0
    JSON-LD document. Its prefix table is a module global that outlives a document: cleared
    first, so one document's declarations never leak into the next one's hashes."""
    from epcis_event_hash_generator import json_to_py
    from epcis_event_hash_generator.hash_generator import derive_prehashes_from_events

    json_to_py._namespaces.clear()
    events = json_to_py.event_list_from_epcis_document_str(json.dumps(document))
    return list(derive_prehashes_from_events(events))


def reference_prehashes_xml(document: bytes) -> list[str]:
    from epcis_event_hash_generator import xml_to_py
    from epcis_event_hash_generator.hash_generator import derive_prehashes_from_events

    events = xml_to_py.event_list_from_epcis_document_str(document.decode())
    return list(derive_prehashes_from_events(events))


def reference_hashes(document: Mapping[str, Any]) -> list[str]:
    from epcis_event_hash_generator.hash_generator import calculate_hashes_from_pre_hashes

    return list(calculate_hashes_from_pre_hashes(reference_prehashes(document)))


def cbv_history_problems(events: Iterable[Mapping[str, Any]]) -> list[str]:
    """What in this event stream contradicts the life of a serial in EPCIS/CBV: commissioning
    (ADD) first; decommissioning (DELETE) only of a commissioned EPC, once; destroying
    (OBSERVE) only of an EPC never commissioned, (DELETE) only of a commissioned one; sampling
    only of a commissioned EPC; nothing after an end. Re-sent copies (same
    eventID) count once."""
    seen: set[str] = set()
    state: dict[str, str] = {}
    problems = []
    for event in events:
        if event["eventID"] in seen or event["type"] != "ObjectEvent":
            continue
        seen.add(event["eventID"])
        step = (event["action"], event["bizStep"], event["disposition"])
        for epc in event["epcList"]:
            before, after = _STEPS.get(step, ("?", "?"))
            if step not in _STEPS or state.get(epc) != before:
                problems.append(f"{epc}: {'/'.join(step)} when {state.get(epc, 'never seen')}")
            else:
                state[epc] = after
    return problems


def history_by_epc(events: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """EPC → bizSteps of its ObjectEvents in order (re-sent copies once)."""
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    for event in events:
        if event["eventID"] in seen or event["type"] != "ObjectEvent":
            continue
        seen.add(event["eventID"])
        for epc in event["epcList"]:
            out.setdefault(epc, []).append(event["bizStep"])
    return out
