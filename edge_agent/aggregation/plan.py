"""The aggregation plan of a work order: which packaging levels sit above the unit, how many
children each parent holds, how each level is identified, and what a partial last parent gets.

    unit ─► [bundle] ─► case ─► [pallet]

A case is always there; a bundle (units shrink-wrapped together inside a case) and a pallet are
optional. Each level is identified either by an SSCC (AI 00: extension digit, GS1 company
prefix, serial reference, check digit) or, as homogeneous pharma cases often are, by a GTIN of
the packaging level with a serial (AI 01 + AI 21). A pallet is a logistic unit: always an SSCC.

Part of the wire format of work orders (``edge_agent.orders.model.WorkOrder.aggregation``):
unknown keys are errors, and every rule checkable without the state database is checked here,
with the key it is about.
"""

from __future__ import annotations

import enum
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge_agent import gs1


class Level(enum.StrEnum):
    UNIT = "unit"  # the saleable unit, commissioned by the unit station (not in a plan)
    BUNDLE = "bundle"
    CASE = "case"
    PALLET = "pallet"


LEVEL_ORDER = (Level.UNIT, Level.BUNDLE, Level.CASE, Level.PALLET)


class IdentifierKind(enum.StrEnum):
    SSCC = "sscc"  # AI 00
    GTIN_SERIAL = "gtin_serial"  # AI 01 (the level's own GTIN) + AI 21


