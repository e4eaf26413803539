"""The layering rule of the design: data flows optimizers -> package -> serving, and load tests only speak HTTP,
so serving/ and loadtests/ never import the optimizer or the CLI (read from the source, not from a run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"serving": ("optimizers", "optiserve"), "loadtests": ("optimizers", "optiserve")}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_the_layers_above_it(package: str) -> None:
    offenders = {
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for module in imported_modules(path)
        if module.split(".")[0] in FORBIDDEN[package]
    }
    assert not offenders, sorted(offenders)


def test_the_rule_catches_a_function_level_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from optimizers.chain import optimize\n    import optiserve.cli\n")
    assert {"optimizers.chain", "optiserve.cli"} <= imported_modules(sample)
