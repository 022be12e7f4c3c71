"""The architecture's rules, as the code has them: methods own their behaviour and import no runtime."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE_DIRS = ("vlmzip", "adapters", "kernels", "eval")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("folder", ["vlmzip/methods", "vlmzip/stages"])
def test_methods_and_their_contracts_import_no_runtime(folder):
    for path in sorted((ROOT / folder).glob("*.py")):
        runtime = {name for name in _imports(path) if name.startswith("vlmzip.runtime")}
        assert not runtime, f"{path.relative_to(ROOT)} imports {sorted(runtime)}"


def test_the_registry_imports_no_method_and_no_adapter():
    imported = _imports(ROOT / "vlmzip" / "registry.py")
    assert not {name for name in imported if name.startswith(("vlmzip.methods", "vlmzip.adapters"))}


def test_a_method_file_is_short():
    for path in sorted((ROOT / "vlmzip" / "methods").glob("*.py")):
        # a method is its parameters and the steps it overrides; pure helpers go to scoring.py / selection.py
        assert len(path.read_text().splitlines()) <= 70, f"{path.name}: a method is one short file"


def test_no_module_is_several_modules():
    for folder in PACKAGE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            lines = len(path.read_text().splitlines())
            assert lines <= 720, f"{path.relative_to(ROOT)} has {lines} lines: split it where its sections are"


def test_every_package_is_installed():
    """A package missing from pyproject's list works in an editable install and breaks every other one."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    roots = {Path(folder): name for name, folder in config["package-dir"].items()}
    found = set()
    for folder, name in roots.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *parts)))
    assert found == listed
