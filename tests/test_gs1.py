"""Unit and property tests for edge_agent.gs1: the AI table, check digits, dates, parse, build."""

from __future__ import annotations

import functools
import string
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.errors import Gs1Error
from edge_agent.gs1 import (
    AI_TABLE,
    CSET82,
    GS,
    ElementString,
    Gs1AssociationError,
    Gs1CharsetError,
    Gs1CheckDigitError,
    Gs1DateError,
    Gs1LengthError,
    Gs1SyntaxError,
    Gs1ValueError,
    build,
    expiry_date,
    gtin_check_digit,
    is_valid_gtin,
    parse,
    parse_scanned,
    validate_gtin,
    validate_serial,
)
from edge_agent.gs1.ais import PREDEFINED_LENGTHS, lookup_prefix

GTIN = "09506000134352"  # GS1's own example GTIN
HRI = f"(01){GTIN}(17)201225(10)ABC123(21)XYZ"
RAW = f"01{GTIN}17201225" + "10ABC123" + GS + "21XYZ"


def error_of(text: str, **options: bool) -> Gs1Error:
    with pytest.raises(Gs1Error) as caught:
        parse(text, **options)
    return caught.value


# --- check digits and GTIN -----------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        GTIN,
        "4006381333931",  # GTIN-13 (EAN-13)
        "5901234123457",  # GTIN-13
        "036000291452",  # GTIN-12 (UPC-A)
        "96385074",  # GTIN-8
        "106141412345678908",  # SSCC, GS1 General Specifications example
    ],
)
def test_check_digit_of_published_keys(key: str) -> None:
    assert gtin_check_digit(key[:-1]) == int(key[-1])


def test_check_digit_needs_digits() -> None:
    with pytest.raises(Gs1Error, match="non-empty string of digits"):
        gtin_check_digit("12a4")
    with pytest.raises(Gs1Error):
        gtin_check_digit("")


def test_gtin_validity() -> None:
    assert is_valid_gtin(GTIN)
    assert is_valid_gtin("04006381333931")  # GTIN-13 left-padded by the caller
    assert not is_valid_gtin("09506000134353")
    assert not is_valid_gtin("4006381333931")  # 13 digits: the caller must pad
    assert not is_valid_gtin("0950600013435A")
    assert not is_valid_gtin("٠٩٥٠٦٠٠٠١٣٤٣٥٢")  # Arabic-Indic digits are not digits here


def test_validate_gtin_messages() -> None:
    validate_gtin(GTIN)
    with pytest.raises(Gs1CheckDigitError) as wrong:
        validate_gtin("09506000134353")
    assert str(wrong.value) == "AI (01) GTIN: check digit '3' at position 13 is wrong, expected '2'"
    assert (wrong.value.ai, wrong.value.position) == ("01", 13)
    with pytest.raises(Gs1LengthError, match="has 13 digits, expected 14"):
        validate_gtin("4006381333931")
    with pytest.raises(Gs1CharsetError, match="character 'O' at position 1 is not a digit"):
        validate_gtin("0O506000134352")


# --- character set 82 and serials ----------------------------------------------------------


def test_cset82_is_exactly_the_82_characters() -> None:
    expected = set(
        "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
    )
    assert set(CSET82) == expected
    assert len(CSET82) == 82
    for excluded in " #$@[\\]^`{|}~\x1d\x7fé€":
        assert excluded not in CSET82


def test_validate_serial() -> None:
    validate_serial("ABC-123/x_y.z")
    validate_serial("A" * 20)
    with pytest.raises(Gs1CharsetError) as bad:
        validate_serial("ABC#1")
    assert (
        str(bad.value)
        == "AI (21) SERIAL: character '#' at position 3 is not in GS1 character set 82"
    )
    with pytest.raises(Gs1LengthError, match="21 characters long, expected 1 to 20 characters"):
        validate_serial("A" * 21)
    with pytest.raises(Gs1LengthError, match="is empty"):
        validate_serial("")
    with pytest.raises(Gs1CharsetError, match="' '"):
        validate_serial("AB C")


# --- dates ---------------------------------------------------------------------------------


def test_expiry_date_day_zero_means_end_of_month() -> None:
    today = date(2026, 1, 1)
    assert expiry_date("251231", today) == date(2025, 12, 31)
    assert expiry_date("240200", today) == date(2024, 2, 29)
    assert expiry_date("250200", today) == date(2025, 2, 28)
    assert expiry_date("260400", today) == date(2026, 4, 30)


