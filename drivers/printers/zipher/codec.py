"""Wire codec of the Zipher-style text protocol: bytes <-> messages. Pure: no I/O, no clock.

See README.md next to this file. Both directions share the framing (CR LF lines, ``|``-separated
fields with a trailing ``|``). The host side decodes with ``ReplyDecoder``; the printer side (the
simulator) with ``CommandDecoder``. Decoding never raises: what does not fit is ``Malformed``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from drivers.printers.ascii.codec import LineSplitter, Malformed

__all__ = ["Malformed"]

EOL: Final = b"\r\n"
SEP: Final = "|"
MAX_LINE: Final = 1024

# Overall states of GST/STS, numbered as Zipher controllers number them
SHUTDOWN, STARTING, SHUTTING_DOWN, RUNNING, OFFLINE = range(5)
# Error states of GST/STS/ERS
NO_ERROR, WARNING, FAULTED = range(3)

NOTIFICATIONS: Final = frozenset({"PRS", "PRC", "STS", "ERS", "JOB"})

_TOKEN = re.compile(r"[!-{}~]{1,64}")
_FIELD = re.compile(r"[ -{}~]*")
_NUMBER = re.compile(r"[0-9]{1,19}")
_CSET82 = re.compile(r"[!\"%&'()*+,\-./0-9:;<=>?A-Z_a-z]{1,20}")
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")


class EncodeError(ValueError):
    """A value cannot be put on the wire."""


def is_token(value: str) -> bool:
    return _TOKEN.fullmatch(value) is not None


def is_serial(value: str) -> bool:
    return _CSET82.fullmatch(value) is not None


def _num(value: str) -> bool:
    return _NUMBER.fullmatch(value) is not None


def _text(text: str) -> str:
    return "".join(ch if " " <= ch <= "~" and ch != SEP else "?" for ch in text[:200])


def line(cmd: str, *fields: str) -> bytes:
    """``CMD|f1|f2|`` + CR LF; a command without fields is just ``CMD``."""
    for value in (cmd, *fields):
        if _FIELD.fullmatch(value) is None:
            raise EncodeError(f"field {value!r} is not printable ASCII without '|'")
    text = cmd + "".join(SEP + f for f in fields) + (SEP if fields else "")
    if len(text) > MAX_LINE:
        raise EncodeError(f"line of {len(text)} bytes exceeds {MAX_LINE}")
    return text.encode("ascii") + EOL


def split(text: str) -> tuple[str, list[str]] | None:
    """``CMD|a|b|`` -> ("CMD", ["a", "b"]); None if the trailing ``|`` is missing."""
    if SEP not in text:
        return text, []
    if not text.endswith(SEP):
        return None
    head, *fields = text[:-1].split(SEP)
    return head, fields


def named(fields: list[str]) -> dict[str, str] | None:
    """``KEY=value`` fields -> dict; None if any is not of that form or a key repeats."""
    out: dict[str, str] = {}
    for item in fields:
        key, eq, value = item.partition("=")
        if not eq or _KEY.fullmatch(key) is None or key in out:
            return None
        out[key] = value
    return out


# --- printer -> host -----------------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    pass


@dataclass(frozen=True)
class Err:
    code: str
    text: str


@dataclass(frozen=True)
class State:
    """``STS|<state>|<error state>|<job>|<batch count>|<total count>|`` (GST reply or async)."""

    state: int
    error: int
    job: str
    batch_count: int
    total_count: int


@dataclass(frozen=True)
class QueueSize:
    """``QSZ|<queued>|<capacity>|``."""

    queued: int
    capacity: int


@dataclass(frozen=True)
class Faults:
    """``GFT|<n>|<code>|<text>|...`` or ``GWN|...``: the current faults or warnings."""

    kind: str  # "GFT" | "GWN"
    items: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class QueueCleared:
    """``CQI|<discarded>|``."""

    discarded: int


@dataclass(frozen=True)
class Discarded:
    """``CQD|<seq>|<serial>|``: ``CQI|ALL|`` discarded this record unprinted (before the reply)."""

    seq: int
    serial: str


@dataclass(frozen=True)
class PrintStart:
    seq: int


@dataclass(frozen=True)
class PrintComplete:
    seq: int
    serial: str


@dataclass(frozen=True)
class ErrorStatus:
    """``ERS|<error state>|<code>|<text>|``; ``ERS|0|`` when the last error is cleared."""

    error: int
    code: str
    text: str


Message = (
    Ack
    | Err
    | State
    | QueueSize
    | Faults
    | QueueCleared
    | Discarded
    | PrintStart
    | PrintComplete
    | ErrorStatus
    | Malformed
)


def encode_ack() -> bytes:
    return line("ACK")


def encode_err(code: str, text: str) -> bytes:
    return line("ERR", code, _text(text))


def encode_state(s: State) -> bytes:
    nums = (str(s.state), str(s.error))
    return line("STS", *nums, s.job, str(s.batch_count), str(s.total_count))


def encode_qsz(queued: int, capacity: int) -> bytes:
    return line("QSZ", str(queued), str(capacity))


def encode_faults(kind: str, items: list[tuple[str, str]]) -> bytes:
    flat = [part for code, text in items for part in (code, _text(text))]
    return line(kind, str(len(items)), *flat)


def encode_cqi_reply(discarded: int) -> bytes:
    return line("CQI", str(discarded))


def encode_cqd(seq: int, serial: str) -> bytes:
    return line("CQD", str(seq), serial)


def encode_prs(seq: int) -> bytes:
    return line("PRS", str(seq))


def encode_prc(seq: int, serial: str) -> bytes:
    return line("PRC", str(seq), serial)


def encode_ers(error: int, code: str = "", text: str = "") -> bytes:
    if error == NO_ERROR:
        return line("ERS", "0")
    return line("ERS", str(error), code, _text(text))


def _parse_state(f: list[str]) -> Message | None:
    if len(f) == 5 and all(_num(f[i]) for i in (0, 1, 3, 4)) and (f[2] == "" or is_token(f[2])):
        return State(int(f[0]), int(f[1]), f[2], int(f[3]), int(f[4]))
    return None


def _parse_faults(kind: str, f: list[str]) -> Message | None:
    if not f or not _num(f[0]) or len(f) != 1 + 2 * int(f[0]):
        return None
    pairs = tuple(zip(f[1::2], f[2::2], strict=True))
    if not all(is_token(code) for code, _ in pairs):
        return None
    return Faults(kind, pairs)


def _parse_reply(head: str, f: list[str]) -> Message | None:
    match head, f:
        case "ACK", []:
            return Ack()
        case "ERR", [code, *text] if is_token(code) and text:
            return Err(code, SEP.join(text))  # a printer's text may hold a stray '|'
        case "STS", _:
            return _parse_state(f)
        case "QSZ", [queued, capacity] if _num(queued) and _num(capacity):
            return QueueSize(int(queued), int(capacity))
        case (("GFT" | "GWN"), _):
            return _parse_faults(head, f)
        case "CQI", [n] if _num(n):
            return QueueCleared(int(n))
        case "PRS", [seq] if _num(seq):
            return PrintStart(int(seq))
        case "PRC", [seq, serial] if _num(seq) and is_serial(serial):
            return PrintComplete(int(seq), serial)
        case "CQD", [seq, serial] if _num(seq) and is_serial(serial):
            return Discarded(int(seq), serial)
        case "ERS", ["0"]:
            return ErrorStatus(NO_ERROR, "", "")
        case "ERS", [err, code, text] if err in ("1", "2") and is_token(code):
            return ErrorStatus(int(err), code, text)
    return None


def parse_message(text: str) -> Message:
    """One line from the printer (without CR LF). Never raises."""
    raw = text.encode("utf-8", "backslashreplace")[:MAX_LINE]
    parts = split(text)
    if parts is None:
        return Malformed(raw, "fields must end with '|'")
    message = _parse_reply(*parts)
    return message if message is not None else Malformed(raw, f"bad {parts[0][:16]!r} message")


class ReplyDecoder:
    """Host side: bytes from the printer -> replies and notifications."""

    def __init__(self) -> None:
        self._splitter = LineSplitter()

    def feed(self, data: bytes) -> list[Message]:
        return [
            item if isinstance(item, Malformed) else parse_message(item)
            for item in self._splitter.feed(data)
        ]


# --- host -> printer -----------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One host command: its name and fields (named fields already split into ``named``)."""

    cmd: str
    fields: tuple[str, ...]
    named: tuple[tuple[str, str], ...] = ()


