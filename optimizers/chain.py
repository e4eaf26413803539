"""The optimizer chain: run a recipe's candidates from a source model, check each against the source, profile
each as the server runs it, and write the fastest candidate within the fidelity budget as a model package.

Data flows one way: source → (per candidate) passes, each through the content-addressed cache → fidelity on
the held-out split → profile → selection, Pareto front and report → package.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import numpy as np

from optimizers.cache import StepCache, content_hash, data_fingerprint, library_versions, step_key
from optimizers.datasets import load_dataset, user_text
from optimizers.fidelity import output_fidelity
from optimizers.passes.base import Artifact, PassContext, PassFailedError, PassUnavailableError, get_pass
from optimizers.passes.export_onnx import OUTPUT_NAMES
from optimizers.profile import PeakMemory, best_row, profile_pipeline, serving_defaults
from optimizers.recipe import PlannedCandidate, Recipe, Step, load_recipe, plan
from optimizers.report import write_report
from optimizers.source import SourceModel
from optimizers.tuning import Trial, budget_violation, tune
from serving.errors import OptiserveError
from serving.hardware import HardwareProfile, detect, missing_features
from serving.package import (
    Fidelity,
    FidelityBudget,
    Manifest,
    ModelPackage,
    OnnxRuntimeOptions,
    OpenVINOOptions,
    PassRecord,
    ProfileRow,
    ServingDefaults,
    Source,
    TensorSpec,
    TorchOptions,
    load_package,
    staged_package_dir,
    utc_now,
    write_package,
)
from serving.pipeline import Pipeline, TensorPipeline, TextPipeline
from serving.runtimes.base import create_runtime, default_threads
from serving.tokenizer import TextEncoder

log = logging.getLogger(__name__)
LIBRARIES = ("torch", "transformers", "onnx", "onnxruntime", "tokenizers", "openvino", "nncf")
MODEL_INPUTS = [
    TensorSpec(name=name, dtype="int64", shape=["batch", "sequence"])
    for name in ("input_ids", "attention_mask", "token_type_ids")
]
Status = Literal["ok", "skipped", "failed"]


class BudgetNotMetError(OptiserveError):
    """No candidate reached the fidelity budget. The report was still written; ``candidates`` holds them all."""

    def __init__(self, message: str, candidates: list[Candidate] | None = None) -> None:
        super().__init__(message)
        self.candidates = candidates or []


@dataclass
class Candidate:
    name: str
    artifact: Artifact | None
    chain: list[PassRecord]
    status: Status = "ok"
    reason: str = ""
    fidelity: Fidelity | None = None
    profile: list[ProfileRow] = field(default_factory=list)
    pareto: bool = False

    @property
    def runtime(self) -> str:
        return self.artifact.runtime if self.artifact else "-"

    @property
    def precision(self) -> str:
        return self.artifact.precision if self.artifact else "-"

    @property
    def model_path(self) -> Path:
        assert self.artifact is not None
        return self.artifact.path

    @property
    def size_bytes(self) -> int:
        if self.artifact is None:
            return 0
        path = self.artifact.path
        return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.glob("*.safetensors"))

    @property
    def items_per_s(self) -> float:
        return best_row(self.profile).items_per_s if self.profile else 0.0

    def summary(self, budget: FidelityBudget) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "runtime": self.runtime,
            "precision": self.precision,
            "size_bytes": self.size_bytes,
            "items_per_s": self.items_per_s,
            "within_budget": bool(self.fidelity and budget.admits(self.fidelity)),
            "violations": budget.violations(self.fidelity) if self.fidelity else [],
            "pareto": self.pareto,
            "fidelity": self.fidelity.model_dump(exclude_none=True) if self.fidelity else None,
            "profile": [row.model_dump() for row in self.profile],
            "chain": [record.model_dump() for record in self.chain],
        }


@dataclass(frozen=True)
class ChainResult:
    package: ModelPackage
    candidates: list[Candidate]
    selected: Candidate
    report: dict[str, Any]


class OutputsEvaluator:
    """Runs artifacts through the same pipeline the server uses (text or tensors) and compares them with the
    source model's outputs on the same inputs (the source's outputs are computed once per input list)."""

    def __init__(
        self,
        source: SourceModel,
        threads: int,
        budget_items: list[Any],
        labels: np.ndarray | None = None,
        device: str = "cpu",
    ) -> None:
        self.source = source
        self.gpus = ["0"] if device == "cuda" else []  # candidates run where they will be served
        self.threads = threads
        self.encoder = TextEncoder.from_spec(source.path, source.tokenizer) if source.tokenizer else None
        self.default_items = budget_items
        self.labels = labels  # true labels of the held-out split, if the data has them
        self._reference: dict[int, tuple[list[Any], np.ndarray]] = {}

    def pipeline(self, artifact: Artifact) -> Pipeline:
        if self.encoder is None:
            if artifact.format == "module":
                from optimizers.modules import ModuleRuntime

                runtime: Any = ModuleRuntime(artifact.path, self.threads)
            else:
                runtime = create_runtime(
                    artifact.runtime,
                    artifact.model_file,
                    self.source.pooling,
                    self.threads,
                    gpus=self.gpus,
                    **runtime_options(artifact),
                )
            return TensorPipeline(runtime, self.source.item_shape, self.source.output_dim)
        runtime = create_runtime(
            artifact.runtime,
            artifact.model_file,
            self.source.pooling,
            self.threads,
            self.source.task,
            gpus=self.gpus,
            pad_token_id=self.encoder.pad_token_id,
            **runtime_options(artifact),
        )
        return TextPipeline(self.encoder, runtime, self.source.output_dim)

    def outputs(self, artifact: Artifact, items: list[Any], settings: ServingDefaults | None = None) -> np.ndarray:
        return self.pipeline(artifact).run_as_served(items, settings or ServingDefaults())

    def reference(self, items: list[Any]) -> np.ndarray:
        key = id(items)
        if key not in self._reference:
            self._reference[key] = (items, self.outputs(source_artifact(self.source), items))
        return self._reference[key][1]

    def fidelity(self, outputs: np.ndarray, items: list[Any], labels: np.ndarray | None = None) -> Fidelity:
        return output_fidelity(self.reference(items), outputs, task=self.source.task, labels=labels)

    def __call__(self, artifact: Artifact, items: list[Any] | None = None) -> Fidelity:
        items = items if items is not None else self.default_items
        return self.fidelity(self.outputs(artifact, items), items)


def runtime_options(artifact: Artifact) -> dict[str, Any]:
    """The artifact's runtime settings as ``create_runtime`` and the manifest take them."""
    if artifact.runtime == "openvino":
        return {"openvino_options": OpenVINOOptions(**artifact.options)}
    if artifact.runtime == "torch":
        return {"torch_options": TorchOptions(**artifact.options)}
    return {"onnxruntime_options": OnnxRuntimeOptions(**artifact.options)}


