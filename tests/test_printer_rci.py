"""The "rci" binary printer: frame decoder properties, and the driver against its simulator over
a pty serial link (the real pyserial path) and over TCP."""

from __future__ import annotations

import asyncio
import signal
import struct
import sys
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.printers.rci import RciPrinter, codec
from edge_agent.contracts import ClearResult, PrintConfirmation, Printer, PrinterStatus
from edge_agent.errors import DeviceConnectionError, DeviceFault, DeviceTimeout, ProtocolError
from simulators.line import SimLine
from simulators.printers.rci import RciPrinterSim
from tests.helpers.printers import JOB, STEP_S, Gate, chunked, confirmed, rec, take, until

pytestmark = pytest.mark.usefixtures("no_leaks")


def config(sim: RciPrinterSim, **overrides: Any) -> RciPrinter.Config:
    values = sim.driver_config(reply_timeout_s=1.0, connect_attempts=1)
    return RciPrinter.Config(**(values | overrides))


@pytest.fixture
def line() -> SimLine:
    return SimLine(units_per_min=None)


@pytest.fixture(params=["serial", "tcp"])
async def sim(line: SimLine, request: pytest.FixtureRequest) -> AsyncIterator[RciPrinterSim]:
    async with RciPrinterSim(line, buffer_size=16, transport=request.param) as simulator:
        yield simulator


@pytest.fixture
async def serial_sim(line: SimLine) -> AsyncIterator[RciPrinterSim]:
    async with RciPrinterSim(line, buffer_size=16) as simulator:
        yield simulator


@pytest.fixture
async def printer(serial_sim: RciPrinterSim) -> AsyncIterator[RciPrinter]:
    async with RciPrinter("printer-1", config(serial_sim)) as device:
        yield device


# --- config --------------------------------------------------------------------------------


def test_config_bounds_and_descriptions() -> None:
    base = {"type": "rci", "link": {"kind": "serial", "device": "/dev/ttyS0", "parity": "even"}}
    cfg = RciPrinter.Config(**base)
    assert cfg.link.kind == "serial" and cfg.buffer_depth == 8
    assert all(f.description for f in RciPrinter.Config.model_fields.values())
    for bad in ({"buffer_depth": 33}, {"buffer_depth": 0}, {"job_name": "A B"}, {"x": 1}):
        with pytest.raises(ValidationError):
            RciPrinter.Config(**(base | bad))
    assert isinstance(RciPrinter("p", cfg), Printer)


# --- driver against the simulator ----------------------------------------------------------


async def test_feed_ahead_and_print_end_in_order_over_serial_and_tcp(
    line: SimLine, sim: RciPrinterSim
) -> None:
    start = Gate(line).open
    async with RciPrinter("p", config(sim)) as printer:
        assert (await printer.status()).state == "idle"
        await printer.select_job(JOB)
        assert sim.printing
        assert sim.job == codec.JobCommand("SERIAL", JOB.gtin, JOB.lot, JOB.expiry)
        await asyncio.gather(*(printer.send(rec(i)) for i in range(1, 9)))
        assert await printer.status() == PrinterStatus("printing", 8, 0, None)
        start()
        async with aclosing(printer.confirmations()) as it:
            assert await take(it, 8) == confirmed(*range(1, 9))
        assert printer.malformed_count == 0
    assert sim.printed == [rec(i).serial for i in range(1, 9)]


async def test_buffers_full_then_clear_and_stop_clears(
    line: SimLine, serial_sim: RciPrinterSim, printer: RciPrinter
) -> None:
    start = Gate(line).open
    await printer.select_job(JOB)
    for i in range(16):
        await printer.send(rec(i))
    with pytest.raises(DeviceFault) as full:
        await printer.send(rec(16))
    assert full.value.code == "BUFFER_FULL"
    assert await printer.clear() == ClearResult(tuple(rec(i) for i in range(16)))
    await printer.send(rec(50))
    # Stop clears the remote-field buffers, and names them too
    assert await printer.stop_printing() == ClearResult((rec(50),))
    assert not serial_sim.printing
    await printer.select_job(JOB)
    start()
    await printer.send(rec(99))
    async with aclosing(printer.confirmations()) as it:
        assert await take(it, 1) == confirmed(99)
    assert serial_sim.printed == [rec(99).serial]


