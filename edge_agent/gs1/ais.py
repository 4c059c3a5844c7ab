"""The GS1 Application Identifier table: the GS1 Barcode Syntax Dictionary, read as it is.

``gs1-syntax-dictionary.txt`` next to this module is GS1's own machine-readable table of every AI
(release 2026-01-27 of github.com/gs1/gs1-syntax-dictionary, Apache-2.0, unmodified): format as
components with their linters, mandatory associations (``req=``), invalid pairings (``ex=``), and
the data title. Reading GS1's file instead of a copy typed from it keeps the table from drifting
(AI 717 was once missing here). To update: replace the file with a newer release, set
``DICTIONARY_RELEASE`` and run tests/test_gs1_dictionary.py.

Its notation, in short:

* a component is ``<charset><length>[,linter...]``: charset ``N`` digits, ``X`` GS1 character set
  82, ``Y`` character set 39, ``Z`` base64url; length ``14`` exactly, ``..20`` 1 to 20;
  ``[N3],iso3166`` is an optional component (only at the end, skipped only when the data ends);
* ``req=A,B+C`` means: one of the alternatives must also be present, ``+`` joins AIs that must be
  present together; several ``req=`` must all hold. ``ex=`` lists AIs that must not be present.
  In both, a trailing ``n`` stands for any digit (``31nn`` is every AI from 3100 to 3199).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Final

from edge_agent.gs1.linters import LINTERS

# (prefix, value length). An AI starting with one of these two digits has a value of exactly this
# length and is never followed by a GS separator (the GS1 General Specifications' table of
# element strings with predefined length).
# Keep this list even when an AI table update adds nothing under a prefix: scanners and printers
# in the field hard-code it, so it can never change.
PREDEFINED_LENGTHS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "00": 18, "01": 14, "02": 14, "03": 14, "04": 16,
        **{str(prefix): 6 for prefix in range(11, 20)}, "20": 2,
        **{str(prefix): 6 for prefix in range(31, 37)},
        "41": 13,
    }
)  # fmt: skip

DATE_LINTERS: Final = frozenset({"yymmdd", "yymmd0", "yyyymmdd"})

Alternative = tuple[str, ...]
"""AI patterns that must all be present (``01+21``)."""
Requirement = tuple[Alternative, ...]
"""At least one alternative must be satisfied."""


@dataclass(frozen=True)
class Component:
    """One part of an AI value, e.g. the N13 GLN inside AI (253)."""

    charset: str
    min_length: int
    max_length: int
    optional: bool = False
    linters: tuple[str, ...] = ()


@dataclass(frozen=True)
class AiSpec:
    """Everything the table says about one AI."""

    ai: str
    title: str
    components: tuple[Component, ...]
    requires: tuple[Requirement, ...] = ()
    excludes: tuple[str, ...] = ()
    lengths: frozenset[int] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lengths", _possible_lengths(self.components))

    @property
    def label(self) -> str:
        """``AI (01) GTIN`` for messages; ``AI (8110)`` where the dictionary gives no title."""
        return f"AI ({self.ai}) {self.title}" if self.title else f"AI ({self.ai})"

    @property
    def min_length(self) -> int:
        return min(self.lengths)

    @property
    def max_length(self) -> int:
        return max(self.lengths)

    @property
    def fixed_length(self) -> bool:
        return len(self.lengths) == 1

    @property
    def predefined_length(self) -> bool:
        """True when the AI's prefix is of predefined length: no GS ever follows its value."""
        return self.ai[:2] in PREDEFINED_LENGTHS

    @property
    def charset(self) -> str:
        """The charset letter: N, X, Y or Z; a mixed format such as N3 X..9 gives "N,X"."""
        return ",".join(dict.fromkeys(part.charset for part in self.components))

    @property
    def check_digit(self) -> bool:
        return any("csum" in part.linters for part in self.components)

    @property
    def date(self) -> bool:
        return any(DATE_LINTERS.intersection(part.linters) for part in self.components)

    @property
    def length_text(self) -> str:
        """The allowed lengths in words: "14", "1 to 20", "6 or 12"."""
        lengths = sorted(self.lengths)
        if len(lengths) == 1:
            return str(lengths[0])
        if lengths == list(range(lengths[0], lengths[-1] + 1)):
            return f"{lengths[0]} to {lengths[-1]}"
        return ", ".join(map(str, lengths[:-1])) + f" or {lengths[-1]}"


def _possible_lengths(components: tuple[Component, ...]) -> frozenset[int]:
    # Optional components may only be left out from the end, so every prefix of the component
    # list that contains all mandatory components is a valid shape.
    mandatory = sum(1 for part in components if not part.optional)
    possible: set[int] = set()
    reachable = {0}
    for count, part in enumerate(components, start=1):
        reachable = {
            total + size
            for total in reachable
            for size in range(part.min_length, part.max_length + 1)
        }
        if count >= mandatory:
            possible |= reachable
    return frozenset(possible)


