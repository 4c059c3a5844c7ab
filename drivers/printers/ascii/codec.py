"""Wire codec of the "ascii" printer protocol: bytes <-> messages. Pure: no I/O, no clock.

The protocol is described in README.md next to this file. The host side (the driver) encodes
commands and decodes replies/notifications with ``LineDecoder``; the printer side (the simulator)
uses the same framing with ``LineSplitter`` + ``parse_command`` and encodes replies with the
``encode_ack``/``encode_nak``/notification encoders. Decoding never raises on input: anything
that does not fit the protocol comes out as ``Malformed``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

MAX_LINE: Final = 1024
"""Longest allowed line in bytes, excluding the CR LF terminator."""

EOL: Final = b"\r\n"
SEP: Final = "|"

STATES: Final = frozenset({"ready", "printing", "fault", "idle"})

TOKEN_PATTERN: Final = r"[!-{}~]{1,64}"
"""Names and codes: 1..64 printable ASCII characters, no space and no ``|``."""

_TOKEN = re.compile(TOKEN_PATTERN)
_FIELD = re.compile(r"[ -{}~]*")  # printable ASCII without |: anything that stays one field
_PRINTABLE = re.compile(r"[ -~]*")
_PRINTABLE_BYTES = re.compile(rb"[ -~]*")
_NUMBER = re.compile(r"[0-9]{1,19}")  # fits an int64, so seq numbers survive any host language
_GTIN = re.compile(r"[0-9]{14}")
_YYMMDD = re.compile(r"[0-9]{2}(0[1-9]|1[0-2])(0[0-9]|[12][0-9]|3[01])")  # GS1 allows DD=00
_CSET82 = re.compile(r"[!\"%&'()*+,\-./0-9:;<=>?A-Z_a-z]{1,20}")  # GS1 AI 10 / AI 21 values

_TEXT_MAX = 200
_TOO_LONG = f"line longer than {MAX_LINE} bytes"


# --- messages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    """``ACK|<cmd>|<args...>``: the printer accepted a command."""

    cmd: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Nak:
    """``NAK|<cmd>|<code>|<text>``: the printer refused a command."""

    cmd: str
    code: str
    text: str


@dataclass(frozen=True)
class PrintComplete:
    """``!PRC|<seq>|<serial>``: the record was printed on a unit."""

    seq: int
    serial: str


@dataclass(frozen=True)
class Discarded:
    """``!DIS|<seq>|<serial>``: ``CLR`` discarded this record unprinted (sent before the ACK)."""

    seq: int
    serial: str


@dataclass(frozen=True)
class FaultNotice:
    """``!FLT|<code>|<text>``: the printer stopped on a fault."""

    code: str
    text: str


@dataclass(frozen=True)
class FaultCleared:
    """``!CLR|<code>``: the fault is gone."""

    code: str


@dataclass(frozen=True)
class Malformed:
    """Input that does not fit the protocol. ``raw`` is at most ``MAX_LINE`` bytes of it."""

    raw: bytes
    why: str


Message = Ack | Nak | PrintComplete | Discarded | FaultNotice | FaultCleared | Malformed


@dataclass(frozen=True)
class JobCommand:
    name: str
    gtin: str
    lot: str
    expiry: str


@dataclass(frozen=True)
class RecCommand:
    seq: int
    serial: str


@dataclass(frozen=True)
class StsCommand:
    pass


@dataclass(frozen=True)
class ClrCommand:
    pass


Command = JobCommand | RecCommand | StsCommand | ClrCommand


# --- validation helpers --------------------------------------------------------------------


def is_serial(value: str) -> bool:
    """A GS1 AI 21 value: 1..20 characters of GS1 character set 82."""
    return _CSET82.fullmatch(value) is not None


def is_token(value: str) -> bool:
    return _TOKEN.fullmatch(value) is not None


def command_of(raw: bytes) -> str:
    """The command name of a (possibly garbled) command line, fit to echo in a NAK."""
    head = raw.split(b"|", 1)[0][:16].decode("ascii", "replace")
    name = "".join(ch if " " < ch <= "~" else "?" for ch in head)
    return name or "?"


def _raw(line: str) -> bytes:
    # backslashreplace copes with lone surrogates, so this never raises
    return line.encode("utf-8", "backslashreplace")[:MAX_LINE]


# --- encoding ------------------------------------------------------------------------------


class EncodeError(ValueError):
    """A value cannot be put on the wire (would break framing or violates the field format)."""


def _line(*fields: str) -> bytes:
    for value in fields:
        if _FIELD.fullmatch(value) is None:
            raise EncodeError(f"field {value!r} is not printable ASCII without '|'")
    data = SEP.join(fields).encode("ascii")
    if len(data) > MAX_LINE:
        raise EncodeError(f"line of {len(data)} bytes exceeds {MAX_LINE}")
    return data + EOL


def _require(ok: bool, what: str, value: object) -> None:
    if not ok:
        raise EncodeError(f"{what} {value!r} is invalid")


def _text(text: str) -> str:
    """Free text is for humans: squash anything that could break the line instead of failing."""
    return "".join(ch if " " <= ch <= "~" and ch != SEP else "?" for ch in text[:_TEXT_MAX])


def encode_job(name: str, gtin: str, lot: str, expiry: str) -> bytes:
    _require(is_token(name), "job name", name)
    _require(_GTIN.fullmatch(gtin) is not None, "GTIN", gtin)
    _require(_CSET82.fullmatch(lot) is not None, "lot", lot)
    _require(_YYMMDD.fullmatch(expiry) is not None, "expiry", expiry)
    return _line("JOB", name, f"gtin={gtin}", f"lot={lot}", f"expiry={expiry}")


def encode_rec(seq: int, serial: str) -> bytes:
    _require(_NUMBER.fullmatch(str(seq)) is not None, "seq", seq)
    _require(is_serial(serial), "serial", serial)
    return _line("REC", str(seq), serial)


def encode_sts() -> bytes:
    return _line("STS")


def encode_clr() -> bytes:
    return _line("CLR")


def encode_ack(cmd: str, *args: str) -> bytes:
    return _line("ACK", cmd, *args)


def encode_nak(cmd: str, code: str, text: str) -> bytes:
    return _line("NAK", cmd, code, _text(text))


def encode_print_complete(seq: int, serial: str) -> bytes:
    return _line("!PRC", str(seq), serial)


def encode_discarded(seq: int, serial: str) -> bytes:
    return _line("!DIS", str(seq), serial)


def encode_fault(code: str, text: str) -> bytes:
    return _line("!FLT", code, _text(text))


def encode_fault_cleared(code: str) -> bytes:
    return _line("!CLR", code)


# --- framing -------------------------------------------------------------------------------


def _frame(line: bytes) -> str | Malformed:
    """Check one LF-terminated line (LF already removed)."""
    if len(line) > MAX_LINE + 1:
        return Malformed(line[:MAX_LINE], _TOO_LONG)
    if not line.endswith(b"\r"):
        return Malformed(line[:MAX_LINE], "line not terminated by CR LF")
    content = line[:-1]
    if _PRINTABLE_BYTES.fullmatch(content) is None:
        return Malformed(content, "non-printable or non-ASCII byte")
    return content.decode("ascii")


class LineSplitter:
    """Cuts a byte stream into lines. Feeding never raises and is independent of chunking:
    the same stream yields the same items however it is split."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._discarding = False  # inside an overlong line already reported

    def feed(self, data: bytes) -> list[str | Malformed]:
        buf = self._buf
        buf += data
        out: list[str | Malformed] = []
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            if self._discarding:
                self._discarding = False
            else:
                out.append(_frame(bytes(buf[start:end])))
            start = end + 1
        del buf[:start]
        # An unterminated line that is already too long is reported now, so memory stays bounded
        if not self._discarding and len(buf) > MAX_LINE + 1:
            out.append(Malformed(bytes(buf[:MAX_LINE]), _TOO_LONG))
            self._discarding = True
        if self._discarding:
            buf.clear()
        return out


