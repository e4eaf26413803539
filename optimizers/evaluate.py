"""Measuring candidates as they will be served: :class:`OutputsEvaluator` runs an artifact through the server's
own pipeline (text or tensors, on the device it will be served from) and compares its outputs with the source
model's on the same inputs; :func:`evaluate` profiles each built candidate and measures its fidelity on the
held-out split with the serving defaults its profile gives (a model two searches both reached is measured
once); :func:`quick_measure` is what a tuning trial does with its combination.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelpkg.hardware import HardwareProfile
from modelpkg.manifest import (
    Fidelity,
    FidelityBudget,
    OnnxRuntimeOptions,
    OpenVINOOptions,
    ServingDefaults,
    TorchOptions,
)
from modelpkg.pipeline import Pipeline, TensorPipeline, TextPipeline
from modelpkg.runtimes.factory import create_runtime
from modelpkg.tokenizer import TextEncoder
from optimizers.cache import content_hash
from optimizers.candidate import Candidate
from optimizers.fidelity import output_fidelity, retrieval_queries
from optimizers.passes.base import Artifact
from optimizers.profile import PeakMemory, best_row, profile_pipeline, serving_defaults
from optimizers.recipe import PlannedCandidate, Recipe
from optimizers.runner import StepRunner, build_candidate, source_artifact
from optimizers.source import SourceModel
from optimizers.tuning import Trial, budget_violation

log = logging.getLogger(__name__)
QUICK_PROFILE_ITEMS = 64


def runtime_options(artifact: Artifact) -> dict[str, Any]:
    """The artifact's runtime settings as ``create_runtime`` and the manifest take them."""
    if artifact.runtime == "openvino":
        return {"openvino_options": OpenVINOOptions(**artifact.options)}
    if artifact.runtime == "torch":
        return {"torch_options": TorchOptions(**artifact.options)}
    return {"onnxruntime_options": OnnxRuntimeOptions(**artifact.options)}


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
        self._queries: dict[int, tuple[list[Any], list[str]]] = {}

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

    def queries(self, items: list[Any]) -> list[str] | None:
        """The retrieval check's queries for ``items`` (``optimizers.fidelity.retrieval_queries``; the same list
        object per input list, so the source's outputs for it are computed once); None unless text embeddings."""
        if self.encoder is None or self.source.task != "embedding":
            return None
        key = id(items)
        if key not in self._queries:
            self._queries[key] = (items, retrieval_queries(items))
        return self._queries[key][1]

    def query_outputs(self, pipeline: Pipeline, items: list[Any], settings: ServingDefaults) -> np.ndarray | None:
        """``pipeline``'s outputs for the retrieval queries of ``items`` (None where there is no such check)."""
        queries = self.queries(items)
        if queries is None or not isinstance(pipeline, TextPipeline):
            return None
        return pipeline.run_as_served(queries, settings)

    def fidelity(
        self,
        outputs: np.ndarray,
        items: list[Any],
        labels: np.ndarray | None = None,
        query_outputs: np.ndarray | None = None,
    ) -> Fidelity:
        """``outputs`` (for ``items``) against the source's; with ``query_outputs``, the retrieval check too."""
        queries = self.queries(items) if query_outputs is not None else None
        pairs = (self.reference(queries), query_outputs) if queries is not None and query_outputs is not None else None
        return output_fidelity(
            self.reference(items),
            outputs,
            task=self.source.task,
            labels=labels,
            queries=pairs,
            widths=tuple(self.source.matryoshka_dims),
        )

    def __call__(self, artifact: Artifact, items: list[Any] | None = None) -> Fidelity:
        """Fidelity on ``items``; by default on the validation split with the retrieval check (a pass's own
        sample, such as a sensitivity probe's, is measured without it)."""
        settings = ServingDefaults()
        pipeline = self.pipeline(artifact)
        if items is not None:
            return self.fidelity(pipeline.run_as_served(items, settings), items)
        items = self.default_items
        outputs = pipeline.run_as_served(items, settings)
        return self.fidelity(outputs, items, query_outputs=self.query_outputs(pipeline, items, settings))


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
            min_batches=recipe.profile.min_batches,
        )
        return Trial(planned, candidate, best_row(rows).items_per_s, fidelity, budget_violation(budget, fidelity))

    return measure


