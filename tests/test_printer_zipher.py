"""The Zipher-style text printer: codec properties, and the driver against its simulator."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.printers.zipher import ZipherPrinter, codec
from edge_agent.contracts import ClearResult, Printer, PrinterStatus, PrintRecord
from edge_agent.errors import DeviceFault, DeviceTimeout, ProtocolError
from simulators.line import SimLine
from simulators.printers.zipher import ZipherPrinterSim
from tests.helpers.printers import JOB, STEP_S, Gate, chunked, confirmed, rec, take, until

pytestmark = pytest.mark.usefixtures("no_leaks")


def config(sim: ZipherPrinterSim, **overrides: Any) -> ZipherPrinter.Config:
    values = sim.driver_config(reply_timeout_s=1.0, connect_attempts=1)
    return ZipherPrinter.Config(**(values | overrides))


@pytest.fixture
def line() -> SimLine:
    return SimLine(units_per_min=None)


@pytest.fixture
async def sim(line: SimLine) -> AsyncIterator[ZipherPrinterSim]:
    async with ZipherPrinterSim(line, buffer_size=16) as simulator:
        yield simulator


@pytest.fixture
async def printer(sim: ZipherPrinterSim) -> AsyncIterator[ZipherPrinter]:
    async with ZipherPrinter("printer-1", config(sim)) as device:
        yield device


# --- config --------------------------------------------------------------------------------


def test_config_bounds_and_descriptions() -> None:
    base = {"type": "zipher", "link": {"kind": "tcp", "port": 3002}}
    cfg = ZipherPrinter.Config(**base)
    assert (cfg.buffer_depth, cfg.job_name, cfg.gtin_field) == (8, "SERIAL", "GTIN")
    assert all(f.description for f in ZipherPrinter.Config.model_fields.values())
    for bad in (
        {"buffer_depth": 0},
        {"job_name": "A|B"},
        {"lot_field": "L=1"},
        {"link": {"kind": "serial"}},
        {"colour": "red"},
    ):
        with pytest.raises(ValidationError):
            ZipherPrinter.Config(**(base | bad))
    assert isinstance(ZipherPrinter("p", cfg), Printer)


# --- driver against the simulator ----------------------------------------------------------


async def test_job_select_fields_and_notifications(
    sim: ZipherPrinterSim, printer: ZipherPrinter
) -> None:
    assert sim.notifications == {"PRC", "ERS"}  # enabled with SNO on connect
    assert (await printer.status()).state == "idle"
    await printer.select_job(JOB)
    assert sim.job_name == "SERIAL"
    assert sim.fields == {"GTIN": JOB.gtin, "LOT": JOB.lot, "EXP": JOB.expiry}
    await printer.update_fields({"LOT": "LOT43"})
    assert sim.fields["LOT"] == "LOT43"
    assert ("rx", "SLA|SERIAL|GTIN=09506000134352|LOT=LOT42|EXP=271231") in sim.transcript
    assert await printer.status() == PrinterStatus("ready", 0, 0, None)


async def test_feed_ahead_queue_and_confirmations_in_order(
    line: SimLine, sim: ZipherPrinterSim, printer: ZipherPrinter
) -> None:
    start = Gate(line).open
    await printer.select_job(JOB)
    for i in range(1, 5):
        await printer.send(rec(i))
    queue = await printer.queue_size()
    assert (queue.queued, queue.capacity) == (4, 16)
    assert await printer.status() == PrinterStatus("printing", 4, 0, None)
    start()
    async with aclosing(printer.confirmations()) as it:
        assert await take(it, 4) == confirmed(1, 2, 3, 4)
    assert sim.printed == [rec(i).serial for i in range(1, 5)]


async def test_full_queue_is_buffer_full_and_clear_reports_discarded(
    line: SimLine, sim: ZipherPrinterSim, printer: ZipherPrinter
) -> None:
    start = Gate(line).open
    await printer.select_job(JOB)
    await asyncio.gather(*(printer.send(rec(i)) for i in range(16)))
    with pytest.raises(DeviceFault) as full:
        await printer.send(rec(16))
    assert full.value.code == "BUFFER_FULL"
    queued = tuple(PrintRecord(seq, serial) for seq, serial in sim._buffer)
    assert len(queued) == 16
    assert await printer.clear() == ClearResult(queued)  # named, in queue order
    start()
    await printer.send(rec(99))
    async with aclosing(printer.confirmations()) as it:
        assert await take(it, 1) == confirmed(99)
    assert sim.printed == [rec(99).serial]


async def test_a_clear_that_does_not_name_every_record_names_none(
    line: SimLine, sim: ZipherPrinterSim, printer: ZipherPrinter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A printer that only counts (no CQD lines): none is named, so none is settled unused."""
    Gate(line)
    await printer.select_job(JOB)
    for i in range(3):
        await printer.send(rec(i))
    monkeypatch.setattr(codec, "encode_cqd", lambda seq, serial: b"")  # the simulator's side
    assert await printer.clear() == ClearResult(unnamed=3)


