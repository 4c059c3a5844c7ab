"""EPCIS 2.0 events and documents: CBV pairs, EPC URIs, and validation against the official GS1
EPCIS 2.0 JSON Schema (../shared/conformance/epcis/, used in place, never copied; skipped when
absent)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent import epcis
from edge_agent.errors import Gs1Error
from edge_agent.gs1 import CSET82
from edge_agent.gs1.check import mod10_check_digit
from simulators.upstream.capture_server import check_document

CONFORMANCE = Path(__file__).resolve().parents[1].parent / "shared" / "conformance"
SCHEMA_FILE = CONFORMANCE / "epcis" / "EPCIS-JSON-Schema.json"
READ_POINT = "urn:epc:id:sgln:0950600.01340.LINE01"
BIZ_LOCATION = "urn:epc:id:sgln:0950600.01340.0"
GTIN = "09506000134352"
EPC = epcis.sgtin_uri(GTIN, "SER0001", 7)
SSCC = epcis.sscc_uri("106141412345678908", 7)


@pytest.fixture(scope="module")
def validator() -> Any:
    if not SCHEMA_FILE.is_file():
        pytest.skip(f"{SCHEMA_FILE} not found")
    from jsonschema import Draft7Validator, FormatChecker

    checker = FormatChecker()
    # Without these checkers 'date-time' and 'uri' are silently ignored and nothing is proven.
    assert {"date-time", "uri"} <= set(checker.checkers), "install jsonschema[format-nongpl]"
    return Draft7Validator(json.loads(SCHEMA_FILE.read_text()), format_checker=checker)


def errors(validator: Any, instance: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(instance)]


def all_kinds() -> dict[str, dict[str, Any]]:
    """Every event kind the agent produces."""
    child2 = epcis.sgtin_uri(GTIN, "SER0002", 7)
    return {
        "commissioning": epcis.commissioning(EPC, READ_POINT, "LOT-1", "2027-01-31"),
        "commissioning+bizLocation": epcis.commissioning(
            EPC, READ_POINT, "LOT-1", "2027-01-31", biz_location=BIZ_LOCATION
        ),
        "decommissioning": epcis.decommissioning(EPC, READ_POINT, "no-read"),
        "destroying": epcis.destroying(EPC, READ_POINT, "damaged pack"),
        "packing": epcis.aggregation(SSCC, [EPC, child2], READ_POINT, biz_location=BIZ_LOCATION),
        "unpacking": epcis.aggregation(
            SSCC, [], READ_POINT, action="DELETE", biz_step="unpacking", disposition="in_progress"
        ),
    }


# --- schema validation ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(all_kinds()))
def test_every_event_kind_validates_standalone_and_in_a_document(validator: Any, kind: str) -> None:
    event = all_kinds()[kind]
    assert errors(validator, event) == []
    # as stored in the outbox and wrapped for sending
    doc = epcis.document_from_payloads(
        [json.dumps(event)], sender="urn:epc:id:sgln:0950600.01340.0"
    )
    assert errors(validator, doc) == []
    assert check_document(doc) is None


def test_document_of_all_kinds_validates_and_keeps_order(validator: Any) -> None:
    events = list(all_kinds().values())
    doc = epcis.document(events)
    assert errors(validator, doc) == []
    assert [e["eventID"] for e in doc["epcisBody"]["eventList"]] == [e["eventID"] for e in events]
    assert errors(validator, epcis.document([])) == []


@pytest.mark.parametrize(
    "field, value",
    [
        ("eventTime", "yesterday"),
        ("eventTimeZoneOffset", "+1:00"),
        ("bizStep", "bogus step"),
        ("epcList", ["not a uri"]),
        ("action", "CREATE"),
        ("eventID", "not an id"),
    ],
)
def test_the_validator_rejects_broken_events(validator: Any, field: str, value: Any) -> None:
    """The schema checks have teeth: a broken field of our own event is caught."""
    event = epcis.commissioning(EPC, READ_POINT, "LOT-1", "2027-01-31")
    event[field] = value
    assert errors(validator, event) != []
    assert errors(validator, epcis.document([event])) != []


def test_standalone_event_needs_its_context(validator: Any) -> None:
    event = epcis.decommissioning(EPC, READ_POINT, "no-read")
    del event["@context"]
    assert errors(validator, event) != []


def official_documents() -> list[Path]:
    roots = [CONFORMANCE / "epcis" / "JSON", CONFORMANCE / "epcis-hash" / "examples"]
    return sorted(p for root in roots if root.is_dir() for p in root.rglob("*.jsonld"))


def test_official_examples_round_trip_through_document_and_simulator(validator: Any) -> None:
    """Events of the GS1 examples, re-wrapped by :func:`epcis.document` (keeping the example's
    own @context so its prefixes stay declared), still validate, and the capture simulator's
    gate accepts every valid official document."""
    checked = 0
    for path in official_documents():
        original = json.loads(path.read_text())
        if original.get("type") != "EPCISDocument":
            continue
        assert check_document(original) is None, path.name
        events = original["epcisBody"]["eventList"]
        rewrapped = epcis.document(json.loads(json.dumps(events)))
        rewrapped["@context"] = original["@context"]
        assert errors(validator, rewrapped) == [], path.name
        assert rewrapped["epcisBody"]["eventList"] == events
        checked += 1
    assert checked >= 20


def test_openepcis_invalid_documents_are_rejected_by_the_schema(validator: Any) -> None:
    invalid = CONFORMANCE / "epcis" / "openepcis" / "2.0" / "EPCIS" / "JSON" / "Capture" / "Invalid"
    files = sorted(invalid.glob("*.json*"))
    if not files:
        pytest.skip(f"{invalid} not found")
    for path in files:
        assert errors(validator, json.loads(path.read_text())) != [], path.name


# --- CBV and event content -----------------------------------------------------------------


def test_cbv_pairs() -> None:
    kinds = all_kinds()
    got = {
        k: (e["action"], e["bizStep"], e["disposition"])
        for k, e in kinds.items()
        if k in ("commissioning", "decommissioning", "destroying", "packing")
    }
    assert got == {
        "commissioning": ("ADD", "commissioning", "active"),
        "decommissioning": ("DELETE", "decommissioning", "inactive"),
        "destroying": ("OBSERVE", "destroying", "destroyed"),  # never commissioned: no DELETE
        "packing": ("ADD", "packing", "in_progress"),
    }
    assert kinds["commissioning"]["ilmd"] == {
        "cbvmda:lotNumber": "LOT-1",
        "cbvmda:itemExpirationDate": "2027-01-31",
    }
    assert kinds["packing"]["parentID"] == SSCC
    assert kinds["commissioning+bizLocation"]["bizLocation"] == {"id": BIZ_LOCATION}
    assert kinds["commissioning"]["readPoint"] == {"id": READ_POINT}
    with pytest.raises(ValueError, match="at least one child"):
        epcis.aggregation(SSCC, [], READ_POINT)


def test_every_prefix_used_is_declared_in_the_context() -> None:
    context_file = CONFORMANCE / "epcis" / "epcis-context.jsonld"
    declared = {"edge"}
    if context_file.is_file():
        declared |= set(json.loads(context_file.read_text())["@context"])
    else:
        declared |= {"cbvmda"}
    for event in all_kinds().values():
        assert event["@context"] == epcis.CONTEXT
        keys = set(event) | set(event.get("ilmd", {}))
        prefixes = {k.split(":")[0] for k in keys if ":" in k}
        assert prefixes <= declared
        # declared in the context's own table too: processors that do not load the EPCIS
        # context (the GS1 reference event-hash generator) find them there
        assert prefixes <= set(epcis.CONTEXT[1])
    assert all_kinds()["decommissioning"]["edge:reason"] == "no-read"


def test_events_inside_a_document_carry_no_context_of_their_own(validator: Any) -> None:
    """EPCIS 2.0 documents declare their context once, at the top (as GS1's examples do): the
    events' own contexts are lifted into it, even for events stored before this rule."""
    events = list(all_kinds().values())
    legacy = {**events[0], "@context": [epcis.EPCIS_CONTEXT, {"edge": epcis.EDGE_NS}]}
    doc = epcis.document_from_payloads([json.dumps(e) for e in [legacy, *events[1:]]])
    assert doc["@context"] == epcis.CONTEXT
    assert all("@context" not in event for event in doc["epcisBody"]["eventList"])
    assert doc["epcisBody"]["eventList"][0] == {k: v for k, v in legacy.items() if k != "@context"}
    assert errors(validator, doc) == []


def test_event_ids_are_uuid_urns_and_unique() -> None:
    ids = [epcis.commissioning(EPC, READ_POINT, "L", "2027-01-31")["eventID"] for _ in range(500)]
    assert len(set(ids)) == 500
    pattern = re.compile(
        r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
    )
    assert all(pattern.match(i) for i in ids)


def test_event_time_carries_its_offset() -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    when = datetime(2026, 3, 4, 5, 6, 7, 891234, tzinfo=india)
    event = epcis.decommissioning(EPC, READ_POINT, "x", when=when)
    assert event["eventTime"] == "2026-03-04T05:06:07.891+05:30"
    assert event["eventTimeZoneOffset"] == "+05:30"
    local = epcis.commissioning(EPC, READ_POINT, "L", "2027-01-31")
    parsed = datetime.fromisoformat(local["eventTime"])
    assert parsed.tzinfo is not None
    assert local["eventTime"].endswith(local["eventTimeZoneOffset"])
    assert abs(parsed - datetime.now(parsed.tzinfo)) < timedelta(minutes=1)


# --- EPC URIs ------------------------------------------------------------------------------


def test_epc_uris_from_the_tag_data_standard() -> None:
    assert epcis.sgtin_uri("80614141123458", "6789", 7) == "urn:epc:id:sgtin:0614141.812345.6789"
    assert epcis.sscc_uri("106141412345678908", 7) == "urn:epc:id:sscc:0614141.1234567890"
    assert epcis.sgln_uri("0614141123452", "5678", 7) == "urn:epc:id:sgln:0614141.12345.5678"
    assert epcis.sgln_uri("0614141123452", "", 7) == "urn:epc:id:sgln:0614141.12345.0"
    assert epcis.sgtin_uri("10614141007346", 'a/b%c?"', 7) == (
        "urn:epc:id:sgtin:0614141.100734.a%2Fb%25c%3F%22"
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda: epcis.sgtin_uri("1061414100734", "1", 7),  # 13 digits
        lambda: epcis.sgtin_uri("10614141007346", "", 7),
        lambda: epcis.sgtin_uri("10614141007346", "x" * 21, 7),
        lambda: epcis.sgtin_uri("10614141007346", "1", 5),
        lambda: epcis.sscc_uri("106141412345678909", 7),  # check digit
        lambda: epcis.sgln_uri("0614141123453", "0", 7),  # check digit
    ],
)
def test_bad_keys_are_refused(call: Any) -> None:
    with pytest.raises(Gs1Error):
        call()