def source_artifact(source: SourceModel) -> Artifact:
    return Artifact(source.model_path, source.format, "fp32")


class StepRunner:
    """Runs one pass on one artifact through the cache."""

    def __init__(self, context: PassContext, cache: StepCache) -> None:
        self.context = context
        self.cache = cache
        self._hashes: dict[Path, str] = {}
        self._data = data_fingerprint(context.train, context.validation, context.calibration)

    def _hash(self, path: Path) -> str:
        if path not in self._hashes:
            self._hashes[path] = content_hash(path)
        return self._hashes[path]

    def run(self, step: Step, artifact: Artifact) -> tuple[Artifact, PassRecord]:
        spec = get_pass(step.pass_name)
        config = step.config.model_dump(mode="json")
        budget = self.context.budget.model_dump() if spec.uses_budget else None
        key = step_key(
            self._hash(artifact.path),
            spec.name,
            spec.version,
            config,
            library_versions(spec.libraries),
            self.context.device,
            budget,
            self._data,
        )
        entry = self.cache.get(key)
        cached = entry is not None
        if entry is None:
            staging = self.cache.staging(key)
            start = time.perf_counter()
            try:
                output = spec.run(artifact, step.config, replace(self.context, out_dir=staging))
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            meta = {
                "pass": spec.name,
                "config": config,
                "format": output.artifact.format,
                "precision": output.artifact.precision,
                "options": output.artifact.options,
                "duration_s": time.perf_counter() - start,
                "details": output.details,
            }
            entry = self.cache.commit(key, staging, output.artifact.path, meta)
        meta = entry.meta
        log.info("%-16s %s (%.1f s)", spec.name, "cached" if cached else "ran", meta["duration_s"])
        record = PassRecord(
            name=spec.name, config=config, duration_s=meta["duration_s"], details=meta["details"], cached=cached
        )
        return Artifact(entry.output, meta["format"], meta["precision"], meta.get("options", {})), record


