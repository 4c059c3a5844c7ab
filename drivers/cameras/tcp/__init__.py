"""Camera driver for the "tcp-frames" protocol: the camera serves, the agent connects."""

from drivers.cameras.tcp.codec import (
    ENCODING_PNG,
    ENCODING_RAW,
    DecodedFrame,
    FrameDecoder,
    Malformed,
    encode_frame,
)
from drivers.cameras.tcp.driver import TcpFrameSource, TcpFrameSourceConfig

__all__ = [
    "ENCODING_PNG",
    "ENCODING_RAW",
    "DecodedFrame",
    "FrameDecoder",
    "Malformed",
    "TcpFrameSource",
    "TcpFrameSourceConfig",
    "encode_frame",
]
