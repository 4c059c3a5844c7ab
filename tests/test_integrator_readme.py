"""The README's integrator example, run as written in a project of its own (issue 10, item 17).

The code block under "Testing your integration against the agent" is taken from README.md at
test time, so the documentation and this test cannot drift apart. It is written into an empty
folder and run by pytest there, as an integrator's suite would run it: the fixtures come only
from the installed plugin (entry point ``pytest11``), nothing from this repository's conftest or
pytest configuration.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- integrator-example:"

pytestmark = pytest.mark.slow


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    after = readme.split(MARKER, 1)[1]
    match = re.search(r"```python\n(.*?)```", after, re.DOTALL)
    assert match is not None, "no python block after the integrator-example marker"
    return match.group(1)


def test_readme_names_only_fixtures_and_fields_that_exist() -> None:
    code = readme_example()
    assert "agent_config_factory(" in code and "await agent_runner(config)" in code
    compile(code, "README.md", "exec")


def test_the_readme_integrator_example_passes_in_a_project_of_its_own(tmp_path: Path) -> None:
    project = tmp_path / "integrator"
    project.mkdir()
    (project / "test_my_line.py").write_text(readme_example(), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(project)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "1 passed" in output, output
