"""Content rules for AI components, by the names the GS1 Barcode Syntax Dictionary gives them.

Each linter looks at one component whose character set has already been checked, and returns a
``Problem`` (offset within the component) or None. ``LINTERS`` maps the dictionary's name to it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final

from edge_agent.gs1 import codes
from edge_agent.gs1.check import (
    DIGITS,
    Gs1CharsetError,
    Gs1CheckDigitError,
    Gs1LengthError,
    Problem,
    check_digit_problem,
    check_pair_problem,
    date_problem,
    first_outside,
    quantity,
    time_problem,
)

Linter = Callable[[str], Problem | None]

_GCP_MIN_LENGTH: Final = 4  # the shortest GS1 Company Prefix allocated today


def _in_list(allowed: frozenset[str], what: str) -> Linter:
    def lint(data: str) -> Problem | None:
        return None if data in allowed else Problem(0, f"'{data}' {{at}} is not {what}")

    return lint


def _company_prefix(data: str) -> Problem | None:
    if len(data) < _GCP_MIN_LENGTH:
        return Problem(
            0,
            f"'{data}' {{at}} is too short to start with a GS1 Company Prefix "
            f"(at least {_GCP_MIN_LENGTH} digits)",
            Gs1LengthError,
        )
    bad = first_outside(data[:_GCP_MIN_LENGTH], DIGITS)
    if bad is None:
        return None
    return Problem(
        bad,
        f"character {data[bad]!r} {{at}} cannot be part of a GS1 Company Prefix "
        f"(the first {_GCP_MIN_LENGTH} characters must be digits)",
        Gs1CharsetError,
    )


def _company_prefix_after_first(data: str) -> Problem | None:
    """Keys such as GTIN and ITIP start with an indicator digit, then the company prefix."""
    problem = _company_prefix(data[1:])
    if problem is None:
        return None
    return Problem(problem.offset + 1, problem.text, problem.kind)


def _percent_encoding(data: str) -> Problem | None:
    hex_digits = frozenset("0123456789ABCDEFabcdef")
    for i, ch in enumerate(data):
        if ch == "%" and not (len(data) >= i + 3 and set(data[i + 1 : i + 3]) <= hex_digits):
            return Problem(i, "'%' {at} does not start a '%hh' hex escape")
    return None


def _at_most(highest: int, what: str) -> Linter:
    def lint(data: str) -> Problem | None:
        if int(data) <= highest:
            return None
        return Problem(0, f"{what} '{data}' {{at}} is above {highest:0{len(data)}d}")

    return lint


def _only_hyphens(data: str) -> Problem | None:
    bad = first_outside(data, frozenset("-"))
    return None if bad is None else Problem(bad, f"character {data[bad]!r} {{at}} is not '-'")


def _not_all_zeros(data: str) -> Problem | None:
    return Problem(0, f"'{data}' {{at}} must not be zero") if set(data) == {"0"} else None


def _no_zero_prefix(data: str) -> Problem | None:
    return Problem(0, f"'{data}' {{at}} must not start with 0") if data[:1] == "0" else None


def _has_non_digit(data: str) -> Problem | None:
    if first_outside(data, DIGITS) is not None:
        return None
    return Problem(0, f"'{data}' {{at}} must contain a character other than a digit")


def _piece_of_total(data: str) -> Problem | None:
    piece, total = int(data[:2]), int(data[2:])
    if piece == 0:
        return Problem(0, "piece number '00' {at} must not be zero")
    if total == 0:
        return Problem(2, "total number of pieces '00' {at} must not be zero")
    if piece > total:
        return Problem(0, f"piece number {piece} {{at}} exceeds the total of {total}")
    return None


def _position_in_sequence(data: str) -> Problem | None:
    position, slash, end = data.partition("/")
    if not (slash and position and end and set(position + end) <= DIGITS):
        return Problem(0, f"'{data}' {{at}} is not '<position>/<end>' made of digits")
    if position[0] == "0":
        return Problem(0, f"position '{position}' {{at}} must not start with 0")
    if end[0] == "0":
        return Problem(len(position) + 1, f"end '{end}' {{at}} must not start with 0")
    if int(position) > int(end):
        return Problem(0, f"position {position} {{at}} exceeds the end {end}")
    return None


_IBAN_CHARS: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _iban(data: str) -> Problem | None:
    if len(data) < 4:
        return Problem(0, f"IBAN '{data}' {{at}} is too short", Gs1LengthError)
    if data[:2] not in codes.ISO3166_ALPHA2:
        return Problem(0, f"IBAN country code '{data[:2]}' {{at}} is not an ISO 3166 alpha-2 code")
    if len(data) <= 10:  # no real IBAN is this short, whatever the country
        return Problem(0, f"IBAN '{data}' {{at}} is too short", Gs1LengthError)
    bad = first_outside(data, frozenset(_IBAN_CHARS))
    if bad is not None:
        return Problem(
            bad, f"character {data[bad]!r} {{at}} is not allowed in an IBAN", Gs1CharsetError
        )
    rearranged = data[4:] + data[:4]
    if int("".join(str(_IBAN_CHARS.index(ch)) for ch in rearranged)) % 97 == 1:
        return None
    return Problem(2, f"IBAN check digits '{data[2:4]}' {{at}} are wrong", Gs1CheckDigitError)


def _date(*, day_zero_allowed: bool, century_known: bool = False) -> Linter:
    def lint(data: str) -> Problem | None:
        return date_problem(data, day_zero_allowed=day_zero_allowed, century_known=century_known)

    return lint


def _time(fields: str) -> Linter:
    def lint(data: str) -> Problem | None:
        return time_problem(data, fields)

    return lint


# --- coupons (AI 8110 and 8112): a chain of fields, some announced by a length digit ----------


class _CouponReader:
    """Walks the digits of a coupon field by field; each step returns a Problem or None."""

    def __init__(self, data: str) -> None:
        self.data = data
        self.pos = 0
        self.dates: dict[str, str] = {}

    def at_tag(self, tag: str) -> bool:
        """True (and the tag consumed) when the next optional field is announced by ``tag``."""
        if self.data[self.pos : self.pos + 1] != tag:
            return False
        self.pos += 1
        return True

    def digit(self, name: str, allowed: str) -> Problem | None:
        if self.pos >= len(self.data):
            return Problem(self.pos, f"coupon {name} is missing {{at}}", Gs1LengthError)
        value = self.data[self.pos]
        if value not in allowed:
            options = ", ".join(allowed)
            return Problem(self.pos, f"coupon {name} '{value}' {{at}} is not one of {options}")
        self.pos += 1
        return None

    def fixed(self, name: str, length: int) -> Problem | None:
        if len(self.data) - self.pos < length:
            return Problem(
                self.pos,
                f"coupon {name} {{at}} is shorter than its {quantity(length, 'digit')}",
                Gs1LengthError,
            )
        self.pos += length
        return None

    def counted(
        self, name: str, allowed: str, extra: int, *, nine_means_none: bool = False
    ) -> Problem | None:
        """A length digit out of ``allowed``, then that many digits plus ``extra``."""
        problem = self.digit(f"{name} length", allowed)
        if problem is not None:
            return problem
        length_digit = self.data[self.pos - 1]
        if nine_means_none and length_digit == "9":
            return None
        return self.fixed(name, int(length_digit) + extra)

    def date(self, name: str) -> Problem | None:
        start = self.pos
        problem = self.fixed(name, 6)
        if problem is not None:
            return problem
        self.dates[name] = self.data[start : self.pos]
        found = date_problem(self.dates[name], day_zero_allowed=False)
        if found is None:
            return None
        return Problem(start + found.offset, f"coupon {name}: {found.text}", found.kind)

    def end(self) -> Problem | None:
        if self.pos == len(self.data):
            return None
        return Problem(self.pos, f"coupon has unexpected data '{self.data[self.pos :]}' {{at}}")


def _first_problem(*steps: Callable[[], Problem | None]) -> Problem | None:
    for step in steps:
        problem = step()
        if problem is not None:
            return problem
    return None


def _all_digits(data: str) -> Problem | None:
    bad = first_outside(data, DIGITS)
    if bad is None:
        return None
    return Problem(bad, f"character {data[bad]!r} {{at}} is not a digit", Gs1CharsetError)


def _coupon_purchase(reader: _CouponReader, which: str) -> Problem | None:
    return _first_problem(
        lambda: reader.counted(f"{which} purchase requirement", "12345", 0),
        lambda: reader.digit(f"{which} purchase requirement code", "012349"),
        lambda: reader.fixed(f"{which} purchase family code", 3),
    )


def _coupon_company_prefix(reader: _CouponReader, which: str) -> Problem | None:
    return reader.counted(f"{which} purchase company prefix", "01234569", 6, nine_means_none=True)


def _coupon_start_date(reader: _CouponReader) -> Problem | None:
    problem = reader.date("start date")
    if problem is not None:
        return problem
    start, expiry = reader.dates["start date"], reader.dates.get("expiration date")
    if expiry is None or start <= expiry:
        return None
    return Problem(
        reader.pos - 6, f"coupon start date {start} {{at}} is after its expiration date {expiry}"
    )


def _coupon_options(reader: _CouponReader) -> Problem | None:
    """The optional fields, each announced by a tag digit, in ascending tag order."""
    options: tuple[tuple[str, tuple[Callable[[], Problem | None], ...]], ...] = (
        ("1", (
            lambda: reader.digit("additional purchase rules code", "0123"),
            lambda: _coupon_purchase(reader, "second"),
            lambda: _coupon_company_prefix(reader, "second"),
        )),
        ("2", (
            lambda: _coupon_purchase(reader, "third"),
            lambda: _coupon_company_prefix(reader, "third"),
        )),
        ("3", (lambda: reader.date("expiration date"),)),
        ("4", (lambda: _coupon_start_date(reader),)),
        ("5", (lambda: reader.counted("serial number", "0123456789", 6),)),
        ("6", (lambda: reader.counted("retailer company prefix or GLN", "1234567", 6),)),
        ("9", (
            lambda: reader.digit("save value code", "01256"),
            lambda: reader.digit("save value applies to item", "012"),
            lambda: reader.digit("store coupon flag", "0123456789"),
            lambda: reader.digit("don't multiply flag", "01"),
        )),
    )  # fmt: skip
    for tag, steps in options:
        problem = _first_problem(*steps) if reader.at_tag(tag) else None
        if problem is not None:
            return problem
    return reader.end()


def _north_american_coupon(data: str) -> Problem | None:
    """AI (8110): the North American Coupon Code layout."""
    reader = _CouponReader(data)
    return _first_problem(
        lambda: _all_digits(data),
        lambda: reader.counted("primary company prefix", "0123456", 6),
        lambda: reader.fixed("offer code", 6),
        lambda: reader.counted("save value", "12345", 0),
        lambda: _coupon_purchase(reader, "primary"),
        lambda: _coupon_options(reader),
    )


def _positive_offer_coupon(data: str) -> Problem | None:
    """AI (8112): the positive offer file coupon layout."""
    reader = _CouponReader(data)
    return _first_problem(
        lambda: _all_digits(data),
        lambda: reader.digit("format code", "01"),
        lambda: reader.counted("funder company prefix", "0123456", 6),
        lambda: reader.fixed("offer code", 6),
        lambda: reader.counted("serial number", "0123456789", 6),
        reader.end,
    )


LINTERS: Final[Mapping[str, Linter]] = MappingProxyType(
    {
        "csum": check_digit_problem,
        "csumalpha": check_pair_problem,
        "gcppos1": _company_prefix,
        "gcppos2": _company_prefix_after_first,
        "yymmdd": _date(day_zero_allowed=False),
        "yymmd0": _date(day_zero_allowed=True),
        "yyyymmdd": _date(day_zero_allowed=False, century_known=True),
        "hh": _time("h"),
        "mi": _time("m"),
        "ss": _time("s"),
        "hhmi": _time("hm"),
        "iso3166": _in_list(codes.ISO3166_NUMERIC, "an ISO 3166 numeric country code"),
        "iso3166999": _in_list(
            codes.ISO3166_NUMERIC | {"999"}, "an ISO 3166 numeric country code or 999"
        ),
        "iso3166alpha2": _in_list(codes.ISO3166_ALPHA2, "an ISO 3166 alpha-2 country code"),
        "iso4217": _in_list(codes.ISO4217_NUMERIC, "an ISO 4217 numeric currency code"),
        "iso5218": _in_list(frozenset("0129"), "an ISO/IEC 5218 sex code (0, 1, 2 or 9)"),
        "mediatype": _in_list(codes.AIDC_MEDIA_TYPES, "an AIDC media type (01-10, 80-99)"),
        "packagetype": _in_list(codes.PACKAGE_TYPES, "a GS1 package type code"),
        "importeridx": _in_list(
            frozenset("-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"),
            "an importer index (0-9, A-Z, a-z, '-' or '_')",
        ),
        "yesno": _in_list(frozenset("01"), "0 or 1"),
        "winding": _in_list(frozenset("019"), "a winding direction (0, 1 or 9)"),
        "zero": _in_list(frozenset("0"), "0"),
        "nonzero": _not_all_zeros,
        "nozeroprefix": _no_zero_prefix,
        "hasnondigit": _has_non_digit,
        "hyphen": _only_hyphens,
        "pcenc": _percent_encoding,
        "latitude": _at_most(1800000000, "latitude"),
        "longitude": _at_most(3600000000, "longitude"),
        "pieceoftotal": _piece_of_total,
        "posinseqslash": _position_in_sequence,
        "iban": _iban,
        "couponcode": _north_american_coupon,
        "couponposoffer": _positive_offer_coupon,
    }
)
