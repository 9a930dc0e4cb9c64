"""Packaging: the version comes from the installed metadata, every import is declared."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions, version
from pathlib import Path

import riftune

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _third_party_imports(folder: Path) -> set[str]:
    names = set()
    for file in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names and name != "riftune"}


def _distributions(modules: set[str]) -> dict[str, set[str]]:
    owners = packages_distributions()
    return {
        module: {dist.lower().replace("_", "-") for dist in owners.get(module, [module])}
        for module in modules
    }


def test_version_is_the_installed_distributions():
    assert riftune.__version__ == version("riftune") == PYPROJECT["project"]["version"]


def test_every_package_the_library_imports_is_a_dependency():
    """A dependency, or in the extra of the optional feature that imports it (submitit for
    ``--launcher slurm``, tensorboard for ``--tensorboard``)."""
    features = {
        name: reqs
        for name, reqs in PYPROJECT["project"]["optional-dependencies"].items()
        if name not in ("test", "lint")
    }
    required = PYPROJECT["project"]["dependencies"] + [r for rs in features.values() for r in rs]
    declared = {_requirement_name(r) for r in required}
    undeclared = {
        module: dists
        for module, dists in _distributions(_third_party_imports(ROOT / "riftune")).items()
        if not dists & declared
    }
    assert not undeclared


def test_every_package_the_tests_import_is_declared():
    extras = PYPROJECT["project"]["optional-dependencies"]
    # CI installs the test and docs extras (tests/test_docs.py checks the docs' hooks)
    declared = {
        _requirement_name(r)
        for r in PYPROJECT["project"]["dependencies"] + extras["test"] + extras["docs"]
    }
    local = {path.stem for path in (ROOT / "tests").glob("*.py")} | {"pytest"}
    modules = _third_party_imports(ROOT / "tests") - local
    undeclared = {m: d for m, d in _distributions(modules).items() if not d & declared}
    assert not undeclared


def test_constraints_pin_every_floor_and_the_linter():
    pins = dict(
        line.split("==")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    lint = PYPROJECT["project"]["optional-dependencies"]["lint"]
    assert lint == [f"{name}=={pins[name]}" for name in ("ruff", "import-linter")]
    requirements = (
        PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["test"]
    )
    unpinned = {_requirement_name(r) for r in requirements if "==" not in r} - set(pins)
    assert not unpinned, "CI would install these at whatever version is newest"
