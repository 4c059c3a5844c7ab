"""Result strings of smart code readers (Cognex DataMan style): bytes <-> results, no I/O.

A smart reader decodes on the device and sends one line per trigger in a configurable format,
e.g. ``<trigger>;<grade>;<code>\\r\\n``. The format is a template with the placeholders
``{trigger}`` (required), ``{code}`` (required), ``{grade}`` and ``{symbology}``; everything
else is literal text. ``{code}`` may contain any character except the terminator (GS1 data can
hold ``;`` and ``,``), so the other fields are matched by their own shapes:

- ``{trigger}``: decimal digits;
- ``{grade}``: a letter A-F, or a number 0-4 (``2``, ``2.5``), or empty when not graded;
- ``{symbology}``: an AIM identifier such as ``]d2``, or empty.

A no-read is the configured no-read text (DataMan's default is ``NoRead``) in place of the code.
The code may start with the AIM symbology identifier (DataMan: "include symbology identifier");
FNC1 separators arrive as GS (0x1D) or as a configured substitute text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_FORMAT = "{trigger};{grade};{code}"
DEFAULT_TERMINATOR = "\r\n"
DEFAULT_NO_READ = "NoRead"
DEFAULT_MAX_LINE = 4096
GS = "\x1d"

_FIELD_PATTERNS = {
    "trigger": r"(?P<trigger>\d{1,12})",
    "grade": r"(?P<grade>[A-Fa-f]|[0-4](?:\.\d+)?|)",
    "symbology": r"(?P<symbology>\][A-Za-z][0-9A-Za-z]|)",
    "code": r"(?P<code>.*)",
}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_AIM_ID = re.compile(r"\][A-Za-z][0-9A-Za-z]")
_LETTER_GRADES = {"A": 4.0, "B": 3.0, "C": 2.0, "D": 1.0, "F": 0.0}


class FormatError(ValueError):
    """The configured result format cannot be used."""


@dataclass(frozen=True)
class ReaderResult:
    trigger: int
    code: str | None  # element string / decoded text with GS separators; None = no read
    symbology: str  # AIM identifier from the data or the format; "" if unknown
    grade: float | None  # overall grade on the 0-4 scale, if the reader sent one


@dataclass(frozen=True)
class Malformed:
    reason: str
    line: bytes  # the offending line (cut to 200 bytes) for the log


@dataclass(frozen=True)
class ResultFormat:
    template: str = DEFAULT_FORMAT
    terminator: str = DEFAULT_TERMINATOR
    no_read: str = DEFAULT_NO_READ
    gs_substitute: str | None = None  # text the reader sends in place of FNC1/GS, e.g. "<GS>"
    encoding: str = "latin-1"

    def __post_init__(self) -> None:
        compile_template(self.template)
        if not self.terminator:
            raise FormatError("the terminator must not be empty")
        if not self.no_read:
            raise FormatError("the no-read text must not be empty")

    @property
    def regex(self) -> re.Pattern[str]:
        return compile_template(self.template)


def compile_template(template: str) -> re.Pattern[str]:
    """The template as an anchored regex; FormatError names what is wrong with it."""
    parts: list[str] = []
    seen: list[str] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(template):
        name = match.group(1)
        if name not in _FIELD_PATTERNS:
            known = ", ".join("{" + n + "}" for n in _FIELD_PATTERNS)
            raise FormatError(f"unknown field {{{name}}} in {template!r}; known: {known}")
        if name in seen:
            raise FormatError(f"field {{{name}}} appears twice in {template!r}")
        seen.append(name)
        parts.append(re.escape(template[pos : match.start()]))
        parts.append(_FIELD_PATTERNS[name])
        pos = match.end()
    parts.append(re.escape(template[pos:]))
    for required in ("trigger", "code"):
        if required not in seen:
            raise FormatError(f"the format {template!r} needs a {{{required}}} field")
    return re.compile("".join(parts), re.DOTALL)


def parse_grade(text: str) -> float | None:
    """'B' -> 3.0, '2.5' -> 2.5, '' -> None. Raises ValueError for anything else."""
    if not text:
        return None
    if text.upper() in _LETTER_GRADES:
        return _LETTER_GRADES[text.upper()]
    value = float(text)
    if not 0.0 <= value <= 4.0:
        raise ValueError(f"grade {text!r} outside 0-4")
    return value


def format_grade(grade: float | None) -> str:
    if grade is None:
        return ""
    return "ABCDF"[min(4, max(0, 4 - int(grade)))] if float(grade).is_integer() else f"{grade:.1f}"


def parse_line(fmt: ResultFormat, line: str) -> ReaderResult:
    """One line without its terminator. Raises ValueError with the reason if it does not fit."""
    match = fmt.regex.fullmatch(line)
    if match is None:
        raise ValueError(f"does not match the format {fmt.template!r}")
    fields = match.groupdict()
    trigger = int(fields["trigger"])
    grade = parse_grade(fields.get("grade") or "")
    code: str | None = fields["code"]
    symbology = fields.get("symbology") or ""
    if code == fmt.no_read:
        return ReaderResult(trigger, None, symbology, grade)
    assert code is not None
    aim = _AIM_ID.match(code)
    if aim:
        symbology, code = aim.group(0), code[aim.end() :]
    if fmt.gs_substitute:
        code = code.replace(fmt.gs_substitute, GS)
    code = code.lstrip(GS)  # a leading FNC1 only says "GS1"; the AIM identifier says it too
    if not code:
        raise ValueError("empty code")
    return ReaderResult(trigger, code, symbology, grade)


def encode_result(fmt: ResultFormat, result: ReaderResult) -> bytes:
    """The line a reader sends for ``result`` (the simulator uses this)."""
    if result.code is None:
        code = fmt.no_read
    else:
        code = result.code.replace(GS, fmt.gs_substitute) if fmt.gs_substitute else result.code
        if "{symbology}" not in fmt.template:
            code = result.symbology + code
    text = fmt.template.format(
        trigger=result.trigger,
        grade=format_grade(result.grade),
        code=code,
        symbology=result.symbology,
    )
    return (text + fmt.terminator).encode(fmt.encoding)


class ResultDecoder:
    """Incremental: ``feed`` bytes as they arrive, get results and malformed lines back.

    Never raises. A line longer than ``max_line`` is reported once and skipped up to the next
    terminator, so a reader spewing garbage cannot grow the buffer without bound.
    """

    def __init__(self, fmt: ResultFormat, max_line: int = DEFAULT_MAX_LINE) -> None:
        self.fmt = fmt
        self.max_line = max_line
        self._terminator = fmt.terminator.encode(fmt.encoding)
        self._buf = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> list[ReaderResult | Malformed]:
        self._buf += data
        out: list[ReaderResult | Malformed] = []
        while True:
            at = self._buf.find(self._terminator)
            if at < 0:
                if len(self._buf) > self.max_line:
                    if not self._skipping:
                        out.append(Malformed("line too long", bytes(self._buf[:200])))
                    self._skipping = True
                    # keep a tail that may be the start of a split terminator
                    del self._buf[: len(self._buf) - len(self._terminator) + 1]
                return out
            line = bytes(self._buf[:at])
            del self._buf[: at + len(self._terminator)]
            if self._skipping:
                self._skipping = False
                continue
            out.append(self._parse(line))

    def close(self) -> list[Malformed]:
        """End of stream: a partial last line is malformed."""
        leftover, self._buf = bytes(self._buf), bytearray()
        skipping, self._skipping = self._skipping, False
        return [Malformed("truncated line", leftover[:200])] if leftover and not skipping else []

    def _parse(self, line: bytes) -> ReaderResult | Malformed:
        if len(line) > self.max_line:
            return Malformed("line too long", line[:200])
        try:
            return parse_line(self.fmt, line.decode(self.fmt.encoding))
        except (ValueError, UnicodeDecodeError) as exc:
            return Malformed(str(exc), line[:200])
