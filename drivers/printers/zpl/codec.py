"""Wire codec of Zebra ZPL for serialized case labels: bytes <-> messages. Pure: no I/O, no clock.

Host side: ``render_label`` fills a label template with one unit's variable data, ``HostStatus``
parses the printer's three-string ``~HS`` answer, and ``StatusDecoder`` cuts the byte stream from
the printer into those answers. Printer side (the simulator): ``FormatSplitter`` cuts the stream
the host sends into ``^XA..^XZ`` formats and ``~`` commands, and ``label_data`` pulls the GS1 data
out of a format's DataMatrix field. Decoding never raises on input: what does not fit comes out as
``Malformed``.

``~HS`` layout (ZPL II programming guide), each string framed ``STX ... ETX CR LF``::

    1: aaa,b,c,dddd,eee,f,g,h,iii,j,k,l     b paper out, c pause, eee formats in receive buffer,
                                            f buffer full, h partial format, j corrupt RAM,
                                            k under temperature, l over temperature
    2: mmm,n,o,p,q,r,s,t,uuuuuuuu,v,www     o head up, p ribbon out, uuuuuuuu labels remaining
                                            in the batch being printed
    3: xxxx,y                               password, static RAM installed
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

STX: Final = 0x02
ETX: Final = 0x03
GS: Final = "\x1d"

MAX_STRING: Final = 128
"""Longest ``~HS`` string we accept between STX and ETX; real ones are under 40 bytes."""

MAX_FORMAT: Final = 16384
"""Longest label format the simulator accepts between ``^XA`` and ``^XZ``."""

HOST_STATUS: Final = b"~HS"
ODOMETER: Final = b'! U1 getvar "odometer.total_label_count"\r\n'
"""SGD query of the printer's label counter; the answer is the count in double quotes."""
MAX_QUOTED: Final = 24
CANCEL_ALL: Final = b"~JA"
PAUSE: Final = b"~PP"
RESUME: Final = b"~PS"

# ~HS flags that stop printing, by the name the ZPL manual gives them. The driver reports these
# as the fault code, so an alarm says what the printer said.
STOPPING_FLAGS: Final = ("paper_out", "ribbon_out", "head_up", "pause", "over_temp", "corrupt_ram")
WARNING_FLAGS: Final = ("buffer_full", "under_temp", "partial_format")

PLACEHOLDERS: Final = ("gtin", "lot", "expiry", "serial")
# Characters that ZPL or the barcode field escapes would interpret inside field data: ^ and ~
# start commands, _ is the DataMatrix escape (and ^FH hex indicator), > is the Code 128
# subset/FNC escape, \ is a common ^FH indicator. GS1 set 82 allows _ and >; values using
# them are refused instead of being printed as something else.
_UNSAFE = re.compile(r"[\^~_>\\]")
_VALUE = re.compile(r"[!-~]{1,20}")
_PLACEHOLDER = re.compile(r"\{([a-z_]*)\}")


# --- host status -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HostStatus:
    """The parts of a ``~HS`` answer the driver acts on."""

    paper_out: bool
    pause: bool
    formats_in_buffer: int
    buffer_full: bool
    partial_format: bool
    corrupt_ram: bool
    under_temp: bool
    over_temp: bool
    head_up: bool
    ribbon_out: bool
    labels_remaining: int

    @property
    def pending(self) -> int:
        """Labels accepted but not yet printed: formats queued plus what is left of the current."""
        return self.formats_in_buffer + self.labels_remaining

    def flags(self, names: tuple[str, ...]) -> list[str]:
        return [name for name in names if getattr(self, name)]


@dataclass(frozen=True)
class Odometer:
    """The printer's own count of labels printed, ever (answer to ``ODOMETER``)."""

    labels: int


@dataclass(frozen=True)
class Malformed:
    """Input that does not fit. ``raw`` is at most ``MAX_STRING`` bytes of it."""

    raw: bytes
    why: str