def test_expiry_date_century_slides_with_today() -> None:
    # GS1 General Specifications 7.12: the year lies in [current - 49, current + 50].
    assert expiry_date("760101", date(2026, 6, 1)) == date(2076, 1, 1)  # +50
    assert expiry_date("770101", date(2026, 6, 1)) == date(1977, 1, 1)  # -49
    assert expiry_date("250101", date(2075, 1, 1)) == date(2125, 1, 1)  # +50 across a century
    assert expiry_date("260101", date(2075, 1, 1)) == date(2026, 1, 1)  # -49
    assert expiry_date("990101", date(2001, 1, 1)) == date(1999, 1, 1)


def test_expiry_date_rejects_impossible_dates() -> None:
    with pytest.raises(Gs1DateError, match="month '13' at position 2 is not 01-12"):
        expiry_date("251301")
    with pytest.raises(Gs1DateError, match="day '31' at position 4 does not exist in month 04"):
        expiry_date("250431")
    with pytest.raises(Gs1DateError, match="does not exist in February 2100"):
        expiry_date("000229", date(2060, 1, 1))  # 2100 is no leap year
    with pytest.raises(Gs1DateError, match="is not YYMMDD"):
        expiry_date("25123")
    with pytest.raises(Gs1DateError):
        expiry_date("25１231")  # a full-width digit must not pass as a digit


# --- the AI table --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ai", "title", "charset", "lengths", "check_digit", "is_date", "predefined"),
    [
        ("00", "SSCC", "N", (18, 18), True, False, True),
        ("01", "GTIN", "N", (14, 14), True, False, True),
        ("02", "CONTENT", "N", (14, 14), True, False, True),
        ("10", "BATCH/LOT", "X", (1, 20), False, False, False),
        ("11", "PROD DATE", "N", (6, 6), False, True, True),
        ("17", "USE BY or EXPIRY", "N", (6, 6), False, True, True),
        ("21", "SERIAL", "X", (1, 20), False, False, False),
        ("22", "CPV", "X", (1, 20), False, False, False),
        ("240", "ADDITIONAL ID", "X", (1, 30), False, False, False),
        ("30", "VAR. COUNT", "N", (1, 8), False, False, False),
        ("37", "COUNT", "N", (1, 8), False, False, False),
        ("400", "ORDER NUMBER", "X", (1, 30), False, False, False),
        ("414", "LOC No.", "N", (13, 13), True, False, True),
        ("710", "NHRN PZN", "X", (1, 20), False, False, False),
        ("715", "NHRN NDC", "X", (1, 20), False, False, False),
        ("7003", "EXPIRY TIME", "N", (10, 10), False, True, False),
        ("8010", "CPID", "Y", (1, 30), False, False, False),
        ("8200", "PRODUCT URL", "X", (1, 70), False, False, False),
    ],
)
def test_ai_table_entries(
    ai: str,
    title: str,
    charset: str,
    lengths: tuple[int, int],
    check_digit: bool,
    is_date: bool,
    predefined: bool,
) -> None:
    spec = AI_TABLE[ai]
    assert (spec.ai, spec.title, spec.charset) == (ai, title, charset)
    assert (spec.min_length, spec.max_length) == lengths
    assert spec.fixed_length == (lengths[0] == lengths[1])
    assert (spec.check_digit, spec.date, spec.predefined_length) == (
        check_digit,
        is_date,
        predefined,
    )


def test_ai_table_ranges_and_mixed_formats() -> None:
    assert {f"{n}" for n in range(3100, 3106)} <= AI_TABLE.keys()
    assert "3106" not in AI_TABLE
    assert [AI_TABLE[ai].title for ai in ("7230", "7239")] == ["CERT # 1", "CERT # 10"]
    assert AI_TABLE["421"].charset == "N,X"
    assert AI_TABLE["7007"].length_text == "6 or 12"
    assert AI_TABLE["423"].length_text == "3, 6, 9, 12 or 15"


def test_predefined_length_prefixes_follow_the_gs1_table() -> None:
    assert set(PREDEFINED_LENGTHS) == {
        *("00", "01", "02", "03", "04"),
        *(str(n) for n in range(11, 21)),
        *(str(n) for n in range(31, 37)),
        "41",
    }
    for spec in AI_TABLE.values():
        assert spec.predefined_length == (spec.ai[:2] in PREDEFINED_LENGTHS)


