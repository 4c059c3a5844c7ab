"""The elementary GS1 checks: character sets, mod-10 check digits, dates and times.

Checks that look at one piece of data report a ``Problem`` (offset + text) instead of raising:
only the caller knows which AI the piece belongs to and where it sits in the input, and the
error message must say both.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date
from typing import Final

from edge_agent.errors import Gs1Error

# --- error kinds ---------------------------------------------------------------------------


class Gs1SyntaxError(Gs1Error):
    """The input is not shaped like an element string: unknown AI, misplaced GS, bad brackets."""


class Gs1LengthError(Gs1Error):
    """A value is empty, too short or too long for its AI."""


class Gs1CharsetError(Gs1Error):
    """A value holds a character its AI does not allow."""


class Gs1CheckDigitError(Gs1Error):
    """A check digit or check-character pair is wrong."""


class Gs1DateError(Gs1Error):
    """A date or time field does not name a real date or time."""


class Gs1ValueError(Gs1Error):
    """A value breaks an AI-specific rule (code list, coupon layout, zero where forbidden...)."""


class Gs1AssociationError(Gs1Error):
    """The AIs are fine one by one but not together (repeats, exclusions, missing partners)."""


@dataclass(frozen=True)
class Problem:
    """What is wrong with one piece of data. ``text`` holds ``{at}`` where the position goes."""

    offset: int
    text: str
    kind: type[Gs1Error] = Gs1ValueError

    def describe(self, position: int) -> str:
        # str.replace, not str.format: the text may quote a '{' found in the data.
        return self.text.replace("{at}", f"at position {position}")


def quantity(number: int, noun: str) -> str:
    """ "1 character", "14 characters" """
    return f"{number} {noun}" + ("" if number == 1 else "s")


# --- character sets ------------------------------------------------------------------------

DIGITS: Final = frozenset("0123456789")

CSET82: Final = frozenset(
    "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
)
"""GS1 AI encodable character set 82: what "X" fields may hold."""

CSET39: Final = frozenset("#-/0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")
"""GS1 AI encodable character set 39: what "Y" fields may hold."""

CSET64: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
"""File- and URI-safe base64: what "Z" fields may hold, plus up to two '=' of padding."""

CHARSET_NAMES: Final = {
    "N": "a digit",
    "X": "in GS1 character set 82",
    "Y": "in GS1 character set 39",
    "Z": "in GS1 character set 64",
}
_CHARSETS: Final = {"N": DIGITS, "X": CSET82, "Y": CSET39, "Z": CSET64}


def first_outside(data: str, allowed: frozenset[str]) -> int | None:
    """Offset of the first character of ``data`` not in ``allowed``, or None."""
    return next((i for i, ch in enumerate(data) if ch not in allowed), None)


def charset_problem(data: str, charset: str) -> Problem | None:
    """Check ``data`` against an AI character set: "N", "X", "Y" or "Z"."""
    if charset == "Z":
        return _base64_problem(data)
    bad = first_outside(data, _CHARSETS[charset])
    if bad is None:
        return None
    return Problem(
        bad, f"character {data[bad]!r} {{at}} is not {CHARSET_NAMES[charset]}", Gs1CharsetError
    )


def _base64_problem(data: str) -> Problem | None:
    body = data.rstrip("=")
    pads = len(data) - len(body)
    if pads > 2 or (pads and len(data) % 3):
        return Problem(len(body), "base64 padding '=' {at} is malformed", Gs1CharsetError)
    bad = first_outside(body, CSET64)
    if bad is None:
        return None
    return Problem(
        bad, f"character {body[bad]!r} {{at}} is not in GS1 character set 64", Gs1CharsetError
    )


# --- mod-10 check digits (GTIN, SSCC, GLN, GSRN, ...) ------------------------------------------


def mod10_check_digit(digits: str) -> int:
    """The GS1 mod-10 check digit for ``digits`` (the data without its check digit).

    Weights alternate 3, 1, 3, ... starting from the rightmost data digit, which is what makes
    GTIN-8/12/13/14, SSCC and GLN share one algorithm whatever their length.
    """
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits)))
    return (10 - total % 10) % 10


def check_digit_problem(data: str) -> Problem | None:
    """The last digit of ``data`` (digits only) must be the mod-10 check digit of the rest."""
    expected = mod10_check_digit(data[:-1])
    if data[-1] == str(expected):
        return None
    return Problem(
        len(data) - 1,
        f"check digit '{data[-1]}' {{at}} is wrong, expected '{expected}'",
        Gs1CheckDigitError,
    )


def gtin_check_digit(digits_without_check: str) -> int:
    """The check digit to append to ``digits_without_check`` (e.g. 13 digits for a GTIN-14)."""
    bad = first_outside(digits_without_check, DIGITS)
    if not digits_without_check or bad is not None:
        raise Gs1Error(
            f"check digit needs a non-empty string of digits, got {digits_without_check!r}",
            position=bad,
        )
    return mod10_check_digit(digits_without_check)


def gtin_problem(gtin: str) -> Problem | None:
    """Why ``gtin`` is not a valid GTIN-14, or None."""
    bad = first_outside(gtin, DIGITS)
    if bad is not None:
        return Problem(bad, f"character {gtin[bad]!r} {{at}} is not a digit", Gs1CharsetError)
    if len(gtin) != 14:
        return Problem(
            0,
            f"'{gtin}' {{at}} has {len(gtin)} digits, expected 14 "
            "(left-pad GTIN-8/12/13 with zeros)",
            Gs1LengthError,
        )
    return check_digit_problem(gtin)


def is_valid_gtin(gtin: str) -> bool:
    """True when ``gtin`` is 14 digits with a correct check digit."""
    return gtin_problem(gtin) is None


def validate_gtin(gtin: str) -> None:
    """Raise Gs1Error (a subclass) unless ``gtin`` is a valid GTIN-14."""
    problem = gtin_problem(gtin)
    if problem is not None:
        raise problem.kind(
            f"AI (01) GTIN: {problem.describe(problem.offset)}", ai="01", position=problem.offset
        )


# --- alphanumeric check-character pair (GMN, MUDI) -------------------------------------------

_PAIR_WEIGHTS: Final = (
    2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97,
    101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167, 173, 179, 181, 191, 193,
    197, 199, 211, 223, 227, 229, 233, 239, 241, 251, 257, 263, 269, 271, 277, 281, 283, 293, 307,
    311, 313, 317, 331, 337, 347, 349, 353, 359, 367, 373, 379, 383, 389, 397, 401, 409, 419, 421,
    431, 433, 439, 443, 449, 457, 461, 463, 467, 479, 487, 491, 499, 503, 509,
)  # fmt: skip
_CSET82_ORDER: Final = (
    "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
)
_CSET32_ORDER: Final = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"


def check_pair_problem(data: str) -> Problem | None:
    """The last two characters of ``data`` must be its GS1 alphanumeric check-character pair."""
    if len(data) < 2:
        return Problem(0, "value {at} is too short to carry a check-character pair")
    if len(data) - 2 > len(_PAIR_WEIGHTS):
        return Problem(0, "value {at} is too long for a check-character pair")
    bad = first_outside(data[-2:], frozenset(_CSET32_ORDER))
    if bad is not None:
        return Problem(
            len(data) - 2 + bad,
            f"check character {data[-2 + bad]!r} {{at}} is not in GS1 character set 32",
            Gs1CharsetError,
        )
    body = data[:-2]
    weights = _PAIR_WEIGHTS[len(body) - 1 :: -1] if body else ()
    total = sum(_CSET82_ORDER.index(ch) * w for ch, w in zip(body, weights, strict=True)) % 1021
    expected = _CSET32_ORDER[total >> 5] + _CSET32_ORDER[total & 31]
    if data[-2:] == expected:
        return None
    return Problem(
        len(data) - 2,
        f"check characters '{data[-2:]}' {{at}} are wrong, expected '{expected}'",
        Gs1CheckDigitError,
    )


# --- dates and times -----------------------------------------------------------------------


def full_year(yy: int, today: date | None = None) -> int:
    """The four-digit year of a two-digit ``yy`` per GS1 General Specifications 7.12.

    The year lies within 49 years before and 50 years after the current year (sliding window), so
    "YY - current YY" of 51..99 means the previous century and -99..-50 the next one.
    """
    current = (today or date.today()).year
    century = current - current % 100
    difference = yy - current % 100
    if difference >= 51:
        return century - 100 + yy
    if difference <= -50:
        return century + 100 + yy
    return century + yy


def days_in_month(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def date_problem(
    data: str, *, day_zero_allowed: bool, century_known: bool = False
) -> Problem | None:
    """Check a YYMMDD (or YYYYMMDD when ``century_known``) date made of digits.

    A two-digit year cannot tell 2000 from 2100, so February 29 is accepted whenever YY is a
    multiple of 4: every such year in the GS1 sliding window (1976-2075 today) is a leap year.
    """
    at_month = 4 if century_known else 2
    month_text, day_text = data[at_month : at_month + 2], data[at_month + 2 :]
    month, day = int(month_text), int(day_text)
    if not 1 <= month <= 12:
        return Problem(at_month, f"month '{month_text}' {{at}} is not 01-12", Gs1DateError)
    # Any leap-year-aligned century will do for a two-digit year, see above.
    year = int(data[:at_month]) + (0 if century_known else 2000)
    last = days_in_month(year, month)
    if (day == 0 and day_zero_allowed) or 1 <= day <= last:
        return None
    allowed = f"01-{last}" + (" or 00" if day_zero_allowed else "")
    return Problem(
        at_month + 2,
        f"day '{day_text}' {{at}} does not exist in month {month_text} (expected {allowed})",
        Gs1DateError,
    )


def expiry_date(yymmdd: str, today: date | None = None) -> date:
    """The date an AI (17)-style YYMMDD value stands for; DD=00 means the last day of the month.

    The century follows the GS1 sliding window around ``today`` (default: the current date).
    """
    bad = first_outside(yymmdd, DIGITS)
    if len(yymmdd) != 6 or bad is not None:
        raise Gs1DateError(f"date {yymmdd!r} is not YYMMDD (6 digits)", position=bad)
    year = full_year(int(yymmdd[:2]), today)
    month = int(yymmdd[2:4])
    problem = date_problem(yymmdd, day_zero_allowed=True)
    if problem is None and month == 2 and yymmdd[4:] == "29" and not calendar.isleap(year):
        problem = Problem(4, f"day '29' {{at}} does not exist in February {year}", Gs1DateError)
    if problem is not None:
        raise Gs1DateError(
            f"date {yymmdd!r}: {problem.describe(problem.offset)}", position=problem.offset
        )
    day = int(yymmdd[4:]) or days_in_month(year, month)
    return date(year, month, day)


def time_problem(data: str, fields: str) -> Problem | None:
    """Check a time made of two-digit fields, e.g. ``fields="hm"`` for HHMI, ``"hms"``."""
    limits = {"h": ("hour", 23), "m": ("minute", 59), "s": ("second", 59)}
    for index, field in enumerate(fields):
        name, highest = limits[field]
        text = data[2 * index : 2 * index + 2]
        if int(text) > highest:
            return Problem(2 * index, f"{name} '{text}' {{at}} is not 00-{highest}", Gs1DateError)
    return None