_DIGITS = re.compile(rb"[0-9]{1,8}")


def _flag(value: bytes) -> bool | None:
    return {b"0": False, b"1": True}.get(value)


def _number(value: bytes) -> int | None:
    return int(value) if _DIGITS.fullmatch(value) else None


def parse_host_status(strings: tuple[bytes, bytes, bytes]) -> HostStatus | Malformed:
    """Three STX..ETX contents, in order -> HostStatus, or Malformed naming the first problem."""
    one, two, three = (s.split(b",") for s in strings)
    if (len(one), len(two), len(three)) != (12, 11, 2):
        return Malformed(b"|".join(strings)[:MAX_STRING], "~HS strings of the wrong field count")
    flags = {
        "paper_out": _flag(one[1]),
        "pause": _flag(one[2]),
        "buffer_full": _flag(one[5]),
        "partial_format": _flag(one[7]),
        "corrupt_ram": _flag(one[9]),
        "under_temp": _flag(one[10]),
        "over_temp": _flag(one[11]),
        "head_up": _flag(two[2]),
        "ribbon_out": _flag(two[3]),
    }
    formats, remaining = _number(one[4]), _number(two[8])
    bad = [name for name, value in flags.items() if value is None]
    if bad or formats is None or remaining is None:
        why = f"~HS field not a flag or count: {', '.join(bad) or 'count'}"
        return Malformed(b"|".join(strings)[:MAX_STRING], why)
    return HostStatus(
        formats_in_buffer=formats,
        labels_remaining=remaining,
        **{name: bool(value) for name, value in flags.items()},
    )


def encode_host_status(status: HostStatus, *, label_length: int = 1218) -> bytes:
    """The printer's answer to ``~HS`` (used by the simulator)."""

    def b(value: bool) -> str:
        return "1" if value else "0"

    s = status
    one = (
        f"030,{b(s.paper_out)},{b(s.pause)},{label_length:04d},{s.formats_in_buffer:03d},"
        f"{b(s.buffer_full)},0,{b(s.partial_format)},000,{b(s.corrupt_ram)},"
        f"{b(s.under_temp)},{b(s.over_temp)}"
    )
    two = f"001,0,{b(s.head_up)},{b(s.ribbon_out)},1,2,6,0,{s.labels_remaining:08d},1,000"
    three = "1234,0"
    return b"".join(b"\x02" + x.encode("ascii") + b"\x03\r\n" for x in (one, two, three))


