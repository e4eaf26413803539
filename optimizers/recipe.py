"""Recipes: which candidates the chain builds, with which passes, searching which alternatives, judged by which
fidelity budget. Written in YAML and validated before anything runs; an error names the bad key and value.

.. code-block:: yaml

    name: minilm-cpu
    budget: {min_cosine_mean: 0.995, min_cosine_min: 0.98}
    candidates:
      - name: int8-dynamic
        steps:
          - pass: export_onnx
          - pass: quantize_dynamic
            search: {per_channel: [false, true]}   # one candidate per value

Every candidate starts from the source model; the torch fp32 source itself is always a candidate (the baseline
and the fidelity reference). Steps that two candidates share are computed once (see ``optimizers.cache``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelpkg.errors import OptiserveError
from modelpkg.hardware import FEATURES
from modelpkg.manifest import FidelityBudget
from optimizers.passes.base import Format, PassConfig, get_pass

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class RecipeError(OptiserveError):
    """A recipe that cannot run: unknown pass, bad config key or value, steps in an impossible order."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class StepSpec(_Strict):
    pass_name: str = Field(alias="pass")
    config: dict[str, Any] = {}
    search: dict[str, list[Any]] = Field(default={}, description="config key -> alternatives; one candidate each")


class TuneSpec(_Strict):
    """Search a candidate's ``search`` space with Optuna instead of building every combination: TPE maximises
    throughput with the fidelity budget as a hard constraint; NSGA-II looks for the speed/fidelity front."""

    sampler: Literal["tpe", "nsga2"] = "tpe"
    trials: int = Field(default=8, gt=0, description="combinations built and measured at most")
    timeout_s: float | None = Field(default=None, gt=0, description="stop starting trials after this long")
    seed: int = 0


class CandidateSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    steps: list[StepSpec] = Field(min_length=1)
    tune: TuneSpec | None = Field(default=None, description="Optuna search over the steps' `search` values")
    requires: list[str] = Field(
        default=[], description="hardware features the candidate needs (e.g. bf16, amx, vnni, cuda); skipped without"
    )

    @field_validator("requires")
    @classmethod
    def _known_features(cls, value: list[str]) -> list[str]:
        unknown = [f for f in value if f not in (*FEATURES, "cuda")]
        if unknown:
            raise ValueError(f"unknown hardware features {unknown}; known: {', '.join([*FEATURES, 'cuda'])}")
        return value


class ProfileSpec(_Strict):
    max_batch: int = Field(default=64, gt=0, description="largest model-call batch the profile tries")
    items: int = Field(default=256, gt=0, description="held-out texts per batch size")
    min_gain: float = Field(default=0.03, ge=0, description="stop doubling once throughput gains less than this")
    min_batches: int = Field(
        default=8,
        ge=1,
        description="dynamic batches timed per call size at least (so that p99 is not the one slowest batch); "
        "a profile's items are at least this many full batches",
    )


class SelectionSpec(_Strict):
    """How the candidates within budget are ranked: by throughput (items/s at the best profile row: what a busy
    replica does) or by the p50 latency of one input run alone (what a lone request waits); either way the other
    is measured and shown, and ``max_single_p50_ms`` can rule out candidates too slow alone."""

    rank_by: Literal["throughput", "latency"] = "throughput"
    max_single_p50_ms: float | None = Field(default=None, gt=0, description="single-input p50 limit, ms")


class Recipe(_Strict):
    name: str = Field(default="recipe", pattern=NAME_PATTERN)
    dataset: str | None = Field(
        default=None,
        description="corpus (text, the default), corpus-large (the corpus with 40,000 more training sentences) "
        "digits (tensors) or images (image classifiers: the built-in images, their default)",
    )
    budget: FidelityBudget = FidelityBudget()
    heldout_items: int | None = Field(
        default=None,
        ge=20,
        description="held-out inputs the fidelity is judged on, at most (default: the whole held-out split; the "
        "built-in corpus holds 1,000)",
    )
    profile: ProfileSpec = ProfileSpec()
    selection: SelectionSpec = SelectionSpec()
    candidates: list[CandidateSpec] = Field(min_length=1)


@dataclass(frozen=True)
class Step:
    pass_name: str
    config: PassConfig


@dataclass(frozen=True)
class PlannedCandidate:
    name: str
    steps: tuple[Step, ...]
    requires: tuple[str, ...] = ()
    group: str = ""  # the recipe candidate it was expanded from
    choice: tuple[tuple[str, Any], ...] = ()  # the searched values it stands for, by config key
    tune: TuneSpec | None = None  # searched with Optuna: built only if a trial picks it


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _format_errors(origin: str, exc: ValidationError, prefix: str = "") -> str:
    lines = [f"{origin}: invalid recipe"]
    for error in exc.errors():
        key = prefix + _where(error["loc"])
        lines.append(f"  {key} = {error.get('input')!r}: {error['msg']}")
    return "\n".join(lines)


