"""Parse and build GS1 element strings.

Accepted input:

* ``parse_scanned``: data decoded from a symbol, as a scanner or camera delivers it: AIs and
  values with GS (ASCII 29) after every variable-length value that is not the last, optionally
  prefixed by a GS1 symbology identifier (``]d2`` Data Matrix, ``]C1`` GS1-128, ``]Q3`` QR,
  ``]e0`` DataBar, ``]J1`` DotCode) and optionally starting with a GS (how some scanners render
  FNC1 in first position). Only the byte 0x1D separates: ``(`` and the text ``<GS>`` are data
  (both are in GS1 character set 82), and bracketed text is not symbol data.
* ``parse``: that, or the bracketed human-readable form ``(01)09506000134352(17)201225(10)ABC``
  (a literal ``(`` inside a value is written ``\\(``, as GS1's own tools and zint write it).
  With ``gs_text=True`` (for text a person typed, e.g. ``edge-agent gs1 parse``) the text
  ``<GS>`` stands for ASCII 29 too, but only when the input holds no real GS.

Every value is validated against the AI table (length, character set, check digits, dates, code
lists), then the AIs against each other (GS1 General Specifications): repeated AIs must carry
the same value, mutually exclusive AIs must not meet, and with ``check_requisites`` (default for
``parse``, not for ``build``) AIs that need a partner (a serial needs its GTIN) must have it.
Errors are ``Gs1Error`` subclasses whose message names the AI, the character offset in the
caller's text and what was expected.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from edge_agent.errors import Gs1Error
from edge_agent.gs1.ais import AI_TABLE, AiSpec, Requirement, lookup_prefix
from edge_agent.gs1.check import (
    Gs1AssociationError,
    Gs1LengthError,
    Gs1SyntaxError,
    charset_problem,
    quantity,
)
from edge_agent.gs1.linters import LINTERS

GS: Final = "\x1d"
GS_TEXT: Final = "<GS>"
SYMBOLOGY_IDENTIFIERS: Final = frozenset({"]C1", "]d2", "]e0", "]J1", "]Q3"})
"""Symbology identifiers that announce GS1 element-string data."""

Locate = Callable[[int], int]
"""Maps an offset within a value to the position in the caller's text."""


@dataclass(frozen=True)
class ElementString:
    """A validated GS1 element string: its AIs and values in order, and how it was read."""

    ais: tuple[tuple[str, str], ...]
    symbology: str | None = None

    @property
    def element_string(self) -> str:
        """AIs and values with GS after each variable-length value but the last; no prefix."""
        parts: list[str] = []
        for index, (ai, value) in enumerate(self.ais):
            parts.append(ai + value)
            if index < len(self.ais) - 1 and not AI_TABLE[ai].predefined_length:
                parts.append(GS)
        return "".join(parts)

    @property
    def hri(self) -> str:
        """Human-readable interpretation: ``(01)09506000134352(21)XYZ``, for people to read.

        A value holding ``(`` makes this ambiguous; ``bracketed`` is the form to parse or
        encode."""
        return "".join(f"({ai}){value}" for ai, value in self.ais)

    @property
    def bracketed(self) -> str:
        """The bracketed form that ``parse`` reads back exactly: ``(`` in a value as ``\\(``."""
        return bracketed(self.ais)

    def get(self, ai: str) -> str | None:
        """The value of the first occurrence of ``ai``, or None."""
        return next((value for key, value in self.ais if key == ai), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "ais": [
                {"ai": ai, "title": AI_TABLE[ai].title, "value": value} for ai, value in self.ais
            ],
            "element_string": self.element_string.replace(GS, GS_TEXT),
            "hri": self.hri,
            "symbology": self.symbology,
        }

    def __str__(self) -> str:
        return self.hri


@dataclass(frozen=True)
class _Field:
    spec: AiSpec
    value: str
    position: int  # of the AI's first digit in the caller's text

    @property
    def label(self) -> str:
        return self.spec.label


# --- reading the caller's text -------------------------------------------------------------


@dataclass(frozen=True)
class _Text:
    """The input with ``<GS>`` turned into GS, remembering where each character came from."""

    chars: str
    origin: tuple[int, ...]  # origin[i]: offset in the caller's text; one extra entry for the end

    @classmethod
    def of(cls, text: str, *, gs_text: bool = False) -> _Text:
        if not gs_text or GS in text:  # with real separators "<GS>" can only be data
            return cls(text, tuple(range(len(text) + 1)))
        chars: list[str] = []
        origin: list[int] = []
        i = 0
        while i < len(text):
            is_gs = text.startswith(GS_TEXT, i)
            chars.append(GS if is_gs else text[i])
            origin.append(i)
            i += len(GS_TEXT) if is_gs else 1
        origin.append(len(text))
        return cls("".join(chars), tuple(origin))

    def at(self, index: int) -> int:
        return self.origin[index]