def build_candidate(
    planned: PlannedCandidate, source: SourceModel, runner: StepRunner, hardware: HardwareProfile
) -> Candidate:
    if lacking := missing_features(list(planned.requires), hardware):
        return Candidate(planned.name, None, [], "skipped", f"needs {', '.join(lacking)}; {hardware.describe()}")
    artifact, records = source_artifact(source), []
    try:
        for step in planned.steps:
            artifact, record = runner.run(step, artifact)
            records.append(record)
    except PassUnavailableError as exc:
        return Candidate(planned.name, None, records, "skipped", f"{step.pass_name}: {exc}")
    except PassFailedError as exc:
        record = PassRecord(
            name=step.pass_name, config=step.config.model_dump(mode="json"), duration_s=0.0, details=exc.details
        )
        return Candidate(planned.name, None, [*records, record], "failed", str(exc))
    return Candidate(planned.name, artifact, records)


def tuned_groups(planned: list[PlannedCandidate]) -> list[list[PlannedCandidate]]:
    """The planned combinations of each recipe candidate that is searched with Optuna, grouped."""
    groups: dict[str, list[PlannedCandidate]] = {}
    for p in planned:
        if p.tune is not None:
            groups.setdefault(p.group, []).append(p)
    return list(groups.values())


QUICK_PROFILE_ITEMS = 64


def quick_measure(
    evaluator: OutputsEvaluator,
    runner: StepRunner,
    recipe: Recipe,
    budget: FidelityBudget,
    threads: int,
    hardware: HardwareProfile,
) -> Callable[[PlannedCandidate], Trial]:
    """What a tuning trial does with its combination: build it (through the cache), then its fidelity on the
    validation split and its throughput from a short profile."""

    def measure(planned: PlannedCandidate) -> Trial:
        candidate = build_candidate(planned, evaluator.source, runner, hardware)
        if candidate.artifact is None:
            return Trial(planned, candidate, violation=1.0)
        fidelity = evaluator(candidate.artifact)
        rows = profile_pipeline(
            evaluator.pipeline(candidate.artifact),
            evaluator.default_items,
            recipe.profile.max_batch,
            QUICK_PROFILE_ITEMS,
            threads,
            recipe.profile.min_gain,
        )
        return Trial(planned, candidate, best_row(rows).items_per_s, fidelity, budget_violation(budget, fidelity))

    return measure


def token_p99(source: SourceModel, texts: list[str]) -> int | None:
    """The 99th-percentile length in tokens of ``texts`` (None for tensor models)."""
    if source.tokenizer is None:
        return None
    encoder = TextEncoder.from_spec(source.path, source.tokenizer)
    return int(np.percentile([len(e.ids) for e in encoder.encode(texts)], 99))


