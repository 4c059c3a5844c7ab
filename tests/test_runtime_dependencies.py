"""`pip install .` must give a working `edge-agent`: every third-party module the shipped
packages import is installed by the runtime dependencies of pyproject.toml (or theirs), not only
by the `dev` extra the tests install. (httpx, the API client of `edge-agent order`, was once dev
only: README command 1 failed on a clean clone while every test passed.)"""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("edge_agent", "drivers", "simulators")


def runtime_distributions() -> set[str]:
    """The runtime dependencies and everything they require (extras left out), as installed."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(text) for text in project["dependencies"]]
    seen: set[str] = set()
    while todo:
        requirement = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        todo += [Requirement(text) for text in metadata.requires(name) or []]
    return seen


def pytest_only_modules() -> set[Path]:
    """The modules only pytest loads (its ``pytest11`` entry points): they may need pytest."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    modules = project.get("entry-points", {}).get("pytest11", {}).values()
    return {ROOT / (module.replace(".", "/") + ".py") for module in modules}


def imported_modules() -> dict[str, str]:
    """Top-level third-party module → a file of the shipped packages that imports it."""
    own = set(SHIPPED)
    found: dict[str, str] = {}
    for package in SHIPPED:
        for path in sorted(set((ROOT / package).rglob("*.py")) - pytest_only_modules()):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in own and top not in sys.stdlib_module_names:
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_module_the_shipped_code_imports_comes_with_the_runtime_dependencies() -> None:
    runtime = runtime_distributions()
    providers = metadata.packages_distributions()
    missing = {
        module: where
        for module, where in imported_modules().items()
        if not {canonicalize_name(d) for d in providers.get(module, [])} & runtime
    }
    assert not missing, f"imported but not a runtime dependency (pyproject.toml): {missing}"