def test_lookup_prefix_matches_whole_ais_only() -> None:
    assert lookup_prefix("0112")
    assert lookup_prefix("8200")
    assert lookup_prefix("235X")
    assert lookup_prefix("2367") is None  # 236 is not allocated
    assert lookup_prefix("3106") is None


# --- parse: accepted forms -----------------------------------------------------------------


EXPECTED_AIS = (("01", GTIN), ("17", "201225"), ("10", "ABC123"), ("21", "XYZ"))


@pytest.mark.parametrize(
    ("text", "symbology"),
    [
        (RAW, None),
        ("]d2" + RAW, "]d2"),
        ("]C1" + RAW, "]C1"),
        ("]Q3" + RAW, "]Q3"),
        ("]e0" + RAW, "]e0"),
        ("]J1" + RAW, "]J1"),
        (GS + RAW, None),  # FNC1 in first position rendered as GS
        ("]d2" + GS + RAW, "]d2"),
        (HRI, None),
    ],
)
def test_parse_accepted_forms(text: str, symbology: str | None) -> None:
    parsed = parse(text)
    assert parsed.ais == EXPECTED_AIS
    assert parsed.symbology == symbology


def test_element_string_hri_and_json() -> None:
    parsed = parse("]d2" + RAW)
    assert parsed.element_string == RAW
    assert parsed.hri == HRI
    assert str(parsed) == HRI
    assert parsed.get("10") == "ABC123"
    assert parsed.get("22") is None
    assert parsed.to_json() == {
        "ais": [
            {"ai": "01", "title": "GTIN", "value": GTIN},
            {"ai": "17", "title": "USE BY or EXPIRY", "value": "201225"},
            {"ai": "10", "title": "BATCH/LOT", "value": "ABC123"},
            {"ai": "21", "title": "SERIAL", "value": "XYZ"},
        ],
        "element_string": f"01{GTIN}1720122510ABC123<GS>21XYZ",
        "hri": HRI,
        "symbology": "]d2",
    }


def test_gs_separates_variable_length_values_except_the_last() -> None:
    built = build([("10", "L1"), ("01", GTIN), ("21", "S1"), ("17", "251231"), ("710", "P")])
    assert built.element_string == f"10L1{GS}01{GTIN}21S1{GS}17251231710P"


def test_tolerated_separators() -> None:
    # A GS after a predefined-length value is superfluous, a final GS harmless (as in GS1's engine).
    assert parse(f"01{GTIN}{GS}21XYZ{GS}").ais == (("01", GTIN), ("21", "XYZ"))


def test_bracketed_value_may_escape_a_bracket() -> None:
    assert parse(f"(01){GTIN}(10)A\\(B)").get("10") == "A(B)"


def test_gs_text_is_data_when_real_separators_are_present() -> None:
    assert parse(f"01{GTIN}10A<GS>B{GS}21XYZ", gs_text=True).get("10") == "A<GS>B"


def test_gs_text_stands_for_gs_only_in_typed_input() -> None:
    typed = RAW.replace(GS, "<GS>")
    assert parse(typed, gs_text=True).ais == EXPECTED_AIS
    # Without gs_text (and always in symbol data) "<GS>" is four characters of the lot.
    lot = "ABC123<GS>21XYZ"
    assert parse(typed, check_requisites=False).get("10") == lot
    assert parse_scanned(typed).ais == (("01", GTIN), ("17", "201225"), ("10", lot))


def test_scanned_data_takes_only_the_byte_0x1d_as_separator() -> None:
    # A lot "A<GS>21FAKE" must not turn into lot "A" and serial "FAKE".
    data = f"01{GTIN}21S1{GS}10A<GS>21FAKE"
    scanned = parse_scanned("]d2" + data)
    assert scanned.get("10") == "A<GS>21FAKE" and scanned.get("21") == "S1"
    assert scanned.symbology == "]d2"
    assert parse_scanned(f"01{GTIN}10A(B{GS}21S(").ais == (
        ("01", GTIN),
        ("10", "A(B"),
        ("21", "S("),
    )
    # Bracketed text in a symbol is not GS1 element-string data.
    with pytest.raises(Gs1SyntaxError, match="unknown AI at position 3"):
        parse_scanned("]d2" + HRI)