async def test_ink_out_raises_device_fault_with_printer_code(
    serial_sim: RciPrinterSim, printer: RciPrinter
) -> None:
    await printer.select_job(JOB)
    await printer.send(rec(1))
    async with aclosing(printer.confirmations()) as it:
        assert await take(it, 1) == confirmed(1)
        serial_sim.faults.ink_out()
        with pytest.raises(DeviceFault) as raised:
            await take(it, 1)
    assert (raised.value.code, raised.value.reason) == ("INK_OUT", "ink out")
    with pytest.raises(DeviceFault) as refused:
        await printer.send(rec(2))
    assert refused.value.code == "INK_OUT"
    assert await printer.status() == PrinterStatus("fault", 0, 1, "INK_OUT")
    serial_sim.faults.clear_fault()
    await until(lambda: printer.fault_code is None)
    await printer.send(rec(3))
    async with aclosing(printer.confirmations()) as it:
        assert await take(it, 1) == confirmed(3)


async def test_pulled_serial_cable_times_out_then_recovers(
    serial_sim: RciPrinterSim, printer: RciPrinter
) -> None:
    await printer.select_job(JOB)
    serial_sim.faults.deaf_s = 0.5
    serial_sim.faults.drop_connection()
    with pytest.raises(DeviceTimeout):
        await printer.send(rec(1))  # unknown whether taken: the caller must not re-send it
    assert serial_sim.buffered == 0  # it was not
    await asyncio.sleep(0.6)
    # The abandoned LOAD_RECORD is never answered; the next reply must not be taken for it
    await printer.send(rec(2))
    async with aclosing(printer.confirmations()) as it:
        assert await take(it, 1) == confirmed(2)


async def test_garbage_checksum_and_partial_frames_are_counted_and_stream_recovers(
    serial_sim: RciPrinterSim, printer: RciPrinter
) -> None:
    await printer.select_job(JOB)
    good = codec.encode_print_end(7, "SN7")
    corrupt = bytearray(codec.encode_print_end(8, "SN8"))
    corrupt[6] ^= 0x01  # a flipped bit in the payload: checksum error
    serial_sim.faults.send_garbage(
        b"\x00\xffnoise"  # garbage before a frame
        + good[:7]  # a partial frame, cut by the next start
        + bytes(corrupt)
        + codec.encode_frame(0x55, b"?")  # well framed, unknown command
        + good
    )
    async with aclosing(printer.confirmations()) as it:
        assert await take(it, 1) == [PrintConfirmation(7, "SN7")]
    assert await printer.status() == PrinterStatus("ready", 0, 0, None)
    assert printer.malformed_count == 4
    assert printer.frame_errors == 3
    await printer.send(rec(1))
    async with aclosing(printer.confirmations()) as it:
        assert await take(it, 1) == confirmed(1)


async def test_slow_reply_times_out_and_late_reply_is_not_misattributed(
    serial_sim: RciPrinterSim,
) -> None:
    async with RciPrinter("p", config(serial_sim, reply_timeout_s=0.2)) as printer:
        serial_sim.faults.reply_delay_s = 0.4
        with pytest.raises(DeviceTimeout):
            await printer.clear()
        serial_sim.faults.reply_delay_s = 0.0
        await until(lambda: any(way == "tx" for way, _ in serial_sim.transcript))
        assert await printer.status() == PrinterStatus("idle", 0, 0, None)
        assert printer.malformed_count == 0


