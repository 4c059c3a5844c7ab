"""`edge-agent outbox export` streams: one event in memory at a time, the bytes exactly those of
the whole-document form it had before (JSON-LD indented by one, EPCIS 1.2 XML), and peak memory
that does not grow with the number of events."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from benchmarks.history_db import build_history
from edge_agent import epcis
from edge_agent.db import open_reader
from edge_agent.epcis import spool
from edge_agent.epcis.xml12 import document_xml

ROOT = Path(__file__).resolve().parents[1]
WHEN = datetime(2026, 12, 1, 8, 30, 0, 123000, tzinfo=UTC)
READ_POINT = "urn:epc:id:sgln:0950600.01340.LINE01"


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("export") / "state"
    build_history(state, 50_000, batch_units=5_000)
    return state


def payloads(state: Path, where: str = "1 = 1") -> list[str]:
    conn = open_reader(state)
    try:
        return [
            p for (p,) in conn.execute(f"SELECT payload FROM outbox WHERE {where} ORDER BY seq")
        ]
    finally:
        conn.close()


def spooled(document: Any, events: list[dict[str, Any]], tmp_path: Path) -> bytes:
    out = BytesIO()
    with document(iter(events), when=WHEN, spool_dir=tmp_path) as doc:
        assert doc.count == len(events)
        doc.write_to(out)
    return out.getvalue()


def mixed_events() -> list[dict[str, Any]]:
    """Events of every kind the agent writes, one with a context term of its own."""
    epc = epcis.sgtin_uri("09506000134352", "ABC123", 7)
    extra = epcis.destroying(epc, READ_POINT, "no_read", when=WHEN)
    extra["@context"] = [*extra["@context"], {"ex": "https://example.com/ns#"}]
    extra["ex:note"] = "kept"
    return [
        epcis.commissioning(epc, READ_POINT, "LOT1", "2028-12-31", when=WHEN),
        epcis.decommissioning(epc, READ_POINT, "gate_reject", when=WHEN),
        epcis.aggregation(epcis.sscc_uri("106141412345678908", 7), [epc], READ_POINT, when=WHEN),
        extra,
    ]


@pytest.mark.parametrize("count", [0, 1, 2, 4])
def test_json_bytes_are_those_of_the_whole_document(count: int, tmp_path: Path) -> None:
    events = mixed_events()[:count]
    want = json.dumps(epcis.document(events, when=WHEN), indent=1).encode()
    assert spooled(spool.json_document, events, tmp_path) == want


@pytest.mark.parametrize("count", [0, 1, 3])
def test_xml_bytes_are_those_of_the_whole_document(count: int, tmp_path: Path) -> None:
    events = mixed_events()[:count]
    assert spooled(spool.xml_document, events, tmp_path) == document_xml(events, when=WHEN)


def test_a_history_exports_as_before(history: Path, tmp_path: Path) -> None:
    rows = payloads(history, "batch_id IN ('CURRENT', 'H00002')")
    events = [json.loads(p) for p in rows]
    assert len(events) == 10_000
    want = json.dumps(epcis.document_from_payloads(rows, when=WHEN), indent=1).encode()
    assert spooled(spool.json_document, events, tmp_path) == want
    assert spooled(spool.xml_document, events[:2000], tmp_path) == document_xml(
        events[:2000], when=WHEN
    )


def test_a_conflicting_context_fails_before_the_target_is_touched(tmp_path: Path) -> None:
    one, two = mixed_events()[0], dict(mixed_events()[3])
    two["@context"] = [two["@context"][0], {"cbvmda": "urn:other:"}]
    with (
        pytest.raises(ValueError, match="cbvmda"),
        spool.json_document(iter([one, two]), spool_dir=tmp_path),
    ):
        raise AssertionError("no document may come out of this")
    assert list(tmp_path.iterdir()) == []  # the spool file went with it


def export(state: Path, out: Path, *args: str) -> tuple[int, int]:
    """(exit status, peak RSS in MB) of `edge-agent outbox export` in a process of its own."""
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would count the forked
    # copy of this (large) test process too
    code = (
        "import re, sys\n"
        "from edge_agent.cli import main\n"
        "status = main(sys.argv[1:])\n"
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
        "print('peak_kb', hwm, file=sys.stderr)\n"
        "sys.exit(status)\n"
    )
    argv = ["outbox", "export", "--state-dir", str(state), "--out", str(out), *args]
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    peak = re.search(r"peak_kb (\d+)", done.stderr)
    assert peak, done.stderr[-2000:]
    return done.returncode, int(peak.group(1)) // 1024


def test_exporting_50k_events_stays_in_bounded_memory(history: Path, tmp_path: Path) -> None:
    status, baseline_mb = export(history, tmp_path / "none.jsonld", "--batch", "NO-SUCH-BATCH")
    assert status == 0  # the command's own footprint (its imports): no event in memory
    out = tmp_path / "all.jsonld"
    status, peak_mb = export(history, out)
    assert status == 0
    # whole in memory (the export before streaming), these 50k events took 340 MB more
    assert peak_mb - baseline_mb < 25, (baseline_mb, peak_mb)
    # the README's figure: under 100 MB in all (every command builds its parser from every
    # command module: none may load a web stack or hash a password at import)
    assert peak_mb < 100, peak_mb
    size = out.stat().st_size
    assert size > 50_000 * 400
    with out.open("rb") as f:  # the end of the document, as the whole-document form had it
        f.seek(size - 200)
        assert f.read().endswith(b"\n  ]\n }\n}\n")
    status, peak_mb = export(
        history, tmp_path / "one.xml", "--format", "epcis-xml-1.2", "--batch", "H00004"
    )
    assert status == 0 and peak_mb - baseline_mb < 25, (baseline_mb, peak_mb)
    assert (tmp_path / "one.xml").read_bytes().count(b"<ObjectEvent>") == 5_000