def test_bracketed_form_escapes_brackets_and_parses_back() -> None:
    built = build([("01", GTIN), ("10", "A(B)("), ("21", "(<GS>")])
    assert built.bracketed == f"(01){GTIN}(10)A\\(B)\\((21)\\(<GS>"
    assert parse(built.bracketed).ais == built.ais
    assert built.hri == f"(01){GTIN}(10)A(B)((21)(<GS>"  # for people: ambiguous by nature


def test_identical_repeated_ai_is_fine() -> None:
    assert parse(f"01{GTIN}21X{GS}01{GTIN}").ais == (("01", GTIN), ("21", "X"), ("01", GTIN))


def test_national_healthcare_reimbursement_number() -> None:
    assert parse(f"(01){GTIN}(710)PZN-1234567(21)S").get("710") == "PZN-1234567"


def test_expiry_time() -> None:
    assert parse(f"(01){GTIN}(7003)2512312359").get("7003") == "2512312359"
    assert "hour '24'" in str(error_of(f"(01){GTIN}(7003)2512312400"))


# --- parse: precise errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "message", "ai", "position"),
    [
        (
            f"01{GTIN}21ABCDEFGH#",
            Gs1CharsetError,
            "AI (21) SERIAL: character '#' at position 26 is not in GS1 character set 82",
            "21",
            26,
        ),
        (
            f"]d201{GTIN[:-1]}3",
            Gs1CheckDigitError,
            "AI (01) GTIN: check digit '3' at position 18 is wrong, expected '2'",
            "01",
            18,
        ),
        (
            f"(01){GTIN}(10){'L' * 21}",
            Gs1LengthError,
            f"AI (10) BATCH/LOT: value '{'L' * 21}' at position 22 is 21 characters long, "
            "expected 1 to 20 characters; the excess starts at position 42",
            "10",
            42,
        ),
        (
            "01123456789012",
            Gs1LengthError,
            "AI (01) GTIN: value '123456789012' at position 2 is 12 characters long, "
            "expected 14 characters",
            "01",
            2,
        ),
        (
            f"01{GTIN}17251301",
            Gs1DateError,
            "AI (17) USE BY or EXPIRY: month '13' at position 20 is not 01-12",
            "17",
            20,
        ),
        (
            f"01{GTIN}17240230",
            Gs1DateError,
            "AI (17) USE BY or EXPIRY: day '30' at position 22 does not exist in month 02 "
            "(expected 01-29 or 00)",
            "17",
            22,
        ),
        (
            f"01{GTIN}21A{GS}21B",
            Gs1AssociationError,
            "AI (21) SERIAL at position 20 repeats with value 'B', but the same AI at position 16 "
            "has 'A'",
            "21",
            20,
        ),
        (
            f"01{GTIN}10{GS}21B",
            Gs1LengthError,
            "AI (10) BATCH/LOT: value at position 18 is empty, expected 1 to 20 characters",
            "10",
            18,
        ),
        (
            f"(01){GTIN}(10)(21)B",
            Gs1LengthError,
            "AI (10) BATCH/LOT: value at position 22 is empty, expected 1 to 20 characters",
            "10",
            22,
        ),
        (
            f"01{GTIN}10A{GS}{GS}21B",
            Gs1SyntaxError,
            "unexpected GS at position 20: an AI must start here",
            None,
            20,
        ),
        (
            f"{GS}{GS}01{GTIN}",
            Gs1SyntaxError,
            "unexpected GS at position 1: an AI must start here",
            None,
            1,
        ),
        (
            f"(01){GTIN}{GS}(21)B",
            Gs1SyntaxError,
            "GS at position 18 has no place in the bracketed form",
            None,
            18,
        ),
        (
            f"01{GTIN}891234",
            Gs1SyntaxError,
            "unknown AI at position 16: no GS1 AI starts '8912'",
            None,
            16,
        ),
        (
            "(89)1234",
            Gs1SyntaxError,
            "'(89)' at position 0 is not a GS1 AI",
            None,
            0,
        ),
        (
            "]d1TESTING",
            Gs1SyntaxError,
            "symbology identifier ']d1' at position 0 does not announce GS1 data "
            "(expected one of ]C1, ]J1, ]Q3, ]d2, ]e0)",
            None,
            0,
        ),
        ("]d2", Gs1SyntaxError, "no AI data at position 3", None, 3),
        (
            "21XYZ",
            Gs1AssociationError,
            "AI (21) SERIAL at position 0 needs AI (01), (03) or (8006) in the same element string",
            "21",
            0,
        ),
        (
            f"01{GTIN}02{GTIN}37{1}",
            Gs1AssociationError,
            "AI (01) GTIN at position 0 must not be combined with AI (37) COUNT at position 32",
            "01",
            0,
        ),
        (
            f"(01){GTIN}(4321)2",
            Gs1ValueError,
            "AI (4321) DANGEROUS GOODS: '2' at position 24 is not 0 or 1",
            "4321",
            24,
        ),
    ],
)
def test_parse_errors_are_precise(
    text: str, kind: type[Gs1Error], message: str, ai: str | None, position: int
) -> None:
    error = error_of(text)
    assert type(error) is kind
    assert str(error) == message
    assert (error.ai, error.position) == (ai, position)


