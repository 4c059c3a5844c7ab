"""tcp-frames: codec, driver against the camera simulator, and the simulator's defects."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import re
import struct
import time
import unittest.mock
from collections.abc import AsyncIterator, Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.cameras.tcp import (
    ENCODING_PNG,
    ENCODING_RAW,
    DecodedFrame,
    FrameDecoder,
    Malformed,
    TcpFrameSource,
    encode_frame,
)
from drivers.cameras.tcp.codec import HEADER, MAGIC
from edge_agent.contracts import Frame, FrameSource
from edge_agent.errors import DeviceConnectionError, DeviceTimeout, ProtocolError
from edge_agent.gs1 import gtin_check_digit
from edge_agent.vision.decode import ZxingReader
from simulators.cameras.tcp import ALL_DEFECTS, TcpCameraSim
from simulators.line import SimLine, SimUnit
from tests.helpers.waiting import until

pytestmark = pytest.mark.usefixtures("no_leaks")

GTIN = "09506000134352"
STEP = 5.0  # generous per-step timeout so a broken test fails instead of hanging
HRI_RE = re.compile(r"\(01\)(\d{14})\(17\)(\d{6})\(10\)(.*)\(21\)(.*)")


def _image(rng: np.random.Generator, width: int = 40, height: int = 30) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width), dtype=np.uint8)


def _frames_only(items: Sequence[DecodedFrame | Malformed]) -> list[DecodedFrame]:
    return [item for item in items if isinstance(item, DecodedFrame)]


# --- codec ---------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", [ENCODING_RAW, ENCODING_PNG])
def test_codec_round_trip(encoding: int) -> None:
    image = _image(np.random.default_rng(1), 64, 48)
    data = encode_frame(123456, image, encoding)
    magic, trigger, width, height, enc, reserved, length = HEADER.unpack_from(data)
    assert (magic, trigger, width, height, enc, reserved) == (MAGIC, 123456, 64, 48, encoding, 0)
    assert length == len(data) - HEADER.size
    (frame,) = FrameDecoder().feed(data)
    assert isinstance(frame, DecodedFrame)
    assert frame.trigger == 123456 and frame.encoding == encoding
    assert frame.image.dtype == np.uint8 and np.array_equal(frame.image, image)


def test_raw_payload_is_not_copied_again() -> None:
    (frame,) = FrameDecoder().feed(encode_frame(1, _image(np.random.default_rng(2))))
    assert isinstance(frame, DecodedFrame)
    assert not frame.image.flags.owndata  # a view on the received payload


def test_encode_rejects_non_grayscale() -> None:
    with pytest.raises(ProtocolError):
        encode_frame(1, np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(ProtocolError):
        encode_frame(1, np.zeros((4, 4), dtype=np.uint16))


def _bad_header(trigger: int, width: int, height: int, enc: int, reserved: int, n: int) -> bytes:
    return HEADER.pack(MAGIC, trigger, width, height, enc, reserved, n)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(_bad_header(9, 4, 4, 0, 0, 15) + bytes(15), id="raw-size-mismatch"),
        pytest.param(_bad_header(9, 4, 4, 1, 0, 20) + bytes(20), id="png-garbage"),
        pytest.param(_bad_header(9, 4, 4, 7, 0, 16) + bytes(16), id="unknown-encoding"),
        pytest.param(_bad_header(9, 4, 4, 0, 1, 16) + bytes(16), id="reserved-set"),
        pytest.param(_bad_header(9, 4000, 4000, 0, 0, 16_000_000), id="over-max"),
        pytest.param(b"\x00garbage\xffFRM", id="garbage"),
    ],
)
def test_decoder_reports_malformed_and_recovers(bad: bytes) -> None:
    image = _image(np.random.default_rng(3))
    good = encode_frame(10, image)
    decoder = FrameDecoder(max_frame_bytes=1_000_000)
    items = decoder.feed(bad + good)
    assert any(isinstance(item, Malformed) for item in items)
    (frame,) = _frames_only(items)
    assert frame.trigger == 10 and np.array_equal(frame.image, image)
    assert decoder.close() == []


def test_close_reports_a_truncated_frame() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(5, _image(np.random.default_rng(4)))[:-3]) == []
    (leftover,) = decoder.close()
    assert leftover.trigger == 5 and leftover.skipped > 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_decoder_never_raises_on_arbitrary_bytes(chunks: list[bytes]) -> None:
    decoder = FrameDecoder(max_frame_bytes=4096)
    items = [item for chunk in chunks for item in decoder.feed(chunk)] + list(decoder.close())
    assert all(isinstance(item, DecodedFrame | Malformed) for item in items)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_decoder_never_raises_on_header_like_garbage(data: st.DataObject) -> None:
    # Random bytes rarely contain the magic; these always do, with random header fields.
    header = MAGIC + data.draw(st.binary(min_size=12, max_size=12))
    tail = data.draw(st.binary(max_size=200))
    decoder = FrameDecoder(max_frame_bytes=4096)
    items = decoder.feed(header + tail) + list(decoder.close())
    assert all(isinstance(item, DecodedFrame | Malformed) for item in items)


_frame_spec = st.tuples(
    st.integers(0, 2**32 - 1),
    st.integers(1, 12),
    st.integers(1, 12),
    st.sampled_from([ENCODING_RAW, ENCODING_PNG]),
    st.integers(0, 2**32 - 1),
)


def _make_frames(
    specs: list[tuple[int, int, int, int, int]],
) -> list[tuple[int, np.ndarray, bytes]]:
    out = []
    for trigger, width, height, encoding, seed in specs:
        image = _image(np.random.default_rng(seed), width, height)
        out.append((trigger, image, encode_frame(trigger, image, encoding)))
    return out


def _feed_in_chunks(decoder: FrameDecoder, stream: bytes, cuts: list[int]) -> list:
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    items = []
    for start, end in itertools.pairwise(bounds):
        items += decoder.feed(stream[start:end])
    return items


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_frame_spec, min_size=1, max_size=6), st.lists(st.integers(0, 10**6), max_size=30))
def test_any_chunking_of_a_valid_stream_gives_back_every_frame(
    specs: list[tuple[int, int, int, int, int]], cuts: list[int]
) -> None:
    frames = _make_frames(specs)
    decoder = FrameDecoder()
    items = _feed_in_chunks(decoder, b"".join(data for _, _, data in frames), cuts)
    assert all(isinstance(item, DecodedFrame) for item in items)
    assert [f.trigger for f in items] == [trigger for trigger, _, _ in frames]
    for got, (_, image, _) in zip(items, frames, strict=True):
        assert np.array_equal(got.image, image)
    assert decoder.close() == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(_frame_spec, st.binary(max_size=40)), min_size=1, max_size=5),
    st.lists(st.integers(0, 10**6), max_size=30),
)
def test_garbage_between_frames_is_skipped_and_reported(
    pieces: list[tuple[tuple[int, int, int, int, int], bytes]], cuts: list[int]
) -> None:
    garbage = [junk for _, junk in pieces]
    assume(all(MAGIC not in junk for junk in garbage))
    frames = _make_frames([spec for spec, _ in pieces])
    stream = b"".join(junk + data for junk, (_, _, data) in zip(garbage, frames, strict=True))
    decoder = FrameDecoder()
    items = _feed_in_chunks(decoder, stream, cuts)
    got = _frames_only(items)
    assert [f.trigger for f in got] == [trigger for trigger, _, _ in frames]
    for frame, (_, image, _) in zip(got, frames, strict=True):
        assert np.array_equal(frame.image, image)
    malformed = [item for item in items if isinstance(item, Malformed)]
    assert sum(m.skipped for m in malformed) == sum(len(junk) for junk in garbage)
    assert len(malformed) == sum(1 for junk in garbage if junk)


# Garbage that may hold a header-like run: a magic and random fields (a spurious PNG header too).
_junk = st.one_of(
    st.binary(max_size=40),
    st.tuples(
        st.binary(max_size=8), st.binary(min_size=12, max_size=12), st.binary(max_size=30)
    ).map(lambda parts: parts[0] + MAGIC + parts[1] + parts[2]),
)


def _counting_png_decodes(decoded: list[int]) -> contextlib.AbstractContextManager[object]:
    """``codec.decode_png`` appending to ``decoded`` at each call, while the context lasts."""
    from drivers.cameras.tcp import codec

    real = codec.decode_png

    def counted(payload: bytes, width: int, height: int) -> np.ndarray | None:
        decoded.append(1)
        return real(payload, width, height)

    return unittest.mock.patch.object(codec, "decode_png", counted)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(_frame_spec, _junk), min_size=1, max_size=5),
    st.lists(st.integers(0, 10**6), max_size=30),
)
def test_a_feed_that_decodes_a_png_was_announced(
    pieces: list[tuple[tuple[int, int, int, int, int], bytes]], cuts: list[int]
) -> None:
    # The driver frames on the event loop unless may_decode_png says a PNG may be decoded:
    # a PNG decoded by a feed it called False would have stalled the loop.
    decoded: list[int] = []
    junks = [junk for _, junk in pieces]
    frames = _make_frames([spec for spec, _ in pieces])
    stream = b"".join(junk + data for junk, (_, _, data) in zip(junks, frames, strict=True))
    decoder = FrameDecoder()
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    with _counting_png_decodes(decoded):
        for start, end in itertools.pairwise(bounds):
            chunk = stream[start:end]
            announced = decoder.may_decode_png(chunk)
            decoded.clear()
            decoder.feed(chunk)
            assert announced or not decoded


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(_frame_spec, _junk), min_size=1, max_size=5),
    st.lists(st.integers(1, 5000), min_size=1, max_size=30),
)
def test_receiving_in_place_frames_as_feeding_does(
    pieces: list[tuple[tuple[int, int, int, int, int], bytes]], sizes: list[int]
) -> None:
    # The driver lets the socket write into receive_buffer() (a raw payload in place); the
    # frames, the malformed reports and the PNG announcements are those of feed, however the
    # bytes arrive.
    decoded: list[int] = []
    frames = _make_frames([spec for spec, _ in pieces])
    stream = b"".join(junk + data for (_, junk), (_, _, data) in zip(pieces, frames, strict=True))
    fed = FrameDecoder()
    expected = fed.feed(stream) + fed.close()
    decoder, got, at = FrameDecoder(), [], 0
    with _counting_png_decodes(decoded):
        for size in itertools.cycle(sizes):
            if at == len(stream):
                break
            buffer = decoder.receive_buffer()
            count = min(size, len(buffer), len(stream) - at)
            buffer[:count] = stream[at : at + count]  # what recv_into does
            at += count
            announced = decoder.may_decode_png_received(count)
            decoded.clear()
            got += decoder.received(count)
            assert announced or not decoded
    got += decoder.close()
    assert [_describe(item) for item in got] == [_describe(item) for item in expected]


def _describe(item: DecodedFrame | Malformed) -> object:
    if isinstance(item, Malformed):
        return item
    return (item.trigger, item.encoding, item.image.shape, item.image.tobytes())


def test_a_raw_stream_is_framed_without_a_thread() -> None:
    # Flat images: no magic can hide in their pixels, so no feed needs a thread.
    frames = [encode_frame(t, np.full((30, 40), 200, np.uint8)) for t in range(5)]
    stream = b"".join(frames)
    decoder = FrameDecoder()
    for start in range(0, len(stream), 500):
        chunk = stream[start : start + 500]
        # A chunk that splits a header is announced (its encoding is not known yet).
        split = 0 < decoder.buffered < HEADER.size
        assert decoder.may_decode_png(chunk) is split
        decoder.feed(chunk)


# --- driver against the simulator ----------------------------------------------------------


def _unit(i: int) -> SimUnit:
    return SimUnit(f"SN{i:08d}", GTIN, "LOT42", "271231", time.monotonic())


def _source(port: int, **extra: object) -> TcpFrameSource:
    return TcpFrameSource("cam1", TcpFrameSource.Config(type="tcp-frames", port=port, **extra))


async def _take(frames: AsyncIterator[Frame], n: int) -> list[Frame]:
    return [await asyncio.wait_for(anext(frames), STEP) for _ in range(n)]


async def _run_units(
    units: int, *, encoding: int = ENCODING_RAW, **sim_options: object
) -> tuple[TcpCameraSim, list[SimUnit], list[Frame], TcpFrameSource]:
    """Connect a driver to a simulator, put ``units`` on the line, collect their frames."""
    line = SimLine(units_per_min=None)
    seen: list[SimUnit] = []
    line.on_trigger(lambda trigger, unit: seen.append(unit))
    camera = TcpCameraSim(line, encoding=encoding, **sim_options)
    async with camera, _source(camera.port) as source:
        await asyncio.wait_for(camera.wait_for_client(), STEP)
        frames = source.frames()
        for i in range(units):
            line.unit_printed(_unit(i))
        got = await _take(frames, units)
        await frames.aclose()
    return camera, seen, got, source


def test_config_is_strict() -> None:
    with pytest.raises(ValidationError):
        TcpFrameSource.Config(type="tcp-frames", port=9200, colour=True)
    with pytest.raises(ValidationError):
        TcpFrameSource.Config(type="tcp-frames", port=0)
    with pytest.raises(ValidationError):
        TcpFrameSource.Config(type="tcp-frames", port=9200, connect_timeout_s=0)
    config = TcpFrameSource.Config(type="tcp-frames", port=9200)
    assert config.host == "127.0.0.1" and config.max_frame_bytes == 32 * 1024 * 1024


@pytest.mark.parametrize("encoding", [ENCODING_RAW, ENCODING_PNG])
async def test_frames_arrive_in_trigger_order(encoding: int) -> None:
    camera, units, frames, source = await _run_units(20, encoding=encoding, defect_rate=0.0)
    assert isinstance(source, FrameSource)
    assert [f.trigger for f in frames] == list(range(1, 21))
    assert all(f.image.shape == (360, 480) and f.image.dtype == np.uint8 for f in frames)
    assert all(f.source == "cam1" for f in frames)
    assert camera.frames_sent == 20 and camera.injected == {}
    assert source.malformed_count == 0
    reader = ZxingReader()
    for frame in frames[:5]:
        (read,) = reader.read(frame.image)
        assert read.text == units[frame.trigger - 1].hri()


async def test_frames_without_a_client_are_dropped() -> None:
    line = SimLine(units_per_min=None)
    async with TcpCameraSim(line, defect_rate=0.0) as camera:
        for i in range(3):
            line.unit_printed(_unit(i))
        await line.drain()
        await until(lambda: camera.frames_dropped == 3)
        async with _source(camera.port) as source:
            await asyncio.wait_for(camera.wait_for_client(), STEP)
            frames = source.frames()
            line.unit_printed(_unit(3))
            (frame,) = await _take(frames, 1)
            await frames.aclose()
    assert frame.trigger == 4
    assert camera.frames_dropped == 3 and camera.frames_sent == 1


async def test_link_loss_ends_frames_with_connection_error() -> None:
    line = SimLine(units_per_min=None)
    camera = TcpCameraSim(line, defect_rate=0.0)
    await camera.start()
    async with _source(camera.port) as source:
        await asyncio.wait_for(camera.wait_for_client(), STEP)
        frames = source.frames()
        line.unit_printed(_unit(0))
        await _take(frames, 1)
        await camera.stop()
        with pytest.raises(DeviceConnectionError):
            await asyncio.wait_for(anext(frames), STEP)


async def test_connect_timeout_is_a_device_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    async def never_answers(*args: object, **kwargs: object) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", never_answers)
    with pytest.raises(DeviceTimeout):
        async with _source(9, connect_timeout_s=0.05):
            pass


async def test_malformed_input_is_counted_not_raised() -> None:
    image = _image(np.random.default_rng(5))
    bad = struct.pack(">4sIHHBBI", MAGIC, 1, 4, 4, 0, 0, 99) + bytes(99)
    payload = b"noise" + encode_frame(1, image) + bad + encode_frame(2, image)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()
        await reader.read()  # keep the link up until the client leaves
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, _source(port) as source:
        frames = source.frames()
        got = await _take(frames, 2)
        await frames.aclose()
    assert [f.trigger for f in got] == [1, 2]
    assert source.malformed_count == 2


# --- simulator defects, checked with the reader --------------------------------------------


def _fields(text: str) -> tuple[str, str, str, str]:
    match = HRI_RE.fullmatch(text)
    assert match, text
    gtin, expiry, lot, serial = match.groups()
    return gtin, expiry, lot, serial


async def _defect_reads(kind: str, units: int = 6) -> list[tuple[SimUnit, Frame, list, str]]:
    camera, seen, frames, _ = await _run_units(units, defect_rate=1.0, defect_kinds=[kind], seed=7)
    reader = ZxingReader()
    return [
        (seen[f.trigger - 1], f, list(reader.read(f.image)), camera.injected.get(f.trigger, ""))
        for f in frames
    ]


@pytest.mark.parametrize("kind", ALL_DEFECTS)
async def test_each_defect_kind_reads_as_expected(kind: str) -> None:
    results = await _defect_reads(kind)
    if kind == "duplicate_serial":
        # Nothing to duplicate before the first good unit, so that one is good.
        assert results[0][3] == ""
        good_serial = results[0][0].serial
        results = results[1:]
    for unit, _frame, reads, injected in results:
        assert injected == kind
        if kind == "unreadable":
            assert reads == []
            continue
        (read,) = reads
        gtin, expiry, lot, serial = _fields(read.text)
        expected = (unit.gtin, unit.expiry, unit.lot, unit.serial)
        changed = {
            n
            for n, a, b in zip("gels", (gtin, expiry, lot, serial), expected, strict=True)
            if a != b
        }
        if kind == "low_contrast":
            assert read.text == unit.hri() and read.contrast is not None and read.contrast < 0.35
            continue
        assert read.contrast is not None and read.contrast > 0.6
        if kind == "wrong_serial":
            assert changed == {"s"}
        elif kind == "duplicate_serial":
            assert changed == {"s"} and serial == good_serial
        elif kind == "wrong_gtin":
            assert changed == {"g"} and len(gtin) == 14
            assert str(gtin_check_digit(gtin[:13])) == gtin[13]
        elif kind == "wrong_lot":
            assert changed == {"l"}
        elif kind == "wrong_expiry":
            assert changed == {"e"}
            dt.datetime.strptime(expiry, "%y%m%d")  # a real date


async def test_defect_rate_zero_reads_clean_with_high_contrast() -> None:
    _, units, frames, _ = await _run_units(10, defect_rate=0.0)
    reader = ZxingReader()
    for frame in frames:
        (read,) = reader.read(frame.image)
        assert read.text == units[frame.trigger - 1].hri()
        assert read.contrast is not None and read.contrast > 0.6


def test_unknown_defect_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        TcpCameraSim(SimLine(), defect_kinds=["smudge"])


async def _burst_run(seed: int, units: list[SimUnit]) -> tuple[TcpCameraSim, list[Frame]]:
    line = SimLine(units_per_min=None)
    camera = TcpCameraSim(line, defect_rate=0.0, seed=seed)
    burst = camera.add_burst(4, lot="LOT-B", start_within=(2, 6))
    assert 2 <= burst.start <= 6
    async with camera, _source(camera.port) as source:
        await asyncio.wait_for(camera.wait_for_client(), STEP)
        frames = source.frames()
        for unit in units:
            line.unit_printed(unit)
        got = await _take(frames, len(units))
        await frames.aclose()
    return camera, got


async def test_a_burst_makes_a_run_of_one_lot_unreadable_where_the_seed_says() -> None:
    units = [
        SimUnit(f"S{i:04d}", GTIN, "LOT-B" if i % 3 else "LOT-A", "281231", 0.0) for i in range(24)
    ]
    camera, frames = await _burst_run(5, units)
    (burst,) = camera.bursts
    lot_b = [i + 1 for i, u in enumerate(units) if u.lot == "LOT-B"]  # triggers of LOT-B units
    expected = lot_b[burst.start : burst.start + 4]
    assert burst.triggers == expected
    assert camera.injected == dict.fromkeys(expected, "unreadable")
    reader = ZxingReader()
    for frame in frames:
        reads = list(reader.read(frame.image))
        assert (reads == []) == (frame.trigger in expected), frame.trigger
    starts = {(await _burst_run(5, units[:3]))[0].bursts[0].start for _ in range(2)}
    assert starts == {burst.start}  # the same seed, the same run


def test_a_burst_is_refused_when_it_cannot_be_made() -> None:
    camera = TcpCameraSim(SimLine())
    with pytest.raises(ValueError, match="not offered"):
        camera.add_burst(3, kind="duplicate_serial")
    with pytest.raises(ValueError, match="length"):
        camera.add_burst(0)
