"""OpenCV runs in the calling thread in the agent's vision and in the camera simulators: its own
pool spins between calls and takes CPU from the event loop (edge_agent/vision/__init__.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["edge_agent.line.runtime", "simulators.cameras.render"])
def test_opencv_has_no_worker_pool_once_the_frame_code_is_imported(module: str) -> None:
    # A fresh interpreter: the setting is process-wide, and other tests import both modules.
    probe = f"import {module}, cv2; print(cv2.getNumThreads())"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "1"