async def test_ink_out_fault_with_printer_code_gft_and_caf(
    sim: ZipherPrinterSim, printer: ZipherPrinter
) -> None:
    await printer.select_job(JOB)
    await printer.send(rec(1))
    async with aclosing(printer.confirmations()) as it:
        assert await take(it, 1) == confirmed(1)
        sim.faults.ink_out()
        with pytest.raises(DeviceFault) as raised:
            await take(it, 1)
    assert (raised.value.code, raised.value.reason) == ("INK_OUT", "ink out")
    with pytest.raises(DeviceFault) as refused:
        await printer.send(rec(2))
    assert refused.value.code == "INK_OUT"
    assert await printer.faults() == [("INK_OUT", "ink out")]
    assert await printer.status() == PrinterStatus("fault", 0, 1, "INK_OUT")
    await printer.clear_faults()
    await until(lambda: printer.fault_code is None)
    await printer.send(rec(3))
    async with aclosing(printer.confirmations()) as it:
        assert await take(it, 1) == confirmed(3)
    assert sim.printed == [rec(1).serial, rec(3).serial]


async def test_fault_while_disconnected_is_learned_from_status(sim: ZipherPrinterSim) -> None:
    sim.faults.raise_fault("HEAD_FAULT", "head too hot")  # its ERS reaches nobody
    async with ZipherPrinter("p", config(sim)) as printer:
        await printer.select_job(JOB)
        assert (await printer.status()).fault == "HEAD_FAULT"
        with pytest.raises(DeviceFault) as refused:
            await printer.send(rec(1))
        assert refused.value.code == "HEAD_FAULT"


async def test_offline_state_stops_printing(sim: ZipherPrinterSim, printer: ZipherPrinter) -> None:
    await printer.select_job(JOB)
    await printer.set_state(codec.OFFLINE)
    assert (await printer.status()).state == "idle"
    with pytest.raises(ProtocolError, match="BAD_FIELD"):
        await printer.set_state(7)
    assert await printer.warnings() == []


async def test_slow_reply_times_out_and_late_reply_is_not_misattributed(
    sim: ZipherPrinterSim,
) -> None:
    async with ZipherPrinter("p", config(sim, reply_timeout_s=0.2)) as printer:
        sim.faults.reply_delay_s = 0.4
        with pytest.raises(DeviceTimeout):
            await printer.clear()
        sim.faults.reply_delay_s = 0.0
        await until(lambda: ("tx", "CQI|0|") in sim.transcript)
        assert await printer.status() == PrinterStatus("idle", 0, 0, None)
        assert printer.malformed_count == 0


async def test_garbage_from_printer_is_counted_and_stream_recovers(
    sim: ZipherPrinterSim, printer: ZipherPrinter
) -> None:
    await printer.select_job(JOB)
    sim.faults.send_garbage(
        b"\xff\xfe\x00binary\r\n"
        + b"X" * 3000
        + b"\r\nPRC|1|SN1\r\n"  # no trailing |
        + b"PRC|x|SN1|\r\n"  # bad seq
        + b"ACK\r\n"  # a reply nobody asked for
    )
    assert await printer.status() == PrinterStatus("ready", 0, 0, None)
    assert printer.malformed_count == 5
    for i in range(3):
        await printer.send(rec(i))
    async with aclosing(printer.confirmations()) as it:
        assert await take(it, 3) == confirmed(0, 1, 2)


async def test_over_serial_pty(line: SimLine) -> None:
    async with ZipherPrinterSim(line, transport="serial") as sim:
        cfg = config(sim)
        assert cfg.link.kind == "serial"
        async with ZipherPrinter("p", cfg) as printer:
            await printer.select_job(JOB)
            for i in range(3):
                await printer.send(rec(i))
            async with aclosing(printer.confirmations()) as it:
                assert await take(it, 3) == confirmed(0, 1, 2)