def parse(text: str, *, check_requisites: bool = True, gs_text: bool = False) -> ElementString:
    """Parse and validate GS1 data: an element string or bracketed text (module docstring).

    ``gs_text=True`` reads the text ``<GS>`` as the separator, a convenience for typed input
    only: never pass it for data decoded from a symbol (use ``parse_scanned``).
    """
    source = _Text.of(text, gs_text=gs_text)
    symbology, start = _data_start(source)
    if source.chars[start] == "(":
        fields = _split_bracketed(source, start)
    else:
        fields = _split_element_string(source, start)
    _check_associations(fields, check_requisites=check_requisites)
    return ElementString(tuple((f.spec.ai, f.value) for f in fields), symbology)


def parse_scanned(data: str, *, check_requisites: bool = True) -> ElementString:
    """Parse and validate data decoded from a symbol: an element string, where only the byte
    0x1D separates; ``(`` and ``<GS>`` are data, and bracketed text is refused."""
    source = _Text.of(data)
    symbology, start = _data_start(source)
    fields = _split_element_string(source, start)
    _check_associations(fields, check_requisites=check_requisites)
    return ElementString(tuple((f.spec.ai, f.value) for f in fields), symbology)


def bracketed(ais: Iterable[tuple[str, str]]) -> str:
    """``(ai)value...`` with every ``(`` in a value escaped as ``\\(``: the bracketed form that
    ``parse`` and GS1 encoders (zint, zxing-cpp's writer) read without ambiguity."""
    return "".join(f"({ai})" + value.replace("(", "\\(") for ai, value in ais)


def build(
    pairs: Mapping[str, str] | Iterable[tuple[str, str]], *, check_requisites: bool = False
) -> ElementString:
    """Validate (ai, value) pairs and assemble them, in the given order, into an element string.

    Values are validated exactly as ``parse`` does, repeats and exclusions too. Requisites are
    off by default, unlike ``parse``: building is also how single values and partial codes get
    validated (``build([("10", lot)])``); pass ``check_requisites=True`` for a complete pack code.
    Error positions are offsets in the element string being built.
    """
    items = list(pairs.items() if isinstance(pairs, Mapping) else pairs)
    fields: list[_Field] = []
    position = 0
    for ai, value in items:
        spec = AI_TABLE.get(ai) if isinstance(ai, str) else None
        if spec is None:
            raise Gs1SyntaxError(f"unknown AI {ai!r} at position {position}", position=position)
        if not isinstance(value, str):
            raise Gs1Error(f"{spec.label}: value {value!r} is not a string", ai=ai)
        start = position + len(ai)
        _validate_value(spec, value, _shifted(start))
        fields.append(_Field(spec, value, position))
        position = start + len(value) + (0 if spec.predefined_length else 1)
    if not fields:
        raise Gs1SyntaxError("no AIs to build an element string from", position=0)
    _check_associations(fields, check_requisites=check_requisites)
    return ElementString(tuple((f.spec.ai, f.value) for f in fields))


def validate_serial(serial: str) -> None:
    """Raise Gs1Error unless ``serial`` is a valid AI (21) value (1-20 GS1 CSET 82 characters).

    Positions in the message are offsets within ``serial``.
    """
    _validate_value(AI_TABLE["21"], serial, lambda offset: offset)


def _shifted(start: int, source: _Text | None = None) -> Locate:
    if source is None:
        return lambda offset: start + offset
    return lambda offset: source.at(start + offset)


def _unescaped(indexes: list[int], end: int, source: _Text) -> Locate:
    """Positions in a bracketed value, where ``\\(`` stood for one character."""
    return lambda offset: source.at(indexes[offset] if offset < len(indexes) else end)


def _data_start(source: _Text) -> tuple[str | None, int]:
    """The symbology identifier, if any, and where the AI data starts after it."""
    symbology, start = _symbology(source)
    if source.chars[start : start + 1] == GS:  # FNC1 in first position, rendered as GS
        start += 1
    if start == len(source.chars):
        raise Gs1SyntaxError(
            f"no AI data at position {source.at(start)}", position=source.at(start)
        )
    return symbology, start


def _symbology(source: _Text) -> tuple[str | None, int]:
    prefix = source.chars[:3]
    if prefix in SYMBOLOGY_IDENTIFIERS:
        return prefix, 3
    if prefix[:1] == "]":
        expected = ", ".join(sorted(SYMBOLOGY_IDENTIFIERS))
        raise Gs1SyntaxError(
            f"symbology identifier {prefix!r} at position 0 does not announce GS1 data "
            f"(expected one of {expected})",
            position=0,
        )
    return None, 0


