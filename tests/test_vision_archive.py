"""Failed-frame archive: bounded, rotating, one JSON verdict per rejected unit; wired in the line."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.config.models import CameraSim, PrinterSim, SimulatorsSection
from edge_agent.contracts import Frame
from edge_agent.errors import ConfigError
from edge_agent.vision.archive import FailedFrameArchive
from simulators.pytest_plugin import DEFAULT_ORDER
from simulators.runner import SimulatorSet
from tests.helpers.line import run_order
from tests.helpers.margins import VERDICT_DEADLINE_MS, plc_sim


def _frame(trigger: int, size: tuple[int, int] = (24, 32)) -> Frame:
    image = np.random.default_rng(trigger).integers(0, 256, size=size, dtype=np.uint8)
    return Frame(trigger, image, time.monotonic(), "cam")


def test_save_writes_image_and_verdict(tmp_path: Path) -> None:
    archive = FailedFrameArchive(tmp_path / "failed", 10)
    sidecar = archive.save(
        _frame(7), batch="B1", serial="SN1", reason="wrong_lot", detail="(10) is 'X'", read="(01)"
    )
    assert sidecar is not None
    record = json.loads(sidecar.read_text())
    assert record["batch"] == "B1" and record["serial"] == "SN1" and record["trigger"] == 7
    assert record["reason"] == "wrong_lot" and record["detail"] == "(10) is 'X'"
    assert record["time"].endswith("+00:00")
    image = cv2.imread(str(sidecar.parent / record["image"]), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(image, _frame(7).image)


def test_frame_without_image_keeps_only_the_verdict(tmp_path: Path) -> None:
    archive = FailedFrameArchive(tmp_path, 10)
    empty = Frame(3, np.zeros((0, 0), dtype=np.uint8), time.monotonic(), "reader")
    sidecar = archive.save(empty, reason="no_read", serial=None)
    assert sidecar is not None and json.loads(sidecar.read_text())["image"] is None
    assert "serial" not in json.loads(sidecar.read_text())
    assert list(tmp_path.glob("*.png")) == []


def test_archive_is_bounded_and_drops_the_oldest_first(tmp_path: Path) -> None:
    archive = FailedFrameArchive(tmp_path, 5)
    for trigger in range(1, 13):
        archive.save(_frame(trigger), reason="no_read")
    kept = sorted(tmp_path.glob("*.json"))
    assert len(kept) == 5 and len(list(tmp_path.glob("*.png"))) == 5
    assert [json.loads(p.read_text())["trigger"] for p in kept] == [8, 9, 10, 11, 12]
    # a restart counts what is already there
    again = FailedFrameArchive(tmp_path, 5)
    again.save(_frame(13), reason="no_read")
    triggers = [json.loads(p.read_text())["trigger"] for p in sorted(tmp_path.glob("*.json"))]
    assert triggers == [9, 10, 11, 12, 13]


def test_submit_never_blocks_and_counts_what_it_skips(tmp_path: Path) -> None:
    archive = FailedFrameArchive(tmp_path, 100, max_pending=2)
    futures = [archive.submit(_frame(t, (600, 800)), reason="x") for t in range(40)]
    archive.close()
    accepted = [f for f in futures if f is not None]
    assert len(accepted) >= 2 and archive.dropped == 40 - len(accepted)
    assert archive.saved == len(accepted) == len(list(tmp_path.glob("*.json")))


def test_write_errors_are_counted_not_raised(tmp_path: Path) -> None:
    archive = FailedFrameArchive(tmp_path / "a", 5)
    (tmp_path / "a").rmdir()
    (tmp_path / "a").write_text("not a folder")
    assert archive.save(_frame(1), reason="no_read") is None
    assert archive.errors == 1


@pytest.mark.slow
async def test_line_archives_exactly_the_rejected_units(
    agent_config_factory: Any, tmp_path: Path
) -> None:
    from edge_agent.db import open_reader

    folder = tmp_path / "failed"
    section = SimulatorsSection(
        units_per_min=None,
        printer=PrinterSim(port=0, buffer_size=16),
        camera=CameraSim(port=0, defect_rate=0.1, seed=44),
        plc=plc_sim(),
    )
    async with SimulatorSet(section) as sims:
        config = agent_config_factory(
            simulators=sims,
            order={"quantity": 80},
            line={"verdict_deadline_ms": VERDICT_DEADLINE_MS},
            vision={"archive_dir": str(folder), "archive_max_files": 6},
        )
        await run_order(config)
    conn = open_reader(Path(config.model.agent.state_dir))
    try:
        rows = conn.execute(
            "SELECT trigger, reason FROM units WHERE verdict = 'reject' ORDER BY trigger"
        ).fetchall()
    finally:
        conn.close()
    assert len(rows) > 6  # more rejects than the archive keeps
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    assert len(records) == 6 and len(list(folder.glob("*.png"))) == 6
    rejected = dict(rows)
    for record in records:
        assert rejected[record["trigger"]] == record["reason"]
        assert record["batch"] == DEFAULT_ORDER["id"]
    assert [r["trigger"] for r in records] == [t for t, _ in rows][-6:]


def test_unusable_folder_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"vision\.archive_dir"):
        FailedFrameArchive(tmp_path / "file" / "sub", 5)