def _variant_name(base: str, choice: dict[str, Any]) -> str:
    parts = []
    for key, value in choice.items():
        if isinstance(value, bool):
            parts.append(key if value else f"no_{key}")
        elif isinstance(value, str):
            parts.append(value)
        else:
            parts.append(f"{key}{value}")
    return "-".join([base, *parts]).replace("_", "-")


@dataclass(frozen=True)
class Plan:
    """A validated recipe and the candidates it expands to: what :func:`optimizers.chain.optimize` runs."""

    recipe: Recipe
    candidates: tuple[PlannedCandidate, ...]
    origin: str = "recipe"

    def check_source(self, start: Format) -> None:
        """Raise :class:`RecipeError` unless each candidate's first pass takes the source's format ``start`` and
        every pass after it takes what the pass before yields."""
        for planned in self.candidates:
            fmt = start
            for s_index, step in enumerate(planned.steps):
                spec = get_pass(step.pass_name)
                if fmt not in spec.accepts:
                    before = "the source model is" if s_index == 0 else "the step before it yields"
                    raise RecipeError(
                        f"{self.origin}: candidate {planned.name}, step {s_index} ({step.pass_name}): takes a "
                        f"{'/'.join(spec.accepts)} model, but {before} {fmt}"
                    )
                fmt = spec.produces or fmt

    def with_profile_items(self, items: int) -> Plan:
        """The same plan with the profile timing ``items`` held-out inputs per batch size."""
        profile = self.recipe.profile.model_copy(update={"items": items})
        return replace(self, recipe=self.recipe.model_copy(update={"profile": profile}))


def plan(recipe: Recipe, origin: str = "recipe") -> Plan:
    """Expand every candidate's search alternatives and validate each step's config against its pass, and that
    each pass takes what the step before it yields (the first step's input, the source's format, is checked
    against the source by :meth:`Plan.check_source`)."""
    planned: list[PlannedCandidate] = []
    for c_index, candidate in enumerate(recipe.candidates):
        grids = [
            [(i, key, v) for v in values]
            for i, step in enumerate(candidate.steps)
            for key, values in step.search.items()
        ]
        for combination in itertools.product(*grids) if grids else [()]:
            steps: list[Step] = []
            fmt: Format | None = None
            choice: dict[str, Any] = {}
            for s_index, step in enumerate(candidate.steps):
                where = f"candidates.{c_index}.steps.{s_index}"
                try:
                    spec = get_pass(step.pass_name)
                except OptiserveError as exc:
                    raise RecipeError(f"{origin}: {where}.pass = {step.pass_name!r}: {exc}") from None
                if fmt is not None and fmt not in spec.accepts:
                    raise RecipeError(
                        f"{origin}: {where}.pass = {step.pass_name!r}: takes a {'/'.join(spec.accepts)} model, but "
                        f"the step before it yields {fmt}"
                    )
                values = {**step.config, **{k: v for i, k, v in combination if i == s_index}}
                choice.update({k: v for i, k, v in combination if i == s_index})
                try:
                    config = spec.config_type.model_validate(values)
                except ValidationError as exc:
                    raise RecipeError(_format_errors(origin, exc, f"{where} ({step.pass_name}).config.")) from None
                steps.append(Step(step.pass_name, config))
                fmt = spec.produces or fmt
            name = _variant_name(candidate.name, choice)
            planned.append(
                PlannedCandidate(
                    name,
                    tuple(steps),
                    tuple(candidate.requires),
                    candidate.name,
                    tuple((f"{i}.{k}", v) for i, k, v in combination),
                    candidate.tune,
                )
            )
    names = [p.name for p in planned]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates or "source" in names:
        raise RecipeError(f"{origin}: candidate names must be unique and not 'source': {duplicates or ['source']}")
    return Plan(recipe, tuple(planned), origin)


def load_plan(source: str | Path | Recipe) -> Plan:
    """The plan of a recipe from a YAML file, a built-in recipe by name (``cpu``, ``cpu-full``, ``cpu-distill``,
    ``gpu``) or a :class:`Recipe` built in code; validated and planned before any pass runs."""
    if isinstance(source, Recipe):
        return plan(source, origin=f"recipe {source.name}")
    path = Path(source)
    if not path.is_file():
        builtin = files("optimizers").joinpath(f"recipes/{source}.yaml")
        if not builtin.is_file():
            known = sorted(p.name.removesuffix(".yaml") for p in files("optimizers").joinpath("recipes").iterdir())
            raise RecipeError(f"recipe {source!r}: no such file, and not a built-in recipe ({', '.join(known)})")
        text, origin = builtin.read_text(encoding="utf-8"), f"built-in recipe {source}"
    else:
        text, origin = path.read_text(encoding="utf-8"), str(path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{origin}: not valid YAML: {exc}") from None
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(_format_errors(origin, exc)) from None
    return plan(recipe, origin=origin)
