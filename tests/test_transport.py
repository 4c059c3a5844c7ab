"""Transports: the real pyserial code path over a pty pair, and TCP, behind one config union."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from pydantic import TypeAdapter, ValidationError

from drivers.transport import PtyPair, SerialTransport, TcpTransport, TransportConfig, open_stream
from edge_agent.errors import DeviceConnectionError

pytestmark = pytest.mark.usefixtures("no_leaks")

STEP_S = 5.0
_ADAPTER: TypeAdapter[TcpTransport | SerialTransport] = TypeAdapter(TransportConfig)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def test_config_union_picks_by_kind_and_checks_bounds() -> None:
    tcp = _ADAPTER.validate_python({"kind": "tcp", "port": 9100})
    assert isinstance(tcp, TcpTransport)
    ser = _ADAPTER.validate_python(
        {"kind": "serial", "device": "/dev/ttyS0", "baudrate": 19200, "parity": "even"}
    )
    assert isinstance(ser, SerialTransport)
    kwargs = ser.serial_kwargs()
    assert kwargs["baudrate"] == 19200 and kwargs["parity"] == "E" and kwargs["stopbits"] == 1
    for bad in (
        {"kind": "serial", "device": "/dev/ttyS0", "baudrate": 10},
        {"kind": "serial", "device": "/dev/ttyS0", "parity": "weird"},
        {"kind": "serial", "device": "/dev/ttyS0", "stopbits": 3},
        {"kind": "serial", "device": "/dev/ttyS0", "flow": "rtscts"},
        {"kind": "usb", "device": "/dev/ttyS0"},
        {"kind": "tcp", "port": 0},
    ):
        with pytest.raises(ValidationError):
            _ADAPTER.validate_python(bad)
    for model in (TcpTransport, SerialTransport):
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"


async def test_serial_over_pty_is_binary_clean_both_ways() -> None:
    with PtyPair() as pty:
        dev_reader, dev_writer = await pty.open()
        cfg = SerialTransport(kind="serial", device=pty.slave_path, baudrate=115200)
        reader, writer = await open_stream("printer", cfg)
        try:
            payload = bytes(range(256)) * 4  # CR, LF, XON/XOFF, NUL... all must pass untouched
            writer.write(payload)
            await writer.drain()
            async with asyncio.timeout(STEP_S):
                assert await dev_reader.readexactly(len(payload)) == payload
            dev_writer.write(payload[::-1])
            await dev_writer.drain()
            async with asyncio.timeout(STEP_S):
                assert await reader.readexactly(len(payload)) == payload[::-1]
        finally:
            await _close(writer)
            await _close(dev_writer)


async def test_missing_serial_device_raises_connection_error() -> None:
    cfg = SerialTransport(kind="serial", device="/dev/does-not-exist-edge-agent")
    with pytest.raises(DeviceConnectionError, match="does-not-exist"):
        await open_stream("printer", cfg)


async def test_tcp_round_trip_and_refused_connection() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(3))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await open_stream("p", TcpTransport(port=port))
        writer.write(b"abc")
        async with asyncio.timeout(STEP_S):
            assert await reader.readexactly(3) == b"abc"
        await _close(writer)
    finally:
        server.close()
        await server.wait_closed()
    with pytest.raises(DeviceConnectionError, match="cannot open tcp://"):
        await open_stream("p", TcpTransport(port=port))
