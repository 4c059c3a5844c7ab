"""`edge-agent decode`: JSON shape, text output, exit status, bad files, backends."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent import cli
from edge_agent.vision import commands
from simulators.cameras.synth import synth_case, synth_frame

GS = "\x1d"
HRI = "(01)09506000134352(17)271231(10)LOT42(21)SER123456"
RAW = "01095060001343521727123110LOT42" + GS + "21SER123456"


def _write(path: Path, image: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), image)
    return path


@pytest.fixture
def code_png(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    synth = synth_frame(rng, size="VGA", hri=HRI, module_px=5, hard=False, angle=20.0)
    return _write(tmp_path / "code.png", synth.image)


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_json_line_per_image(
    code_png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = _write(tmp_path / "empty.png", np.full((200, 300), 210, dtype=np.uint8))
    assert cli.main(["decode", "--json", str(code_png), str(empty)]) == 1  # one image: no read
    first, second = _lines(capsys)
    assert first["file"] == str(code_png)
    assert isinstance(first["ms"], float)
    (code,) = first["codes"]  # type: ignore[misc]
    assert code["text"] == HRI
    assert code["raw"] == RAW
    assert code["symbology"] == "]d2"
    assert code["gs1"] == {"01": "09506000134352", "17": "271231", "10": "LOT42", "21": "SER123456"}
    assert len(code["corners"]) == 4 and all(len(c) == 2 for c in code["corners"])
    assert code["module_size"] == pytest.approx(5, rel=0.2)
    assert code["grade"] is None
    assert second == {"file": str(empty), "codes": [], "ms": second["ms"]}


def test_all_read_exits_zero_and_text_output(
    code_png: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["decode", str(code_png)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{code_png}: ]d2 {HRI}")


def test_bad_files_are_reported_not_raised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    assert cli.main(["decode", "--json", str(junk), str(tmp_path / "missing.png")]) == 1
    first, second = _lines(capsys)
    assert "not an image" in str(first["error"]) and first["codes"] == []
    assert "no such file" in str(second["error"])


def test_grade_uses_the_grading_module_or_null(
    code_png: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.main(["decode", "--json", "--grade", str(code_png)]) == 0
    ((code,),) = [line["codes"] for line in _lines(capsys)]  # type: ignore[misc]
    grade = code["grade"]
    if commands._grader() is None:
        assert grade is None
    else:
        assert isinstance(grade, dict) and 0.0 <= grade["overall"] <= 4.0
    # Without the module: null, not an error.
    monkeypatch.setattr(commands, "_grader", lambda: None)
    assert cli.main(["decode", "--json", "--grade", str(code_png)]) == 0
    ((code,),) = [line["codes"] for line in _lines(capsys)]  # type: ignore[misc]
    assert code["grade"] is None


@pytest.mark.requires_tool("libdmtx")
def test_dmtx_backend_keeps_gs(code_png: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["decode", "--json", "--backend", "dmtx", str(code_png)]) == 0
    ((code,),) = [line["codes"] for line in _lines(capsys)]  # type: ignore[misc]
    assert (code["raw"], code["symbology"], code["strategy"]) == (RAW, "]d2", "dmtx")


def test_multi_flags_duplicates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    synth = synth_case(np.random.default_rng(3), 10, duplicates=1, size="1.3MP")
    path = _write(tmp_path / "case.png", synth.image)
    assert cli.main(["decode", "--json", "--multi", str(path)]) == 0
    ((result,),) = [_lines(capsys)]
    codes = result["codes"]
    assert sorted(c["text"] for c in codes) == sorted(synth.codes)  # type: ignore[union-attr]
    assert sum(1 for c in codes if c.get("duplicate")) == 2  # type: ignore[union-attr]


def test_transparent_png_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)  # fully transparent black
    rgba[5:10, 5:10] = (0, 0, 0, 255)
    gray = commands.load_gray(_write(tmp_path / "a.png", rgba))
    assert gray[0, 0] == 255 and gray[7, 7] == 0


def test_bad_budget_is_a_usage_error(code_png: Path) -> None:
    assert cli.main(["decode", "--budget-ms", "0", str(code_png)]) == 2
