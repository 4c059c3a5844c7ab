"""The PLC-facing table of line-stop reason codes in README is edge_agent/stops.py, row by row.

PLC programmers implement the contract from README alone, so a code missing there (17, 18, 20,
21 and 22 once were) is a code the PLC's HMI cannot show.
"""

from __future__ import annotations

import re
from pathlib import Path

from edge_agent.stops import StopReason

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- stop-reasons:"
_ROW = re.compile(r"^\| (\d+) \| `([a-z_]+)` \| (.+) \|$")


def readme_rows() -> list[tuple[int, str, str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.count(MARKER) == 1, "README needs exactly one stop-reason table"
    lines = text.split(MARKER, 1)[1].splitlines()[1:]
    assert lines[:2] == ["| code | name | the agent stops the line because |", "|---|---|---|"]
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        match = _ROW.match(line)
        assert match is not None, f"malformed stop-reason row {line!r}"
        rows.append((int(match[1]), match[2], match[3]))
    return rows


def test_readme_table_is_the_stop_reason_enum() -> None:
    expected = [(reason.code, reason.value, reason.description) for reason in StopReason]
    assert readme_rows() == expected


def test_codes_are_unique_and_fit_the_wire() -> None:
    codes = [reason.code for reason in StopReason]
    assert len(set(codes)) == len(codes)
    assert all(1 <= code <= 0xFFFF for code in codes)  # HR 1 / Agent.StopReason are UInt16
    assert StopReason.by_code(12345) is StopReason.OTHER


def test_no_other_document_keeps_a_partial_list_of_codes() -> None:
    # The driver READMEs point at the one table instead of copying it.
    listing = re.compile(r"\b1[0-8] (repeated|storage|PLC heartbeat|reject|device|serial|outbox)")
    for doc in ROOT.glob("**/*.md"):
        if ".venv" in doc.parts or doc == ROOT / "README.md":
            continue
        text = doc.read_text(encoding="utf-8")
        assert not listing.search(text), f"{doc.relative_to(ROOT)} lists stop codes itself"
