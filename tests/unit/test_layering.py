"""The layering of the house, read from the source (not from a run): the core (``modelpkg``) stands on nothing of
ours; the optimizer and the server each stand on the core and never on each other; load tests speak HTTP and take
only the core's settings and errors; the CLI (``optiserve``) is the one place that joins them. Each package's
opening docstring says what it may import."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tests.support.paths import ROOT

OURS = ("modelpkg", "serving", "optimizers", "loadtests", "optiserve")
ALLOWED = {
    "modelpkg": set(),
    "optimizers": {"modelpkg"},
    "serving": {"modelpkg"},
    "loadtests": {"modelpkg"},
    "optiserve": {"modelpkg", "optimizers", "serving", "loadtests"},
}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_the_layers_below_it(package: str) -> None:
    offenders = {
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for module in imported_modules(path)
        if module.split(".")[0] in OURS and module.split(".")[0] not in ALLOWED[package] | {package}
    }
    assert not offenders, sorted(offenders)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_docstring_says_what_it_may_import(package: str) -> None:
    doc = importlib.import_module(package).__doc__ or ""
    assert "import" in doc, f"{package}/__init__.py's docstring should say what the package may import"


@pytest.mark.parametrize("package", ["modelpkg", "serving", "optimizers"])
def test_no_re_exports(package: str) -> None:
    """One import path per name: no module lists names it imported from elsewhere in ``__all__``. (The load tests'
    ``shape_*.py`` do, on purpose: Locust finds a shape class only at the top of the file it runs.)"""
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {
            alias.asname or alias.name for node in tree.body if isinstance(node, ast.ImportFrom) for alias in node.names
        }
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
                names = {getattr(e, "value", None) for e in getattr(node.value, "elts", [])}
                offenders += [f"{path.relative_to(ROOT)} re-exports {n}" for n in sorted(names & imported)]
    assert not offenders, offenders


def test_the_rule_catches_a_function_level_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from optimizers.chain import optimize\n    import optiserve.cli\n")
    assert {"optimizers.chain", "optiserve.cli"} <= imported_modules(sample)