class LineDecoder:
    """Host side: bytes from the printer -> replies and notifications."""

    def __init__(self) -> None:
        self._splitter = LineSplitter()

    def feed(self, data: bytes) -> list[Message]:
        return [
            item if isinstance(item, Malformed) else parse_message(item)
            for item in self._splitter.feed(data)
        ]


# --- parsing: printer -> host --------------------------------------------------------------


def _ack_args_ok(cmd: str, args: list[str]) -> bool:
    match cmd, args:
        case "JOB", [name]:
            return is_token(name)
        case ("REC", [number]) | ("CLR", [number]):
            return _NUMBER.fullmatch(number) is not None
        case "STS", [state, buffered, printed, fault]:
            numbers_ok = all(_NUMBER.fullmatch(n) for n in (buffered, printed))
            return state in STATES and numbers_ok and (fault == "" or is_token(fault))
    return False


def _parse_ack(rest: str, raw: bytes) -> Message:
    cmd, *args = rest.split(SEP)
    if not _ack_args_ok(cmd, args):
        return Malformed(raw, f"bad ACK of {cmd[:16]!r}")
    return Ack(cmd, tuple(args))


def _parse_nak(rest: str, raw: bytes) -> Message:
    parts = rest.split(SEP, 2)  # the text is last and may not be trusted to lack '|'
    if len(parts) != 3 or not is_token(parts[1]):
        return Malformed(raw, "expected NAK|<cmd>|<code>|<text>")
    return Nak(parts[0], parts[1], parts[2])