class StatusDecoder:
    """Host side: bytes from the printer -> HostStatus and Odometer answers and Malformed, never
    raising and independent of how the stream is chunked. Bytes outside STX..ETX and "..." other
    than CR/LF are garbage; an answer with a bad string is dropped whole (the next poll asks
    again)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._strings: list[bytes] = []
        self._in_string = False
        self._quoted: bytearray | None = None

    def feed(self, data: bytes) -> list[HostStatus | Odometer | Malformed]:
        out: list[HostStatus | Odometer | Malformed] = []
        garbage = bytearray()
        for byte in data:
            if self._quoted is not None:
                if byte == 0x22:
                    value, self._quoted = bytes(self._quoted), None
                    count = int(value) if re.fullmatch(rb"[0-9]{1,18}", value) else None
                    out.append(
                        Odometer(count) if count is not None else Malformed(value, "bad counter")
                    )
                elif byte == STX:  # an answer starts: the quoted value was cut
                    out.append(Malformed(bytes(self._quoted), "unterminated quoted value"))
                    self._quoted, self._in_string, self._buf = None, True, bytearray()
                elif len(self._quoted) >= MAX_QUOTED:
                    out.append(Malformed(bytes(self._quoted), "unterminated quoted value"))
                    self._quoted = None
                else:
                    self._quoted.append(byte)
                continue
            if not self._in_string:
                if byte == STX:
                    self._in_string, self._buf = True, bytearray()
                elif byte == 0x22:
                    self._quoted = bytearray()
                elif byte not in (0x0D, 0x0A):
                    garbage.append(byte)
                continue
            if byte == ETX:
                self._in_string = False
                out.extend(self._string(bytes(self._buf)))
            elif byte == STX or len(self._buf) >= MAX_STRING:
                out.append(Malformed(bytes(self._buf[:MAX_STRING]), "unterminated ~HS string"))
                self._strings = []
                self._in_string = byte == STX
                self._buf = bytearray()
            else:
                self._buf.append(byte)
        if garbage and self._strings:
            # Garbage between answers also means any half-read answer is suspect
            self._strings = []
            out.append(Malformed(bytes(garbage[:MAX_STRING]), "bytes inside a ~HS answer"))
        elif garbage:
            out.append(Malformed(bytes(garbage[:MAX_STRING]), "bytes outside an STX..ETX string"))
        return out

    def _string(self, string: bytes) -> list[HostStatus | Odometer | Malformed]:
        """Strings are told apart by field count (12, 11, 2), so a cut answer costs only itself:
        a first string always starts a new answer."""
        fields = string.count(b",") + 1
        if fields == 12:
            dropped = self._strings
            self._strings = [string]
            return [Malformed(b"|".join(dropped), "incomplete ~HS answer")] if dropped else []
        if (len(self._strings), fields) in ((1, 11), (2, 2)):
            self._strings.append(string)
            if len(self._strings) < 3:
                return []
            s, self._strings = self._strings, []
            return [parse_host_status((s[0], s[1], s[2]))]
        self._strings = []
        return [Malformed(string[:MAX_STRING], "~HS string out of order")]


@dataclass(frozen=True)
class Answer:
    """One whole answer to the driver's question (``~HS`` followed by the label counter)."""

    status: HostStatus
    odometer: int


class AnswerDecoder:
    """Host side: bytes -> ``Answer`` and ``Malformed``. The printer answers ``~HS`` and the
    counter back to back: only that pair is an answer, so a cut answer is lost whole and a stray
    quoted number is never taken for a counter."""

    def __init__(self) -> None:
        self._strings = StatusDecoder()
        self._status: HostStatus | None = None

    def feed(self, data: bytes) -> list[Answer | Malformed]:
        out: list[Answer | Malformed] = []
        for item in self._strings.feed(data):
            match item:
                case HostStatus():
                    if self._status is not None:
                        out.append(_unpaired(self._status, "~HS answer without its counter"))
                    self._status = item
                case Odometer(labels=labels) if self._status is not None:
                    out.append(Answer(self._status, labels))
                    self._status = None
                case Odometer():
                    out.append(_unpaired(item, "counter without its ~HS answer"))
                case Malformed():
                    self._status = None
                    out.append(item)
        return out


def _unpaired(item: HostStatus | Odometer, why: str) -> Malformed:
    return Malformed(repr(item).encode()[:MAX_STRING], why)


# --- label template ----------------------------------------------------------------------------


class TemplateError(ValueError):
    """A label template or a value for it cannot make a correct label."""


DEFAULT_TEMPLATE: Final = (
    "^XA^CI28^PW812^LL1218"
    # GS1 DataMatrix: ECC 200 with _ as escape character, _1 = FNC1 (first: GS1; later: separator)
    "^FO60,60^BXN,10,200,,,,_^FD_101{gtin}17{expiry}10{lot}_121{serial}^FS"
    # GS1-128: >; starts subset C, >8 is FNC1, >6 switches to subset B for alphanumeric values
    "^FO60,420^BY3^BCN,160,Y,N,N^FD>;>801{gtin}17{expiry}>610{lot}>821{serial}^FS"
    "^FO60,700^A0N,40,40^FDGTIN {gtin}  LOT {lot}  EXP {expiry}^FS"
    "^FO60,760^A0N,40,40^FDSN {serial}^FS"
    "^XZ"
)
"""A 4x6 in case label: GS1 DataMatrix and GS1-128 with (01)(17)(10)(21), and human text."""