def evaluate(
    evaluator: OutputsEvaluator, candidates: list[Candidate], heldout: list[Any], recipe: Recipe, threads: int
) -> None:
    """Fill in each built candidate's profile and its fidelity on the held-out split, served as profiled."""
    length_p99 = token_p99(evaluator.source, heldout)
    measured: dict[tuple[str, str], Candidate] = {}  # (content hash, runtime options) -> measured candidate
    for candidate in candidates:
        if candidate.artifact is None:
            continue
        key = (content_hash(candidate.artifact.path), repr(sorted(candidate.artifact.options.items())))
        twin = measured.setdefault(key, candidate)
        if twin is not candidate:  # two searches ended at the same model: measure it once
            candidate.profile, candidate.fidelity = twin.profile, twin.fidelity
            candidate.reason = f"same model as {twin.name}"
            continue
        memory = PeakMemory()
        with memory.sampling():
            pipeline = evaluator.pipeline(candidate.artifact)
        spec = recipe.profile
        candidate.profile = profile_pipeline(
            pipeline, heldout, spec.max_batch, spec.items, threads, spec.min_gain, memory=memory
        )
        outputs = pipeline.run_as_served(heldout, serving_defaults(candidate.profile, length_p99))
        candidate.fidelity = evaluator.fidelity(outputs, heldout, evaluator.labels)
        log.info(
            "%-28s cosine mean %.4f min %.4f  %.0f items/s",
            candidate.name,
            candidate.fidelity.cosine_mean,
            candidate.fidelity.cosine_min,
            candidate.items_per_s,
        )


def fidelity_score(fidelity: Fidelity | None) -> float:
    """One number per candidate for ranking and the Pareto front: top-1 agreement for classifiers, else cosine
    mean."""
    return fidelity.score if fidelity is not None else -1.0


def mark_pareto(candidates: list[Candidate]) -> None:
    """A candidate is on the front if no other is at least as fast and as faithful, and better in one."""
    built = [c for c in candidates if c.fidelity is not None]
    for c in built:
        c.pareto = not any(
            o is not c
            and o.items_per_s >= c.items_per_s
            and fidelity_score(o.fidelity) >= fidelity_score(c.fidelity)
            and (o.items_per_s > c.items_per_s or fidelity_score(o.fidelity) > fidelity_score(c.fidelity))
            for o in built
        )


SPEED_TIE = 0.05  # throughputs closer than this are within a profile's noise: fidelity decides between them


def select(candidates: list[Candidate], budget: FidelityBudget) -> Candidate | None:
    """The fastest servable candidate whose fidelity is within budget; among those within ``SPEED_TIE`` of the
    fastest, the most faithful (plain PyTorch ``module`` models are references only: packages never carry model
    code)."""
    admitted = [
        c
        for c in candidates
        if c.fidelity and budget.admits(c.fidelity) and c.artifact and c.artifact.format != "module"
    ]
    if not admitted:
        return None
    fastest = max(c.items_per_s for c in admitted)
    close = [c for c in admitted if c.items_per_s >= fastest * (1 - SPEED_TIE)]
    return max(close, key=lambda c: (fidelity_score(c.fidelity), c.items_per_s))


def write_candidate_package(
    source: SourceModel,
    candidate: Candidate,
    out_dir: Path,
    budget: FidelityBudget | None = None,
    report: dict[str, Any] | None = None,
    report_dir: Path | None = None,
    serving: ServingDefaults | None = None,
    hardware: HardwareProfile | None = None,
) -> ModelPackage:
    """Write a candidate's model, the tokenizer, the report (and its plots, from ``report_dir``) and the manifest
    as the package ``out_dir`` (assembled beside it and moved into place whole). ``hardware``: the machine the
    candidate was profiled on (default: this one's CPU)."""
    with staged_package_dir(out_dir) as root:
        _fill_package(source, candidate, root, budget, report, report_dir, serving, hardware or detect())
    return load_package(out_dir)


def _copy_model(artifact: Artifact, root: Path) -> tuple[str, Literal["safetensors", "openvino", "onnx"]]:
    """Copy the model files a runtime needs into the package at ``root``; returns the model path and format."""
    if artifact.runtime == "torch":
        (root / "model").mkdir()
        for name in ("config.json", "model.safetensors"):
            shutil.copy2(artifact.path / name, root / "model" / name)
        return "model", "safetensors"
    if artifact.runtime == "openvino":
        for name in ("model.xml", "model.bin"):
            shutil.copy2(artifact.path / name, root / name)
        return "model.xml", "openvino"
    shutil.copy2(artifact.path, root / "model.onnx")
    if artifact.options.get("tensorrt"):  # the engines the tensorrt pass built travel with the model
        cache = OnnxRuntimeOptions(**artifact.options).tensorrt.engine_cache  # type: ignore[union-attr]
        shutil.copytree(artifact.path.parent / cache, root / cache)
    return "model.onnx", "onnx"