def encode_sla(job: str, fields: dict[str, str]) -> bytes:
    if not is_token(job):
        raise EncodeError(f"job name {job!r} is invalid")
    return line("SLA", job, *_named(fields))


def encode_jda(fields: dict[str, str]) -> bytes:
    return line("JDA", *_named(fields))


def encode_jdi(seq: int, serial: str) -> bytes:
    if not _num(str(seq)) or not is_serial(serial):
        raise EncodeError(f"record {seq}/{serial!r} is invalid")
    return line("JDI", f"SEQ={seq}", f"SN={serial}")


def encode_sno(notification: str, on: bool) -> bytes:
    return line("SNO", notification, "1" if on else "0")


def encode_sst(state: int) -> bytes:
    return line("SST", str(state))


def encode_simple(cmd: str) -> bytes:
    """GST, QSZ, GFT, GWN, CAF."""
    return line(cmd)


def encode_cqi_all() -> bytes:
    return line("CQI", "ALL")


def _named(fields: dict[str, str]) -> list[str]:
    out = []
    for key, value in fields.items():
        if _KEY.fullmatch(key) is None:
            raise EncodeError(f"field name {key!r} is invalid")
        out.append(f"{key}={value}")
    return out


def parse_command(text: str) -> Command | Malformed:
    """One line from the host (without CR LF). Never raises."""
    raw = text.encode("utf-8", "backslashreplace")[:MAX_LINE]
    parts = split(text)
    if parts is None:
        return Malformed(raw, "fields must end with '|'")
    cmd, fields = parts
    if not is_token(cmd):
        return Malformed(raw, "no command name")
    if cmd in ("JDA", "JDI") or (cmd == "SLA" and fields):
        pairs = named(fields[1:] if cmd == "SLA" else fields)
        if pairs is None:
            return Malformed(raw, f"{cmd} needs KEY=value fields")
        head = (fields[0],) if cmd == "SLA" else ()
        return Command(cmd, head, tuple(pairs.items()))
    return Command(cmd, tuple(fields))


class CommandDecoder:
    """Printer side: bytes from the host -> commands."""

    def __init__(self) -> None:
        self._splitter = LineSplitter()

    def feed(self, data: bytes) -> list[Command | Malformed]:
        return [
            item if isinstance(item, Malformed) else parse_command(item)
            for item in self._splitter.feed(data)
        ]


def command_of(raw: bytes) -> str:
    head = raw.split(b"|", 1)[0][:16].decode("ascii", "replace")
    return "".join(ch if " " < ch <= "~" else "?" for ch in head) or "?"