async def test_simulator_answers_bad_commands_with_err(
    sim: ZipherPrinterSim, printer: ZipherPrinter
) -> None:
    for bad in (b"JDI|SEQ=1|SN=A|B\r\n", b"FOO|\r\n", b"JDI|nonsense|\r\n", b"SNO|XYZ|1|\r\n"):
        with pytest.raises(ProtocolError):
            await printer._command(bad, "X", lambda r: isinstance(r, codec.Ack | codec.Err))
    await printer.select_job(JOB)
    with pytest.raises(ProtocolError, match="BAD_FIELD"):
        await printer._command(b"JDI|SEQ=1|SN=a b|\r\n", "JDI", lambda r: True)


# --- codec properties ----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=8))
def test_decoders_never_raise_and_ignore_chunking(data: bytes, cuts: list[int]) -> None:
    for make in (codec.ReplyDecoder, codec.CommandDecoder):
        whole = make().feed(data)
        decoder = make()
        assert [m for chunk in chunked(data, cuts) for m in decoder.feed(chunk)] == whole


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_parsers_never_raise(text: str) -> None:
    assert codec.parse_message(text) is not None
    assert codec.parse_command(text) is not None


_SERIAL = st.from_regex(r"[A-Za-z0-9!%&()*+,\-./:;<=>?_]{1,20}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**19 - 1), _SERIAL)
def test_records_and_notifications_round_trip(seq: int, serial: str) -> None:
    assert codec.CommandDecoder().feed(codec.encode_jdi(seq, serial)) == [
        codec.Command("JDI", (), (("SEQ", str(seq)), ("SN", serial)))
    ]
    assert codec.ReplyDecoder().feed(codec.encode_prc(seq, serial)) == [
        codec.PrintComplete(seq, serial)
    ]
    assert codec.ReplyDecoder().feed(codec.encode_cqd(seq, serial) + codec.encode_cqi_reply(1)) == [
        codec.Discarded(seq, serial),
        codec.QueueCleared(1),
    ]


def test_garbage_between_lines_does_not_corrupt_decoder_state() -> None:
    decoder = codec.ReplyDecoder()
    out = decoder.feed(b"\x00\xff" * 700 + b"\r\n" + codec.encode_prc(5, "AB") + b"ERS|2|X|y|\r\n")
    assert out[-2:] == [codec.PrintComplete(5, "AB"), codec.ErrorStatus(2, "X", "y")]
    assert all(isinstance(m, codec.Malformed) for m in out[:-2])
    with pytest.raises(codec.EncodeError):
        codec.encode_jdi(1, "bad|serial")


async def test_pytest_fixture_and_simulator_section_pick_the_link(zipher_printer_sim: Any) -> None:
    from edge_agent.config.models import PrinterSim

    async with ZipherPrinter("p", config(zipher_printer_sim)) as printer:
        await printer.select_job(JOB)
        await printer.send(rec(1))
        async with aclosing(printer.confirmations()) as it:
            assert await take(it, 1) == confirmed(1)
    section = PrinterSim(type="zipher", transport="serial")
    serial_sim = ZipherPrinterSim.from_section(SimLine(None), section)
    assert serial_sim.transport == "serial"
    assert (
        ZipherPrinterSim.from_section(SimLine(None), PrinterSim(type="zipher")).transport == "tcp"
    )


def test_err_text_with_a_stray_bar_is_still_an_err() -> None:
    assert codec.parse_message("ERR|FAULT|ink|low|") == codec.Err("FAULT", "ink|low")
    assert isinstance(codec.parse_message("ERR|FAULT|"), codec.Malformed)


async def test_standalone_simulator_serves_and_stops_on_ctrl_c() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "simulators.printers.zipher", "--port", "0", "--units-per-min", "0"),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(10):
            banner = (await proc.stdout.readline()).decode()
        port = int(banner.split("tcp://127.0.0.1:")[1].split()[0])
        link = {"kind": "tcp", "port": port}
        async with ZipherPrinter("p", ZipherPrinter.Config(type="zipher", link=link)) as printer:
            await printer.select_job(JOB)
            assert (await printer.status()).state == "ready"
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(STEP_S):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