def test_positions_count_the_gs_text_as_written() -> None:
    error = error_of(f"01{GTIN}10A<GS>21AB#", gs_text=True)  # 16 + len("10A<GS>21AB")
    assert error.position == 27
    assert "character '#' at position 27" in str(error)


def test_requisites_can_be_left_to_the_caller() -> None:
    assert parse("(17)251231(10)ABC", check_requisites=False).ais == (
        ("17", "251231"),
        ("10", "ABC"),
    )
    assert parse("(21)XYZ", check_requisites=False).get("21") == "XYZ"
    with pytest.raises(Gs1AssociationError):  # exclusions are never optional
        parse(f"01{GTIN}02{GTIN}", check_requisites=False)


# --- build ---------------------------------------------------------------------------------


def test_build_from_pairs_and_from_a_mapping() -> None:
    pairs = [("01", GTIN), ("17", "201225"), ("10", "ABC123"), ("21", "XYZ")]
    from_pairs = build(pairs)
    assert from_pairs == build(dict(pairs))
    assert from_pairs == ElementString(EXPECTED_AIS)
    assert from_pairs.element_string == RAW
    assert from_pairs.hri == HRI
    assert from_pairs.symbology is None


@pytest.mark.parametrize(
    ("pairs", "kind", "message"),
    [
        (
            [("01", GTIN), ("21", "X Y")],
            Gs1CharsetError,
            "AI (21) SERIAL: character ' ' at position 19 is not in GS1 character set 82",
        ),
        (
            [("01", GTIN[:-1])],
            Gs1LengthError,
            "AI (01) GTIN: value '0950600013435' at position 2 is 13 characters long, "
            "expected 14 characters",
        ),
        (
            [("10", "L"), ("01", GTIN[:-1] + "9")],
            Gs1CheckDigitError,
            "AI (01) GTIN: check digit '9' at position 19 is wrong, expected '2'",
        ),
        ([("01", GTIN), ("99999", "X")], Gs1SyntaxError, "unknown AI '99999' at position 16"),
        (
            [("01", GTIN), ("10", "")],
            Gs1LengthError,
            "AI (10) BATCH/LOT: value at position 18 is empty",
        ),
        ([], Gs1SyntaxError, "no AIs to build an element string from"),
        (
            [("21", "S")],
            Gs1AssociationError,
            "AI (21) SERIAL at position 0 needs AI (01), (03) or (8006) in the same element string",
        ),
    ],
)
def test_build_errors(pairs: list[tuple[str, str]], kind: type[Gs1Error], message: str) -> None:
    with pytest.raises(kind) as caught:
        build(pairs, check_requisites=True)
    assert str(caught.value).startswith(message)


def test_build_validates_single_values_without_requisites_by_default() -> None:
    # How configuration checks a lot or an expiry date on its own.
    assert build([("10", "LOT-7")]).element_string == "10LOT-7"
    assert build([("17", "251200")]).hri == "(17)251200"
    with pytest.raises(Gs1DateError):
        build([("17", "251300")])
    with pytest.raises(Gs1AssociationError):  # repeats and exclusions are never optional
        build([("01", GTIN), ("02", GTIN)])


def test_gs1_error_is_reexported() -> None:
    import edge_agent.gs1 as gs1

    assert gs1.Gs1Error is Gs1Error


def test_build_rejects_a_value_that_is_not_text() -> None:
    with pytest.raises(Gs1Error, match="is not a string"):
        build([("01", 9506000134352)])  # type: ignore[list-item]


# --- properties ----------------------------------------------------------------------------


