"""The AI table is GS1's Barcode Syntax Dictionary, release 2026-01-27, read line by line.

The table used to be a hand-made copy and had drifted: AI (717) NHRN SRN was missing, (8040) to
(8043) too, and several titles differed. The file shipped in edge_agent/gs1 is GS1's, unmodified
(pinned by hash); a second, independent reading here checks that every entry arrives in
AI_TABLE exactly as GS1 wrote it.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources

import pytest

from edge_agent.gs1 import AI_TABLE, Gs1Error, parse
from edge_agent.gs1.ais import DICTIONARY_FILE, DICTIONARY_RELEASE, PREDEFINED_LENGTHS, AiSpec

# sha256 of gs1-syntax-dictionary.txt at tag 2026-01-27 of github.com/gs1/gs1-syntax-dictionary
# (commit 8ad003f83a4ba6c2179ce15d578fae27d6580909).
RELEASE_SHA256 = "6461ece7c03420fb27a3f18163ef9a08694aa4bb2491dea25f63bcdf22451a99"
GTIN = "09506000134352"


def dictionary_text() -> str:
    return resources.files("edge_agent.gs1").joinpath(DICTIONARY_FILE).read_text("utf-8")


def test_the_shipped_file_is_the_gs1_release() -> None:
    text = dictionary_text()
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == RELEASE_SHA256
    assert f"# Release: {DICTIONARY_RELEASE}\n" in text
    assert "Licensed under the Apache License, Version 2.0" in text


def _entries() -> list[tuple[str, str, list[str], str]]:
    """(AIs, flags, specification and attribute words, title) of every entry, read plainly."""
    entries = []
    for line in dictionary_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        body, _, title = line.partition("#")
        ais, *words = body.split()
        flags = words.pop(0) if words and re.fullmatch(r"[*?]+", words[0]) else ""
        entries.append((ais, flags, words, title.strip()))
    return entries


def _ais(text: str) -> list[str]:
    first, _, last = text.partition("-")
    return [str(n).zfill(len(first)) for n in range(int(first), int(last or first) + 1)]


def _as_written(spec: AiSpec) -> list[str]:
    """The spec in the dictionary's own notation (components, req=, ex=)."""
    words = []
    for part in spec.components:
        size = f"..{part.max_length}" if part.min_length != part.max_length else part.max_length
        kind = f"{part.charset}{size}"
        words.append(",".join([f"[{kind}]" if part.optional else kind, *part.linters]))
    words += ["req=" + ",".join("+".join(alt) for alt in req) for req in spec.requires]
    if spec.excludes:
        words.append("ex=" + ",".join(spec.excludes))
    return words


def test_every_dictionary_entry_is_in_the_table_as_written() -> None:
    listed: set[str] = set()
    for ais, flags, words, title in _entries():
        expected = [w for w in words if not w.startswith("dlpkey")]
        for ai in _ais(ais):
            spec = AI_TABLE[ai]
            listed.add(ai)
            assert spec.title == title, ai
            # Attribute order within a line is free (req before ex by convention).
            assert sorted(_as_written(spec)) == sorted(expected), ai
            assert spec.predefined_length == ("*" in flags), ai
    assert listed == set(AI_TABLE)
    assert len(AI_TABLE) == 541


def test_predefined_length_prefixes_are_exactly_the_flagged_ones() -> None:
    flagged = {ai[:2] for ais, flags, _, _ in _entries() if "*" in flags for ai in _ais(ais)}
    # The GenSpecs' fixed table also reserves 04, 14, 18 and 19, under which no AI exists yet.
    reserved = set(PREDEFINED_LENGTHS) - flagged
    assert reserved == {"04", "14", "18", "19"}
    assert not any(ai[:2] in reserved for ai in AI_TABLE)


@pytest.mark.parametrize(
    ("ai", "title"),
    [
        ("710", "NHRN PZN"),  # Germany
        ("711", "NHRN CIP"),  # France
        ("712", "NHRN CN"),  # Spain
        ("713", "NHRN DRN"),  # Brazil
        ("714", "NHRN AIM"),  # Portugal
        ("715", "NHRN NDC"),  # United States
        ("716", "NHRN AIC"),  # Italy
        ("717", "NHRN SRN"),  # GSCN 25-199, added in the 2026-01-27 release
    ],
)
def test_national_healthcare_reimbursement_numbers(ai: str, title: str) -> None:
    spec = AI_TABLE[ai]
    assert (spec.title, spec.charset, spec.min_length, spec.max_length) == (title, "X", 1, 20)
    assert spec.requires == ((("01",),),) and not spec.predefined_length
    parsed = parse(f"(01){GTIN}({ai})A-1/b")
    assert parsed.get(ai) == "A-1/b"
    assert parsed.element_string == f"01{GTIN}{ai}A-1/b"
    with pytest.raises(Gs1Error, match=rf"AI \({ai}\) {title} at position 0 needs AI \(01\)"):
        parse(f"({ai})12345")


def test_newest_ais_are_known() -> None:
    imei = "490154203237518"
    parsed = parse(f"(01){GTIN}(21)S1(8040){imei}(8041){imei}")
    assert [ai for ai, _ in parsed.ais] == ["01", "21", "8040", "8041"]
    assert AI_TABLE["8043"].lengths == frozenset({18, 19, 20})
    assert AI_TABLE["8110"].label == "AI (8110)"  # the dictionary gives (8110) no title
