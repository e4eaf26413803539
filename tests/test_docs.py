"""The documented defaults are the code's defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from serving import limits
from serving.package import ServingDefaults

DOC = (Path(__file__).resolve().parent.parent / "docs" / "limits.md").read_text()


def _documented(name: str) -> str:
    match = re.search(rf"^\| `{re.escape(name)}`[^|]* \| `([^`]+)`", DOC, flags=re.MULTILINE)
    assert match, f"{name} is not documented in docs/limits.md"
    return match.group(1)


@pytest.mark.parametrize(
    ("variable", "default"),
    [
        (limits.ENV_MAX_BODY_BYTES, limits.DEFAULT_MAX_BODY_BYTES),
        (limits.ENV_MAX_INPUTS, limits.DEFAULT_MAX_INPUTS),
        (limits.ENV_MAX_INPUT_CHARS, limits.DEFAULT_MAX_INPUT_CHARS),
        (limits.ENV_ON_OVERFLOW, limits.DEFAULT_ON_OVERFLOW),
    ],
)
def test_server_limits_match_the_docs(variable: str, default: object) -> None:
    assert _documented(variable) == str(default)


@pytest.mark.parametrize("field", list(ServingDefaults.model_fields))
def test_serving_defaults_match_the_docs(field: str) -> None:
    assert _documented(field) == str(ServingDefaults.model_fields[field].default)


def test_every_forwarded_variable_is_documented() -> None:
    for name in limits.FORWARDED_ENV:
        assert f"`{name}" in DOC


def test_every_pass_is_documented() -> None:
    from optimizers.passes.base import REGISTRY, get_pass

    get_pass("export_onnx")  # loads the built-in passes
    optimizer_doc = (Path(__file__).resolve().parent.parent / "docs" / "optimizer.md").read_text()
    for name in REGISTRY:
        assert f"`{name}`" in optimizer_doc, f"pass {name} is not in docs/optimizer.md"
