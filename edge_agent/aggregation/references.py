"""References people and scanners give, resolved against the ledger: an EPC URI, the 18 SSCC
digits, or a GS1 element string (bracketed, or as scanned) with AI 00, or AI 01 + 21. An unknown
or unreadable one is refused (``unknown_code``): a foreign code is never taken for a unit."""

from __future__ import annotations

import re
import sqlite3

from edge_agent import epcis, gs1
from edge_agent.aggregation.plan import Level
from edge_agent.aggregation.records import CONTAINER_COLUMNS, Container, Item, as_item, container_of
from edge_agent.errors import AggregationRefused, Gs1Error, RefusalReason
from edge_agent.gs1.check import gtin_check_digit

R = RefusalReason


class References:
    """Resolves references on the ledger's connection (read-only queries)."""

    def __init__(self, conn: sqlite3.Connection, company_prefix_length: int) -> None:
        self.conn = conn
        self.company_prefix_length = company_prefix_length

    def item(self, ref: str) -> Item:
        """The unit or container ``ref`` names; AggregationRefused (unknown_code) when none."""
        text = ref.strip()
        if text.startswith("urn:epc:id:sgtin:"):
            gtin, serial = sgtin_parts(text)
            return self._unit_or_case(gtin, serial, ref)
        if text.startswith("urn:epc:id:sscc:") or re.fullmatch(r"\d{18}", text):
            return self.container_item(text)
        try:
            parsed = gs1.parse(text, check_requisites=False)
        except Gs1Error as exc:
            raise AggregationRefused(
                R.UNKNOWN_CODE,
                f"cannot read {ref!r} as an SSCC, a GTIN with serial or an EPC ({exc})",
            ) from None
        if parsed.get("00") is not None:
            return self.container_item(str(parsed.get("00")))
        unit_gtin, unit_serial = parsed.get("01"), parsed.get("21")
        if unit_gtin is None or unit_serial is None:
            raise AggregationRefused(
                R.UNKNOWN_CODE, f"{ref!r} holds neither an SSCC (AI 00) nor a GTIN + serial"
            )
        return self._unit_or_case(unit_gtin, unit_serial, ref)

    def container_item(self, ref: str) -> Item:
        return as_item(self.container_by_epc(self.container_epc(ref)))

    def container_epc(self, ref: str) -> str:
        """The EPC of the container ``ref`` names (its label, code or EPC)."""
        text = ref.strip()
        row = None
        if text.startswith("urn:epc:id:"):
            row = self.conn.execute("SELECT epc FROM containers WHERE epc = ?", (text,)).fetchone()
        else:
            code = text
            if not re.fullmatch(r"\d{18}", text):
                try:
                    parsed = gs1.parse(text, check_requisites=False)
                except Gs1Error as exc:
                    raise AggregationRefused(
                        R.UNKNOWN_CODE, f"cannot read {ref!r} as a container label ({exc})"
                    ) from None
                sscc_code, gtin, serial = parsed.get("00"), parsed.get("01"), parsed.get("21")
                code = sscc_code or (f"01{gtin}21{serial}" if gtin and serial else text)
            row = self.conn.execute("SELECT epc FROM containers WHERE code = ?", (code,)).fetchone()
        if row is None:
            raise AggregationRefused(
                R.UNKNOWN_CODE, f"no bundle, case or pallet {ref!r} on this line"
            )
        return str(row[0])

    def container_by_epc(self, epc: str) -> Container:
        row = self.conn.execute(
            f"SELECT {CONTAINER_COLUMNS} FROM containers c WHERE c.epc = ?", (epc,)
        ).fetchone()
        if row is None:
            raise AggregationRefused(R.UNKNOWN_CODE, f"no bundle, case or pallet {epc}")
        return container_of(row)

    def _unit_or_case(self, gtin: str, serial: str, ref: str) -> Item:
        row = self.conn.execute(
            "SELECT epc FROM containers WHERE code = ?", (f"01{gtin}21{serial}",)
        ).fetchone()
        if row is not None:
            return as_item(self.container_by_epc(row[0]))
        unit = self.conn.execute(
            "SELECT s.state, s.batch_id, b.lot FROM serials s JOIN batches b ON b.id = s.batch_id "
            "WHERE s.gtin = ? AND s.serial = ?",
            (gtin, serial),
        ).fetchone()
        if unit is None:
            raise AggregationRefused(
                R.UNKNOWN_CODE,
                f"{ref!r}: GTIN {gtin} serial {serial} is no unit or case of this line (a "
                "foreign code)",
            )
        state, batch_id, lot = unit
        epc = epcis.sgtin_uri(gtin, serial, self.company_prefix_length)
        return Item(epc, Level.UNIT, batch_id, state, gtin, serial, lot)


def sgtin_parts(epc: str) -> tuple[str, str]:
    """(GTIN-14, serial) of ``urn:epc:id:sgtin:CompanyPrefix.IndicatorItemRef.Serial``."""
    parts = epc.removeprefix("urn:epc:id:sgtin:").split(".", 2)
    if len(parts) != 3 or not (parts[0] + parts[1]).isdigit() or len(parts[0] + parts[1]) != 13:
        raise AggregationRefused(R.UNKNOWN_CODE, f"{epc!r} is not an SGTIN EPC URI")
    prefix, item_ref, serial = parts
    body = item_ref[0] + prefix + item_ref[1:]
    serial = re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), serial)
    return body + str(gtin_check_digit(body)), serial