def _fill_package(
    source: SourceModel,
    candidate: Candidate,
    root: Path,
    budget: FidelityBudget | None,
    report: dict[str, Any] | None,
    report_dir: Path | None,
    serving: ServingDefaults | None,
    hardware: HardwareProfile,
) -> None:
    artifact = candidate.artifact
    assert artifact is not None
    if artifact.format == "module":
        raise OptiserveError(f"{candidate.name} is a plain PyTorch model; packages carry ONNX or safetensors only")
    tokenizer = None
    if source.tokenizer is not None:
        (root / "tokenizer").mkdir()
        shutil.copy2(source.path / source.tokenizer.path, root / "tokenizer" / "tokenizer.json")
        tokenizer = source.tokenizer.model_copy(update={"path": "tokenizer/tokenizer.json"})
    model_path, fmt = _copy_model(artifact, root)
    if serving is None:
        serving = serving_defaults(candidate.profile) if candidate.profile else ServingDefaults()
    manifest = Manifest(
        name=source.name,
        version=candidate.name,
        created_at=utc_now(),
        source=Source(path=str(source.path), sha256=source.sha256),
        chain=candidate.chain,
        format=fmt,
        runtime=artifact.runtime,
        precision=artifact.precision,
        model_path=model_path,
        inputs=MODEL_INPUTS if source.input is None else [source.input],
        task=source.task,
        outputs=[TensorSpec(name=OUTPUT_NAMES[source.task], dtype="float32", shape=["batch", source.output_dim])],
        tokenizer=tokenizer,
        pooling=source.pooling,
        embedding_dim=source.output_dim if source.task == "embedding" else None,
        labels=list(source.labels),
        fidelity=candidate.fidelity,
        budget=budget,
        profile=candidate.profile,
        serving=serving,
        **runtime_options(artifact),
        hardware=hardware,
        requires=relied_on_features(artifact, hardware),
        libraries={lib: version(lib) for lib in LIBRARIES if _installed(lib)},
    )
    if report is not None:
        write_report(root, report)
        for plot in sorted(report_dir.glob("*.png")) if report_dir else []:
            shutil.copy2(plot, root / plot.name)
    write_package(root, manifest)


def _gpu_name() -> str:
    import torch

    return str(torch.cuda.get_device_name(0))


def _installed(library: str) -> bool:
    from importlib.metadata import PackageNotFoundError

    try:
        version(library)
    except PackageNotFoundError:
        return False
    return True


def relied_on_features(artifact: Artifact, hardware: HardwareProfile) -> list[str]:
    """The hardware features a package's profile relied on: bf16 compute units for bf16 precision (also an
    OpenVINO int8 model's other layers), VNNI and AMX for int8, where the profiling machine had them."""
    precisions = {artifact.precision, "bf16" if artifact.options.get("inference_precision") == "bf16" else ""}
    wanted = []
    if "bf16" in precisions:
        wanted += ["bf16", "amx"]
    if "int8" in precisions:
        wanted += ["vnni", "amx"]
    if artifact.format == "hf" and artifact.precision == "fp16":
        wanted += ["fp16"]
    return [f for f in dict.fromkeys(wanted) if hardware.has(f)]


def _source_name(source: SourceModel) -> str:
    return {"hf": "torch-fp32", "module": "torch-module", "onnx": "onnx-source"}[source.format]


