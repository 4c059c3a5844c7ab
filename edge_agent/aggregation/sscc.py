"""Identifiers of packaging levels: SSCCs (AI 00) and level GTIN + serial (AI 01 + AI 21).

An SSCC is 18 digits: the extension digit, the GS1 company prefix, the serial reference (as many
digits as the prefix leaves of 16) and the mod-10 check digit. A case identified by GTIN +
serial carries the GTIN of the packaging level and a numeric serial of ``serial_length`` digits.

Allocation (:func:`allocate`) runs inside the caller's write transaction, the one that records
the container as reserved: the range counter moves forward in the same commit, so an identifier
is persisted before it is used (printed on a label) and is never handed out again, even after a
crash. A label printed for a container that never got its aggregation is scrapped, not reused.

Sources, per level of the plan: ``local`` (a range of serial references or case serials, the
plan's or the whole space of the prefix), or ``l3`` (identifiers L3 sent, stored in the
``identifier_pool`` table by :func:`add_to_pool` before any is used, as unit serial pages are).
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent import epcis, gs1
from edge_agent.aggregation.plan import AggregationLevel, IdentifierKind
from edge_agent.errors import AggregationRefused, Gs1Error, RefusalReason
from edge_agent.gs1.check import mod10_check_digit

_MAX_SKIPS = 100_000  # identifiers of a range found used already, in a row: treat it as exhausted


@dataclass(frozen=True)
class Identifier:
    """A packaging level's identifier. ``code``: the 18 SSCC digits, or ``01<gtin>21<serial>``
    (an element string; the serial last, so it needs no separator)."""

    kind: IdentifierKind
    code: str
    epc: str
    gtin: str | None = None
    serial: str | None = None

    @property
    def ais(self) -> tuple[tuple[str, str], ...]:
        """(AI, value) pairs of the identifier: ``(("00", sscc),)`` or ``(("01", gtin), ("21",
        serial))``, for the label."""
        if self.kind == IdentifierKind.SSCC:
            return (("00", self.code),)
        assert self.gtin is not None and self.serial is not None
        return (("01", self.gtin), ("21", self.serial))

    @property
    def hri(self) -> str:
        return "".join(f"({ai}){value}" for ai, value in self.ais)


def sscc(extension: int, company_prefix: str, serial_reference: int) -> str:
    """The 18-digit SSCC; Gs1Error when the parts do not fit."""
    if not 0 <= extension <= 9:
        raise Gs1Error(f"SSCC extension digit must be 0-9, got {extension}", ai="00")
    if not re.fullmatch(r"\d{6,12}", company_prefix):
        raise Gs1Error(f"GS1 company prefix must be 6-12 digits, got {company_prefix!r}", ai="00")
    digits = 16 - len(company_prefix)
    if not 0 <= serial_reference < 10**digits:
        raise Gs1Error(
            f"serial reference {serial_reference} does not fit the {digits} digits company "
            f"prefix {company_prefix} leaves",
            ai="00",
        )
    body = f"{extension}{company_prefix}{serial_reference:0{digits}d}"
    return body + str(mod10_check_digit(body))


def check_sscc(code: str) -> None:
    """Gs1Error unless ``code`` is 18 digits with the right check digit."""
    if not re.fullmatch(r"\d{18}", code):
        raise Gs1Error(f"an SSCC is 18 digits, got {code!r}", ai="00")
    if str(mod10_check_digit(code[:17])) != code[17]:
        raise Gs1Error(f"SSCC {code} has a wrong check digit", ai="00")


def sscc_identifier(code: str, company_prefix_length: int) -> Identifier:
    check_sscc(code)
    return Identifier(IdentifierKind.SSCC, code, epcis.sscc_uri(code, company_prefix_length))


def gtin_serial_identifier(gtin: str, serial: str, company_prefix_length: int) -> Identifier:
    gs1.validate_gtin(gtin)
    gs1.validate_serial(serial)
    return Identifier(
        IdentifierKind.GTIN_SERIAL,
        f"01{gtin}21{serial}",
        epcis.sgtin_uri(gtin, serial, company_prefix_length),
        gtin,
        serial,
    )


@dataclass(frozen=True)
class Range:
    key: str  # identifier_ranges.key
    first: int
    last: int


def local_range(level: AggregationLevel, company_prefix: str | None) -> Range:
    """The range a level draws from: the plan's, else the whole space (of the prefix for an
    SSCC, of ``serial_length`` digits for a case serial)."""
    if level.kind == IdentifierKind.SSCC:
        assert company_prefix is not None
        space = 10 ** (16 - len(company_prefix)) - 1
        scope = f"sscc:{level.extension_digit}{company_prefix}"
    else:
        space = 10**level.serial_length - 1
        scope = f"gtin:{level.gtin}:{level.serial_length}"
    first = level.range_start if level.range_start is not None else 0
    last = level.range_end if level.range_end is not None else space
    if last > space:
        raise AggregationRefused(
            RefusalReason.IDENTIFIERS_EXHAUSTED,
            f"the {level.level} range ends at {last}, beyond the {space} the identifier allows; "
            "fix range_end in the order's aggregation plan",
        )
    return Range(f"{scope}:{first}-{last}", first, last)


def allocate(
    conn: sqlite3.Connection,
    order_id: str,
    level: AggregationLevel,
    *,
    product_gtin: str,
    company_prefix_length: int,
) -> Identifier:
    """The next unused identifier of ``level``, its use recorded; call inside the write
    transaction that stores the container. AggregationRefused when none is left."""
    if level.source == "l3":
        return _from_pool(conn, order_id, level, company_prefix_length)
    prefix = (
        level.sscc_prefix(product_gtin, company_prefix_length)
        if level.kind == IdentifierKind.SSCC
        else None
    )
    span = local_range(level, prefix)
    row = conn.execute("SELECT next FROM identifier_ranges WHERE key = ?", (span.key,)).fetchone()
    number = span.first if row is None else int(row[0])
    for _ in range(_MAX_SKIPS):
        if number > span.last:
            break
        found = _identifier(level, prefix, number, company_prefix_length)
        number += 1
        if not _used(conn, found):
            conn.execute(
                "INSERT INTO identifier_ranges (key, next, last) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET next = excluded.next",
                (span.key, number, span.last),
            )
            return found
    raise AggregationRefused(
        RefusalReason.IDENTIFIERS_EXHAUSTED,
        f"no unused {level.level} identifier left in range {span.first}-{span.last} "
        f"({span.key.split(':')[0]}); give the order's plan a new range_start/range_end",
        order_id=order_id,
    )


def _identifier(
    level: AggregationLevel, prefix: str | None, number: int, company_prefix_length: int
) -> Identifier:
    if level.kind == IdentifierKind.SSCC:
        assert prefix is not None
        return sscc_identifier(sscc(level.extension_digit, prefix, number), company_prefix_length)
    assert level.gtin is not None
    serial = f"{number:0{level.serial_length}d}"
    return gtin_serial_identifier(level.gtin, serial, company_prefix_length)


def _used(conn: sqlite3.Connection, found: Identifier) -> bool:
    if conn.execute("SELECT 1 FROM containers WHERE code = ?", (found.code,)).fetchone():
        return True
    if found.kind == IdentifierKind.GTIN_SERIAL:  # never the same (GTIN, serial) as a unit
        hit = conn.execute(
            "SELECT 1 FROM serials WHERE gtin = ? AND serial = ?", (found.gtin, found.serial)
        ).fetchone()
        return hit is not None
    return False


def add_to_pool(
    conn: sqlite3.Connection,
    order_id: str,
    level: AggregationLevel,
    codes: Sequence[str],
    company_prefix_length: int,
    *,
    prefix: str | None = None,
) -> int:
    """Store identifiers L3 sent for ``level`` of an order, before any is used (in the caller's
    write transaction). Each must be well formed (an SSCC starting with ``prefix``, extension
    digit and company prefix, when given) and unknown on this line: a code used before refuses
    the whole page (AggregationRefused), as a reused unit serial does."""
    rows: list[tuple[str, str, str, float]] = []
    seen: set[str] = set()
    for code in codes:
        found = parse_level_code(code, level, company_prefix_length)
        if prefix is not None and not found.code.startswith(prefix):
            raise AggregationRefused(
                RefusalReason.UNKNOWN_CODE,
                f"{level.level} identifier {found.hri} from L3 does not start with the "
                f"extension digit and company prefix {prefix} asked for",
                order_id=order_id,
            )
        if (
            _used(conn, found)
            or conn.execute(
                "SELECT 1 FROM identifier_pool WHERE code = ?", (found.code,)
            ).fetchone()
        ):
            raise AggregationRefused(
                RefusalReason.IDENTIFIER_USED,
                f"{level.level} identifier {found.hri} from L3 was used before on this line; "
                "an identifier is never used twice: ask L3 for a new page",
                order_id=order_id,
            )
        if found.code in seen:
            raise AggregationRefused(
                RefusalReason.DUPLICATE,
                f"{level.level} identifier {found.hri} appears twice in one page from L3",
                order_id=order_id,
            )
        seen.add(found.code)
        rows.append((found.code, order_id, level.level, time.time()))
    conn.executemany(
        "INSERT INTO identifier_pool (code, order_id, level, received_at) VALUES (?, ?, ?, ?)",
        rows,
    )
    return len(rows)


def parse_level_code(code: str, level: AggregationLevel, company_prefix_length: int) -> Identifier:
    """An identifier of ``level`` from its code: 18 SSCC digits, or ``01<gtin>21<serial>``."""
    try:
        if level.kind == IdentifierKind.SSCC:
            return sscc_identifier(code, company_prefix_length)
        parsed = gs1.parse(code)
        gtin, serial = parsed.get("01"), parsed.get("21")
        if gtin is None or gtin != level.gtin or serial is None:
            raise Gs1Error(f"{code!r} is not GTIN {level.gtin} with a serial (AI 21)")
        return gtin_serial_identifier(gtin, serial, company_prefix_length)
    except Gs1Error as exc:
        raise AggregationRefused(
            RefusalReason.UNKNOWN_CODE, f"{level.level} identifier {code!r}: {exc}"
        ) from None


def _from_pool(
    conn: sqlite3.Connection, order_id: str, level: AggregationLevel, company_prefix_length: int
) -> Identifier:
    row = conn.execute(
        "SELECT code FROM identifier_pool WHERE order_id = ? AND level = ? AND taken = 0 "
        "ORDER BY rowid LIMIT 1",
        (order_id, level.level),
    ).fetchone()
    if row is None:
        raise AggregationRefused(
            RefusalReason.IDENTIFIERS_EXHAUSTED,
            f"no {level.level} identifier from L3 left for order {order_id}; wait for the next "
            "page from L3",
            order_id=order_id,
        )
    conn.execute("UPDATE identifier_pool SET taken = 1 WHERE code = ?", (row[0],))
    return parse_level_code(row[0], level, company_prefix_length)
