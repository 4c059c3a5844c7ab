"""Conformance against the shared GS1 test vectors (../shared/conformance/gs1/cases.jsonl).

The 569 vectors come from GS1's Barcode Syntax Engine, zxing-cpp and biip (see INDEX.md next to
the file). Each carries the upstream verdict under the upstream test's scope:

* ``ai_syntax_and_linters``, ``bracketed_syntax``, ``biip_default_parse``, ``scan_data``,
  ``structure_only``: per-AI rules only. Upstream ran these without requisite checks ("(21) needs
  (01)"), so we parse them with ``check_requisites=False``; exclusions and repeats still apply.
* ``ai_associations:*``: the association rules, parsed with the default ``check_requisites=True``.

Valid vectors must parse to exactly ``expected_ais``; invalid ones must raise ``Gs1Error``.

``DIVERGENT`` lists, one by one with the reason, the vectors whose upstream verdict we do not
follow on purpose. They are not skipped: each is asserted to get our verdict instead (and the
error we give), so the list cannot go stale silently. Most come from zxing-cpp, whose tests only
check the AI table structure: it calls "16123456" valid although month 34 does not exist, and GS1's
own engine rejects every one of those too (asserted via ``reference_engine``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from edge_agent.errors import Gs1Error
from edge_agent.gs1 import parse

CASES_FILE = (
    Path(__file__).resolve().parents[1].parent / "shared" / "conformance" / "gs1" / "cases.jsonl"
)


class Divergence(NamedTuple):
    reason: str
    our_error: str | None  # a fragment of the error we raise; None when we accept the input


_NOT_GS1 = "]d1 announces plain Data Matrix, not GS1 data; parse() reads GS1 element strings only"
_UNKNOWN = "upstream ran with unknown AIs permitted; we reject unknown AIs (they cannot be split)"
_ZXING = "zxing-cpp checks AI structure only; GS1's engine rejects this too"

DIVERGENT: dict[str, Divergence] = {
    # --- input conventions ---------------------------------------------------------------------
    "gse.processAIdata:ai.c:1708": Divergence(
        "upstream caret notation without a leading '^' (FNC1) means 'not GS1 data'; decoders "
        "strip FNC1, so our plain input has no such marker and '991234' is a valid (99)",
        None,
    ),
    "gse.processScanData:scandata.c:879": Divergence(_NOT_GS1, "symbology identifier ']d1'"),
    "gse.processScanData:scandata.c:880": Divergence(_NOT_GS1, "symbology identifier ']d1'"),
    "gse.processScanData:scandata.c:881": Divergence(_NOT_GS1, "symbology identifier ']d1'"),
    "gse.processScanData:scandata.c:882": Divergence(_NOT_GS1, "symbology identifier ']d1'"),
    "gse.processScanData:scandata.c:889": Divergence(
        "a GS1 Digital Link URI in plain Data Matrix; Digital Link is out of scope here",
        "symbology identifier ']d1'",
    ),
    # --- unknown AIs -----------------------------------------------------------------------------
    "gse.validateAIs:ai.c:2059": Divergence(f"(89) is unallocated; {_UNKNOWN}", "unknown AI"),
    "gse.getHRI:gs1encoders.c:1947": Divergence(f"(236) is unallocated; {_UNKNOWN}", "unknown AI"),
    "gse.getHRI:gs1encoders.c:1954": Divergence(f"(8299) is unallocated; {_UNKNOWN}", "unknown AI"),
    # --- biip leniency ---------------------------------------------------------------------------
    "biip.test_parse_ignores_redundant_separator_chars:test_gs1_messages.py:200": Divergence(
        "biip skips a doubled GS; a GS where an AI must start is an error (GS1's engine agrees)",
        "unexpected GS at position 23",
    ),
    "biip.test_extract_date_and_datetime:test_gs1_element_strings.py:218": Divergence(
        "biip reads time 9999 as 'no time'; GS1 defines HHMI with HH 00-23 (GS1's engine agrees)",
        "hour '99'",
    ),
    "biip.test_extract_date_and_datetime:test_gs1_element_strings.py:220": Divergence(
        "biip reads time 9999 as 'no time'; GS1 defines HHMI with HH 00-23 (GS1's engine agrees)",
        "hour '99'",
    ),
    # --- zxing-cpp structure-only verdicts -------------------------------------------------------
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:17": Divergence(
        f"{_ZXING}: SSCC check digit", "check digit '8' at position 19 is wrong"
    ),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:23": Divergence(f"{_ZXING}: month 34", "month '34'"),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:67": Divergence(
        f"{_ZXING}: GDTI check digit", "check digit '3' at position 15"
    ),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:68": Divergence(
        f"{_ZXING}: GDTI check digit", "check digit '3' at position 15"
    ),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:73": Divergence(
        f"{_ZXING}: GCN check digit", "check digit '3' at position 15"
    ),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:74": Divergence(
        f"{_ZXING}: GCN check digit", "check digit '3' at position 15"
    ),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:79": Divergence(
        f"{_ZXING}: GLN check digit", "check digit '3' at position 15"
    ),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:85": Divergence(
        f"{_ZXING}: GLN check digit", "check digit '3' at position 15"
    ),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:91": Divergence(
        f"{_ZXING}: 123 is no ISO 3166 country", "'123' at position 3 is not an ISO 3166"
    ),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:92": Divergence(
        f"{_ZXING}: 123 is no ISO 3166 country", "'123' at position 3 is not an ISO 3166"
    ),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:97": Divergence(
        f"{_ZXING}: 123 is no ISO 3166 country", "'123' at position 3 is not an ISO 3166"
    ),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:98": Divergence(
        f"{_ZXING}: (425) holds 1 to 5 three-digit country codes, 14 digits cannot be that",
        "14 characters long, expected 3, 6, 9, 12 or 15",
    ),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:185": Divergence(
        f"{_ZXING}: 12 is no ISO 3166 alpha-2 country", "'12' at position 4 is not an ISO 3166"
    ),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:197": Divergence(
        f"{_ZXING}: 12 is no ISO 3166 alpha-2 country", "'12' at position 4 is not an ISO 3166"
    ),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:215": Divergence(f"{_ZXING}: month 34", "month '34'"),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:227": Divergence(f"{_ZXING}: month 34", "month '34'"),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:269": Divergence(
        f"{_ZXING}: an IBAN starts with a country code", "IBAN country code '12'"
    ),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:270": Divergence(
        f"{_ZXING}: an IBAN starts with a country code", "IBAN country code '12'"
    ),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:285": Divergence(
        f"{_ZXING}: GMN check-character pair", "check characters '45'"
    ),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:286": Divergence(
        f"{_ZXING}: GMN check-character pair", "check characters '34'"
    ),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:291": Divergence(
        f"{_ZXING}: GSRN check digit", "check digit '8' at position 21"
    ),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:303": Divergence(
        f"{_ZXING}: ITIP check digit", "check digit '4' at position 17"
    ),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:314": Divergence(
        f"{_ZXING}: not a North American coupon layout", "coupon has unexpected data"
    ),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:316": Divergence(
        f"{_ZXING}: not a North American coupon layout", "coupon has unexpected data"
    ),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:328": Divergence(
        f"{_ZXING}: not a positive offer coupon layout", "coupon has unexpected data"
    ),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:330": Divergence(
        f"{_ZXING}: not a positive offer coupon layout", "coupon has unexpected data"
    ),
    "zxing-cpp.HRIFromGS1:GS1Test.cpp:346": Divergence(
        f"{_ZXING}: (8111) is not of predefined length, so a GS must end it before (4307)",
        "10 characters long, expected 4 characters",
    ),
}


def _load() -> list[Any]:
    if not CASES_FILE.exists():
        return [pytest.param(None, id="cases-file-absent")]
    with CASES_FILE.open(encoding="utf-8") as lines:
        cases = [json.loads(line) for line in lines if line.strip()]
    return [pytest.param(case, id=case["id"]) for case in cases]


CASES = _load()


def _parse_in_scope(case: dict[str, Any]) -> list[list[str]]:
    requisites = case["scope"].startswith("ai_associations")
    return [list(pair) for pair in parse(case["input"], check_requisites=requisites).ais]


@pytest.mark.parametrize("case", CASES)
def test_vector(case: dict[str, Any] | None) -> None:
    if case is None:
        pytest.skip(f"{CASES_FILE} not found")
    if case["id"] in DIVERGENT:
        _assert_divergence(case, DIVERGENT[case["id"]])
    elif case["valid"]:
        assert _parse_in_scope(case) == case["expected_ais"]
    else:
        with pytest.raises(Gs1Error):
            _parse_in_scope(case)


def _assert_divergence(case: dict[str, Any], divergence: Divergence) -> None:
    if divergence.our_error is None:
        assert not case["valid"]
        _parse_in_scope(case)
        return
    assert case["valid"], "only upstream-valid vectors may be listed as rejected by us"
    with pytest.raises(Gs1Error) as caught:
        _parse_in_scope(case)
    assert divergence.our_error in str(caught.value)
    if case["scope"].startswith("structure_only"):
        assert case["reference_engine"]["valid_without_association_checks"] is False


def test_divergent_vectors_exist() -> None:
    if CASES_FILE.exists():
        known = {param.values[0]["id"] for param in CASES}
        assert set(DIVERGENT) <= known