def check_template(template: str) -> str:
    """Raise TemplateError unless the template makes exactly one label per record with a serial."""
    body = template.strip()
    if not (body.startswith("^XA") and body.endswith("^XZ")):
        raise TemplateError("must start with ^XA and end with ^XZ (one label format)")
    if body.count("^XA") != 1 or body.count("^XZ") != 1:
        raise TemplateError("must hold exactly one ^XA..^XZ format")
    upper = body.upper()
    if "^PQ" in upper:
        raise TemplateError("must not set ^PQ: the driver prints exactly one label per serial")
    if "~" in body:
        raise TemplateError("must not contain ~ commands (they run at once, outside the format)")
    if "^BX" not in upper:
        raise TemplateError("needs a ^BX DataMatrix field: the camera verifies it")
    names = set(_PLACEHOLDER.findall(body))
    unknown = names - set(PLACEHOLDERS)
    if unknown:
        raise TemplateError(f"unknown placeholder(s) {sorted(unknown)}; known: {PLACEHOLDERS}")
    if "serial" not in names:
        raise TemplateError("needs the {serial} placeholder")
    if not body.isascii():
        raise TemplateError("must be ASCII")
    return body


def check_value(name: str, value: str) -> None:
    if _VALUE.fullmatch(value) is None:
        raise TemplateError(f"{name} {value!r} is not 1..20 printable ASCII characters")
    if _UNSAFE.search(value):
        raise TemplateError(f"{name} {value!r} contains one of ^ ~ _ > \\, which ZPL interprets")


def render_label(template: str, *, gtin: str, lot: str, expiry: str, serial: str) -> bytes:
    """One format with the values filled in, ``^PQ1`` (one label) before ``^XZ``."""
    values = {"gtin": gtin, "lot": lot, "expiry": expiry, "serial": serial}
    for name, value in values.items():
        check_value(name, value)
    text = _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
    return (text.removesuffix("^XZ") + "^PQ1,0,1,Y^XZ\r\n").encode("ascii")


# --- logistic labels (cases and pallets) ------------------------------------------------------

LABEL_PLACEHOLDERS: Final = ("sscc", "gtin", "count", "lot", "expiry")

DEFAULT_LOGISTIC_TEMPLATE: Final = (
    "^XA^CI28^PW812^LL1218"
    "^FO60,40^A0N,44,44^FDSSCC^FS^FO220,40^A0N,44,44^FD(00) {sscc}^FS"
    "^FO60,110^A0N,36,36^FDCONTENT (02) {gtin}  COUNT (37) {count}^FS"
    "^FO60,160^A0N,36,36^FDBATCH (10) {lot}  EXPIRY (17) {expiry}^FS"
    # GS1 DataMatrix with every AI: fixed-length AIs first, FNC1 (_1) after the variable (37)
    "^FO200,240^BXN,10,200,,,,_^FD_100{sscc}02{gtin}17{expiry}37{count}_110{lot}^FS"
    # GS1-128 of the SSCC alone (the logistic label's bottom barcode), HRI printed below it
    "^FO60,860^BY4^BCN,220,Y,N,N^FD>;>800{sscc}^FS"
    "^XZ"
)
"""A 4x6 in GS1 logistic label: SSCC in GS1 DataMatrix (with 02, 37, 10, 17) and GS1-128."""


