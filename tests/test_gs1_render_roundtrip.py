"""GS1 content with awkward but legal characters survives render → decode → parse.

Character set 82 holds ``(``, ``)``, ``<``, ``>`` and ``G``/``S``: a lot may be ``A(B`` and a
serial ``X<GS>21Y``. Before: the camera simulator passed the HRI to the bracketed encoder
unescaped, so no value with ``(`` could be rendered (an empty frame went out instead), and
decoded text read the four characters ``<GS>`` as a separator (a lot ``A<GS>21FAKE`` became lot
``A`` and serial ``FAKE``). Only the byte 0x1D separates in symbol data.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.cameras.tcp import TcpFrameSource
from edge_agent.gs1 import CSET82, GS, build, parse_scanned
from edge_agent.line.verify import BatchIdentity, check_content
from edge_agent.vision.decode import ZxingReader
from edge_agent.vision.gs1text import gs1_fields, hri_of
from simulators.cameras.render import render_frame
from simulators.cameras.tcp import TcpCameraSim
from simulators.line import SimLine, SimUnit

GTIN = "09506000134352"
EXPIRY = "301231"
CSET82_SORTED = "".join(sorted(CSET82))
# Whole characters of CSET 82, plus the pieces that used to be misread.
_pieces = st.sampled_from([*CSET82_SORTED, "(", "((", "(21)", ")(", "<GS>", "<GS>21", "%1D"])
values = st.lists(_pieces, min_size=1, max_size=12).map(lambda parts: "".join(parts)[:20])


def decode_one(pairs: tuple[tuple[str, str], ...]) -> tuple[str, str]:
    """Render the pairs as the camera simulator does, read it with the agent's decoder."""
    frame = render_frame(pairs, module_px=4, rotation_deg=0.0, rng=np.random.default_rng(7))
    (read,) = ZxingReader().read(frame)
    assert read.symbology == "]d2"
    return read.raw, read.text


def assert_round_trip(lot: str, serial: str) -> None:
    pairs = (("01", GTIN), ("17", EXPIRY), ("10", lot), ("21", serial))
    expected = build(pairs)
    raw, text = decode_one(pairs)
    assert raw == expected.element_string  # GS (0x1D) only after the lot
    assert raw.count(GS) == 1
    assert parse_scanned(raw).ais == pairs
    assert text == expected.hri == hri_of(raw)
    assert gs1_fields(raw) == dict(pairs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lot=values, serial=values)
def test_any_cset82_values_round_trip(lot: str, serial: str) -> None:
    assert_round_trip(lot, serial)


def test_every_cset82_character_round_trips() -> None:
    for start in range(0, len(CSET82_SORTED), 20):
        chunk = CSET82_SORTED[start : start + 20]
        assert_round_trip(chunk, chunk[::-1])


def test_literal_gs_text_is_not_a_separator_in_a_content_check() -> None:
    # The lot is "A<GS>21FAKE"; read "<GS>" as GS and the code would carry serial FAKE.
    lot, serial = "A<GS>21FAKE", "REAL1"
    pairs = (("01", GTIN), ("17", EXPIRY), ("10", lot), ("21", serial))
    (read,) = ZxingReader().read(render_frame(pairs, rng=np.random.default_rng(3)))
    assert read.raw == f"01{GTIN}17{EXPIRY}10{lot}{GS}21{serial}"
    batch = BatchIdentity(GTIN, lot, EXPIRY)
    check = check_content([read], batch, require_symbology="]d2", min_contrast=0.2)
    assert (check.ok, check.reason, check.serial) == (True, "ok", serial)


def test_a_code_without_a_serial_cannot_pass_for_one() -> None:
    # (01)(17)(10) only, lot "L1<GS>21S2": no real GS in the data, no AI (21) in the symbol.
    # Before, "<GS>" was taken for GS and the unit passed as lot L1, serial S2.
    pairs = (("01", GTIN), ("17", EXPIRY), ("10", "L1<GS>21S2"))
    (read,) = ZxingReader().read(render_frame(pairs, rng=np.random.default_rng(4)))
    assert GS not in read.raw
    assert parse_scanned(read.raw).ais == pairs
    batch = BatchIdentity(GTIN, "L1", EXPIRY)
    check = check_content([read], batch, require_symbology="]d2", min_contrast=0.2)
    assert (check.ok, check.reason, check.serial) == (False, "missing_ai", None)
    assert check.detail == "missing AI (21)"


async def test_the_camera_simulator_renders_brackets_over_tcp() -> None:
    """Over the tcp-frames protocol: units whose lot and serial hold ``(`` and ``<GS>`` arrive
    as frames the agent reads and accepts (before: an empty frame, a no-read)."""
    line = SimLine(units_per_min=None)
    units = [
        SimUnit("S(1)", GTIN, "L(1)<GS>", EXPIRY, time.monotonic()),
        SimUnit("(21)X", GTIN, "L(1)<GS>", EXPIRY, time.monotonic()),
        SimUnit("<GS>21Y", GTIN, "L(1)<GS>", EXPIRY, time.monotonic()),
    ]
    async with TcpCameraSim(line, defect_rate=0.0) as camera:
        config = TcpFrameSource.Config(type="tcp-frames", port=camera.port)
        async with TcpFrameSource("cam1", config) as source:
            await asyncio.wait_for(camera.wait_for_client(), 5.0)
            frames = source.frames()
            for unit in units:
                line.unit_printed(unit)
            got = [await asyncio.wait_for(anext(frames), 5.0) for _ in units]
            await frames.aclose()
    batch = BatchIdentity(GTIN, "L(1)<GS>", EXPIRY)
    reader = ZxingReader()
    for frame, unit in zip(got, units, strict=True):
        reads = reader.read(frame.image)
        check = check_content(reads, batch, require_symbology="]d2", min_contrast=0.2)
        assert (check.ok, check.serial) == (True, unit.serial), check
        assert reads[0].text == unit.hri()
