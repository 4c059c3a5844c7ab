"""Retake the README's operator screen screenshots: runs the browser test of the screen
(tests/test_hmi_browser.py), which saves each page here as PNG when EDGE_AGENT_SCREENSHOTS is set.

    .venv/bin/python docs/hmi/screenshots.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

if __name__ == "__main__":
    env = {**os.environ, "EDGE_AGENT_SCREENSHOTS": str(HERE)}
    test = "tests/test_hmi_browser.py::test_a_shift_on_the_operator_screen"
    sys.exit(
        subprocess.call(
            [sys.executable, "-m", "pytest", "-q", "-n", "0", test], cwd=ROOT, env=env
        )
    )