class PartialPolicy(enum.StrEnum):
    ALLOWED = "allowed"  # the last parent may close with fewer children than its capacity
    REFUSED = "refused"  # it may not: its children stay loose (reason partial_refused)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class AggregationLevel(_Strict):
    """One packaging level above the unit."""

    level: Literal["bundle", "case", "pallet"]
    capacity: int = Field(..., ge=1, le=100_000, description="Children per full parent")
    identifier: Literal["sscc", "gtin_serial"] = Field(
        "sscc", description="sscc = SSCC (AI 00); gtin_serial = a level GTIN with AI 21"
    )
    gtin: str | None = Field(None, description="gtin_serial: GTIN-14 of this packaging level")
    partial: Literal["allowed", "refused"] | None = Field(
        None,
        description="What the last, partial parent gets; default: allowed, except for a "
        "gtin_serial level of a fixed-measure GTIN (its GTIN fixes the count): refused",
    )
    source: Literal["local", "l3"] = Field(
        "local",
        description="local = allocated on this line from the range below, persisted before "
        "use; l3 = identifiers sent by the site server (pages, as for unit serials)",
    )
    extension_digit: int = Field(0, ge=0, le=9, description="sscc: the SSCC extension digit")
    company_prefix: str | None = Field(
        None,
        description="sscc: GS1 company prefix (6-12 digits); default: the product GTIN's, by "
        "[line] company_prefix_length",
    )
    range_start: int | None = Field(
        None, ge=0, description="local: first serial reference (sscc) or case serial number"
    )
    range_end: int | None = Field(
        None, ge=0, description="local: last serial reference (sscc) or case serial number"
    )
    serial_length: int = Field(
        10, ge=1, le=20, description="gtin_serial, local: digits of the case serial (AI 21)"
    )

    @field_validator("gtin")
    @classmethod
    def _gtin(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not re.fullmatch(r"\d{14}", value):
            raise ValueError("a GTIN-14 is 14 digits (pad GTIN-8/12/13 with leading zeros)")
        try:
            gs1.validate_gtin(value)
        except gs1.Gs1Error as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("company_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d{6,12}", value):
            raise ValueError("a GS1 company prefix is 6 to 12 digits")
        return value

    @model_validator(mode="after")
    def _identifier_fields(self) -> AggregationLevel:
        if self.identifier == "gtin_serial":
            if self.gtin is None:
                raise ValueError("identifier 'gtin_serial' needs the level's 'gtin'")
            if self.level == "pallet":
                raise ValueError(
                    "a pallet is a logistic unit: its identifier is an SSCC (identifier = 'sscc')"
                )
            if self.company_prefix is not None:
                raise ValueError("'company_prefix' is for identifier 'sscc' only")
        elif self.gtin is not None:
            raise ValueError("'gtin' is for identifier 'gtin_serial' only; an SSCC has none")
        if (self.range_start is None) != (self.range_end is None):
            raise ValueError("give both 'range_start' and 'range_end', or neither")
        if self.range_start is not None and self.range_end is not None:
            if self.source != "local":
                raise ValueError("a range is for source = 'local' only")
            if self.range_end < self.range_start:
                raise ValueError("'range_end' is below 'range_start'")
            if self.company_prefix is not None and self.range_end >= 10 ** (
                16 - len(self.company_prefix)
            ):
                raise ValueError(
                    f"'range_end' {self.range_end} does not fit the "
                    f"{16 - len(self.company_prefix)} digits of serial reference that company "
                    f"prefix {self.company_prefix} leaves"
                )
            if self.identifier == "gtin_serial" and self.range_end >= 10**self.serial_length:
                raise ValueError(
                    f"'range_end' {self.range_end} has more than serial_length = "
                    f"{self.serial_length} digits"
                )
        return self

    @property
    def kind(self) -> IdentifierKind:
        return IdentifierKind(self.identifier)

    @property
    def fixed_measure(self) -> bool:
        """A gtin_serial level whose GTIN fixes its content (indicator digit 1-8): every one
        of them holds exactly ``capacity`` children (GS1: another count is another GTIN)."""
        return self.gtin is not None and not self.gtin.startswith("9")

    @property
    def partial_policy(self) -> PartialPolicy:
        if self.partial is None:
            return PartialPolicy.REFUSED if self.fixed_measure else PartialPolicy.ALLOWED
        return PartialPolicy(self.partial)

    def sscc_prefix(self, product_gtin: str, company_prefix_length: int) -> str:
        """The company prefix of this level's SSCCs: the plan's, else the product GTIN's."""
        if self.company_prefix is not None:
            return self.company_prefix
        return product_gtin[1 : 1 + company_prefix_length]


class AggregationPlan(_Strict):
    """The levels above the unit, lowest first: ``case``; or ``bundle``, ``case``; with an
    optional ``pallet`` on top."""

    levels: list[AggregationLevel] = Field(..., min_length=1, max_length=3)

    @model_validator(mode="after")
    def _levels_in_order(self) -> AggregationPlan:
        names = [level.level for level in self.levels]
        if len(set(names)) != len(names):
            raise ValueError(f"levels repeat a level ({', '.join(names)}); each at most once")
        order = [name for name in ("bundle", "case", "pallet") if name in names]
        if names != order:
            raise ValueError(f"levels go lowest first: {', '.join(order)} (got {', '.join(names)})")
        if "case" not in names:
            raise ValueError("a plan has a 'case' level (bundles and pallets are optional)")
        return self

    def level(self, level: Level | str) -> AggregationLevel:
        """The plan of ``level``; KeyError when the plan has no such level."""
        for entry in self.levels:
            if entry.level == level:
                return entry
        raise KeyError(str(level))

    def has(self, level: Level | str) -> bool:
        return any(entry.level == level for entry in self.levels)

    def child_level(self, level: Level | str) -> Level:
        """What a parent of ``level`` holds: the level below it in the plan, or units."""
        names = [Level(entry.level) for entry in self.levels]
        index = names.index(Level(level))
        return names[index - 1] if index else Level.UNIT

    def parent_level(self, level: Level | str) -> Level | None:
        """The level above ``level`` in the plan (None: the top level)."""
        names = [Level.UNIT, *(Level(entry.level) for entry in self.levels)]
        index = names.index(Level(level))
        return names[index + 1] if index + 1 < len(names) else None

    def problems(self, product_gtin: str) -> list[tuple[str, str]]:
        """Rules across the plan and the rest of the order, with the key each is about."""
        found = []
        for index, entry in enumerate(self.levels):
            if entry.gtin is not None and entry.gtin == product_gtin:
                found.append(
                    (
                        f"aggregation.levels.{index}.gtin",
                        f"{entry.gtin} is the unit's GTIN; a {entry.level} of it needs its own "
                        "GTIN (another packaging level)",
                    )
                )
            if entry.fixed_measure and entry.partial == "allowed":
                found.append(
                    (
                        f"aggregation.levels.{index}.partial",
                        f"GTIN {entry.gtin} is a fixed-measure {entry.level} GTIN: it always "
                        f"holds {entry.capacity}, so a partial {entry.level} of it would carry a "
                        "wrong GTIN; set partial = 'refused' (the last children stay loose, "
                        "partial_refused), use identifier 'sscc', or a variable-measure GTIN "
                        "(indicator digit 9, the count in AI 30)",
                    )
                )
        gtins = [e.gtin for e in self.levels if e.gtin is not None]
        if len(set(gtins)) != len(gtins):
            found.append(("aggregation.levels", "two levels have the same GTIN"))
        return found