def token_p99(source: SourceModel, texts: list[str]) -> int | None:
    """The 99th-percentile length in tokens of ``texts`` (None for tensor models)."""
    if source.tokenizer is None:
        return None
    encoder = TextEncoder.from_spec(source.path, source.tokenizer)
    return int(np.percentile([len(e.ids) for e in encoder.encode(texts)], 99))


ALONE_SAMPLES = 32  # held-out inputs run alone: batch invariance and single-input latency


@dataclass(frozen=True)
class AloneRuns:
    """A sample of held-out inputs (``picks``, spread over the split) each run alone, warm: outputs and seconds."""

    picks: np.ndarray
    outputs: np.ndarray
    seconds: list[float]

    @property
    def p50_ms(self) -> float:
        return float(np.median(self.seconds) * 1e3)


def run_alone(pipeline: Pipeline, items: list[Any]) -> AloneRuns:
    """Each of ``ALONE_SAMPLES`` inputs run alone twice (the first may build kernels for its shape); the second
    is timed."""
    picks = np.unique(np.linspace(0, len(items) - 1, min(ALONE_SAMPLES, len(items))).astype(int))
    outputs, seconds = [], []
    for i in picks:
        pipeline.run([items[i]])
        started = time.perf_counter()
        outputs.append(pipeline.run([items[i]])[0])
        seconds.append(time.perf_counter() - started)
    return AloneRuns(picks, np.concatenate(outputs), seconds)


def batch_invariance(alone: AloneRuns, served: np.ndarray) -> float:
    """How far outputs move with their batch-mates: the lowest cosine between the inputs' outputs run ``alone``
    and their rows of ``served`` (all the inputs run as a replica runs them: dynamic batches of mixed lengths,
    length-sorted model calls). One-number outputs (a reranker's scores) are compared as one vector."""
    single = alone.outputs.astype(np.float64)
    among = served[alone.picks].astype(np.float64)
    if single.shape[1] == 1:
        single, among = single.T, among.T
    norms = np.linalg.norm(single, axis=1) * np.linalg.norm(among, axis=1)
    cosines = np.einsum("ij,ij->i", single, among) / np.maximum(norms, 1e-12)
    return float(min(cosines.min(), 1.0))


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
        started = time.perf_counter()
        memory = PeakMemory()
        with memory.sampling():
            pipeline = evaluator.pipeline(candidate.artifact)
        spec = recipe.profile
        candidate.profile = profile_pipeline(
            pipeline,
            heldout,
            spec.max_batch,
            spec.items,
            threads,
            spec.min_gain,
            memory=memory,
            min_batches=spec.min_batches,
        )
        settings = serving_defaults(candidate.profile, length_p99)
        outputs = pipeline.run_as_served(heldout, settings)
        query_outputs = evaluator.query_outputs(pipeline, heldout, settings)
        fidelity = evaluator.fidelity(outputs, heldout, evaluator.labels, query_outputs)
        alone = run_alone(pipeline, heldout)
        invariance = batch_invariance(alone, outputs)
        candidate.fidelity = fidelity = fidelity.model_copy(update={"batch_invariance": invariance})
        candidate.single_p50_ms = alone.p50_ms
        candidate.evaluate_s = round(time.perf_counter() - started, 1)
        judged = "  ".join(f"{name} {getattr(fidelity, name):.4f}" for name in fidelity.judged_by)
        log.info(
            "%-28s %s  batch_invariance %.5f  %.0f items/s  %.1f ms alone",
            candidate.name,
            judged,
            invariance,
            candidate.items_per_s,
            alone.p50_ms,
        )