def _split_element_string(source: _Text, start: int) -> list[_Field]:
    chars, fields, pos = source.chars, [], start
    while pos < len(chars):
        if chars[pos] == GS:
            raise Gs1SyntaxError(
                f"unexpected GS at position {source.at(pos)}: an AI must start here",
                position=source.at(pos),
            )
        spec = lookup_prefix(chars[pos : pos + 4])
        if spec is None:
            raise Gs1SyntaxError(
                f"unknown AI at position {source.at(pos)}: no GS1 AI starts "
                f"{chars[pos : pos + 4]!r}",
                position=source.at(pos),
            )
        value_start = pos + len(spec.ai)
        value_end = chars.find(GS, value_start)
        value_end = len(chars) if value_end == -1 else value_end
        if spec.predefined_length:  # the next AI follows directly
            value_end = min(value_end, value_start + spec.max_length)
        value = chars[value_start:value_end]
        _validate_value(spec, value, _shifted(value_start, source))
        fields.append(_Field(spec, value, source.at(pos)))
        # A GS after a predefined-length value is superfluous but harmless, as is a final GS.
        pos = value_end + (1 if chars[value_end : value_end + 1] == GS else 0)
    return fields


def _split_bracketed(source: _Text, start: int) -> list[_Field]:
    fields, pos = [], start
    while pos < len(source.chars):  # values run up to the next "(", so an AI starts at pos
        spec, value_start = _bracketed_ai(source, pos)
        value, indexes, end = _bracketed_value(source, value_start)
        _validate_value(spec, value, _unescaped(indexes, end, source))
        fields.append(_Field(spec, value, source.at(pos)))
        pos = end
    return fields


def _bracketed_ai(source: _Text, pos: int) -> tuple[AiSpec, int]:
    """The AI in the brackets opening at ``pos``, and where its value starts."""
    close = source.chars.find(")", pos)
    if close == -1:
        raise Gs1SyntaxError(
            f"'(' at position {source.at(pos)} opens an AI that is never closed by ')'",
            position=source.at(pos),
        )
    ai = source.chars[pos + 1 : close]
    spec = AI_TABLE.get(ai)
    if spec is None:
        well_formed = ai.isascii() and ai.isdigit() and 2 <= len(ai) <= 4
        shape = "is not a GS1 AI" if well_formed else "is not an AI (2 to 4 digits)"
        raise Gs1SyntaxError(
            f"'({ai})' at position {source.at(pos)} {shape}", position=source.at(pos)
        )
    return spec, close + 1


def _bracketed_value(source: _Text, pos: int) -> tuple[str, list[int], int]:
    """The value starting at ``pos`` (``\\(`` unescaped), each character's index, and its end."""
    chars = source.chars
    value: list[str] = []
    indexes: list[int] = []
    while pos < len(chars) and chars[pos] != "(":
        if chars[pos] == GS:
            raise Gs1SyntaxError(
                f"GS at position {source.at(pos)} has no place in the bracketed form",
                position=source.at(pos),
            )
        escaped = chars.startswith("\\(", pos)
        value.append("(" if escaped else chars[pos])
        indexes.append(pos)
        pos += 2 if escaped else 1
    return "".join(value), indexes, pos


# --- one value -----------------------------------------------------------------------------


def _validate_value(spec: AiSpec, value: str, locate: Locate) -> None:
    """Raise the located error of an invalid value (``_check_value``); a value found valid
    before is not checked again."""
    if not _is_valid(spec.ai, value):
        _check_value(spec, value, locate)


# A line reads the same GTIN, lot and expiry in every unit; only the serial is new. Validity is
# a function of the AI and the value alone (no date window: see ``date_problem``), so recent
# answers are kept; serials cycle through without pushing the hot values out.
@functools.lru_cache(maxsize=1024)
def _is_valid(ai: str, value: str) -> bool:
    try:
        _check_value(AI_TABLE[ai], value, lambda offset: offset)
    except Gs1Error:
        return False
    return True


def _check_value(spec: AiSpec, value: str, locate: Locate) -> None:
    """Length first (a check digit is meaningless in a value of the wrong size), then each
    component: its character set, then its linters."""
    _check_length(spec, value, locate)
    offset = 0
    for part in spec.components:
        size = min(part.max_length, len(value) - offset)
        if part.optional and size == 0:
            continue
        piece = value[offset : offset + size]
        problem = charset_problem(piece, part.charset)
        for name in part.linters:
            if problem is not None:
                break
            problem = LINTERS[name](piece)
        if problem is not None:
            position = locate(offset + problem.offset)
            raise problem.kind(
                f"{spec.label}: {problem.describe(position)}",
                ai=spec.ai,
                position=position,
            )
        offset += size