@given(
    body=st.text(alphabet="0123456789", min_size=13, max_size=13),
    prefix_length=st.integers(6, 12),
    serial=st.text(alphabet="ABCxyz0189-/%", min_size=1, max_size=20),
)
def test_sgtin_uri_recombines_to_the_gtin(body: str, prefix_length: int, serial: str) -> None:
    gtin = body + str(mod10_check_digit(body))
    uri = epcis.sgtin_uri(gtin, serial, prefix_length)
    prefix, item_ref, escaped = uri.removeprefix("urn:epc:id:sgtin:").split(".")
    assert len(prefix) == prefix_length and len(prefix) + len(item_ref) == 13
    assert item_ref[0] + prefix + item_ref[1:] == gtin[:13]
    assert "/" not in escaped
    assert escaped.replace("%2F", "/").replace("%25", "%") == serial


# --- EPCIS 1.2 XML -------------------------------------------------------------------------


def test_epcis_1_2_xml_carries_every_field_in_xsd_order() -> None:
    import xml.etree.ElementTree as ET

    from edge_agent.epcis.xml12 import CBVMDA_NS, EPCIS_NS, document_xml

    kinds = all_kinds()
    events = [kinds["commissioning+bizLocation"], kinds["decommissioning"], kinds["packing"]]
    root = ET.fromstring(document_xml(events))
    assert root.tag == f"{{{EPCIS_NS}}}EPCISDocument" and root.get("schemaVersion") == "1.2"
    converted = root.findall("./EPCISBody/EventList/*")
    assert [e.tag for e in converted] == ["ObjectEvent", "ObjectEvent", "AggregationEvent"]
    commissioning, decommissioning, packing = converted
    assert [c.tag for c in commissioning] == [
        "eventTime",
        "eventTimeZoneOffset",
        "baseExtension",
        "epcList",
        "action",
        "bizStep",
        "disposition",
        "readPoint",
        "bizLocation",
        "extension",
    ]
    assert commissioning.findtext("baseExtension/eventID") == events[0]["eventID"]
    assert commissioning.findtext("epcList/epc") == EPC
    assert commissioning.findtext("bizStep") == "urn:epcglobal:cbv:bizstep:commissioning"
    assert commissioning.findtext("disposition") == "urn:epcglobal:cbv:disp:active"
    assert commissioning.findtext("bizLocation/id") == BIZ_LOCATION
    assert commissioning.findtext(f"extension/ilmd/{{{CBVMDA_NS}}}lotNumber") == "LOT-1"
    assert decommissioning.findtext(f"{{{epcis.EDGE_NS}}}reason") == "no-read"
    assert decommissioning.findtext("disposition") == "urn:epcglobal:cbv:disp:inactive"
    assert packing.findtext("parentID") == SSCC
    assert [e.text for e in packing.findall("childEPCs/epc")] == events[2]["childEPCs"]
    assert packing.findtext("eventTime") == events[2]["eventTime"]


