"""Decode pipeline: cascade, localisation, ROI, libdmtx worker pool, multi-code reading."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent import gs1
from edge_agent.config.models import VisionSection
from edge_agent.contracts import CodeReader
from edge_agent.vision import pipeline as pipeline_module
from edge_agent.vision.dmtx_pool import DmtxPool, DmtxWorkerLost, abort_worker, dmtx_search
from edge_agent.vision.gs1text import gs1_fields, hri_of
from edge_agent.vision.multi import read_case
from edge_agent.vision.pipeline import DecodePipeline, build_reader
from simulators.cameras.synth import synth_case, synth_frame
from simulators.pytest_plugin import require_tool

GS = "\x1d"
HRI = "(01)09506000134352(17)271231(10)LOT42(21)SER123456"
RAW = "01095060001343521727123110LOT42" + GS + "21SER123456"


@pytest.fixture(scope="module")
def dmtx() -> Iterator[DmtxPool]:
    require_tool("libdmtx")
    pool = DmtxPool(1)
    pool.start()
    yield pool
    pool.close()


def _clean(rng: np.random.Generator, **conditions: float) -> dict[str, float]:
    base = {"angle": 0.0, "perspective": 0.0, "blur": 0.0, "noise": 2.0, "uneven": 0.0}
    base.update({"damage": 0.0, "contrast": 0.7})
    base.update(conditions)
    return base


@pytest.mark.parametrize(
    ("size", "module_px", "conditions"),
    [
        ("VGA", 5, {"angle": 137.0}),
        ("VGA", 3, {"angle": 23.0}),
        ("VGA", 6, {"contrast": 0.22, "angle": 71.0}),
        ("1.3MP", 4, {"angle": 250.0, "perspective": 0.04}),
        ("1.3MP", 6, {"contrast": 0.2, "uneven": 0.4, "angle": 305.0}),
        ("5MP", 8, {"angle": 199.0, "blur": 0.8, "noise": 5.0}),
        ("5MP", 3, {"angle": 12.0}),
    ],
)
def test_pipeline_reads_hard_frames(
    size: str, module_px: int, conditions: dict[str, float]
) -> None:
    rng = np.random.default_rng(module_px)
    synth = synth_frame(rng, size=size, hri=HRI, module_px=module_px, **_clean(rng, **conditions))
    # A generous budget: this tests what the cascade reads, not how fast (benchmarks/decode.py).
    reader: CodeReader = DecodePipeline(VisionSection(frame_budget_ms=5000.0))
    (read,) = reader.read(synth.image)
    assert (read.text, read.raw, read.symbology) == (HRI, RAW, "]d2")
    assert read.module_size == pytest.approx(module_px, rel=0.2)
    assert read.ms > 0 and read.timings and read.strategy
    assert read.contrast is not None and 0.0 < read.contrast <= 1.0
    for (x, y), (ex, ey) in zip(read.corners, synth.corners[0], strict=True):
        assert abs(x - ex) <= 2 * module_px and abs(y - ey) <= 2 * module_px


def test_noisy_low_contrast_code_is_read_by_a_fallback() -> None:
    reader = DecodePipeline(VisionSection(frame_budget_ms=5000.0))
    strategies = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        conditions = _clean(rng, contrast=0.17, noise=6.0, blur=0.5, angle=seed * 37.0)
        synth = synth_frame(rng, size="1.3MP", hri=HRI, module_px=5, **conditions)
        (read,) = reader.read(synth.image)
        assert read.text == HRI
        strategies.append(read.strategy)
    # The fast pass alone misses most of these: the cascade is what reads them.
    assert strategies.count("denoise") >= 2
    single = DecodePipeline(VisionSection(fallbacks=[]))
    rng = np.random.default_rng(0)
    conditions = _clean(rng, contrast=0.17, noise=6.0, blur=0.5, angle=0.0)
    assert (
        single.read(synth_frame(rng, size="1.3MP", hri=HRI, module_px=5, **conditions).image) == []
    )


def test_large_frame_is_localised_then_decoded_on_a_crop() -> None:
    rng = np.random.default_rng(11)
    synth = synth_frame(rng, size="5MP", hri=HRI, module_px=5, **_clean(rng))
    (read,) = DecodePipeline().read(synth.image)
    stages = [name for name, _ in read.timings]
    assert stages[:2] == ["locate", "zxing"]
    assert read.text == HRI


def test_frames_without_code_read_nothing() -> None:
    rng = np.random.default_rng(12)
    reader = DecodePipeline()
    for size in ("VGA", "1.3MP", "5MP"):
        for _ in range(3):
            assert reader.read(synth_frame(rng, size=size, code=False).image) == []


def test_fallback_runs_only_when_the_fast_pass_reads_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(13)
    image = synth_frame(rng, size="VGA", hri=HRI, module_px=5, **_clean(rng)).image
    reader = DecodePipeline(VisionSection(fallbacks=["clahe"], frame_budget_ms=5000.0))
    (read,) = reader.read(image)
    assert read.strategy == "zxing" and [n for n, _ in read.timings] == ["zxing"]
    # Make the fast pass blind: the CLAHE stage must then read it.
    real = DecodePipeline._zxing

    def blind_fast_pass(self: DecodePipeline, target: object, **kwargs: object) -> object:
        return [] if kwargs.get("strategy", "zxing") == "zxing" else real(self, target, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(DecodePipeline, "_zxing", blind_fast_pass)
    (read,) = reader.read(image)
    assert read.strategy == "clahe"
    assert [n for n, _ in read.timings] == ["zxing", "clahe"]


def test_budget_stops_the_fallbacks_not_the_fast_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def slow_stage(name: str) -> object:
        def stage(self: DecodePipeline, target: object, deadline: float) -> list[object]:
            calls.append(name)
            time.sleep(0.03)
            return []

        return stage

    for name in ("zxing", "denoise", "global-binarizer", "clahe", "upscale", "grid"):
        monkeypatch.setitem(pipeline_module._STAGES, name, slow_stage(name))
    three = [pipeline_module._Target(np.zeros((50, 50), np.uint8), (0, 0))] * 3
    monkeypatch.setattr(DecodePipeline, "_targets", lambda self, frame, timings: three)
    reader = DecodePipeline(VisionSection(frame_budget_ms=20.0))
    assert reader.read(np.full((100, 100), 200, dtype=np.uint8)) == []
    # The best candidate gets the fast pass although the budget ran out during it; the others
    # only within the fast pass's share of the budget; no fallback starts after the budget.
    assert calls == ["zxing"]
    calls.clear()
    reader = DecodePipeline(VisionSection(frame_budget_ms=1000.0))  # share: 333 ms
    assert reader.read(np.full((100, 100), 200, dtype=np.uint8)) == []
    assert calls[:3] == ["zxing"] * 3
    calls.clear()
    reader = DecodePipeline(VisionSection(frame_budget_ms=5000.0))
    assert reader.read(np.full((100, 100), 200, dtype=np.uint8)) == []
    assert calls == ["zxing"] * 3 + ["denoise", "global-binarizer"] + [
        "upscale",
        "upscale",
        "grid",
        "grid",
        "clahe",
    ]


def test_roi_limits_the_search_and_corners_are_in_frame_coordinates() -> None:
    rng = np.random.default_rng(14)
    synth = synth_frame(rng, size="VGA", hri=HRI, module_px=4, **_clean(rng))
    xs = [x for x, _ in synth.corners[0]]
    ys = [y for _, y in synth.corners[0]]
    x0, y0 = int(min(xs)) - 15, int(min(ys)) - 15
    roi = (max(0, x0), max(0, y0), int(max(xs) - min(xs)) + 30, int(max(ys) - min(ys)) + 30)
    (read,) = DecodePipeline(VisionSection(roi=roi)).read(synth.image)
    for (x, y), (ex, ey) in zip(read.corners, synth.corners[0], strict=True):
        assert abs(x - ex) <= 8 and abs(y - ey) <= 8
    # An ROI beside the code: nothing.
    away = (0, 0, 40, 40) if x0 > 60 or y0 > 60 else (600, 440, 40, 40)
    assert DecodePipeline(VisionSection(roi=away)).read(synth.image) == []


# --- libdmtx backend ----------------------------------------------------------------------


def test_dmtx_keeps_fnc1_as_gs(dmtx: DmtxPool) -> None:
    rng = np.random.default_rng(15)
    synth = synth_frame(rng, size="VGA", hri=HRI, module_px=5, **_clean(rng, angle=30.0))
    section = VisionSection(backend="dmtx", fallbacks=[], dmtx_timeout_ms=5000.0)
    reader = DecodePipeline(section, dmtx=dmtx)
    (read,) = reader.read(synth.image)
    assert read.raw == RAW  # GS between the lot and AI 21, not "LOT4221SER..."
    assert read.symbology == "]d2"
    assert read.text == HRI
    assert read.strategy == "dmtx"
    assert read.module_size == pytest.approx(5, rel=0.2)
    for (x, y), (ex, ey) in zip(read.corners, synth.corners[0], strict=True):
        assert abs(x - ex) <= 6 and abs(y - ey) <= 6


def test_dmtx_budget_is_enforced_on_a_frame_without_code(dmtx: DmtxPool) -> None:
    rng = np.random.default_rng(16)
    # Busy texture everywhere: unbounded, libdmtx searches this for seconds.
    noise = rng.integers(0, 256, size=(1024, 1280), dtype=np.uint8)
    started = time.perf_counter()
    assert dmtx.read(noise, budget_ms=50.0) == []
    elapsed = time.perf_counter() - started
    # budget + pickling + a loaded CI machine; far below an unbounded search
    assert elapsed < 1.5
    assert dmtx.restarts == 0


def test_dmtx_fallback_reads_what_zxing_missed(
    dmtx: DmtxPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(17)
    image = synth_frame(rng, size="VGA", hri=HRI, module_px=5, **_clean(rng)).image
    monkeypatch.setattr(DecodePipeline, "_zxing", lambda self, target, **kw: [])
    reader = DecodePipeline(
        VisionSection(fallbacks=["dmtx"], frame_budget_ms=5000.0, dmtx_timeout_ms=5000.0), dmtx=dmtx
    )
    (read,) = reader.read(image)
    assert (read.strategy, read.raw) == ("dmtx", RAW)


@pytest.mark.requires_tool("libdmtx")
def test_crashing_worker_does_not_kill_the_caller_and_the_pool_recovers() -> None:
    pool = DmtxPool(1)
    try:
        with pytest.raises(DmtxWorkerLost):
            pool.call(10.0, os.abort)  # a C abort, as libdmtx's assertions do
        assert pool.restarts == 1
        with pytest.raises(DmtxWorkerLost):
            pool.call(0.05, time.sleep, 30)  # hung: killed after budget + margin
        assert pool.restarts == 2
        rng = np.random.default_rng(18)
        image = synth_frame(rng, size="VGA", hri=HRI, module_px=5, **_clean(rng)).image
        (read,) = pool.read(image, budget_ms=2000.0)
        assert read.raw == RAW
        assert pool.restarts == 2
    finally:
        pool.close()


@pytest.mark.requires_tool("libdmtx")
def test_read_turns_a_crash_into_no_read() -> None:
    pool = DmtxPool(1)
    try:
        pool.search_fn = abort_worker
        assert pool.read(np.zeros((10, 10), dtype=np.uint8), budget_ms=50.0) == []
        assert pool.restarts == 1
        pool.search_fn = dmtx_search
        assert pool.read(np.zeros((10, 10), dtype=np.uint8), budget_ms=50.0) == []
        assert pool.restarts == 1
    finally:
        pool.close()


@pytest.mark.requires_tool("libdmtx")
def test_concurrent_crashes_leave_a_working_pool() -> None:
    pool = DmtxPool(1)
    blank = np.zeros((10, 10), dtype=np.uint8)
    try:
        pool.search_fn = abort_worker
        with ThreadPoolExecutor(max_workers=2) as threads:
            results = list(threads.map(lambda _: pool.read(blank, budget_ms=50.0), range(4)))
        assert results == [[]] * 4
        assert pool.restarts >= 1
        pool.search_fn = dmtx_search
        rng = np.random.default_rng(21)
        image = synth_frame(rng, size="VGA", hri=HRI, module_px=5, **_clean(rng)).image
        (read,) = pool.read(image, budget_ms=5000.0)
        assert read.raw == RAW
    finally:
        pool.close()


# --- multi-code ---------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "duplicates"), [(12, 0), (60, 3)])
def test_case_reads_every_code_and_flags_duplicates(count: int, duplicates: int) -> None:
    rng = np.random.default_rng(count)
    synth = synth_case(rng, count, duplicates=duplicates)
    case = read_case(synth.image)
    assert len(case.codes) == count
    assert sorted(code.read.text for code in case.codes) == sorted(synth.codes)
    assert case.unique == len(set(synth.codes))
    flagged = {code.read.text for code in case.codes if code.duplicate}
    assert flagged == set(synth.codes[count - duplicates :])
    assert sum(case.duplicates.values()) == sum(synth.codes.count(text) for text in flagged)
    for code in case.codes:
        x, y = code.center
        assert 0 <= x < synth.image.shape[1] and 0 <= y < synth.image.shape[0]


# --- text ---------------------------------------------------------------------------------


def test_hri_of_element_strings() -> None:
    assert hri_of(RAW) == HRI
    assert gs1_fields(RAW) == {
        "01": "09506000134352",
        "17": "271231",
        "10": "LOT42",
        "21": "SER123456",
    }
    # Invalid check digit: still split for the operator, not validated.
    assert hri_of("0109506000134353" + "21ABC") == "(01)09506000134353(21)ABC"
    assert gs1_fields("0109506000134353") is None


def test_pipeline_is_thread_safe() -> None:
    rng = np.random.default_rng(20)
    frames = [synth_frame(rng, size="VGA", hard=False, module_px=4) for _ in range(8)]
    reader = DecodePipeline()
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(reader.read, [f.image for f in frames] * 3))
    assert [r[0].text for r in results] == [f.codes[0] for f in frames] * 3


def test_roi_outside_the_frame_reads_nothing() -> None:
    image = np.full((100, 100), 200, dtype=np.uint8)
    assert DecodePipeline(VisionSection(roi=(500, 500, 50, 50))).read(image) == []


def test_locate_off_decodes_the_whole_frame() -> None:
    rng = np.random.default_rng(19)
    synth = synth_frame(rng, size="1.3MP", hri=HRI, module_px=5, **_clean(rng))
    (read,) = DecodePipeline(VisionSection(locate="off")).read(synth.image)
    assert read.text == HRI and [n for n, _ in read.timings] == ["zxing"]


@pytest.mark.parametrize("roi", [(-1, 0, 100, 100), (0, 0, 8, 100)])
def test_bad_roi_is_a_config_error(roi: tuple[int, int, int, int]) -> None:
    with pytest.raises(ValueError, match="roi"):
        VisionSection(roi=roi)


def test_build_reader_from_config() -> None:
    reader = build_reader(VisionSection(backend="zxing", fallbacks=[]))
    assert reader.dmtx is None
    reader.close()


_ALNUM = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ0123456789-./", min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(lot=_ALNUM, serial=_ALNUM, order=st.permutations(["17", "10", "21"]))
def test_hri_of_any_valid_element_string(lot: str, serial: str, order: list[str]) -> None:
    values = {"17": "271231", "10": lot, "21": serial}
    built = gs1.build([("01", "09506000134352"), *((ai, values[ai]) for ai in order)])
    assert hri_of(built.element_string) == built.hri


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("0123456789ABC()\x1d%"), max_size=60))
def test_hri_of_never_raises(raw: str) -> None:
    assert isinstance(hri_of(raw), str)
    assert gs1_fields(raw) is None or isinstance(gs1_fields(raw), dict)
