"""The optimizer chain: run a recipe's candidates from a source model, check each against the source, profile
each as the server runs it, and write the fastest candidate within the fidelity budget as a model package.

Data flows one way: source → (per candidate) passes, each through the content-addressed cache
(:mod:`optimizers.runner`) → fidelity on the held-out split and profile, as served (:mod:`optimizers.evaluate`)
→ selection, Pareto front and report (:mod:`optimizers.selection`) → package (:mod:`optimizers.packaging`).
This module only orchestrates.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from modelpkg.errors import OptiserveError
from modelpkg.hardware import HardwareProfile, detect
from modelpkg.manifest import FidelityBudget
from modelpkg.package import ModelPackage
from modelpkg.runtimes.base import default_threads
from optimizers.cache import StepCache
from optimizers.candidate import Candidate
from optimizers.datasets import Splits, load_dataset, rerank_splits, user_text
from optimizers.evaluate import OutputsEvaluator, evaluate, quick_measure, token_p99
from optimizers.packaging import write_candidate_package
from optimizers.passes.base import PassContext
from optimizers.profile import replica_layout, serving_defaults
from optimizers.recipe import Plan, PlannedCandidate, Recipe, load_plan
from optimizers.report import write_report
from optimizers.runner import StepRunner, build_candidate, source_artifact, tuned_groups
from optimizers.selection import (
    admitted,
    budget_not_met,
    build_report,
    mark_pareto,
    select,
)
from optimizers.source import SourceModel
from optimizers.tuning import Trial, tune

log = logging.getLogger(__name__)
STAGES = 5  # the headings optimize() logs, "[n/5] ..."


@dataclass(frozen=True)
class ChainResult:
    package: ModelPackage
    candidates: list[Candidate]
    selected: Candidate
    report: dict[str, Any]


def _load_data(source: SourceModel, recipe: Recipe, data_file: Path | None) -> Splits:
    if source.image is not None:
        from optimizers.image_data import builtin_images, user_images

        if recipe.dataset not in (None, "images"):
            raise OptiserveError(f"recipe dataset {recipe.dataset!r}: an image model runs on images (or --data DIR)")
        data = user_images(data_file, source.image) if data_file else builtin_images(source.image)
        return data.with_heldout_items(recipe.heldout_items) if recipe.heldout_items else data
    if data_file is not None and source.tokenizer is None:
        raise OptiserveError(f"--data {data_file}: this model takes tensors, not text; name a dataset in the recipe")
    default = recipe.dataset or ("corpus" if source.tokenizer else "digits")
    data = user_text(data_file) if data_file else load_dataset(default)
    data = rerank_splits(data) if source.task == "rerank" else data
    return data.with_heldout_items(recipe.heldout_items) if recipe.heldout_items else data


class Stages:
    """The headings of :func:`optimize`'s long steps ("[n/5] ..."), so a run is never silent for long, each timed
    by its name: where the run's time went, for the report."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def start(self, number: int, name: str, text: str) -> None:
        self._close()
        log.info("[%d/%d] %s", number, STAGES, text)
        self._current = (name, time.perf_counter())

    def so_far(self) -> dict[str, float]:
        """Each stage's seconds, the one running until now."""
        seconds = dict(self.seconds)
        if self._current is not None:
            name, started = self._current
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
        return {name: round(value, 1) for name, value in seconds.items()}

    def _close(self) -> None:
        self.seconds = self.so_far()
        self._current = None


def _gpu_name() -> str:
    import torch

    return str(torch.cuda.get_device_name(0))


def _source_candidate(source: SourceModel) -> Candidate:
    """The source itself, the first candidate and the fidelity reference."""
    name = {"hf": "torch-fp32", "module": "torch-module", "onnx": "onnx-source"}[source.format]
    candidate = Candidate(name, source_artifact(source), [])
    if source.format == "module":
        candidate.reason = "reference only: packages carry no model code"
    return candidate


def _baseline(candidates: list[Candidate]) -> Candidate:
    """The unoptimized model as a package: the source itself, or for a plain PyTorch module (packages carry no
    model code) its plain ONNX export."""
    source = candidates[0]
    if source.artifact is None or source.artifact.format != "module":
        return source
    for candidate in candidates:
        if candidate.artifact is not None and [step.name for step in candidate.chain] == ["export_onnx"]:
            return candidate
    raise OptiserveError(
        "--baseline-out: a PyTorch module's baseline is its plain ONNX export, and the recipe has no candidate that "
        "only exports"
    )


def _build_candidates(
    planned: tuple[PlannedCandidate, ...],
    source: SourceModel,
    runner: StepRunner,
    hardware: HardwareProfile,
    measure: Callable[[PlannedCandidate], Trial],
    budget: FidelityBudget,
) -> tuple[list[Candidate], list[dict[str, Any]]]:
    """The source, every planned candidate built in full, and the built trials of each Optuna search (``measure``
    is what a trial does; with each study's record for the report)."""
    candidates = [_source_candidate(source)]
    candidates += [build_candidate(p, source, runner, hardware) for p in planned if p.tune is None]
    tuning = []
    for group in tuned_groups(planned):
        trials, record = tune(group, measure, budget)
        candidates += [trial.built for trial in trials]
        tuning.append(record.summary())
    return candidates, tuning


