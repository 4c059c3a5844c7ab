"""MJPEG over HTTP cameras ("mjpeg"): ``codec`` parses the multipart stream (no I/O), ``driver``
is the FrameSource. The codec's names are re-exported here for the simulator and the tests."""

from drivers.cameras.mjpeg.codec import (
    MAX_HEADER_BYTES,
    Malformed,
    MultipartParser,
    Part,
    boundary_from_content_type,
    encode_part,
)

__all__ = [
    "MAX_HEADER_BYTES",
    "Malformed",
    "MultipartParser",
    "Part",
    "boundary_from_content_type",
    "encode_part",
]