DICTIONARY_FILE: Final = "gs1-syntax-dictionary.txt"
DICTIONARY_RELEASE: Final = "2026-01-27"
_FLAGS: Final = frozenset("*!?\"$%&'()+,-./:;<=>@[\\]^_`{|}~")
_COMPONENT = re.compile(
    r"^(?P<open>\[)?(?P<charset>[NXYZ])(?P<range>\.\.)?(?P<length>\d+)(?P<close>\])?"
    r"(?P<linters>(,\w+)*)$"
)


def _parse_component(text: str) -> Component:
    """``N13,csum,gcppos1`` or, optional, ``[N3],iso3166`` (the brackets hold the type only)."""
    match = _COMPONENT.match(text)
    if match is None or bool(match["open"]) != bool(match["close"]):
        raise ValueError(f"bad component {text!r} in the GS1 Syntax Dictionary")
    linters = tuple(filter(None, match["linters"].split(",")))
    unknown = set(linters) - LINTERS.keys()
    if unknown:
        raise ValueError(f"no linter {sorted(unknown)} for {text!r} (GS1 Syntax Dictionary)")
    length = int(match["length"])
    low = 1 if match["range"] else length
    return Component(match["charset"], low, length, bool(match["open"]), linters)


def _parse_requirement(text: str) -> Requirement:
    return tuple(tuple(alternative.split("+")) for alternative in text.split(","))


def _expand(ais: str) -> Iterator[str]:
    """ "3100-3105" gives 3100, 3101, ... 3105."""
    first, _, last = ais.partition("-")
    for number in range(int(first), int(last or first) + 1):
        yield str(number).zfill(len(first))


@dataclass(frozen=True)
class _Entry:
    """One line of the dictionary: ``AIs [Flags] Specification [Attributes...] [# Title]``."""

    ais: str
    flags: str
    specs: tuple[AiSpec, ...]


def _parse_entry(line: str) -> _Entry:
    body, _, title = line.partition("#")
    words = body.split()
    ais, rest = words[0], words[1:]
    flags = rest.pop(0) if rest and set(rest[0]) <= _FLAGS else ""
    components: list[Component] = []
    requires: list[Requirement] = []
    excludes: list[str] = []
    for word in rest:
        key, _, value = word.partition("=")
        if key == "req":
            requires.append(_parse_requirement(value))
        elif key == "ex":
            excludes.extend(value.split(","))
        elif key == "dlpkey":
            pass  # GS1 Digital Link primary key: no meaning for element strings
        elif value or word[0] not in "NXYZ[":
            raise ValueError(f"unknown attribute {word!r} for AI ({ais}) in the dictionary")
        else:
            components.append(_parse_component(word))
    if not components:
        raise ValueError(f"AI ({ais}) has no format specification in the dictionary")
    specs = tuple(
        AiSpec(ai, title.strip(), tuple(components), tuple(requires), tuple(excludes))
        for ai in _expand(ais)
    )
    return _Entry(ais, flags, specs)


def _parse_dictionary(text: str) -> dict[str, AiSpec]:
    """The AI table from the GS1 Barcode Syntax Dictionary's text.

    Its "*" flag (predefined length, no FNC1 separator) must agree with ``PREDEFINED_LENGTHS``,
    the fixed list scanners use: a release that disagreed would make element strings split
    differently here and in the field.
    """
    table: dict[str, AiSpec] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        entry = _parse_entry(line)
        for spec in entry.specs:
            if spec.predefined_length != ("*" in entry.flags):
                raise ValueError(
                    f"AI ({spec.ai}): the dictionary's predefined-length flag disagrees with "
                    "the table of predefined-length prefixes"
                )
            table[spec.ai] = spec
    return table


def _load_dictionary() -> dict[str, AiSpec]:
    text = resources.files("edge_agent.gs1").joinpath(DICTIONARY_FILE).read_text("utf-8")
    return _parse_dictionary(text)


def _ai_length_by_prefix(table: Mapping[str, AiSpec]) -> dict[str, int]:
    """AI length by its first two digits, checking the rules that make parsing unambiguous.

    All AIs sharing two leading digits have the same length, so the parser knows where an AI ends;
    predefined-length prefixes carry values of exactly that length, so it knows where they end.
    A table row breaking either rule would make element strings split in the wrong places.
    """
    lengths: dict[str, int] = {}
    for spec in table.values():
        if lengths.setdefault(spec.ai[:2], len(spec.ai)) != len(spec.ai):
            raise ValueError(f"AI ({spec.ai}) is longer or shorter than its prefix's other AIs")
        expected = PREDEFINED_LENGTHS.get(spec.ai[:2])
        if expected is not None and spec.lengths != {expected}:
            raise ValueError(f"AI ({spec.ai}) must have a value of exactly {expected} characters")
    return lengths


AI_TABLE: Final[Mapping[str, AiSpec]] = MappingProxyType(_load_dictionary())
_AI_LENGTH_BY_PREFIX: Final = _ai_length_by_prefix(AI_TABLE)


def lookup_prefix(data: str) -> AiSpec | None:
    """The AI that ``data`` starts with, or None when no AI in the table matches."""
    length = _AI_LENGTH_BY_PREFIX.get(data[:2])
    return None if length is None else AI_TABLE.get(data[:length])
