"""Content checks: every outcome has its reason code; arbitrary input never raises."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent import gs1
from edge_agent.contracts import CodeRead
from edge_agent.line.verify import (
    REASONS,
    BatchIdentity,
    check_content,
    serial_pattern_for,
    serial_regex,
)

BATCH = BatchIdentity(gtin="09506000134352", lot="LOT42", expiry="281231")
GOOD = {"01": BATCH.gtin, "17": BATCH.expiry, "10": BATCH.lot, "21": "ABC123XYZ789"}
SERIAL_FORMAT = serial_regex(12, "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ")


def _read(
    pairs: dict[str, str] | None = None,
    *,
    raw: str | None = None,
    symbology: str = "]d2",
    contrast: float | None = 0.8,
) -> CodeRead:
    if raw is None:
        element = gs1.build(list((pairs or GOOD).items()))
        raw, text = element.element_string, element.hri
    else:
        text = raw
    return CodeRead(text, raw, symbology, ((0, 0), (9, 0), (9, 9), (0, 9)), contrast)


def _check(*reads: CodeRead, **options: object):  # type: ignore[no-untyped-def]
    kwargs: dict[str, object] = {"require_symbology": "]d2", "min_contrast": 0.4}
    kwargs.update(options)
    return check_content(list(reads), BATCH, **kwargs)  # type: ignore[arg-type]


def test_good_unit_passes_with_its_serial() -> None:
    check = _check(_read(), serial_pattern=SERIAL_FORMAT, grade=3.0, min_grade=1.5)
    assert (check.ok, check.reason, check.serial) == (True, "ok", "ABC123XYZ789")
    assert check.text == "(01)09506000134352(17)281231(10)LOT42(21)ABC123XYZ789"


@pytest.mark.parametrize(
    ("reads", "options", "reason"),
    [
        ([], {}, "no_read"),
        ([_read(), _read()], {}, "multiple_codes"),
        ([_read(symbology="]d1")], {}, "not_gs1_datamatrix"),
        ([_read(symbology="]Q3")], {}, "not_gs1_datamatrix"),
        ([_read(raw="0109506000134353")], {}, "bad_gs1"),  # check digit
        ([_read(raw="hello world")], {}, "bad_gs1"),
        ([_read(raw="01095060001343521728123110LOT42")], {}, "missing_ai"),
        ([_read(GOOD | {"01": "09506000134369"})], {}, "wrong_gtin"),
        ([_read(GOOD | {"10": "LOT43"})], {}, "wrong_lot"),
        ([_read(GOOD | {"17": "281130"})], {}, "wrong_expiry"),
        ([_read(GOOD | {"21": "abc123xyz789"})], {"serial_pattern": SERIAL_FORMAT}, "bad_serial"),
        ([_read(GOOD | {"21": "ABC12"})], {"serial_pattern": SERIAL_FORMAT}, "bad_serial"),
        ([_read(contrast=0.2)], {}, "low_contrast"),
        ([_read()], {"grade": 1.0, "min_grade": 1.5}, "print_quality"),
        ([_read()], {"grade": None, "min_grade": 1.5}, "print_quality"),
    ],
)
def test_each_fault_has_its_reason(reads: list[CodeRead], options: dict, reason: str) -> None:
    check = _check(*reads, **options)
    assert not check.ok
    assert check.reason == reason
    assert reason in REASONS
    if reason not in ("no_read",):
        assert check.detail or reason == "low_contrast" or check.text


def test_symbology_check_can_be_switched_off() -> None:
    assert _check(_read(symbology="]Q3"), require_symbology=None).ok


def test_serial_format_is_not_checked_unless_configured() -> None:
    assert _check(_read(GOOD | {"21": "abc"})).ok


def test_required_ais_are_configurable() -> None:
    no_lot = _read({"01": BATCH.gtin, "17": BATCH.expiry, "21": "S1"})
    assert _check(no_lot).reason == "missing_ai"
    assert _check(no_lot, required_ais=("01", "17", "21")).ok
    # present but wrong is still wrong, even when not required
    assert _check(_read(GOOD | {"10": "X"}), required_ais=("01", "21")).reason == "wrong_lot"


def test_missing_ai_detail_names_the_ai() -> None:
    check = _check(_read(raw="010950600013435217281231" + "21SER"))
    assert check.reason == "missing_ai" and "(10)" in check.detail
    assert check.serial == "SER"


def test_serial_regex_escapes_the_alphabet() -> None:
    pattern = serial_regex(3, "A-Z]")
    assert re.fullmatch(pattern, "A-]") and not re.fullmatch(pattern, "ABC")


TEXT = st.one_of(
    st.text(max_size=80),
    st.text(alphabet="0123456789()\x1d<GS>]dQ3ABCxyz", max_size=80),
    st.builds(lambda tail: "0109506000134352" + tail, st.text(max_size=60)),
)


@settings(max_examples=300, deadline=None)
@given(
    raw=TEXT,
    symbology=st.sampled_from(["]d2", "]d1", "]Q3", "", "]C1"]),
    contrast=st.one_of(st.none(), st.floats(min_value=0, max_value=1)),
    grade=st.one_of(st.none(), st.floats(min_value=0, max_value=4)),
    count=st.integers(min_value=0, max_value=2),
)
def test_arbitrary_text_never_raises_and_always_has_a_reason(
    raw: str, symbology: str, contrast: float | None, grade: float | None, count: int
) -> None:
    reads = [CodeRead(raw, raw, symbology, (), contrast)] * count
    check = check_content(
        reads,
        BATCH,
        require_symbology="]d2",
        min_contrast=0.4,
        serial_pattern=SERIAL_FORMAT,
        grade=grade,
        min_grade=1.5,
    )
    assert check.reason in REASONS
    assert check.ok == (check.reason == "ok")
    if check.ok:
        assert check.serial is not None and re.fullmatch(SERIAL_FORMAT, check.serial)


def test_serial_pattern_from_config() -> None:
    assert serial_pattern_for(None, "generate", 12, "AB") is None
    assert serial_pattern_for("[0-9]+", "list", 12, "AB") == "[0-9]+"
    assert serial_pattern_for("generated", "generate", 3, "AB") == "[AB]{3}"
    assert serial_pattern_for("generated", "list", 3, "AB") is None
