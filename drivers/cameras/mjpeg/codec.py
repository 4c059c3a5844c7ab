"""MJPEG over HTTP (``multipart/x-mixed-replace``): incremental part parser and part encoder.

No I/O here: ``MultipartParser.feed(bytes)`` returns the complete parts (or ``Malformed`` notes)
found so far, whatever the chunking. It is tolerant of what real IP cameras send: a boundary
given with or without its leading ``--``, blank lines or junk between parts, bare ``\\n`` line
ends, parts without ``Content-Length`` (the body then ends at the next boundary, so the frame is
only complete when the next one starts: cameras that omit the length add one frame of latency).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_HEADER_BYTES = 8192


@dataclass(frozen=True)
class Part:
    headers: dict[str, str]  # names lower-cased
    body: bytes


@dataclass(frozen=True)
class Malformed:
    reason: str
    skipped: int  # bytes thrown away


def boundary_from_content_type(content_type: str) -> bytes | None:
    """The boundary of a ``multipart/x-mixed-replace; boundary=...`` header, or None."""
    kind, _, params = content_type.partition(";")
    if not kind.strip().lower().startswith("multipart/"):
        return None
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary" and value.strip().strip('"'):
            return value.strip().strip('"').encode("latin-1")
    return None


def encode_part(body: bytes, boundary: bytes, headers: dict[str, str] | None = None) -> bytes:
    """One part as a camera sends it: boundary line, headers with Content-Length, body, CRLF."""
    lines = [b"--" + boundary, b"Content-Type: image/jpeg", b"Content-Length: %d" % len(body)]
    lines += [f"{name}: {value}".encode("latin-1") for name, value in (headers or {}).items()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body + b"\r\n"


class MultipartParser:
    """Bytes in, parts out. State survives between ``feed`` calls; memory is bounded."""

    def __init__(self, boundary: bytes, max_part_bytes: int = 32 * 1024 * 1024) -> None:
        bare = boundary.removeprefix(b"--") if boundary.startswith(b"--") else boundary
        self._marks = {b"--" + bare, bare, b"--" + boundary}
        self._delimiters = sorted({b"\n" + mark for mark in self._marks}, key=len)
        self._max_part = max_part_bytes
        self._buf = bytearray()
        self._state = "seek"
        self._headers: dict[str, str] = {}
        self._length: int | None = None

    def feed(self, data: bytes) -> list[Part | Malformed]:
        self._buf += data
        out: list[Part | Malformed] = []
        while True:
            step = {"seek": self._seek, "headers": self._header_line, "body": self._body}
            item = step[self._state]()
            if item is None:
                return out
            if not isinstance(item, bool):
                out.append(item)

    # Each step returns None (need more bytes), True (progress) or an item to emit.

    def _seek(self) -> Malformed | bool | None:
        end = self._buf.find(b"\n")
        if end < 0:
            if len(self._buf) > MAX_HEADER_BYTES:
                skipped = len(self._buf)
                self._buf.clear()
                return Malformed("junk without a boundary line", skipped)
            return None
        line = bytes(self._buf[:end]).strip()
        del self._buf[: end + 1]
        if line in self._marks:
            self._state, self._headers, self._length = "headers", {}, None
            return True
        if not line or any(line == mark + b"--" for mark in self._marks):
            return True  # blank line after a body, or the closing boundary
        return Malformed("junk between parts", len(line) + 1)

    def _header_line(self) -> Malformed | bool | None:
        end = self._buf.find(b"\n")
        if end < 0 or end > MAX_HEADER_BYTES:
            if len(self._buf) > MAX_HEADER_BYTES:
                return self._resync("part headers too long")
            return None
        line = bytes(self._buf[:end]).rstrip(b"\r")
        del self._buf[: end + 1]
        if line:
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep or not name.strip():
                return self._resync(f"bad part header line {line[:40]!r}")
            self._headers[name.strip().lower()] = value.strip()
            return True
        length = self._headers.get("content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self._max_part:
                return self._resync(f"bad Content-Length {length[:20]!r}")
            self._length = int(length)
        self._state = "body"
        return True

    def _body(self) -> Part | Malformed | bool | None:
        if self._length is not None:
            if len(self._buf) < self._length:
                return None
            body = bytes(self._buf[: self._length])
            del self._buf[: self._length]
            self._state = "seek"
            return Part(self._headers, body)
        cut = -1
        for delimiter in self._delimiters:
            at = self._buf.find(delimiter)
            if at >= 0 and (cut < 0 or at < cut):
                cut = at
        if cut < 0:
            if len(self._buf) > self._max_part:
                return self._resync("part without Content-Length exceeds max_part_bytes")
            return None
        body = bytes(self._buf[:cut]).removesuffix(b"\r")
        del self._buf[: cut + 1]  # keep the boundary line for _seek
        self._state = "seek"
        return Part(self._headers, body)

    def _resync(self, reason: str) -> Malformed:
        """Drop what was buffered of this part; continue at the next boundary line."""
        skipped = len(self._buf)
        self._buf.clear()
        self._state = "seek"
        return Malformed(reason, skipped)