def check_label_template(template: str) -> str:
    """Raise TemplateError unless the template makes one logistic label with its SSCC."""
    body = template.strip()
    if not (body.startswith("^XA") and body.endswith("^XZ")) or body.count("^XA") != 1:
        raise TemplateError("must hold exactly one ^XA..^XZ label format")
    if "^PQ" in body.upper() or "~" in body or not body.isascii():
        raise TemplateError("must be ASCII without ^PQ or ~ commands (one label per SSCC)")
    if "^BX" not in body.upper():
        raise TemplateError("needs a ^BX DataMatrix field: the label camera verifies it")
    names = set(_PLACEHOLDER.findall(body))
    unknown = names - set(LABEL_PLACEHOLDERS)
    if unknown:
        raise TemplateError(
            f"unknown placeholder(s) {sorted(unknown)}; known: {LABEL_PLACEHOLDERS}"
        )
    if "sscc" not in names:
        raise TemplateError("needs the {sscc} placeholder")
    return body


def render_logistic_label(
    template: str, *, sscc: str, gtin: str, count: int, lot: str, expiry: str
) -> bytes:
    """One logistic label format with the values filled in, ``^PQ1`` before ``^XZ``."""
    if not (len(sscc) == 18 and sscc.isdigit()):
        raise TemplateError(f"SSCC {sscc!r} is not 18 digits")
    if not 1 <= count <= 99_999_999:
        raise TemplateError(f"count {count} is outside 1..99999999 (AI 37)")
    values = {"sscc": sscc, "gtin": gtin, "count": str(count), "lot": lot, "expiry": expiry}
    for name, value in values.items():
        check_value(name, value)
    text = _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
    return (text.removesuffix("^XZ") + "^PQ1,0,1,Y^XZ\r\n").encode("ascii")


# --- trade item labels (a case identified by its own GTIN and a serial) ------------------------

CASE_PLACEHOLDERS: Final = ("gtin", "serial", "lot", "expiry", "count")

DEFAULT_CASE_TEMPLATE: Final = (
    "^XA^CI28^PW812^LL1218"
    "^FO60,40^A0N,44,44^FDGTIN (01) {gtin}^FS"
    "^FO60,100^A0N,44,44^FDSN (21) {serial}^FS"
    "^FO60,160^A0N,36,36^FDBATCH (10) {lot}  EXPIRY (17) {expiry}^FS"
    # GS1 DataMatrix: fixed-length AIs first, FNC1 (_1) after the variable lot, serial last
    "^FO200,240^BXN,10,200,,,,_^FD_101{gtin}17{expiry}10{lot}_121{serial}^FS"
    # GS1-128 with the same content (>8 FNC1, >6 subset B for the alphanumeric values), HRI below
    "^FO40,860^BY3^BCN,200,Y,N,N^FD>;>801{gtin}17{expiry}>610{lot}>821{serial}^FS"
    "^XZ"
)
"""A 4x6 in label of a homogeneous case: (01) case GTIN, (21) serial, (10) lot, (17) expiry in
GS1 DataMatrix and GS1-128, with the HRI. No count: the case GTIN fixes it (AI 37 is for the
content of an SSCC; a variable-measure case GTIN, indicator 9, needs its own template with
``30{count}``)."""


def check_case_template(template: str) -> str:
    """Raise TemplateError unless the template makes one case label with its GTIN and serial."""
    body = template.strip()
    if not (body.startswith("^XA") and body.endswith("^XZ")) or body.count("^XA") != 1:
        raise TemplateError("must hold exactly one ^XA..^XZ label format")
    if "^PQ" in body.upper() or "~" in body or not body.isascii():
        raise TemplateError("must be ASCII without ^PQ or ~ commands (one label per case)")
    if "^BX" not in body.upper():
        raise TemplateError("needs a ^BX DataMatrix field: the label camera verifies it")
    names = set(_PLACEHOLDER.findall(body))
    unknown = names - set(CASE_PLACEHOLDERS)
    if unknown:
        raise TemplateError(f"unknown placeholder(s) {sorted(unknown)}; known: {CASE_PLACEHOLDERS}")
    missing = {"gtin", "serial"} - names
    if missing:
        raise TemplateError(f"needs the {', '.join(sorted(missing))} placeholder(s)")
    return body