async def test_printer_answers_a_corrupt_command_with_bad_frame(
    serial_sim: RciPrinterSim, printer: RciPrinter
) -> None:
    frame = bytearray(codec.encode_frame(codec.STATUS))
    frame[-1] ^= 0xFF
    with pytest.raises(ProtocolError, match="BAD_FRAME"):
        await printer._rci(bytes(frame), codec.STATUS)
    assert serial_sim.bad_frames == 1
    await printer.select_job(JOB)
    with pytest.raises(ProtocolError, match="BAD_DATA"):
        await printer._rci(
            codec.encode_frame(codec.LOAD_RECORD, struct.pack(">Q", 1) + b"a b"), codec.LOAD_RECORD
        )


async def test_missing_serial_device_raises_connection_error() -> None:
    cfg = RciPrinter.Config(
        type="rci", link={"kind": "serial", "device": "/dev/no-such-tty-5a"}, connect_attempts=2
    )
    with pytest.raises(DeviceConnectionError, match="no-such-tty"):
        async with RciPrinter("p", cfg):
            pass


# --- codec properties ----------------------------------------------------------------------

_FRAMES = st.lists(
    st.tuples(st.integers(0, 255), st.binary(max_size=40)).map(lambda t: codec.Frame(*t)),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=8))
def test_decoders_never_raise_and_ignore_chunking(data: bytes, cuts: list[int]) -> None:
    for make in (codec.MessageDecoder, codec.CommandDecoder):
        whole = make().feed(data)
        decoder = make()
        assert [m for chunk in chunked(data, cuts) for m in decoder.feed(chunk)] == whole


@settings(max_examples=300, deadline=None)
@given(_FRAMES, st.binary(max_size=60), st.binary(max_size=60))
def test_valid_frames_survive_any_garbage_before_them(
    frames: list[codec.Frame], noise: bytes, tail: bytes
) -> None:
    wire = b"".join(codec.encode_frame(f.cmd, f.payload) for f in frames)
    # Noise outside a frame costs nothing
    out = [i for i in codec.FrameDecoder().feed(noise.replace(b"\x02", b"") + wire + tail)]
    assert [i for i in out if isinstance(i, codec.Frame)][: len(frames)] == frames
    # Noise that leaves the decoder inside a bogus frame costs at most the first frame
    decoder = codec.FrameDecoder()
    decoder.feed(b"\x1b\x02" + noise)
    out = [i for i in decoder.feed(wire + tail) if isinstance(i, codec.Frame)]
    assert frames[1:] == out[len(out) - len(frames[1:]) :] if frames[1:] else True


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=64), st.data())
def test_any_single_corruption_is_detected_or_harmless(
    cmd: int, payload: bytes, data: st.DataObject
) -> None:
    wire = bytearray(codec.encode_frame(cmd, payload))
    index = data.draw(st.integers(0, len(wire) - 1))
    wire[index] ^= data.draw(st.integers(1, 255))
    frames = [
        item for item in codec.FrameDecoder().feed(bytes(wire)) if isinstance(item, codec.Frame)
    ]
    # A corrupted frame is never taken for a different valid frame (single-byte error)
    assert all(f == codec.Frame(cmd, payload) for f in frames)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 2**64 - 1), st.from_regex(r"[A-Za-z0-9%&()*+,\-./:;<=>?_]{1,20}", fullmatch=True)
)
def test_records_and_print_end_round_trip(seq: int, serial: str) -> None:
    [command] = codec.CommandDecoder().feed(codec.encode_record(seq, serial))
    assert command == codec.RecordCommand(seq, serial.encode())
    assert codec.MessageDecoder().feed(codec.encode_print_end(seq, serial)) == [
        codec.PrintEnd(seq, serial)
    ]


_RECORDS = st.lists(
    st.tuples(
        st.integers(0, 2**64 - 1),
        st.from_regex(r"[A-Za-z0-9%&()*+,\-./:;<=>?_]{1,20}", fullmatch=True),
    ),
    max_size=32,
)


