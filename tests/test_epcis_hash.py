"""Our EPCIS documents under GS1's reference event-hash generator (epcis-event-hash-generator, a
dev dependency), checked first against the reference's own test vectors
(../shared/conformance/epcis-hash, skipped when absent).

Issue 10 item 8: each event inside a document carried its own ``@context`` (which the reference
hashes as if it were event content) and ``cbvmda:`` was not declared in the document's context
(so ILMD fields were hashed unexpanded). The same event then hashed differently from its GS1
form, and differently again once a repository re-serialised it."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from edge_agent import epcis
from edge_agent.epcis.xml12 import document_xml
from tests.helpers.epcis import (
    CONFORMANCE,
    reference_hashes,
    reference_prehashes,
    reference_prehashes_xml,
)

VECTORS = CONFORMANCE / "epcis-hash"
READ_POINT = "urn:epc:id:sgln:0950600.01340.LINE01"
BIZ_LOCATION = "urn:epc:id:sgln:0950600.01340.0"
GTIN = "09506000134352"
WHEN = datetime(2026, 3, 4, 5, 6, 7, 891000, tzinfo=timezone(timedelta(hours=1)))


def vectors() -> list[dict[str, Any]]:
    if not (VECTORS / "pairs.jsonl").is_file():
        pytest.skip(f"{VECTORS / 'pairs.jsonl'} not found")
    return [json.loads(line) for line in (VECTORS / "pairs.jsonl").read_text().splitlines()]


def in_scope(path: Path) -> bool:
    """EPCIS 2.0 JSON-LD capture documents without ``ignoreFields``: what the agent sends. (Query
    documents and ignoreFields came to the reference after its released version.)"""
    text = path.read_text()
    return json.loads(text).get("type") == "EPCISDocument" and "ignoreFields" not in text


def test_the_reference_generator_reproduces_the_gs1_vectors() -> None:
    """The tool the other tests trust computes the published hashes of every capture document."""
    rows = [r for r in vectors() if r["expected_hash"] and r["format"] in ("json", "jsonld")]
    by_file: dict[str, list[str]] = {}
    checked = 0
    for row in rows:
        path = VECTORS / row["input"]
        if not in_scope(path):
            continue
        hashes = by_file.setdefault(row["input"], reference_hashes(json.loads(path.read_text())))
        assert hashes[row["event_index"]] == row["expected_hash"], (path.name, row["event_index"])
        checked += 1
    assert checked >= 35
    equal = [r for r in vectors() if r["expected_hash"] is None and r["format"] != "xml"]
    for row in equal:
        path = VECTORS / row["input"]
        if in_scope(path):
            assert len(set(reference_hashes(json.loads(path.read_text())))) == 1, path.name


def our_events() -> list[dict[str, Any]]:
    epc = epcis.sgtin_uri(GTIN, "SER0001", 7)
    other = epcis.sgtin_uri(GTIN, "SER0002", 7)
    sscc = epcis.sscc_uri("106141412345678908", 7)
    return [
        epcis.commissioning(epc, READ_POINT, "LOT-1", "2027-01-31", when=WHEN),
        epcis.commissioning(
            other, READ_POINT, "LOT-1", "2027-01-31", biz_location=BIZ_LOCATION, when=WHEN
        ),
        epcis.aggregation(sscc, [epc, other], READ_POINT, when=WHEN),
        epcis.decommissioning(other, READ_POINT, "rejected_at_gate", when=WHEN),
        epcis.destroying(epcis.sgtin_uri(GTIN, "SER0003", 7), READ_POINT, "no_read", when=WHEN),
    ]


def gs1_form(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The same events written the way GS1's examples write them, independently of
    :func:`epcis.document`: no event context, one declaration per prefix at the top."""
    return {
        "@context": [
            epcis.EPCIS_CONTEXT,
            {"cbvmda": "urn:epcglobal:cbv:mda:"},
            {"edge": epcis.EDGE_NS},
        ],
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": "2026-03-04T05:06:07.891+01:00",
        "epcisBody": {
            "eventList": [{k: v for k, v in e.items() if k != "@context"} for e in events]
        },
    }


def test_every_event_hashes_the_same_in_every_document_we_build() -> None:
    """Alone or among others, built from the events or from the stored payloads: the reference
    hash of an event is that of its GS1 form."""
    events = our_events()
    expected = reference_hashes(gs1_form(events))
    assert len(set(expected)) == len(events)
    payloads = [json.dumps(e) for e in events]
    assert reference_hashes(epcis.document(events)) == expected
    assert reference_hashes(epcis.document_from_payloads(payloads)) == expected
    assert reference_hashes(epcis.document_from_payloads(payloads[::-1])) == expected[::-1]
    for event, digest in zip(events, expected, strict=True):
        assert reference_hashes(epcis.document([event])) == [digest]


def test_the_canonical_form_carries_every_field_expanded() -> None:
    """No ``@context`` hashed as content, ILMD and our extension fields in their namespaces."""
    commissioning, _, _, decommissioning, destroying = reference_prehashes(
        epcis.document(our_events())
    )
    assert "@context" not in "".join([commissioning, decommissioning, destroying])
    assert commissioning.endswith(
        "ilmd{urn:epcglobal:cbv:mda:}itemExpirationDate=2027-01-31"
        "{urn:epcglobal:cbv:mda:}lotNumber=LOT-1"
    )
    assert "action=DELETEbizStep=https://ref.gs1.org/cbv/BizStep-decommissioning" in (
        decommissioning
    )
    assert destroying.endswith(
        "action=OBSERVEbizStep=https://ref.gs1.org/cbv/BizStep-destroying"
        "disposition=https://ref.gs1.org/cbv/Disp-destroyed"
        "readPointid=https://id.gs1.org/414/0950600013408/254/LINE01"
        f"{{{epcis.EDGE_NS}}}reason=no_read"
    )


def test_json_ld_and_epcis_1_2_xml_of_an_event_hash_equal() -> None:
    """The reference's own consistency rule: an event hashes the same from JSON-LD and from XML.
    (ILMD is left out: CBV names its XML namespace ``urn:epcglobal:cbv:mda`` and its JSON-LD
    prefix ``urn:epcglobal:cbv:mda:``, which the reference does not reconcile.)"""
    events = [e for e in our_events() if "ilmd" not in e]
    assert reference_prehashes(epcis.document(events)) == reference_prehashes_xml(
        document_xml(events)
    )


def test_a_document_refuses_events_that_disagree_on_a_prefix() -> None:
    event = copy.deepcopy(our_events()[3])
    event["@context"] = [epcis.EPCIS_CONTEXT, {"edge": "https://example.com/other/"}]
    with pytest.raises(ValueError, match="prefix 'edge'"):
        epcis.document([our_events()[0], event])
