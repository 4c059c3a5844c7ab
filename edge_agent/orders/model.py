"""A work order as L3 (or an operator) submits it: product master data, lot, expiry, quantity,
where its serials come from, the target market and the aggregation plan.

The model is the wire format of every order source (REST API, inbox folder, L3 link): JSON, or
TOML in the inbox. Unknown keys are errors, values are strictly typed, and every rule that can be
checked without the state database is checked here; ``validation.py`` adds the ones that need it.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge_agent import gs1

# the plan lives with aggregation; re-exported for the order model's users
from edge_agent.aggregation.plan import AggregationLevel as AggregationLevel
from edge_agent.aggregation.plan import AggregationPlan

DEFAULT_ALPHABET = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"
MAX_GUESS_PROBABILITY = 1e-4  # EU FMD Delegated Regulation 2016/161 art. 4(b): below 1/10,000
NATIONAL_CODE_AIS = ("710", "711", "712", "713", "714", "715", "716", "717")


class OrderState(enum.StrEnum):
    """Job order states (OPEN-SCS / ISA-95 job order vocabulary)."""

    WAITING = "waiting"  # stored; its serials are not in hand yet
    READY = "ready"  # serials in hand: may start
    RUNNING = "running"  # the line is packing it
    HELD = "held"  # stopped with an alarm or by an operator; resumes after recovery checks
    COMPLETED = "completed"  # nothing more will be printed; may be closed
    CLOSED = "closed"  # reconciled, unused serials returned, close report made (terminal)
    ABORTED = "aborted"  # ended early by an operator; settled like a close (terminal)
    CANCELLED = "cancelled"  # withdrawn before it ever ran (terminal)


TERMINAL_STATES = frozenset({OrderState.CLOSED, OrderState.ABORTED, OrderState.CANCELLED})
ACTIVE_STATES = frozenset({OrderState.RUNNING, OrderState.HELD})  # at most one order at a time


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class NationalCode(Strict):
    """A national healthcare reimbursement number printed beside the GTIN (AI 710-717)."""

    ai: Literal["710", "711", "712", "713", "714", "715", "716", "717"] = Field(
        ..., description="GS1 AI of the national code, e.g. 710 (DE PZN), 715 (US NDC)"
    )
    value: str = Field(..., min_length=1, max_length=20)

    @model_validator(mode="after")
    def _valid_value(self) -> NationalCode:
        _gs1(lambda: gs1.build([(self.ai, self.value)]))
        return self


class Product(Strict):
    gtin: str = Field(..., description="GTIN-14 of the saleable unit (AI 01)")
    description: str = Field("", max_length=200, description="Product name, for people")
    national_code: NationalCode | None = Field(
        None, description="National code (AI 710-717) where the target market needs one"
    )

    @field_validator("gtin")
    @classmethod
    def _gtin(cls, value: str) -> str:
        if not re.fullmatch(r"\d{14}", value):
            raise ValueError("a GTIN-14 is 14 digits (pad GTIN-8/12/13 with leading zeros)")
        _gs1(lambda: gs1.validate_gtin(value))
        return value


class SerialSpec(Strict):
    """Where the order's serials come from."""

    source: Literal["l3", "generate", "list"] = Field(
        "l3",
        description="l3 = pages requested from the site server; generate = random local serials; "
        "list = the serials given in the order itself",
    )
    length: int = Field(12, ge=4, le=20, description="generate: serial length (AI 21: 1-20)")
    alphabet: str = Field(
        DEFAULT_ALPHABET, min_length=10, description="generate: characters used (CSET 82)"
    )
    serials: list[str] | None = Field(None, description="list: the serials, in print order")

    @field_validator("alphabet")
    @classmethod
    def _alphabet(cls, value: str) -> str:
        bad = sorted(set(value) - gs1.CSET82)
        if bad:
            raise ValueError(f"characters {bad!r} are not in GS1 character set 82")
        if len(set(value)) != len(value):
            raise ValueError("alphabet repeats characters")
        return value

    @field_validator("serials")
    @classmethod
    def _serials(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        seen: set[str] = set()
        for index, serial in enumerate(value):
            try:
                gs1.validate_serial(serial)
            except gs1.Gs1Error as exc:
                raise ValueError(f"serials[{index}] {serial!r}: {exc}") from None
            if serial in seen:
                raise ValueError(f"serials[{index}] {serial!r} appears twice")
            seen.add(serial)
        return value

    @model_validator(mode="after")
    def _list_has_serials(self) -> SerialSpec:
        if (self.source == "list") != (self.serials is not None):
            raise ValueError("give 'serials' exactly when source = 'list'")
        return self

    def guess_probability(self, quantity: int) -> float:
        """Chance that one guessed serial is a valid one of ``quantity`` generated serials."""
        return quantity / math.pow(len(self.alphabet), self.length)


class WorkOrder(Strict):
    """A packaging order: one lot of one product, printed and verified on this line."""

    id: str = Field(
        ...,
        min_length=1,
        max_length=40,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Order id; also the batch id of its ledger records and events",
    )
    product: Product
    lot: str = Field(..., min_length=1, max_length=20, description="Lot number (AI 10)")
    expiry: str = Field(..., description="Expiry date YYMMDD (AI 17; DD = 00 allowed)")
    quantity: int = Field(..., ge=1, le=10_000_000, description="Units to pack")
    serials: SerialSpec = Field(default_factory=lambda: SerialSpec())
    market: str = Field(
        ..., pattern=r"^[A-Z]{2}$", description="Target market, ISO 3166-1 alpha-2 (US, DE, ...)"
    )
    aggregation: AggregationPlan | None = Field(None, description="Packaging hierarchy, if any")

    @field_validator("lot")
    @classmethod
    def _lot(cls, value: str) -> str:
        _gs1(lambda: gs1.build([("10", value)]))
        return value

    @field_validator("expiry")
    @classmethod
    def _expiry(cls, value: str) -> str:
        _gs1(lambda: gs1.build([("17", value)]))
        return value

    def rule_problems(self) -> list[tuple[str, str]]:
        """Rules across fields, with the key each one is about."""
        spec, problems = self.serials, []
        if spec.serials is not None and len(spec.serials) < self.quantity:
            problems.append(
                (
                    "serials.serials",
                    f"holds {len(spec.serials)} serials for a quantity of {self.quantity}; send "
                    "more serials or lower the quantity",
                )
            )
        if spec.source == "generate":
            probability = spec.guess_probability(self.quantity)
            if probability >= MAX_GUESS_PROBABILITY:
                problems.append(
                    (
                        "serials.length",
                        f"{spec.length} characters from {len(spec.alphabet)} symbols for "
                        f"{self.quantity} units can be guessed with probability "
                        f"{probability:.2g}; EU FMD (2016/161 art. 4) needs less than 1/10,000: "
                        "use longer serials or a larger alphabet",
                    )
                )
        if self.aggregation is not None:
            problems += self.aggregation.problems(self.product.gtin)
        return problems


class OrderCommand(enum.StrEnum):
    STORE = "store"
    START = "start"
    HOLD = "hold"
    RESUME = "resume"
    STOP = "stop"
    ABORT = "abort"
    CANCEL = "cancel"
    CLOSE = "close"


def _gs1(check: Callable[[], object]) -> None:
    """pydantic reports only ValueError as a validation problem; a GS1 error becomes one."""
    try:
        check()
    except gs1.Gs1Error as exc:
        raise ValueError(str(exc)) from None
