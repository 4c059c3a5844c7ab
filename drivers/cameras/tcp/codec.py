"""The "tcp-frames" wire format: a 16-byte header, then the image payload. No I/O here.

Header (big-endian, ``>4sIHHBBI``): magic ``b"FRM1"``, trigger count (u32), width (u16), height
(u16), encoding (u8: 0 = raw 8-bit grayscale row-major, 1 = PNG), reserved (u8 = 0), payload
length (u32).

The protocol has no checksum, so the decoder trusts a header only after it passes every check,
and on any doubt it rescans for the next magic one byte further on. That recovers from garbage,
from a spurious magic inside garbage and from a bad frame alike, and the result does not depend on
how the stream was chunked.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

from edge_agent.contracts import GrayImage
from edge_agent.errors import ProtocolError

MAGIC = b"FRM1"
HEADER = struct.Struct(">4sIHHBBI")
HEADER_SIZE = HEADER.size  # 16
ENCODING_RAW = 0
ENCODING_PNG = 1
DEFAULT_MAX_FRAME_BYTES = 32 * 1024 * 1024
STAGING_SIZE = 256 * 1024  # bytes one receive takes between raw payloads (headers, PNGs)
PROTOCOL = "tcp-frames"

_PNG_TRAILER = b"\x00\x00\x00\x00IEND\xaeB`\x82"


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    trigger: int
    image: GrayImage  # (height, width) uint8; read-only for raw frames (a view on the payload)
    encoding: int


@dataclass(frozen=True, slots=True)
class Malformed:
    """Input the decoder had to throw away. ``skipped`` counts the discarded bytes."""

    reason: str
    skipped: int
    trigger: int | None = None


def encode_frame(trigger: int, image: GrayImage, encoding: int = ENCODING_RAW) -> bytes:
    """One frame on the wire: header + payload."""
    _check_image(image)
    height, width = image.shape
    if encoding == ENCODING_RAW:
        payload = np.ascontiguousarray(image).tobytes()
    elif encoding == ENCODING_PNG:
        ok, buf = cv2.imencode(".png", image)
        if not ok:
            raise ProtocolError(PROTOCOL, "PNG encoding failed")
        payload = buf.tobytes()
    else:
        raise ProtocolError(PROTOCOL, f"unknown encoding {encoding}")
    if not 0 <= trigger <= 0xFFFFFFFF:
        raise ProtocolError(PROTOCOL, f"trigger {trigger} does not fit in u32")
    header = HEADER.pack(MAGIC, trigger, width, height, encoding, 0, len(payload))
    return header + payload


def _check_image(image: GrayImage) -> None:
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ProtocolError(PROTOCOL, f"need a 2-D uint8 image, got {image.dtype} {image.shape}")
    height, width = image.shape
    if not (0 < width <= 0xFFFF and 0 < height <= 0xFFFF):
        raise ProtocolError(PROTOCOL, f"image size {width}x{height} does not fit the header")


@dataclass(frozen=True, slots=True)
class _Header:
    trigger: int
    width: int
    height: int
    encoding: int
    length: int


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes as they arrive, get whole frames back. Never raises."""

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._header: _Header | None = None  # validated header of the frame being received
        # A raw frame's payload is received into a buffer of its own, the image's memory: on a
        # 5 MP camera each copy through a growing buffer costs milliseconds.
        self._payload: bytearray | None = None
        self._filled = 0  # bytes of ``_payload`` received
        self._staging = bytearray(STAGING_SIZE)  # what ``receive_buffer`` lends between frames
        self._skipped = 0  # bytes thrown away since the stream was last in sync
        self._skip_reason = ""
        self._skip_trigger: int | None = None

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a frame."""
        if self._payload is not None:
            return HEADER_SIZE + self._filled
        return len(self._buf)

    def receive_buffer(self) -> memoryview:
        """Where the link's next bytes go (``recv_into``; then ``received``): the rest of a raw
        frame's payload, in place, or else a staging area."""
        if self._payload is not None:
            return memoryview(self._payload)[self._filled :]
        return memoryview(self._staging)

    def may_decode_png_received(self, count: int) -> bool:
        """``may_decode_png`` for the ``count`` bytes just put into ``receive_buffer()``."""
        if self._payload is not None:
            return False  # a raw payload's bytes, and a frame ends with them at the most
        return self._may_decode_png(self._staging, count)

    def received(self, count: int) -> list[DecodedFrame | Malformed]:
        """``feed`` for the ``count`` bytes put into ``receive_buffer()``."""
        if self._payload is None:
            return self.feed(memoryview(self._staging)[:count])
        self._filled += count
        return self._drain()

    def may_decode_png(self, data: bytes | bytearray) -> bool:
        """Whether feeding ``data`` could decode a PNG payload (milliseconds on a big frame:
        the caller runs such a feed off the event loop; framing raw frames costs a copy).
        Conservative: True whenever a PNG header may be among the bytes, whatever the chunking.
        It walks the headers as ``feed`` will: a raw frame's payload is skipped (a search
        through it cost 50 us a VGA frame), a header ``feed`` refuses is searched past."""
        return self._may_decode_png(data, len(data))

    def _may_decode_png(self, data: bytes | bytearray, end: int) -> bool:
        """``may_decode_png`` for ``data[:end]``, without the copy a slice would make."""
        at = 0
        if self._payload is not None:
            at = len(self._payload) - self._filled  # the rest of its payload
        elif self._header is not None:
            return True  # a PNG's payload (a raw one is received into ``_payload``)
        elif self._buf:  # a header split across feeds: its encoding is not known yet
            return True
        at = data.find(MAGIC, at, end)
        while at >= 0:
            if at + HEADER_SIZE > end:
                return True  # a header this feed ends in
            header, reserved = _read_header(data, at)
            if self._header_problem(header, reserved):
                at = data.find(MAGIC, at + 1, end)
            elif header.encoding == ENCODING_PNG:
                return True
            else:
                at = data.find(MAGIC, at + HEADER_SIZE + header.length, end)
        return False

    def feed(self, data: bytes | bytearray | memoryview) -> list[DecodedFrame | Malformed]:
        view = memoryview(data).cast("B")
        if self._payload is not None:  # then nothing else is buffered
            take = min(len(view), len(self._payload) - self._filled)
            self._payload[self._filled : self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
        self._buf += view
        return self._drain()

    def _drain(self) -> list[DecodedFrame | Malformed]:
        out: list[DecodedFrame | Malformed] = []
        while self._step(out):
            pass
        return out

    def close(self) -> list[Malformed]:
        """End of stream: report whatever could not become a frame, and reset."""
        out: list[DecodedFrame | Malformed] = []
        held = self.buffered
        if held:
            reason = "truncated frame" if self._header else "trailing bytes"
            trigger = self._header.trigger if self._header else None
            self._buf.clear()
            self._payload, self._filled = None, 0
            self._note_skipped(held, reason, trigger)
        self._header = None
        self._flush_skipped(out)
        return [item for item in out if isinstance(item, Malformed)]

    # --- parsing ----------------------------------------------------------------------------

    def _step(self, out: list[DecodedFrame | Malformed]) -> bool:
        """Make one unit of progress; False when more bytes are needed."""
        if self._payload is not None:
            return self._finish_raw(out)
        if self._header is None:
            return self._sync_and_parse_header(out)
        header = self._header
        if header.encoding == ENCODING_RAW:
            self._start_raw(header)
            return True
        end = HEADER_SIZE + header.length
        if len(self._buf) < end:
            return False
        payload = bytes(memoryview(self._buf)[HEADER_SIZE:end])
        image = decode_png(payload, header.width, header.height)
        self._header = None
        if image is None:
            # Header looked right but the payload does not: it may have been a spurious magic,
            # so rescan from just after it rather than trusting its length.
            self._discard(len(MAGIC), "PNG payload does not decode", header.trigger)
            return True
        del self._buf[:end]
        out.append(DecodedFrame(header.trigger, image, header.encoding))
        return True

    def _start_raw(self, header: _Header) -> None:
        """Move what is buffered of a raw payload into a buffer of its own; its header passed
        every check, and a raw payload cannot fail to decode, so it is never rescanned."""
        self._payload = bytearray(header.length)
        self._filled = min(header.length, len(self._buf) - HEADER_SIZE)
        self._payload[: self._filled] = memoryview(self._buf)[
            HEADER_SIZE : HEADER_SIZE + self._filled
        ]
        del self._buf[: HEADER_SIZE + self._filled]

    def _finish_raw(self, out: list[DecodedFrame | Malformed]) -> bool:
        header, payload = self._header, self._payload
        assert header is not None and payload is not None
        if self._filled < len(payload):
            return False
        image = np.frombuffer(payload, dtype=np.uint8).reshape(header.height, header.width)
        image.flags.writeable = False  # the image is the payload: nobody writes to a frame
        self._header, self._payload, self._filled = None, None, 0
        out.append(DecodedFrame(header.trigger, image, header.encoding))
        return True

    def _sync_and_parse_header(self, out: list[DecodedFrame | Malformed]) -> bool:
        if not self._resync():
            return False
        self._flush_skipped(out)
        if len(self._buf) < HEADER_SIZE:
            return False
        header, reserved = _read_header(self._buf, 0)
        problem = self._header_problem(header, reserved)
        if problem:
            self._discard(len(MAGIC), problem, header.trigger)
        else:
            self._header = header
        return True

    def _resync(self) -> bool:
        """Drop bytes until the buffer starts with the magic. False if it is not there yet."""
        if self._buf.startswith(MAGIC):
            return True
        at = self._buf.find(MAGIC)
        if at < 0:
            # Keep a tail that could be the start of a magic split across two feeds.
            keep = len(MAGIC) - 1
            drop = max(0, len(self._buf) - keep)
            while drop < len(self._buf) and not MAGIC.startswith(self._buf[drop:]):
                drop += 1
            self._discard(drop, "bad magic")
            return False
        self._discard(at, "bad magic")
        return True

    def _header_problem(self, header: _Header, reserved: int) -> str:
        if header.encoding not in (ENCODING_RAW, ENCODING_PNG):
            return f"unknown encoding {header.encoding}"
        if reserved != 0:
            return f"reserved byte is {reserved}, not 0"
        if header.width == 0 or header.height == 0:
            return f"empty image {header.width}x{header.height}"
        if header.length > self.max_frame_bytes:
            return f"payload of {header.length} bytes exceeds {self.max_frame_bytes}"
        if header.encoding == ENCODING_RAW and header.width * header.height != header.length:
            return f"raw {header.width}x{header.height} does not match length {header.length}"
        if header.encoding == ENCODING_PNG and header.length == 0:
            return "empty PNG payload"
        return ""

    # --- bookkeeping ------------------------------------------------------------------------

    def _discard(self, count: int, reason: str, trigger: int | None = None) -> None:
        if count <= 0:
            return
        del self._buf[:count]
        self._note_skipped(count, reason, trigger)

    def _note_skipped(self, count: int, reason: str, trigger: int | None) -> None:
        if not self._skipped:
            # One incident = everything skipped until the next good header; report its cause.
            self._skip_reason = reason
            self._skip_trigger = trigger
        self._skipped += count

    def _flush_skipped(self, out: list[DecodedFrame | Malformed]) -> None:
        if self._skipped:
            out.append(Malformed(self._skip_reason, self._skipped, self._skip_trigger))
            self._skipped = 0
            self._skip_reason = ""
            self._skip_trigger = None


def _read_header(data: bytes | bytearray, at: int) -> tuple[_Header, int]:
    """The header at ``at`` (magic already found there), unchecked, and its reserved byte."""
    _, trigger, width, height, encoding, reserved, length = HEADER.unpack_from(data, at)
    return _Header(trigger, width, height, encoding, length), reserved


def decode_png(payload: bytes, width: int, height: int) -> GrayImage | None:
    """PNG → grayscale image of the announced size, or None."""
    if not payload.endswith(_PNG_TRAILER):
        return None  # truncated or not a PNG: don't make libpng complain about it
    try:
        image = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    except cv2.error:
        return None
    if image is None or image.shape != (height, width):
        return None
    return np.asarray(image, dtype=np.uint8)