gtins = st.text(string.digits, min_size=13, max_size=13).map(lambda d: d + str(gtin_check_digit(d)))
expiries = st.dates(date(2000, 1, 1), date(2049, 12, 31)).map(lambda d: d.strftime("%y%m%d")) | (
    st.dates(date(2000, 1, 1), date(2049, 12, 31)).map(lambda d: d.strftime("%y%m00"))
)
cset82_text = st.text(sorted(CSET82), min_size=1, max_size=20)


@given(
    gtin=gtins,
    expiry=expiries,
    lot=cset82_text,
    serial=cset82_text,
    order=st.permutations(["01", "17", "10", "21"]),
    symbology=st.sampled_from(["", "]d2", "]C1", "]Q3", GS]),
)
def test_build_then_parse_round_trips(
    gtin: str, expiry: str, lot: str, serial: str, order: list[str], symbology: str
) -> None:
    values = {"01": gtin, "17": expiry, "10": lot, "21": serial}
    built = build([(ai, values[ai]) for ai in order])
    parsed = parse(symbology + built.element_string)
    assert parsed.ais == built.ais
    assert parsed.element_string == built.element_string
    assert parse_scanned(symbology + built.element_string).ais == built.ais
    assert parse(built.bracketed).ais == built.ais
    if "(" not in lot + serial:
        assert parse(built.hri).ais == built.ais
    assert expiry_date(parsed.get("17") or "") >= date(2000, 1, 1)


_noisy_alphabet = st.sampled_from(
    [*string.digits, GS, "(", ")", "\\", "<GS>", "]d2", "]d1", "A", "#", "%", "=", "/", "é", " "]
)


@given(st.one_of(st.text(), st.lists(_noisy_alphabet, max_size=40).map("".join)))
def test_parse_raises_nothing_but_gs1_errors(text: str) -> None:
    for requisites in (True, False):
        for reader in (parse, parse_scanned, functools.partial(parse, gs_text=True)):
            try:
                parsed = reader(text, check_requisites=requisites)
            except Gs1Error:
                continue
            assert parse_scanned(parsed.element_string, check_requisites=False).ais == parsed.ais
            assert parse(parsed.bracketed, check_requisites=False).ais == parsed.ais


@given(st.lists(st.tuples(st.sampled_from(sorted(AI_TABLE)), st.text(max_size=30)), max_size=4))
def test_build_raises_nothing_but_gs1_errors(pairs: list[tuple[str, str]]) -> None:
    try:
        built = build(pairs, check_requisites=False)
    except Gs1Error:
        return
    assert parse_scanned(built.element_string, check_requisites=False).ais == built.ais
    assert parse(built.bracketed, check_requisites=False).ais == built.ais


# Valid and invalid values of the same AIs, a separator, a pair that excludes (01), a lone 8030
_PARTS = ["0109506000134352", "0109506000134353", "17271231", "17271232", "10LOT1", GS, "21ABC"]
_PARTS += ["3103000123", "02095060001343", "8030"]


def _outcome(text: str, requisites: bool) -> tuple[tuple[str, str], ...] | str:
    try:
        return parse_scanned(text, check_requisites=requisites).ais
    except Gs1Error as exc:
        return f"{type(exc).__name__}: {exc}"


@given(
    st.lists(_noisy_alphabet, max_size=40).map("".join),
    st.lists(st.sampled_from(_PARTS), max_size=6),
    st.booleans(),
)
def test_remembered_answers_change_no_outcome(
    noise: str, parts: list[str], requisites: bool
) -> None:
    """What parse_scanned remembers about values and AI sets (valid before) changes neither
    a result nor an error's wording and position: the same text with everything forgotten."""
    from edge_agent.gs1 import element_string

    texts = ["".join(parts), "".join(parts) + noise, noise + "".join(parts)]
    warm = [_outcome(text, requisites) for text in texts for _ in range(2)]
    element_string._is_valid.cache_clear()
    element_string._ais_combine.cache_clear()
    cold = []
    for text in texts:
        cold.append(_outcome(text, requisites))
        element_string._is_valid.cache_clear()
        element_string._ais_combine.cache_clear()
        cold.append(_outcome(text, requisites))
    assert warm == cold


def test_a_value_valid_before_still_gets_its_position_when_the_code_is_bad() -> None:
    parse_scanned("010950600013435217271231")  # remembered: both values valid
    with pytest.raises(Gs1Error) as raised:
        parse_scanned("10LOT" + GS + "17271231" + "0109506000134353")  # GTIN check digit wrong
    assert raised.value.position == 6 + 8 + 2 + 13
