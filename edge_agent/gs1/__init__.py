"""GS1 element strings: the AI table, parsing, building and validation.

The public API other parts of the agent rely on::

    from edge_agent.gs1 import GS, ElementString, parse, parse_scanned, build, AI_TABLE, CSET82
    from edge_agent.gs1 import gtin_check_digit, is_valid_gtin, validate_gtin
    from edge_agent.gs1 import validate_serial, expiry_date

Every validation failure is an ``edge_agent.errors.Gs1Error`` (re-exported here; the subclasses
tell the kind apart) whose message names the AI, the character position and what was expected.
"""

from edge_agent.errors import Gs1Error
from edge_agent.gs1.ais import AI_TABLE, AiSpec, Component
from edge_agent.gs1.check import (
    CSET82,
    Gs1AssociationError,
    Gs1CharsetError,
    Gs1CheckDigitError,
    Gs1DateError,
    Gs1LengthError,
    Gs1SyntaxError,
    Gs1ValueError,
    expiry_date,
    gtin_check_digit,
    is_valid_gtin,
    validate_gtin,
)
from edge_agent.gs1.element_string import (
    GS,
    ElementString,
    bracketed,
    build,
    parse,
    parse_scanned,
    validate_serial,
)

__all__ = [
    "AI_TABLE",
    "CSET82",
    "GS",
    "AiSpec",
    "Component",
    "ElementString",
    "Gs1AssociationError",
    "Gs1CharsetError",
    "Gs1CheckDigitError",
    "Gs1DateError",
    "Gs1Error",
    "Gs1LengthError",
    "Gs1SyntaxError",
    "Gs1ValueError",
    "bracketed",
    "build",
    "expiry_date",
    "gtin_check_digit",
    "is_valid_gtin",
    "parse",
    "parse_scanned",
    "validate_gtin",
    "validate_serial",
]