def test_epcis_1_2_xml_refuses_what_it_cannot_map() -> None:
    from edge_agent.epcis.xml12 import Unsupported, document_xml

    event = epcis.commissioning(EPC, READ_POINT, "L", "2027-01-31")
    with pytest.raises(Unsupported, match="TransformationEvent"):
        document_xml([{**event, "type": "TransformationEvent"}])
    with pytest.raises(Unsupported, match="sensorElementList"):
        document_xml([{**event, "sensorElementList": []}])
    with pytest.raises(Unsupported, match="acme:x"):
        document_xml([{**event, "acme:x": "1"}])


@settings(max_examples=60, deadline=None)
@given(
    serials=st.lists(
        st.text(alphabet=sorted(CSET82), min_size=1, max_size=20), min_size=1, max_size=4
    ),
    lot=st.text(alphabet=sorted(CSET82), min_size=1, max_size=20),
    reason=st.text(max_size=40),
)
def test_any_gs1_serial_lot_and_reason_give_valid_documents(
    validator: Any, serials: list[str], lot: str, reason: str
) -> None:
    """Every character GS1 allows in a serial (set 82) ends up as a valid URI in the EPC."""
    epcs = [epcis.sgtin_uri(GTIN, serial, 7) for serial in serials]
    events = [epcis.commissioning(epc, READ_POINT, lot, "2027-01-31") for epc in epcs]
    events += [epcis.decommissioning(epcs[0], READ_POINT, reason)]
    events += [epcis.aggregation(SSCC, epcs, READ_POINT)]
    payloads = [json.dumps(event) for event in events]
    assert errors(validator, epcis.document_from_payloads(payloads)) == []