def build_report(
    source: SourceModel,
    recipe: Recipe,
    budget: FidelityBudget,
    candidates: list[Candidate],
    selected: Candidate | None,
    data: dict[str, Any],
    serving: ServingDefaults | None,
    hardware: HardwareProfile,
) -> dict[str, Any]:
    return {
        "source": {"name": source.name, "path": str(source.path), "sha256": source.sha256, "format": source.format},
        "task": source.task,
        "recipe": recipe.name,
        "budget": budget.model_dump(exclude_none=True),
        "heldout_samples": data["splits"]["heldout"],
        "data": data,
        "hardware": {**hardware.model_dump(), "features": hardware.features},
        "selected": selected.name if selected else None,
        "serving": serving.model_dump() if serving else None,
        "pareto_front": [c.name for c in candidates if c.pareto],
        "candidates": [c.summary(budget) for c in candidates],
    }


def optimize(
    source_dir: Path,
    out_dir: Path,
    budget: FidelityBudget | None = None,
    baseline_out: Path | None = None,
    profile_items: int | None = None,
    threads: int | None = None,
    recipe: str | Path | Recipe = "cpu",
    cache_dir: Path | None = None,
    device: Literal["cpu", "cuda"] = "cpu",
    data_file: Path | None = None,
) -> ChainResult:
    """Optimize ``source_dir`` (a Hugging Face directory, an ONNX file or a module directory) with ``recipe``
    into the package at ``out_dir``; optionally also write the unoptimized source as a package at
    ``baseline_out``. ``budget`` overrides the recipe's. ``device="cuda"`` checks and profiles candidates on
    GPU 0, as a GPU replica runs them. ``data_file``: the user's texts (``optimizers.datasets.user_text``) for
    calibration, validation, distillation and the held-out fidelity, instead of the built-in corpus. Raises
    :class:`BudgetNotMetError` (after writing the report beside ``out_dir``) if no candidate qualifies."""
    from optimizers.plots import write_plots

    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    if profile_items is not None:
        recipe = recipe.model_copy(update={"profile": recipe.profile.model_copy(update={"items": profile_items})})
    budget = budget or recipe.budget
    source = SourceModel.load(source_dir)
    planned = plan(recipe, start=source.format, origin=f"recipe {recipe.name}")
    threads = threads or default_threads()
    if data_file is not None and source.tokenizer is None:
        raise OptiserveError(f"--data {data_file}: this model takes tensors, not text; name a dataset in the recipe")
    data = (
        user_text(data_file)
        if data_file
        else load_dataset(recipe.dataset or ("corpus" if source.tokenizer else "digits"))
    )
    heldout = data.heldout
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
    candidates = [Candidate(_source_name(source), source_artifact(source), [])]
    if source.format == "module":
        candidates[0].reason = "reference only: packages carry no model code"
    candidates += [build_candidate(p, source, runner, hardware) for p in planned if p.tune is None]
    tuning = []
    for group in tuned_groups(planned):
        trials, record = tune(group, quick_measure(evaluator, runner, recipe, budget, threads, hardware), budget)
        candidates += [trial.built for trial in trials]
        tuning.append(record.summary())
    evaluate(evaluator, candidates, heldout, recipe, threads)
    mark_pareto(candidates)
    selected = select(candidates, budget)
    serving = serving_defaults(selected.profile, token_p99(source, heldout)) if selected else None
    report = build_report(source, recipe, budget, candidates, selected, data.describe(), serving, hardware)
    report["tuning"] = tuning
    report_dir = out_dir.with_name(out_dir.name + ".report")
    write_report(report_dir, report)
    write_plots(report_dir, report)
    if selected is None:
        built = [c for c in candidates[1:] if c.fidelity] or candidates[:1]
        closest = max(built, key=lambda c: fidelity_score(c.fidelity))
        violations = "; ".join(budget.violations(closest.fidelity)) if closest.fidelity else closest.reason
        raise BudgetNotMetError(
            f"no candidate meets the fidelity budget {budget.model_dump(exclude_none=True)}; closest: "
            f"{closest.name} ({violations}); report written to {report_dir}",
            candidates,
        )
    package = write_candidate_package(source, selected, out_dir, budget, report, report_dir, serving, hardware)
    if baseline_out is not None:
        write_candidate_package(source, candidates[0], baseline_out, budget, hardware=hardware)
    return ChainResult(package=package, candidates=candidates, selected=selected, report=report)
