"""The documented defaults are the code's defaults."""

from __future__ import annotations

import re

import pytest

from loadtests import settings as loadtest_settings  # declares the load tests' variables
from modelpkg import settings
from modelpkg.manifest import ServingDefaults
from serving import limits
from tests.support.paths import ROOT

DOC = (ROOT / "docs" / "limits.md").read_text()


def _documented(name: str) -> str:
    match = re.search(rf"^\| `{re.escape(name)}`[^|]* \| `([^`]+)`", DOC, flags=re.MULTILINE)
    assert match, f"{name} is not documented in docs/limits.md"
    return match.group(1)


@pytest.mark.parametrize(
    ("variable", "default"),
    [
        (settings.MAX_BODY_BYTES.name, limits.DEFAULT_MAX_BODY_BYTES),
        (settings.MAX_INPUTS.name, limits.DEFAULT_MAX_INPUTS),
        (settings.MAX_INPUT_CHARS.name, limits.DEFAULT_MAX_INPUT_CHARS),
        (settings.ON_OVERFLOW.name, limits.DEFAULT_ON_OVERFLOW),
    ],
)
def test_server_limits_match_the_docs(variable: str, default: object) -> None:
    assert _documented(variable) == str(default)


@pytest.mark.parametrize("field", list(ServingDefaults.model_fields))
def test_serving_defaults_match_the_docs(field: str) -> None:
    assert _documented(field) == str(ServingDefaults.model_fields[field].default)


def test_every_setting_is_in_the_docs_table_with_its_default() -> None:
    section = DOC[DOC.index("## Every environment variable") :]
    assert settings.table() in section, "docs/limits.md's table is stale: paste modelpkg.settings.table()"


def test_every_error_is_in_the_docs_table() -> None:
    from serving import errors

    assert errors.table() in DOC, "docs/limits.md's error table is stale: paste serving.errors.table()"


def test_every_optiserve_variable_the_code_names_is_a_declared_setting() -> None:
    named = {
        (path.relative_to(ROOT).as_posix(), name)
        for folder in ("modelpkg", "serving", "optimizers", "optiserve", "loadtests", "benchmarks", "tests", "scripts")
        for path in (ROOT / folder).rglob("*.py")
        for name in re.findall(r"OPTISERVE_[A-Z_]*[A-Z]", path.read_text(encoding="utf-8"))
    }
    undeclared = sorted(f"{path}: {name}" for path, name in named if name not in settings.SETTINGS)
    assert not undeclared, undeclared


def test_a_bad_value_names_the_variable_and_what_it_takes() -> None:
    with pytest.raises(settings.SettingError, match=r"OPTISERVE_SWEEP_WINDOW_S='soon': must be a number"):
        loadtest_settings.SWEEP_WINDOW_S.get({"OPTISERVE_SWEEP_WINDOW_S": "soon"})
    assert settings.RAY_LOGS.get({"OPTISERVE_RAY_LOGS": ""}) is False  # empty is unset


def test_every_forwarded_variable_is_documented() -> None:
    for name in limits.FORWARDED_ENV:
        assert f"`{name}" in DOC


def test_every_pass_is_documented() -> None:
    from optimizers.passes.base import REGISTRY, get_pass

    get_pass("export_onnx")  # loads the built-in passes
    optimizer_doc = (ROOT / "docs" / "optimizer.md").read_text()
    for name in REGISTRY:
        assert f"`{name}`" in optimizer_doc, f"pass {name} is not in docs/optimizer.md"
