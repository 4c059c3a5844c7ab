"""Wire codec of the buffered remote-field binary protocol ("rci"): bytes <-> frames. Pure.

Frame (README.md next to this file)::

    ESC STX | cmd:u8 | len:u16 BE | payload[len] | ESC ETX | checksum:u8

ESC (0x1B) inside cmd, len, payload or checksum is sent doubled (ESC ESC), so ESC STX / ESC ETX
never occur inside a frame. ``checksum`` is the two's complement of the byte sum of cmd, len and
payload (unstuffed), so those bytes plus the checksum sum to 0 mod 256.

``FrameDecoder.feed`` never raises and is independent of chunking: garbage between frames, a
frame cut short by a new ESC STX, an overlong frame and a checksum error each come out as one
``Malformed`` and the decoder resynchronises on the next ESC STX.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Final

ESC: Final = 0x1B
STX: Final = 0x02
ETX: Final = 0x03
MAX_PAYLOAD: Final = 1024

# host -> printer commands; the printer's reply carries the same command byte
SELECT_JOB: Final = 0x10
LOAD_RECORD: Final = 0x11  # one record into the remote-field buffer
STATUS: Final = 0x12
CLEAR_BUFFERS: Final = 0x13
START_PRINT: Final = 0x14
STOP_PRINT: Final = 0x15  # stopping also clears the remote-field buffers
BAD_FRAME: Final = 0x7F  # printer's reply to a frame it could not decode
# printer -> host, unsolicited
PRINT_END: Final = 0x80
FAULT: Final = 0x81
FAULT_CLEARED: Final = 0x82

REPLY_CMDS: Final = frozenset(
    {SELECT_JOB, LOAD_RECORD, STATUS, CLEAR_BUFFERS, START_PRINT, STOP_PRINT, BAD_FRAME}
)

# reply status byte
OK: Final = 0
STATUS_NAMES: Final = {
    1: "BUFFER_FULL",
    2: "NO_JOB",
    3: "BAD_DATA",
    4: "FAULT",
    5: "BAD_COMMAND",
    6: "NOT_PRINTING",
    7: "BAD_FRAME",
}
STATUS_CODES: Final = {name: code for code, name in STATUS_NAMES.items()}

# printer states in the STATUS reply
STATES: Final = ("idle", "ready", "printing", "fault")

_CSET82 = re.compile(rb"[!\"%&'()*+,\-./0-9:;<=>?A-Z_a-z]{1,20}")
_TOKEN = re.compile(rb"[!-~]{1,64}")
_U64_MAX = 2**64 - 1


class EncodeError(ValueError):
    """A value cannot be put in a frame."""


@dataclass(frozen=True)
class Frame:
    cmd: int
    payload: bytes


@dataclass(frozen=True)
class Malformed:
    raw: bytes  # at most 64 bytes of it, to recognise
    why: str


def checksum(body: bytes) -> int:
    return -sum(body) & 0xFF


def _stuff(data: bytes) -> bytes:
    return data.replace(b"\x1b", b"\x1b\x1b")


def encode_frame(cmd: int, payload: bytes = b"") -> bytes:
    if not 0 <= cmd <= 0xFF:
        raise EncodeError(f"command {cmd} is not a byte")
    if len(payload) > MAX_PAYLOAD:
        raise EncodeError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = bytes([cmd]) + struct.pack(">H", len(payload)) + payload
    return b"\x1b\x02" + _stuff(body) + b"\x1b\x03" + _stuff(bytes([checksum(body)]))


class FrameDecoder:
    """Bytes -> ``Frame`` | ``Malformed``; see the module docstring."""

    _MAX_BODY = 3 + MAX_PAYLOAD

    def __init__(self) -> None:
        self._in_frame = False
        self._body = bytearray()
        self._garbage = bytearray()
        self._esc = False  # the previous byte was an unpaired ESC
        self._await_sum = False  # ESC ETX seen; the checksum byte comes next
        self.frames = 0
        self.errors = 0

    def feed(self, data: bytes) -> list[Frame | Malformed]:
        out: list[Frame | Malformed] = []
        for byte in data:
            self._step(byte, out)
        return out

    def _bad(self, out: list[Frame | Malformed], raw: bytes | bytearray, why: str) -> None:
        self.errors += 1
        out.append(Malformed(bytes(raw[:64]), why))

    def _flush_garbage(self, out: list[Frame | Malformed]) -> None:
        if self._garbage:
            self._bad(out, self._garbage, f"{len(self._garbage)} bytes outside any frame")
            self._garbage.clear()

    def _start(self, out: list[Frame | Malformed]) -> None:
        self._flush_garbage(out)
        if self._in_frame:
            self._bad(out, self._body, "partial frame (a new frame started)")
        self._in_frame, self._await_sum = True, False
        self._body.clear()

    def _step(self, byte: int, out: list[Frame | Malformed]) -> None:
        if self._esc:
            self._esc = False
            if byte == STX:
                self._start(out)
            elif byte == ESC and not self._in_frame:
                # No stuffing outside a frame: this ESC may start the next frame
                self._garbage.append(ESC)
                self._esc = True
                self._cap_garbage(out)
            elif byte == ESC:
                self._data(ESC, out)
            elif byte == ETX and self._in_frame and not self._await_sum:
                self._await_sum = True
            elif self._in_frame:
                self._in_frame = False
                self._bad(out, self._body, f"ESC followed by 0x{byte:02x} inside a frame")
            else:
                self._garbage += bytes([ESC, byte])
                self._cap_garbage(out)
            return
        if byte == ESC:
            self._esc = True
            return
        self._data(byte, out)

    def _cap_garbage(self, out: list[Frame | Malformed]) -> None:
        if len(self._garbage) > 4096:  # bounded memory on a stream of pure noise
            self._flush_garbage(out)

    def _data(self, byte: int, out: list[Frame | Malformed]) -> None:
        if not self._in_frame:
            self._garbage.append(byte)
            self._cap_garbage(out)
            return
        if self._await_sum:
            self._in_frame = False
            self._finish(byte, out)
            return
        self._body.append(byte)
        if len(self._body) > self._MAX_BODY:
            self._in_frame = False
            self._bad(out, self._body, "frame longer than the protocol allows")

    def _finish(self, received: int, out: list[Frame | Malformed]) -> None:
        body = bytes(self._body)
        if len(body) < 3:
            self._bad(out, body, "frame too short")
        elif struct.unpack(">H", body[1:3])[0] != len(body) - 3:
            self._bad(out, body, "length field does not match the payload")
        elif checksum(body) != received:
            self._bad(out, body, "checksum error")
        else:
            self.frames += 1
            out.append(Frame(body[0], body[3:]))


# --- payloads ------------------------------------------------------------------------------


def _ascii(value: str, pattern: re.Pattern[bytes], what: str) -> bytes:
    data = value.encode("ascii", "replace")
    if pattern.fullmatch(data) is None:
        raise EncodeError(f"{what} {value!r} is invalid")
    return data


def _text(text: str) -> bytes:
    return "".join(ch if " " <= ch <= "~" else "?" for ch in text[:200]).encode("ascii")


def encode_select_job(name: str, gtin: str, lot: str, expiry: str) -> bytes:
    if not (gtin.isdigit() and len(gtin) == 14 and expiry.isdigit() and len(expiry) == 6):
        raise EncodeError("GTIN must be 14 digits and expiry YYMMDD")
    fields = [
        _ascii(name, _TOKEN, "job name"),
        gtin.encode(),
        _ascii(lot, _CSET82, "lot"),
        expiry.encode(),
    ]
    return encode_frame(SELECT_JOB, b"\x00".join(fields))


def encode_record(seq: int, serial: str) -> bytes:
    if not 0 <= seq <= _U64_MAX:
        raise EncodeError(f"seq {seq} does not fit 64 bits")
    return encode_frame(LOAD_RECORD, struct.pack(">Q", seq) + _ascii(serial, _CSET82, "serial"))


def encode_print_end(seq: int, serial: str) -> bytes:
    return encode_frame(PRINT_END, struct.pack(">Q", seq) + serial.encode("ascii"))


def encode_fault(code: str, text: str) -> bytes:
    return encode_frame(FAULT, _ascii(code, _TOKEN, "fault code") + b"\x00" + _text(text))


def encode_fault_cleared(code: str) -> bytes:
    return encode_frame(FAULT_CLEARED, _ascii(code, _TOKEN, "fault code"))


def encode_ok(cmd: int, data: bytes = b"") -> bytes:
    return encode_frame(cmd, bytes([OK]) + data)


def encode_refusal(cmd: int, status: str, text: str) -> bytes:
    return encode_frame(cmd, bytes([STATUS_CODES[status]]) + _text(text))


def encode_cleared(cmd: int, records: list[tuple[int, str]]) -> bytes:
    """OK reply to CLEAR_BUFFERS / STOP_PRINT: ``discarded:u8``, then each discarded record,
    oldest first, as ``seq:u64 len:u8 serial``. 32 buffers of 20-character serials fit the
    payload with room to spare."""
    if len(records) > 0xFF:
        raise EncodeError(f"{len(records)} records do not fit a count byte")
    data = bytes([len(records)])
    for seq, serial in records:
        text = _ascii(serial, _CSET82, "serial")
        data += struct.pack(">QB", seq, len(text)) + text
    return encode_ok(cmd, data)


def encode_status_reply(
    state: str, buffered: int, capacity: int, printed: int, fault: str
) -> bytes:
    data = struct.pack(">BBBI", STATES.index(state), buffered, capacity, printed)
    return encode_ok(STATUS, data + fault.encode("ascii"))


# --- decoded messages ----------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    cmd: int
    status: int  # OK or a STATUS_NAMES key
    data: bytes  # after the status byte: the result, or the refusal text

    @property
    def status_name(self) -> str:
        return STATUS_NAMES.get(self.status, f"STATUS_{self.status}")


@dataclass(frozen=True)
class StatusInfo:
    state: str
    buffered: int
    capacity: int
    printed: int
    fault: str


@dataclass(frozen=True)
class PrintEnd:
    seq: int
    serial: str


@dataclass(frozen=True)
class FaultNotice:
    code: str
    text: str


@dataclass(frozen=True)
class FaultCleared:
    code: str


@dataclass(frozen=True)
class Cleared:
    """What a CLEAR_BUFFERS / STOP_PRINT reply says was discarded. ``records`` (seq, serial),
    oldest first, or None from a printer that only counts."""

    discarded: int
    records: tuple[tuple[int, str], ...] | None


Message = Reply | PrintEnd | FaultNotice | FaultCleared | Malformed


def _printable(data: bytes) -> str | None:
    return data.decode("ascii") if all(0x20 <= b <= 0x7E for b in data) else None


def parse_frame(frame: Frame) -> Message:
    """A frame from the printer -> message. Never raises."""
    cmd, p = frame.cmd, frame.payload
    raw = encode_frame(cmd, p)[:64]
    if cmd in REPLY_CMDS:
        if not p:
            return Malformed(raw, "reply without a status byte")
        return Reply(cmd, p[0], p[1:])
    if cmd == PRINT_END:
        serial = p[8:]
        if len(p) < 9 or _CSET82.fullmatch(serial) is None:
            return Malformed(raw, "bad PRINT_END payload")
        return PrintEnd(struct.unpack(">Q", p[:8])[0], serial.decode("ascii"))
    if cmd == FAULT:
        code, sep, text = p.partition(b"\x00")
        shown = _printable(text)
        if not sep or _TOKEN.fullmatch(code) is None or shown is None:
            return Malformed(raw, "bad FAULT payload")
        return FaultNotice(code.decode("ascii"), shown)
    if cmd == FAULT_CLEARED:
        if _TOKEN.fullmatch(p) is None:
            return Malformed(raw, "bad FAULT_CLEARED payload")
        return FaultCleared(p.decode("ascii"))
    return Malformed(raw, f"unknown command 0x{cmd:02x}")


def parse_status(reply: Reply) -> StatusInfo | None:
    d = reply.data
    if reply.status != OK or len(d) < 7 or d[0] >= len(STATES):
        return None
    state, buffered, capacity, printed = struct.unpack(">BBBI", d[:7])
    fault = _printable(d[7:])
    if fault is None or (fault and _TOKEN.fullmatch(d[7:]) is None):
        return None
    return StatusInfo(STATES[state], buffered, capacity, printed, fault)


def parse_cleared(reply: Reply) -> Cleared | None:
    """The data of an OK CLEAR_BUFFERS / STOP_PRINT reply, or None if it does not fit."""
    d = reply.data
    if reply.status != OK or not d:
        return None
    if len(d) == 1:  # a count alone names nothing, unless there was nothing to name
        return Cleared(d[0], () if d[0] == 0 else None)
    records: list[tuple[int, str]] = []
    at = 1
    while at < len(d):
        if len(d) < at + 9:
            return None
        seq, size = struct.unpack(">QB", d[at : at + 9])
        serial = d[at + 9 : at + 9 + size]
        if len(serial) != size or _CSET82.fullmatch(serial) is None:
            return None
        records.append((seq, serial.decode("ascii")))
        at += 9 + size
    if len(records) != d[0]:
        return None
    return Cleared(d[0], tuple(records))


class MessageDecoder:
    """Host side: bytes from the printer -> messages."""

    def __init__(self) -> None:
        self.frames = FrameDecoder()

    def feed(self, data: bytes) -> list[Message]:
        return [
            item if isinstance(item, Malformed) else parse_frame(item)
            for item in self.frames.feed(data)
        ]


# --- printer side: host commands -----------------------------------------------------------


@dataclass(frozen=True)
class JobCommand:
    name: str
    gtin: str
    lot: str
    expiry: str


@dataclass(frozen=True)
class RecordCommand:
    seq: int
    serial: bytes  # judged by the printer (BAD_DATA), so kept as received


@dataclass(frozen=True)
class SimpleCommand:
    cmd: int


Command = JobCommand | RecordCommand | SimpleCommand


def parse_command(frame: Frame) -> Command | Malformed:
    cmd, p = frame.cmd, frame.payload
    raw = encode_frame(cmd, p)[:64]
    if cmd == SELECT_JOB:
        parts = p.split(b"\x00")
        texts = [_printable(part) for part in parts]
        if len(parts) != 4 or any(t is None for t in texts):
            return Malformed(raw, "SELECT_JOB needs name, gtin, lot, expiry")
        name, gtin, lot, expiry = (t or "" for t in texts)
        return JobCommand(name, gtin, lot, expiry)
    if cmd == LOAD_RECORD:
        if len(p) < 9:
            return Malformed(raw, "LOAD_RECORD needs seq and serial")
        return RecordCommand(struct.unpack(">Q", p[:8])[0], p[8:])
    if cmd in (STATUS, CLEAR_BUFFERS, START_PRINT, STOP_PRINT):
        if p:
            return Malformed(raw, f"command 0x{cmd:02x} takes no payload")
        return SimpleCommand(cmd)
    return Malformed(raw, f"unknown command 0x{cmd:02x}")


def is_serial(data: bytes) -> bool:
    return _CSET82.fullmatch(data) is not None


def is_job(job: JobCommand) -> bool:
    return (
        _TOKEN.fullmatch(job.name.encode()) is not None
        and len(job.gtin) == 14
        and job.gtin.isdigit()
        and _CSET82.fullmatch(job.lot.encode()) is not None
        and len(job.expiry) == 6
        and job.expiry.isdigit()
    )


class CommandDecoder:
    """Printer side: bytes from the host -> commands."""

    def __init__(self) -> None:
        self.frames = FrameDecoder()

    def feed(self, data: bytes) -> list[Command | Malformed]:
        return [
            item if isinstance(item, Malformed) else parse_command(item)
            for item in self.frames.feed(data)
        ]