@settings(max_examples=200, deadline=None)
@given(_RECORDS, st.sampled_from([codec.CLEAR_BUFFERS, codec.STOP_PRINT]))
def test_a_clear_reply_names_every_record_it_discarded(
    records: list[tuple[int, str]], cmd: int
) -> None:
    """32 buffers of 20-character serials fit one frame; a count-only reply (an older
    printer) names nothing."""
    [reply] = codec.MessageDecoder().feed(codec.encode_cleared(cmd, records))
    assert isinstance(reply, codec.Reply)
    assert codec.parse_cleared(reply) == codec.Cleared(len(records), tuple(records))
    count_only = codec.Reply(cmd, codec.OK, bytes([len(records)]))
    expected = codec.Cleared(len(records), None if records else ())
    assert codec.parse_cleared(count_only) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_clear_reply_parser_never_raises_and_never_names_more_than_it_counts(data: bytes) -> None:
    cleared = codec.parse_cleared(codec.Reply(codec.CLEAR_BUFFERS, codec.OK, data))
    if cleared is not None and cleared.records is not None:
        assert len(cleared.records) == cleared.discarded


def test_escape_bytes_are_stuffed_and_checksum_sums_to_zero() -> None:
    payload = b"\x1b\x02\x1b\x03\x1b"
    wire = codec.encode_frame(0x1B, payload)
    assert wire.startswith(b"\x1b\x02\x1b\x1b") and b"\x1b\x1b\x02" in wire  # stuffed
    assert codec.FrameDecoder().feed(wire) == [codec.Frame(0x1B, payload)]
    body = bytes([0x1B]) + struct.pack(">H", len(payload)) + payload
    assert (sum(body) + codec.checksum(body)) % 256 == 0
    noise = codec.FrameDecoder().feed(b"\xaa" * 10_000)
    assert noise and all(isinstance(m, codec.Malformed) for m in noise)


async def test_pytest_fixture_serves_a_pty(rci_printer_sim: Any) -> None:
    cfg = config(rci_printer_sim)
    assert cfg.link.kind == "serial" and cfg.link.device.startswith("/dev/")
    async with RciPrinter("p", cfg) as printer:
        await printer.select_job(JOB)
        await printer.send(rec(1))
        async with aclosing(printer.confirmations()) as it:
            assert await take(it, 1) == confirmed(1)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=80))
def test_frame_parsers_never_raise(cmd: int, payload: bytes) -> None:
    frame = codec.Frame(cmd, payload)
    message = codec.parse_frame(frame)
    if isinstance(message, codec.Reply):
        info = codec.parse_status(message)
        assert info is None or info.state in codec.STATES
    assert codec.parse_command(frame) is not None


async def test_a_stream_of_noise_raises_protocol_error_from_confirmations(
    serial_sim: RciPrinterSim, printer: RciPrinter
) -> None:
    await printer.select_job(JOB)
    bad = bytearray(codec.encode_print_end(1, "SN1"))
    bad[-1] ^= 0x55  # checksum error, every time
    serial_sim.faults.send_garbage(bytes(bad) * 40)
    async with aclosing(printer.confirmations()) as it:
        with pytest.raises(ProtocolError, match="malformed messages in a row"):
            await take(it, 1)
    assert printer.frame_errors >= 32


async def test_standalone_simulator_serves_a_pty_and_stops_on_ctrl_c() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "simulators.printers.rci", "--units-per-min", "0"),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(10):
            banner = (await proc.stdout.readline()).decode()
        device = banner.split("serial://")[1].split()[0]
        link = {"kind": "serial", "device": device}
        async with RciPrinter("p", RciPrinter.Config(type="rci", link=link)) as printer:
            await printer.select_job(JOB)
            assert (await printer.status()).state == "ready"
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(STEP_S):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
