"""The Zebra ZPL printer: codec properties, and the driver against the simulator over real TCP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.printers.zpl import ZplPrinter, codec
from drivers.printers.zpl.driver import account
from edge_agent import gs1
from edge_agent.contracts import ClearResult, PrintConfirmation, Printer, PrintJob
from edge_agent.errors import DeviceConnectionError, DeviceFault, DeviceTimeout, ProtocolError
from simulators.line import SimLine
from simulators.printers.zpl import ZplPrinterSim
from tests.helpers.printers import JOB, STEP_S, Gate, confirmed, rec, take, until

pytestmark = pytest.mark.usefixtures("no_leaks")

STATUS = codec.HostStatus(
    paper_out=False,
    pause=False,
    formats_in_buffer=3,
    buffer_full=False,
    partial_format=False,
    corrupt_ram=False,
    under_temp=False,
    over_temp=False,
    head_up=False,
    ribbon_out=True,
    labels_remaining=1,
)


def config(sim: ZplPrinterSim, **overrides: Any) -> ZplPrinter.Config:
    link = {"kind": "tcp", "port": sim.port}
    values: dict[str, Any] = {"type": "zpl", "link": link, "status_timeout_s": 0.5}
    return ZplPrinter.Config(**(values | overrides))


@pytest.fixture
def line() -> SimLine:
    return SimLine(units_per_min=None)


@pytest.fixture
async def sim(line: SimLine) -> AsyncIterator[ZplPrinterSim]:
    async with ZplPrinterSim(line, buffer_size=16) as simulator:
        yield simulator


@pytest.fixture
async def printer(sim: ZplPrinterSim) -> AsyncIterator[ZplPrinter]:
    async with ZplPrinter("printer-1", config(sim)) as device:
        await device.select_job(JOB)
        yield device


# --- codec -----------------------------------------------------------------------------------


def test_host_status_round_trip_and_pending() -> None:
    wire = codec.encode_host_status(STATUS)
    assert wire.count(b"\x02") == wire.count(b"\x03") == 3
    assert codec.StatusDecoder().feed(wire) == [STATUS]
    assert STATUS.pending == 4
    assert STATUS.flags(codec.STOPPING_FLAGS) == ["ribbon_out"]


def test_host_status_from_the_manual_layout() -> None:
    # ~HS of a Zebra with paper out and head up, 2 formats queued, 7 labels left in the batch
    wire = (
        b"\x02030,1,0,1218,002,0,0,0,000,0,0,0\x03\r\n"
        b"\x02001,0,1,0,1,2,6,0,00000007,1,000\x03\r\n"
        b"\x021234,0\x03\r\n"
    )
    [status] = codec.StatusDecoder().feed(wire)
    assert isinstance(status, codec.HostStatus)
    assert status.flags(codec.STOPPING_FLAGS) == ["paper_out", "head_up"]
    assert (status.formats_in_buffer, status.labels_remaining, status.pending) == (2, 7, 9)


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        (b"\x02030,1,0\x03\r\n\x02a\x03\x02b\x03", "out of order"),
        (
            b"\x02030,X,0,1218,002,0,0,0,000,0,0,0\x03\x02001,0,1,0,1,2,6,0,7,1,000\x03\x021,0\x03",
            "paper_out",
        ),
        (b"\x02" + b"9" * 200, "unterminated"),
        (b"noise", "outside"),
    ],
)
def test_bad_status_is_malformed_not_an_exception(wire: bytes, why: str) -> None:
    items = codec.StatusDecoder().feed(wire)
    assert items and all(isinstance(i, codec.Malformed) for i in items)
    assert any(why in i.why for i in items if isinstance(i, codec.Malformed))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(1, 50), max_size=20))
def test_status_decoder_never_raises_and_ignores_chunking(data: bytes, cuts: list[int]) -> None:
    whole = codec.StatusDecoder().feed(data)
    chunked, decoder, pos = [], codec.StatusDecoder(), 0
    for size in [*cuts, len(data)]:
        chunked += decoder.feed(data[pos : pos + size])
        pos += size
    kinds = codec.HostStatus | codec.Odometer
    assert all(isinstance(i, kinds | codec.Malformed) for i in whole + chunked)
    # Chunking may split garbage reports, never change the answers found
    assert [i for i in whole if isinstance(i, kinds)] == [
        i for i in chunked if isinstance(i, kinds)
    ]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_garbage_around_an_answer_never_forges_or_hides_it(before: bytes, after: bytes) -> None:
    """Garbage before an answer can at worst cost that answer; it never yields another one."""
    wire = before + b"\r\n" + codec.encode_host_status(STATUS) + after
    found = [i for i in codec.StatusDecoder().feed(wire) if isinstance(i, codec.HostStatus)]
    clean = b"\x02" not in before + after and b"\x03" not in before + after
    if clean:
        assert found == [STATUS]
    assert all(isinstance(i, codec.HostStatus) for i in found)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=800))
def test_format_splitter_never_raises(data: bytes) -> None:
    items = codec.FormatSplitter().feed(data)
    assert all(
        isinstance(i, codec.Format | codec.Tilde | codec.Sgd | codec.Malformed) for i in items
    )


def test_label_carries_gs1_datamatrix_and_gs1_128() -> None:
    template = codec.check_template(codec.DEFAULT_TEMPLATE)
    wire = codec.render_label(
        template, gtin=JOB.gtin, lot=JOB.lot, expiry=JOB.expiry, serial="AB12"
    )
    [fmt] = codec.FormatSplitter().feed(wire)
    assert isinstance(fmt, codec.Format)
    assert "^PQ1,0,1,Y^XZ" in fmt.text and codec.label_quantity(fmt) == 1
    assert f"^FD>;>801{JOB.gtin}17{JOB.expiry}>610{JOB.lot}>821AB12^FS" in fmt.text
    data = codec.label_data(fmt)
    assert data == f"01{JOB.gtin}17{JOB.expiry}10{JOB.lot}{codec.GS}21AB12"
    parsed = gs1.parse(data)
    assert (parsed.get("01"), parsed.get("10"), parsed.get("21")) == (JOB.gtin, JOB.lot, "AB12")


@pytest.mark.parametrize("serial", ["A_1", "A>8", "A^B", "A~B", "", "X" * 21, "A\\B"])
def test_values_zpl_would_interpret_are_refused(serial: str) -> None:
    with pytest.raises(codec.TemplateError):
        codec.render_label(
            codec.DEFAULT_TEMPLATE, gtin=JOB.gtin, lot="L", expiry="271231", serial=serial
        )


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("^FO10,10^FDxyz^FS", "^XA"),
        ("^XA^BXN^FD{serial}^FS^PQ5^XZ", "^PQ"),
        ("^XA^FD{serial}^FS^XZ", "^BX"),
        ("^XA^BXN^FD{serial}^FS~JA^XZ", "~"),
        ("^XA^BXN^FD{gtin}^FS^XZ", "{serial}"),
        ("^XA^BXN^FD{serial}{colour}^FS^XZ", "colour"),
    ],
)
def test_bad_templates_are_config_errors(template: str, why: str) -> None:
    with pytest.raises(ValidationError, match="label template") as raised:
        ZplPrinter.Config(type="zpl", template=template)
    assert why in str(raised.value)


def test_config_defaults_bounds_and_descriptions() -> None:
    cfg = ZplPrinter.Config(type="zpl")
    assert (cfg.link.kind, cfg.link.describe(), cfg.buffer_depth) == (
        "tcp",
        "tcp://127.0.0.1:9100",
        4,
    )
    assert all(f.description for f in ZplPrinter.Config.model_fields.values())
    for bad in (
        {"link": {"kind": "tcp", "port": 0}},
        {"buffer_depth": 65},
        {"colour": "red"},
        {"poll_interval_s": 0},
    ):
        with pytest.raises(ValidationError):
            ZplPrinter.Config(**({"type": "zpl"} | bad))
    assert isinstance(ZplPrinter("p", cfg), Printer)


# --- driver against the simulator ----------------------------------------------------------


async def test_labels_are_confirmed_in_order_only_once_printed(
    line: SimLine, sim: ZplPrinterSim, printer: ZplPrinter
) -> None:
    gate = Gate(line)
    for i in range(1, 6):
        await printer.send(rec(i))
    await until(lambda: sim.status().pending == 5)
    status = await printer.status()
    assert (status.state, status.buffered, status.printed) == ("printing", 5, 0)
    await asyncio.sleep(0.1)
    assert printer._events.empty(), "confirmed before anything was printed"
    gate.open()
    async with aclosing(printer.confirmations()) as it:
        assert await take(it, 5) == confirmed(1, 2, 3, 4, 5)
    assert sim.printed == [rec(i).serial for i in range(1, 6)]
    assert sim.labels[0] == f"01{JOB.gtin}17{JOB.expiry}10{JOB.lot}{codec.GS}21{rec(1).serial}"


async def test_clear_cancels_queued_labels_and_they_never_print(
    line: SimLine, sim: ZplPrinterSim, printer: ZplPrinter
) -> None:
    gate = Gate(line)
    for i in range(4):
        await printer.send(rec(i))
    await until(lambda: sim.status().pending == 4)
    # Its own records of this connection, placed by the counts: named
    assert await printer.clear() == ClearResult(tuple(rec(i) for i in range(4)))
    await until(lambda: sim.status().pending == 0 and not sim.flags["pause"])
    gate.open()
    await printer.send(rec(99))
    async with aclosing(printer.confirmations()) as it:
        assert await take(it, 1) == confirmed(99)
    assert sim.printed == [rec(99).serial]


@pytest.mark.parametrize(
    ("flag", "code"),
    [("ribbon_out", "RIBBON_OUT"), ("paper_out", "PAPER_OUT"), ("head_up", "HEAD_UP")],
)
async def test_status_flags_raise_device_fault_with_the_flag_name(
    sim: ZplPrinterSim, printer: ZplPrinter, flag: str, code: str
) -> None:
    await printer.send(rec(1))
    async with aclosing(printer.confirmations()) as it:
        assert await take(it, 1) == confirmed(1)
        sim.faults.set_flag(flag)
        with pytest.raises(DeviceFault) as raised:
            await take(it, 1)
    assert raised.value.code == code
    with pytest.raises(DeviceFault):
        await printer.send(rec(2))
    sim.faults.clear_faults()
    await until(lambda: printer.fault_code is None)
    await printer.send(rec(3))
    async with aclosing(printer.confirmations()) as it:
        assert await take(it, 1) == confirmed(3)


async def test_lost_and_garbled_answers_only_delay_confirmation(
    sim: ZplPrinterSim, printer: ZplPrinter
) -> None:
    sim.faults.lose_status_answers(1)
    sim.faults.partial_status = 1
    sim.faults.send_garbage(b"\x02\xff\xfe garbage")
    for i in range(1, 4):
        await printer.send(rec(i))
    async with aclosing(printer.confirmations()) as it:
        assert await take(it, 3) == confirmed(1, 2, 3)
    assert printer.malformed_count >= 1


async def test_silent_printer_raises_device_timeout(sim: ZplPrinterSim, line: SimLine) -> None:
    Gate(line)
    async with ZplPrinter("p", config(sim, status_timeout_s=0.2, max_missed_status=2)) as printer:
        await printer.select_job(JOB)
        await printer.send(rec(1))
        sim.faults.lose_status_answers(1000)
        async with aclosing(printer.confirmations()) as it:
            with pytest.raises(DeviceTimeout, match="~HS"):
                await take(it, 1)


async def test_a_missed_answer_at_connect_is_asked_again(sim: ZplPrinterSim) -> None:
    # A host or printer busy for one status timeout at connect is not a lost printer: the
    # baseline is asked again (max_missed_status in a row), and the counts start from it.
    sim.faults.lose_status_answers(1)
    async with ZplPrinter("p", config(sim, status_timeout_s=0.2)) as printer:
        await printer.select_job(JOB)
        for i in range(1, 4):
            await printer.send(rec(i))
        async with aclosing(printer.confirmations()) as it:
            assert await take(it, 3) == confirmed(1, 2, 3)


async def test_a_late_answer_at_connect_counts_once(sim: ZplPrinterSim) -> None:
    # The first baseline answer comes after its timeout, so the question is asked again and
    # both answers arrive; the counts start from one of them and no confirmation is invented.
    sim.faults.delay_replies(0.3)
    asyncio.get_running_loop().call_later(0.25, sim.faults.delay_replies, 0.0)
    async with ZplPrinter("p", config(sim, status_timeout_s=0.2, max_missed_status=3)) as printer:
        await printer.select_job(JOB)
        for i in range(1, 3):
            await printer.send(rec(i))
        async with aclosing(printer.confirmations()) as it:
            assert await take(it, 2) == confirmed(1, 2)


async def test_a_printer_silent_at_connect_raises_device_timeout(sim: ZplPrinterSim) -> None:
    sim.faults.lose_status_answers(1000)
    with pytest.raises(DeviceTimeout, match="~HS"):
        async with ZplPrinter("p", config(sim, status_timeout_s=0.1, max_missed_status=2)):
            pass


async def test_batch_values_zpl_cannot_carry_fail_at_job_selection(sim: ZplPrinterSim) -> None:
    async with ZplPrinter("p", config(sim)) as printer:
        with pytest.raises(ProtocolError, match="lot"):
            await printer.select_job(PrintJob("b", JOB.gtin, "LOT_1", JOB.expiry))
        with pytest.raises(ProtocolError, match="select_job"):
            await printer.send(rec(1))


async def test_clear_after_reconnect_cancels_the_old_queue_and_counts_anew(
    line: SimLine, sim: ZplPrinterSim
) -> None:
    """Formats queued by an earlier driver (an agent restart) are cancelled, never count as
    ours, and cannot be named: ZPL only counts them."""
    gate = Gate(line)
    async with ZplPrinter("p", config(sim)) as first:
        await first.select_job(JOB)
        for i in range(3):
            await first.send(rec(i))
        await until(lambda: sim.buffered == 3)
    async with ZplPrinter("p", config(sim)) as printer:
        await printer.select_job(JOB)
        assert await printer.clear() == ClearResult(unnamed=3)
        gate.open()
        await printer.send(rec(7))
        async with aclosing(printer.confirmations()) as it:
            assert await take(it, 1) == confirmed(7)
    assert sim.printed == [rec(7).serial]


class Quota:
    """A run permit on the SimLine: the printer prints up to ``allowed`` units, ever."""

    def __init__(self, line: SimLine, sim: ZplPrinterSim) -> None:
        self.allowed, self._line = 0, line
        line.add_run_permit(lambda: len(sim.printed) < self.allowed)

    def allow(self, units: int) -> None:
        self.allowed = units
        self._line.notify_run_state()


async def test_a_reconnected_driver_names_the_records_it_wrote_before(
    line: SimLine, sim: ZplPrinterSim
) -> None:
    """The link drops with four labels queued; one prints while nobody listens. The counts
    place the other three, so the same driver (as the line's PrinterLink reconnects it) names
    them when it cancels them."""
    quota = Quota(line, sim)
    printer = ZplPrinter("p", config(sim))
    async with printer:
        await printer.select_job(JOB)
        for i in range(1, 5):
            await printer.send(rec(i))
        await until(lambda: sim.buffered == 4)
        sim.faults.drop_connection()
        async with aclosing(printer.confirmations()) as it:
            with pytest.raises(DeviceConnectionError):
                await take(it, 1)
    quota.allow(1)
    await until(lambda: len(sim.printed) == 1)
    async with printer:
        assert await printer.clear() == ClearResult((rec(2), rec(3), rec(4)))
        quota.allow(10)
        await printer.send(rec(9))
        async with aclosing(printer.confirmations()) as it:
            assert await take(it, 1) == confirmed(9)  # counting goes on from the new base
    assert sim.printed == [rec(1).serial, rec(9).serial]


async def test_over_a_serial_link_a_reconnect_cannot_place_the_old_queue(line: SimLine) -> None:
    """A serial line may have dropped bytes anywhere: counts cannot say which formats arrived."""
    Gate(line)
    async with ZplPrinterSim(line, transport="serial") as sim:
        cfg = ZplPrinter.Config(**(sim.driver_config() | {"status_timeout_s": 0.5}))
        printer = ZplPrinter("p", cfg)
        async with printer:
            await printer.select_job(JOB)
            for i in range(1, 4):
                await printer.send(rec(i))
            await until(lambda: sim.buffered == 3)
        async with printer:
            assert await printer.clear() == ClearResult(unnamed=3)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_account_places_every_format_written(data: st.DataObject) -> None:
    """However many foreign labels were queued ahead, printed, lost at the end of the stream:
    the counts say how many of ours printed, are queued and were lost."""
    foreign, written = data.draw(st.integers(0, 5)), data.draw(st.integers(0, 12))
    lost = data.draw(st.integers(0, written))
    arrived = written - lost
    printed_total = data.draw(st.integers(0, foreign + arrived))  # in order: foreign first
    base = data.draw(st.integers(0, 10**6))
    ours_printed = max(0, printed_total - foreign)
    pending = foreign + arrived - printed_total
    assert account(base, foreign, base + printed_total, pending, written) == (
        ours_printed,
        arrived - ours_printed,
        lost,
    )


async def test_over_a_serial_link(line: SimLine) -> None:
    """The real serial code path (pyserial-asyncio-fast) over a pty pair."""
    async with ZplPrinterSim(line, transport="serial") as sim:
        section = sim.driver_config()
        assert section["link"]["kind"] == "serial"
        cfg = ZplPrinter.Config(**(section | {"status_timeout_s": 0.5}))
        async with ZplPrinter("p", cfg) as printer:
            await printer.select_job(JOB)
            for i in range(1, 4):
                await printer.send(rec(i))
            async with aclosing(printer.confirmations()) as it:
                assert await take(it, 3) == confirmed(1, 2, 3)
            sim.faults.deaf_s = 0.6
            sim.faults.drop_connection()  # a pulled cable: silence, then answers again
            await printer.send(rec(4))  # lost on the way: never printed
            await asyncio.sleep(0.7)
            await printer.send(rec(5))
            got: list[PrintConfirmation] = []
            async with aclosing(printer.confirmations()) as it:
                with pytest.raises(ProtocolError, match="never reached the printer"):
                    async with asyncio.timeout(STEP_S):
                        async for confirmation in it:
                            got.append(confirmation)
    # The printer's counter moved for record 5; a pure count would have confirmed record 4
    assert got == []
    assert sim.printed == [rec(i).serial for i in (1, 2, 3, 5)]


async def test_pytest_fixture_and_simulator_section(zpl_printer_sim: ZplPrinterSim) -> None:
    section = zpl_printer_sim.driver_config()
    assert section["type"] == "zpl" and section["link"]["port"] == zpl_printer_sim.port
    async with ZplPrinter("p", ZplPrinter.Config(**section)) as printer:
        await printer.select_job(JOB)
        await printer.send(rec(1))
        async with aclosing(printer.confirmations()) as it:
            assert await take(it, 1) == confirmed(1)


async def test_a_stray_counter_value_confirms_nothing(
    line: SimLine, sim: ZplPrinterSim, printer: ZplPrinter
) -> None:
    gate = Gate(line)
    for i in range(1, 4):
        await printer.send(rec(i))
    await until(lambda: sim.buffered == 3)
    forged = f'"{sim.odometer + 3}"'.encode()  # as if all three were printed
    for _ in range(3):
        sim.faults.send_garbage(forged)
        await asyncio.sleep(0.03)
    assert printer._events.empty(), "a counter that is not an answer confirmed labels"
    assert printer.malformed_count >= 3
    gate.open()
    async with aclosing(printer.confirmations()) as it:
        assert await take(it, 3) == confirmed(1, 2, 3)


_SAFE = st.text(
    alphabet=st.sampled_from(
        "!\"%&'()*+,-./0123456789:;<=?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    ),
    min_size=1,
    max_size=20,
)


@settings(max_examples=150, deadline=None)
@given(lot=_SAFE, serial=_SAFE, cuts=st.lists(st.integers(1, 40), max_size=10))
def test_what_the_label_encodes_is_what_the_printer_reads(
    lot: str, serial: str, cuts: list[int]
) -> None:
    """Any GS1 set-82 value without ZPL escapes survives template -> wire -> DataMatrix data,
    however the stream is cut."""
    wire = codec.render_label(
        codec.DEFAULT_TEMPLATE, gtin=JOB.gtin, lot=lot, expiry=JOB.expiry, serial=serial
    )
    splitter, items, pos = codec.FormatSplitter(), [], 0
    for size in [*cuts, len(wire)]:
        items += splitter.feed(wire[pos : pos + size])
        pos += size
    [fmt] = items
    assert isinstance(fmt, codec.Format)
    parsed = gs1.parse(codec.label_data(fmt) or "", check_requisites=False)
    assert (parsed.get("01"), parsed.get("10"), parsed.get("17"), parsed.get("21")) == (
        JOB.gtin,
        lot,
        JOB.expiry,
        serial,
    )