def _record(rest: str) -> tuple[int, str] | None:
    parts = rest.split(SEP)
    if len(parts) != 2 or not _NUMBER.fullmatch(parts[0]) or not is_serial(parts[1]):
        return None
    return int(parts[0]), parts[1]


def _parse_prc(rest: str, raw: bytes) -> Message:
    record = _record(rest)
    return (
        Malformed(raw, "expected !PRC|<seq>|<serial>") if record is None else PrintComplete(*record)
    )


def _parse_dis(rest: str, raw: bytes) -> Message:
    record = _record(rest)
    return Malformed(raw, "expected !DIS|<seq>|<serial>") if record is None else Discarded(*record)


def _parse_flt(rest: str, raw: bytes) -> Message:
    parts = rest.split(SEP, 1)
    if len(parts) != 2 or not is_token(parts[0]):
        return Malformed(raw, "expected !FLT|<code>|<text>")
    return FaultNotice(parts[0], parts[1])


def _parse_clr(rest: str, raw: bytes) -> Message:
    if not is_token(rest):
        return Malformed(raw, "expected !CLR|<code>")
    return FaultCleared(rest)


_MESSAGE_PARSERS = {
    "ACK": _parse_ack,
    "NAK": _parse_nak,
    "!PRC": _parse_prc,
    "!DIS": _parse_dis,
    "!FLT": _parse_flt,
    "!CLR": _parse_clr,
}


def parse_message(line: str) -> Message:
    """One line (without CR LF) from the printer. Never raises."""
    raw = _raw(line)
    if len(raw) > MAX_LINE or _PRINTABLE.fullmatch(line) is None:
        return Malformed(raw, "not a line of printable ASCII")
    head, _, rest = line.partition(SEP)
    parser = _MESSAGE_PARSERS.get(head)
    if parser is None:
        return Malformed(raw, f"unknown message {head[:16]!r}")
    return parser(rest, raw)


# --- parsing: host -> printer --------------------------------------------------------------


def _parse_job(fields: list[str], raw: bytes) -> Command | Malformed:
    if len(fields) != 4 or not is_token(fields[0]):
        return Malformed(raw, "expected JOB|<name>|gtin=..|lot=..|expiry=..")
    pairs = [field.partition("=") for field in fields[1:]]
    values = {key: value for key, _, value in pairs}
    if sorted(values) != ["expiry", "gtin", "lot"]:
        return Malformed(raw, "JOB needs gtin=, lot= and expiry= once each")
    if not _GTIN.fullmatch(values["gtin"]):
        return Malformed(raw, "gtin must be 14 digits")
    if not _CSET82.fullmatch(values["lot"]):
        return Malformed(raw, "lot must be 1..20 characters of GS1 set 82")
    if not _YYMMDD.fullmatch(values["expiry"]):
        return Malformed(raw, "expiry must be YYMMDD")
    return JobCommand(fields[0], values["gtin"], values["lot"], values["expiry"])


def _parse_rec(fields: list[str], raw: bytes) -> Command | Malformed:
    # Only the syntax is checked here; the printer judges the serial itself (NAK BAD_RECORD)
    if len(fields) != 2 or not _NUMBER.fullmatch(fields[0]) or not fields[1]:
        return Malformed(raw, "expected REC|<seq>|<serial>")
    return RecCommand(int(fields[0]), fields[1])


def parse_command(line: str) -> Command | Malformed:
    """One line (without CR LF) from the host. Never raises."""
    raw = _raw(line)
    if len(raw) > MAX_LINE or _PRINTABLE.fullmatch(line) is None:
        return Malformed(raw, "not a line of printable ASCII")
    cmd, *fields = line.split(SEP)
    match cmd, fields:
        case "JOB", _:
            return _parse_job(fields, raw)
        case "REC", _:
            return _parse_rec(fields, raw)
        case "STS", []:
            return StsCommand()
        case "CLR", []:
            return ClrCommand()
        case ("STS", _) | ("CLR", _):
            return Malformed(raw, f"{cmd} takes no arguments")
    return Malformed(raw, f"unknown command {cmd[:16]!r}")
