"""The case decision (``edge_agent.aggregation.matching``): exact match or a reason, for any
mix of reads, and the label check."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.aggregation.matching import (
    CaseReason,
    UnitRef,
    check_label,
    match_case,
    same_case,
)
from edge_agent.contracts import CodeRead, LogisticLabel

ORDER = "WO-1"
CORNERS = ((0, 0), (1, 0), (1, 1), (0, 1))


def read(raw: str) -> CodeRead:
    return CodeRead(raw, raw, "]d2", CORNERS)


units = st.builds(
    UnitRef,
    epc=st.just(""),
    order_id=st.sampled_from([ORDER, ORDER, ORDER, "WO-OTHER"]),
    commissioned=st.sampled_from([True, True, False]),  # mostly packable, so exact cases occur
    packed=st.sampled_from([False, False, True]),
)


@settings(max_examples=400, deadline=None)
@given(
    ledger=st.lists(units, min_size=1, max_size=12),
    picks=st.lists(st.integers(0, 15), max_size=14),
    expected=st.integers(1, 12),
)
def test_a_case_is_accepted_exactly_when_every_rule_holds(
    ledger: list[UnitRef], picks: list[int], expected: int
) -> None:
    known = {
        f"U{i}": UnitRef(f"epc:{i}", u.order_id, u.commissioned, u.packed)
        for i, u in enumerate(ledger)
    }
    raws = [f"U{p}" for p in picks]  # U12.. are codes the ledger does not know
    found = match_case(
        [read(r) for r in raws], expected=expected, order_id=ORDER, resolve=known.get
    )
    refs = [known.get(r) for r in raws]
    exact = (
        len(set(raws)) == len(raws)
        and all(u is not None and u.order_id == ORDER for u in refs)
        and all(u is not None and u.commissioned and not u.packed for u in refs)
        and len(raws) == expected
    )
    assert found.accepted == exact, (found, raws)
    if exact:
        assert list(found.units) == [known[r].epc for r in raws]
    else:
        assert found.units == ()
    if len(set(raws)) != len(raws):
        assert found.reason is CaseReason.DUPLICATE


def test_the_closing_read_must_show_the_same_codes() -> None:
    known = {f"U{i}": UnitRef(f"epc:{i}", ORDER, True, False) for i in range(3)}
    first = match_case([read(r) for r in known], expected=3, order_id=ORDER, resolve=known.get)
    assert first.accepted
    assert same_case(first, [read("U2"), read("U0"), read("U1")])
    assert not same_case(first, [read("U0"), read("U1")])
    assert not same_case(first, [read("U0"), read("U1"), read("U1")])


def test_the_label_read_back_must_be_the_label_printed() -> None:
    label = LogisticLabel(1, "009506000100000018", "09506000134352", 12, "LOT7", "281231")
    printed = "00009506000100000018020950600013435217281231" + "3712\x1d10LOT7"
    assert check_label(label, [read(printed)])[0] is CaseReason.ACCEPTED
    assert check_label(label, [])[0] is CaseReason.LABEL_UNREADABLE
    other_count = printed.replace("3712", "3711")
    assert check_label(label, [read(other_count)])[0] is CaseReason.LABEL_MISMATCH
    assert check_label(label, [read(printed), read(printed)])[0] is CaseReason.LABEL_MISMATCH
    assert check_label(label, [read("garbage")])[0] is CaseReason.LABEL_MISMATCH


def test_a_case_gtin_serial_label_must_read_back_exactly_and_carries_no_sscc_content() -> None:
    label = LogisticLabel(1, "", "19506000134359", 12, "LOT7", "281231", "0000000042")
    assert label.code == "01195060001343592100000000" + "42"
    printed = "011950600013435917281231" + "10LOT7\x1d210000000042"
    assert check_label(label, [read(printed)])[0] is CaseReason.ACCEPTED
    # AI 37 (and 02) describe the content of an SSCC; on a case's own GTIN they are wrong
    with_count = "0119506000134359172812313712\x1d10LOT7\x1d210000000042"
    assert check_label(label, [read(with_count)])[0] is CaseReason.LABEL_MISMATCH
    other_serial = printed.replace("0042", "0043")
    reason, detail = check_label(label, [read(other_serial)])
    assert reason is CaseReason.LABEL_MISMATCH and label.code in detail


def test_a_variable_measure_case_gtin_label_carries_its_count_in_ai_30() -> None:
    label = LogisticLabel(1, "", "99506000134355", 7, "LOT7", "281231", "5")
    assert label.ais == {"01": "99506000134355", "21": "5", "10": "LOT7", "17": "281231", "30": "7"}