def _measure_as_served(
    source: SourceModel, candidates: list[Candidate], data: Any, recipe: Recipe, budget: FidelityBudget
) -> None:
    """Each candidate a package may be made of, as a server on this machine would run it: its best use of all the
    cores (``optimizers.profile.replica_layout``: one replica with a thread per core, or single-thread replicas),
    with the call size its profile chose; recorded as ``Candidate.layout``. Nothing on a single core."""
    cores = os.cpu_count() or 1
    if cores < 2:
        return
    length_p99 = token_p99(source, data.heldout)
    for candidate in admitted(candidates, budget, recipe.selection):
        artifact = candidate.artifact
        assert artifact is not None

        def make(threads: int, artifact: Any = artifact) -> Any:
            return OutputsEvaluator(source, threads, data.validation).pipeline(artifact)

        call_items = serving_defaults(candidate.profile, length_p99).max_call_items
        layout, measured = replica_layout(make, data.heldout, call_items, cores, recipe.profile.items)
        candidate.layout = {"cores": cores, "chosen": layout, **measured}
        log.info(
            "%s as served: %s (%d single-thread replicas: %.0f items/s; one with %d threads: %.0f items/s)",
            candidate.name,
            layout,
            cores,
            measured["replicas_items_per_s"],
            cores,
            measured["threads_items_per_s"],
        )


def optimize(
    source_dir: Path,
    out_dir: Path,
    budget: FidelityBudget | None = None,
    baseline_out: Path | None = None,
    profile_items: int | None = None,
    threads: int | None = None,
    recipe: Plan | str | Path | Recipe = "cpu",
    cache_dir: Path | None = None,
    device: Literal["cpu", "cuda"] = "cpu",
    data_file: Path | None = None,
    matryoshka_dims: tuple[int, ...] | None = None,
) -> ChainResult:
    """Optimize ``source_dir`` (a Hugging Face directory, an ONNX file or a module directory) with ``recipe``
    into the package at ``out_dir`` (``recipe``: a :class:`Plan`, or what :func:`optimizers.recipe.load_plan`
    takes, validated and planned before the model loads); optionally also write the unoptimized source as a package at
    ``baseline_out``. ``budget`` overrides the recipe's. ``device="cuda"`` checks and profiles candidates on
    GPU 0, as a GPU replica runs them. ``data_file``: the user's texts (``optimizers.datasets.user_text``) for
    calibration, validation, distillation and the held-out fidelity, instead of the built-in corpus.
    ``matryoshka_dims``: declare the model trained to be cut to these widths (as its model card's MatryoshkaLoss
    does, where it has one): packages then serve ``dimensions`` and the fidelity is measured at each. Raises
    :class:`BudgetNotMetError` (after writing the report beside ``out_dir``) if no candidate qualifies."""
    from optimizers.plots import write_plots

    chosen = recipe if isinstance(recipe, Plan) else load_plan(recipe)
    if profile_items is not None:
        chosen = chosen.with_profile_items(profile_items)
    recipe, planned = chosen.recipe, chosen.candidates
    budget = budget or recipe.budget
    stages = Stages()
    stages.start(1, "load", f"load {source_dir} and the data")
    source = SourceModel.load(source_dir)
    if matryoshka_dims:
        source = source.with_matryoshka_dims(matryoshka_dims)
    chosen.check_source(source.format)
    threads = threads or default_threads()
    data = _load_data(source, recipe, data_file)
    evaluator = OutputsEvaluator(source, threads, data.validation, data.heldout_labels, device)
    context = PassContext(
        source=source,
        out_dir=out_dir,
        train=data.train,
        calibration=data.calibration,
        validation=data.validation,
        budget=budget,
        evaluate=evaluator,
        device=device,
    )
    runner = StepRunner(context, StepCache(cache_dir))
    hardware = detect(_gpu_name() if device == "cuda" else None)

    measure = quick_measure(evaluator, runner, recipe, budget, threads, hardware)
    stages.start(2, "build", f"build {len(planned)} planned candidate(s) of recipe {recipe.name}")
    candidates, tuning = _build_candidates(planned, source, runner, hardware, measure, budget)
    text = f"check fidelity and profile {len(candidates)} candidate(s) on {len(data.heldout)} held-out inputs"
    stages.start(3, "evaluate", text)
    evaluate(evaluator, candidates, data.heldout, recipe, threads)
    stages.start(4, "select", "measure each candidate within budget as served, select, write the report")
    mark_pareto(candidates)
    if device == "cpu":
        _measure_as_served(source, candidates, data, recipe, budget)
    selected = select(candidates, budget, recipe.selection)
    serving = serving_defaults(selected.profile, token_p99(source, data.heldout)) if selected else None
    layout = selected.layout if selected is not None else None
    if serving is not None and layout is not None:
        serving = serving.model_copy(update={"replica_layout": layout["chosen"]})

    report = build_report(source, recipe, budget, candidates, selected, data.describe(), serving, hardware)
    report["tuning"] = tuning
    report["replica_layout"] = layout
    report["stage_seconds"] = stages.so_far()  # until the report was written
    report_dir = out_dir.with_name(out_dir.name + ".report")
    write_report(report_dir, report)
    write_plots(report_dir, report)
    if selected is None:
        raise budget_not_met(candidates, budget, report_dir, recipe.selection)

    stages.start(5, "write", f"write the package ({selected.name})")
    package = write_candidate_package(source, selected, out_dir, budget, report, report_dir, serving, hardware)
    if baseline_out is not None:
        write_candidate_package(source, _baseline(candidates), baseline_out, budget, hardware=hardware)
    return ChainResult(package=package, candidates=candidates, selected=selected, report=report)