def render_case_label(
    template: str, *, gtin: str, serial: str, lot: str, expiry: str, count: int
) -> bytes:
    """One case label format with the values filled in, ``^PQ1`` before ``^XZ``."""
    if not (len(gtin) == 14 and gtin.isdigit()):
        raise TemplateError(f"case GTIN {gtin!r} is not 14 digits")
    if gtin.startswith("9") and "{count}" not in template:
        raise TemplateError(
            f"case GTIN {gtin} is variable measure (indicator 9): its label carries the count "
            "(AI 30); give case_template a 30{count} in its barcodes"
        )
    values = {"gtin": gtin, "serial": serial, "lot": lot, "expiry": expiry, "count": str(count)}
    for name, value in values.items():
        check_value(name, value)
    text = _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
    return (text.removesuffix("^XZ") + "^PQ1,0,1,Y^XZ\r\n").encode("ascii")


# --- printer side (simulator) ------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    """One ``^XA..^XZ`` label format as received."""

    text: str


@dataclass(frozen=True)
class Sgd:
    """A ``! U1`` Set-Get-Do command line, e.g. ``getvar "odometer.total_label_count"``."""

    command: str


@dataclass(frozen=True)
class Tilde:
    """A ``~`` command, e.g. ``HS``, ``JA``, ``PP``, ``PS``."""

    name: str


class FormatSplitter:
    """Printer side: the host's byte stream -> formats and ``~`` commands. ``~`` commands run as
    soon as they are read, even between formats; bytes outside a format are ignored, like the
    printer ignores stray data. Never raises, independent of chunking."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Format | Tilde | Sgd | Malformed]:
        self._buf += data
        out: list[Format | Tilde | Sgd | Malformed] = []
        buf = self._buf
        while True:
            tilde, start, sgd = buf.find(b"~"), buf.find(b"^XA"), buf.find(b"! U1 ")
            if sgd >= 0 and all(x < 0 or sgd < x for x in (tilde, start)):
                end = buf.find(b"\r\n", sgd)
                if end < 0:
                    if len(buf) - sgd > MAX_STRING:
                        out.append(Malformed(bytes(buf[sgd : sgd + 64]), "SGD line too long"))
                        del buf[: sgd + 5]
                        continue
                    break
                line = bytes(buf[sgd + 5 : end]).decode("ascii", "replace")
                out.append(Sgd(line))
                del buf[: end + 2]
                continue
            if tilde >= 0 and (start < 0 or tilde < start):
                if len(buf) < tilde + 3:
                    break
                name = bytes(buf[tilde + 1 : tilde + 3]).decode("ascii", "replace").upper()
                out.append(Tilde(name))
                del buf[: tilde + 3]
                continue
            if start < 0:
                del buf[: max(0, len(buf) - 4)]  # keep a possible "^X" or "! U1" split
                break
            end = buf.find(b"^XZ", start)
            if end < 0:
                if len(buf) - start > MAX_FORMAT:
                    out.append(Malformed(bytes(buf[start : start + 64]), "format too long"))
                    del buf[: start + 3]
                    continue
                del buf[:start]
                break
            raw = bytes(buf[start : end + 3])
            del buf[: end + 3]
            try:
                out.append(Format(raw.decode("ascii")))
            except UnicodeDecodeError:
                out.append(Malformed(raw[:64], "non-ASCII format"))
        return out


_BX_FIELD = re.compile(r"\^BX[^\^]*\^FD(.*?)\^FS", re.S)
_PQ = re.compile(r"\^PQ(\d+)")


def label_data(fmt: Format) -> str | None:
    """The GS1 element string in the format's DataMatrix (``_1`` -> FNC1/GS), or None."""
    match = _BX_FIELD.search(fmt.text)
    if match is None:
        return None
    data = match.group(1)
    if not data.startswith("_1"):
        return None
    return data[2:].replace("_1", GS)


def label_quantity(fmt: Format) -> int:
    match = _PQ.search(fmt.text)
    return int(match.group(1)) if match else 1