def _check_length(spec: AiSpec, value: str, locate: Locate) -> None:
    if len(value) in spec.lengths:
        return
    label = spec.label
    expected = f"expected {spec.length_text} character" + ("" if spec.max_length == 1 else "s")
    if not value:
        raise Gs1LengthError(
            f"{label}: value at position {locate(0)} is empty, {expected}",
            ai=spec.ai,
            position=locate(0),
        )
    size = f"value {value!r} at position {locate(0)} is {quantity(len(value), 'character')} long"
    size += f", {expected}"
    if len(value) > spec.max_length:
        excess = locate(spec.max_length)
        raise Gs1LengthError(
            f"{label}: {size}; the excess starts at position {excess}", ai=spec.ai, position=excess
        )
    raise Gs1LengthError(f"{label}: {size}", ai=spec.ai, position=locate(0))


# --- AIs together: repeats, exclusions, requisites ----------------------------------------


def _check_associations(fields: list[_Field], *, check_requisites: bool) -> None:
    _check_repeats(fields)
    known = _ais_combine(tuple(field.spec.ai for field in fields), check_requisites)
    if not known:
        _check_exclusions(fields)
    _check_signed_keys(fields)
    if check_requisites and not known:
        _check_requisites(fields)


@functools.lru_cache(maxsize=256)
def _ais_combine(ais: tuple[str, ...], check_requisites: bool) -> bool:
    """Whether these AIs pass the exclusions (and requisites): a question of the AIs alone, the
    same for every unit of a line; the located error is raised by the caller's own check."""
    fields = [_Field(AI_TABLE[ai], "", 0) for ai in ais]
    try:
        _check_exclusions(fields)
        if check_requisites:
            _check_requisites(fields)
    except Gs1AssociationError:
        return False
    return True


def _matches(pattern: str, ai: str) -> bool:
    """``31nn`` matches 3100..3199; ``01`` matches 01 only."""
    return len(ai) == len(pattern) and ai.startswith(pattern.rstrip("n"))


def _check_repeats(fields: list[_Field]) -> None:
    first: dict[str, _Field] = {}
    for field in fields:
        earlier = first.setdefault(field.spec.ai, field)
        if earlier.value != field.value:
            raise Gs1AssociationError(
                f"{field.label} at position {field.position} repeats with value "
                f"{field.value!r}, but the same AI at position {earlier.position} has "
                f"{earlier.value!r}",
                ai=field.spec.ai,
                position=field.position,
            )


def _check_exclusions(fields: list[_Field]) -> None:
    for field in fields:
        for pattern in field.spec.excludes:
            other = next(
                (o for o in fields if o.spec.ai != field.spec.ai and _matches(pattern, o.spec.ai)),
                None,
            )
            if other is not None:
                raise Gs1AssociationError(
                    f"{field.label} at position {field.position} must not be combined with "
                    f"{other.label} at position {other.position}",
                    ai=field.spec.ai,
                    position=field.position,
                )


def _check_signed_keys(fields: list[_Field]) -> None:
    # A digital signature (8030) must sign a serialised key: keys whose serial part is optional
    # (GDTI, GCN, GRAI) must carry it.
    if not any(field.spec.ai == "8030" for field in fields):
        return
    signable = {ai for req in AI_TABLE["8030"].requires for alt in req for ai in alt}
    for field in fields:
        bare_key = sum(part.max_length for part in field.spec.components if not part.optional)
        if field.spec.ai in signable and len(field.value) <= bare_key < field.spec.max_length:
            raise Gs1AssociationError(
                f"{field.label} at position {field.position} must carry its serial component "
                "when AI (8030) DIGSIG signs it",
                ai=field.spec.ai,
                position=field.position,
            )


def _check_requisites(fields: list[_Field]) -> None:
    for field in fields:
        others = [o.spec.ai for o in fields if o.spec.ai != field.spec.ai]
        for requirement in field.spec.requires:
            if not any(
                all(any(_matches(pattern, ai) for ai in others) for pattern in alternative)
                for alternative in requirement
            ):
                raise Gs1AssociationError(
                    f"{field.label} at position {field.position} needs "
                    f"{_describe(requirement)} in the same element string",
                    ai=field.spec.ai,
                    position=field.position,
                )


def _describe(requirement: Requirement) -> str:
    """((01,), (8006, 21)) -> "AI (01) or (8006)+(21)" """
    options = ["+".join(f"({ai})" for ai in alternative) for alternative in requirement]
    listed = options[0] if len(options) == 1 else ", ".join(options[:-1]) + f" or {options[-1]}"
    return f"AI {listed}"
