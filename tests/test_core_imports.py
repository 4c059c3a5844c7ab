"""The agent core depends on contracts, never on a simulator or a vendor driver (DEVELOPERS.md):
what runs on a line is the same code whether its peers are real devices or the bundled
simulators, and `pip install` of the core alone cannot break on simulator changes."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).parent.parent / "edge_agent"
FORBIDDEN = ("simulators", "drivers")


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
    return found


def test_the_core_imports_no_simulator_and_no_driver() -> None:
    offenders = {
        f"{path.relative_to(CORE.parent)}: {module}"
        for path in CORE.rglob("*.py")
        for module in imported_modules(path)
        if module.split(".")[0] in FORBIDDEN
    }
    assert not offenders, sorted(offenders)


def test_the_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from simulators.runner import SimulatorSet\n")
    assert imported_modules(sample) == ["simulators.runner"]
