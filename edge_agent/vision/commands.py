"""`edge-agent decode IMAGE...`: read GS1 DataMatrix codes from image files.

One line per image, in the order given; with ``--json`` one JSON object per line::

    {"file": "a.png", "codes": [{"text": "(01)...(21)...", "raw": "01...<GS>21...",
     "symbology": "]d2", "gs1": {"01": "...", "21": "..."}, "corners": [[x, y], ...],
     "module_size": 5.0, "strategy": "zxing", "grade": {...}}], "ms": 1.2}

``grade`` is null unless ``--grade`` is given and the grading module is installed; ``duplicate``
appears on codes whose content occurs more than once in the image. A file that cannot be read as
an image gets ``"error"`` and no codes. Exit status: 0 when every
image gave at least one code, 1 otherwise (like a scanner's no-read), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.contracts import CodeRead, GrayImage

EXIT_OK, EXIT_NO_READ = 0, 1
OFFLINE_BUDGET_MS = 1000.0  # a file on disk is not on a moving line: try harder than 30 ms
CASE_MAX_CODES = 200

Grader = Callable[..., dict[str, Any]]


def add_commands(sub: Any) -> None:
    decode = sub.add_parser(
        "decode",
        help="decode DataMatrix codes in image files",
        description="Decode GS1 DataMatrix codes in image files (PNG, JPEG, WebP, BMP, TIFF).",
    )
    decode.add_argument("images", nargs="+", metavar="IMAGE", type=Path)
    decode.add_argument("--json", action="store_true", help="one JSON object per image and line")
    decode.add_argument(
        "--grade", action="store_true", help="grade print quality (ISO/IEC 15415 parameters)"
    )
    decode.add_argument(
        "--backend", choices=("zxing", "dmtx"), default="zxing", help="decoder (default zxing)"
    )
    decode.add_argument(
        "--multi", action="store_true", help="many codes per image (a case): flag duplicates"
    )
    decode.add_argument(
        "--budget-ms",
        type=float,
        default=OFFLINE_BUDGET_MS,
        help=f"time budget per image for the fallbacks (default {OFFLINE_BUDGET_MS:g})",
    )
    decode.set_defaults(handler=_decode)


def _decode(args: argparse.Namespace) -> int:
    from edge_agent.config.models import VisionSection
    from edge_agent.vision.pipeline import DecodePipeline

    if not 0 < args.budget_ms <= 600_000:
        print("edge-agent decode: --budget-ms must be in (0, 600000]", file=sys.stderr)
        return 2
    section = VisionSection(
        backend=args.backend,
        frame_budget_ms=args.budget_ms,
        dmtx_timeout_ms=min(args.budget_ms, 10_000.0),
        max_codes=CASE_MAX_CODES if args.multi else 1,
    )
    grader = _grader() if args.grade else None
    reader = DecodePipeline(section)
    status = EXIT_OK
    try:
        reader.start()  # libdmtx workers spawn before the first image is timed
        for path in args.images:
            result = decode_file(path, reader, grader=grader, grade=args.grade)
            if not result["codes"]:
                status = EXIT_NO_READ
            print(json.dumps(result, ensure_ascii=False) if args.json else _text(result))
            sys.stdout.flush()
    finally:
        reader.close()
    return status


def decode_file(
    path: Path, reader: Any, *, grader: Grader | None = None, grade: bool = False
) -> dict[str, Any]:
    """The JSON-ready result for one image file."""
    try:
        image = load_gray(path)
    except (OSError, ValueError) as exc:
        return {"file": str(path), "codes": [], "ms": 0.0, "error": str(exc)}
    started = time.perf_counter()
    reads: list[CodeRead] = list(reader.read(image))
    ms = (time.perf_counter() - started) * 1000.0
    counts: dict[str, int] = {}
    for read in reads:
        counts[read.raw] = counts.get(read.raw, 0) + 1
    codes = []
    for read in reads:
        code = code_json(read)
        if counts[read.raw] > 1:
            code["duplicate"] = True
        code["grade"] = _grade(grader, image, read) if grade else None
        codes.append(code)
    return {"file": str(path), "codes": codes, "ms": round(ms, 2)}


def code_json(read: CodeRead) -> dict[str, Any]:
    from edge_agent.vision.gs1text import gs1_fields

    return {
        "text": read.text,
        "raw": read.raw,
        "symbology": read.symbology,
        "gs1": gs1_fields(read.raw) if read.symbology == "]d2" else None,
        "corners": [list(corner) for corner in read.corners],
        "module_size": None if read.module_size is None else round(read.module_size, 2),
        "size": None if read.size is None else list(read.size),
        "strategy": read.strategy,
        "contrast": None if read.contrast is None else round(read.contrast, 3),
    }


def load_gray(path: Path) -> GrayImage:
    """An 8-bit grayscale image; transparent pixels composited onto white (as printed)."""
    import cv2

    if not path.is_file():
        raise OSError(f"no such file: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"not an image OpenCV can read: {path}")
    if image.dtype != np.uint8:  # 16-bit PNG/TIFF
        image = (image / 257).astype(np.uint8) if image.dtype == np.uint16 else image
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 4:
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        image = (image[:, :, :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return np.ascontiguousarray(image, dtype=np.uint8)


def _grader() -> Grader | None:
    """The partner module's ``grade_symbol``, if present (imported only when asked for)."""
    try:
        from edge_agent.vision import grade as grade_module
    except ImportError:
        return None
    function = getattr(grade_module, "grade_symbol", None)
    return function if callable(function) else None


def _grade(grader: Grader | None, image: GrayImage, read: CodeRead) -> dict[str, Any] | None:
    if grader is None:
        return None
    rows, cols = read.size if read.size is not None else (None, None)
    return grader(image, read.corners, rows=rows, cols=cols, unused_ec=read.unused_ec)


def _text(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"{result['file']}: error: {result['error']}"
    if not result["codes"]:
        return f"{result['file']}: no code ({result['ms']:.1f} ms)"
    lines = []
    for code in result["codes"]:
        grade = code.get("grade")
        graded = f"  grade {grade.get('overall_letter', '?')}" if isinstance(grade, dict) else ""
        duplicate = "  DUPLICATE" if code.get("duplicate") else ""
        lines.append(
            f"{result['file']}: {code['symbology']} {code['text']}{graded}{duplicate}"
            f"  ({result['ms']:.1f} ms)"
        )
    return "\n".join(lines)
