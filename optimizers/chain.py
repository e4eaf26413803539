"""The optimizer chain: build candidates from a source model, check each against it, profile each, and write
the fastest candidate within the fidelity budget as a model package.

Candidates (each one a pass applied to the previous artifact, never changing its input):

    torch-fp32              the source model as-is (the baseline; also the fidelity reference)
    onnx-fp32               export_onnx
    onnx-int8-per-tensor    export_onnx → quantize_dynamic(per_channel=False)
    onnx-int8-per-channel   export_onnx → quantize_dynamic(per_channel=True)
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel

from optimizers.corpus import load_split
from optimizers.fidelity import output_fidelity
from optimizers.passes import ExportOnnxConfig, QuantizeDynamicConfig, export_onnx, quantize_dynamic
from optimizers.passes.export_onnx import OUTPUT_NAMES
from optimizers.profile import best_row, profile_pipeline, serving_defaults
from optimizers.report import write_report
from optimizers.source import SourceModel
from serving.errors import OptiserveError
from serving.package import (
    Fidelity,
    FidelityBudget,
    Manifest,
    ModelPackage,
    PassRecord,
    ProfileRow,
    Source,
    TensorSpec,
    load_package,
    staged_package_dir,
    utc_now,
    write_package,
)
from serving.pipeline import TextPipeline
from serving.runtimes.base import create_runtime, default_threads
from serving.tokenizer import TextEncoder

log = logging.getLogger(__name__)
LIBRARIES = ("torch", "transformers", "onnx", "onnxruntime", "tokenizers")
MODEL_INPUTS = [
    TensorSpec(name=name, dtype="int64", shape=["batch", "sequence"])
    for name in ("input_ids", "attention_mask", "token_type_ids")
]


class BudgetNotMetError(OptiserveError):
    """No candidate reached the fidelity budget. The report was still written."""


@dataclass
class Candidate:
    name: str
    runtime: Literal["onnxruntime", "torch"]
    precision: Literal["fp32", "int8"]
    model_path: Path
    chain: list[PassRecord]
    fidelity: Fidelity | None = None
    profile: list[ProfileRow] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        files = [self.model_path] if self.model_path.is_file() else list(self.model_path.glob("*.safetensors"))
        return sum(f.stat().st_size for f in files)

    @property
    def items_per_s(self) -> float:
        return best_row(self.profile).items_per_s if self.profile else 0.0

    def summary(self, budget: FidelityBudget) -> dict[str, object]:
        return {
            "name": self.name,
            "runtime": self.runtime,
            "precision": self.precision,
            "size_bytes": self.size_bytes,
            "items_per_s": self.items_per_s,
            "within_budget": bool(self.fidelity and budget.admits(self.fidelity)),
            "fidelity": self.fidelity.model_dump() if self.fidelity else None,
            "profile": [row.model_dump() for row in self.profile],
            "chain": [record.model_dump() for record in self.chain],
        }


@dataclass(frozen=True)
class ChainResult:
    package: ModelPackage
    candidates: list[Candidate]
    selected: Candidate
    report: dict[str, object]


def _run_pass(name: str, config: BaseModel, work: Callable[..., Path], *args: object) -> tuple[Path, PassRecord]:
    """Run one pass function ``work(*args, config)`` and record what it was given and how long it took."""
    start = time.perf_counter()
    path = work(*args, config)
    return path, PassRecord(name=name, config=config.model_dump(), duration_s=time.perf_counter() - start)


def build_candidates(source: SourceModel, work_dir: Path, check_texts: list[str]) -> list[Candidate]:
    """Run the passes. Each output is a new file in ``work_dir``."""
    onnx_fp32, export_record = _run_pass(
        "export_onnx", ExportOnnxConfig(), export_onnx, source, work_dir / "fp32.onnx", check_texts
    )
    candidates = [
        Candidate("torch-fp32", "torch", "fp32", source.path, chain=[]),
        Candidate("onnx-fp32", "onnxruntime", "fp32", onnx_fp32, chain=[export_record]),
    ]
    for per_channel in (False, True):
        label = "per-channel" if per_channel else "per-tensor"
        path, record = _run_pass(
            "quantize_dynamic",
            QuantizeDynamicConfig(per_channel=per_channel),
            quantize_dynamic,
            onnx_fp32,
            work_dir / f"int8-{label}.onnx",
        )
        candidates.append(Candidate(f"onnx-int8-{label}", "onnxruntime", "int8", path, [export_record, record]))
    return candidates


def _pipeline(source: SourceModel, candidate: Candidate, threads: int) -> TextPipeline:
    encoder = TextEncoder.from_spec(source.path, source.tokenizer)
    runtime = create_runtime(candidate.runtime, candidate.model_path, source.pooling, threads, source.task, gpus=[])
    return TextPipeline(encoder, runtime, source.output_dim)


def evaluate(
    source: SourceModel, candidates: list[Candidate], heldout: list[str], profile_items: int, threads: int
) -> None:
    """Fill in each candidate's fidelity (vs the torch source) and profile, on the held-out split."""
    reference: np.ndarray | None = None
    for candidate in candidates:
        pipeline = _pipeline(source, candidate, threads)
        candidate.profile = profile_pipeline(pipeline, heldout, items=profile_items, threads=threads)
        outputs = pipeline.run_as_served(heldout, serving_defaults(candidate.profile))
        if reference is None:
            reference = outputs  # the first candidate is the source model itself
        candidate.fidelity = output_fidelity(reference, outputs, top1=source.task == "classification")
        log.info(
            "%-24s cosine mean %.4f min %.4f  %.0f items/s",
            candidate.name,
            candidate.fidelity.cosine_mean,
            candidate.fidelity.cosine_min,
            candidate.items_per_s,
        )


def _closeness(fidelity: Fidelity | None) -> float:
    if fidelity is None:
        return -1.0
    return fidelity.top1_agreement if fidelity.top1_agreement is not None else fidelity.cosine_mean


def select(candidates: list[Candidate], budget: FidelityBudget) -> Candidate | None:
    """The fastest candidate whose fidelity is within budget."""
    admitted = [c for c in candidates if c.fidelity and budget.admits(c.fidelity)]
    return max(admitted, key=lambda c: c.items_per_s, default=None)


def write_candidate_package(
    source: SourceModel,
    candidate: Candidate,
    out_dir: Path,
    budget: FidelityBudget | None = None,
    report: dict[str, object] | None = None,
) -> ModelPackage:
    """Write a candidate's model, the tokenizer, the report and the manifest as the package ``out_dir``
    (assembled beside it and moved into place whole)."""
    with staged_package_dir(out_dir) as root:
        _fill_package(source, candidate, root, budget, report)
    return load_package(out_dir)


def _fill_package(
    source: SourceModel, candidate: Candidate, root: Path, budget: FidelityBudget | None, report: dict | None
) -> None:
    (root / "tokenizer").mkdir()
    shutil.copy2(source.path / source.tokenizer.path, root / "tokenizer" / "tokenizer.json")
    if candidate.runtime == "torch":
        model_path, fmt = "model", "safetensors"
        (root / "model").mkdir()
        for name in ("config.json", "model.safetensors"):
            shutil.copy2(source.path / name, root / "model" / name)
    else:
        model_path, fmt = "model.onnx", "onnx"
        shutil.copy2(candidate.model_path, root / model_path)
    manifest = Manifest(
        name=source.name,
        version=candidate.name,
        created_at=utc_now(),
        source=Source(path=str(source.path), sha256=source.sha256),
        chain=candidate.chain,
        format=fmt,
        runtime=candidate.runtime,
        precision=candidate.precision,
        model_path=model_path,
        inputs=MODEL_INPUTS,
        task=source.task,
        outputs=[TensorSpec(name=OUTPUT_NAMES[source.task], dtype="float32", shape=["batch", source.output_dim])],
        tokenizer=source.tokenizer.model_copy(update={"path": "tokenizer/tokenizer.json"}),
        pooling=source.pooling,
        embedding_dim=source.output_dim if source.task == "embedding" else None,
        labels=list(source.labels),
        fidelity=candidate.fidelity,
        budget=budget,
        profile=candidate.profile,
        serving=serving_defaults(candidate.profile) if candidate.profile else Manifest.model_fields["serving"].default,
        libraries={lib: version(lib) for lib in LIBRARIES},
    )
    if report is not None:
        write_report(root, report)
    write_package(root, manifest)


def optimize(
    source_dir: Path,
    out_dir: Path,
    budget: FidelityBudget | None = None,
    baseline_out: Path | None = None,
    profile_items: int = 256,
    threads: int | None = None,
) -> ChainResult:
    """Optimize ``source_dir`` into the package at ``out_dir``; optionally also write the unoptimized baseline
    (torch fp32) package to ``baseline_out``. Candidates are profiled with ``threads`` runtime threads (default:
    as a replica runs them, see ``default_threads``). Raises :class:`BudgetNotMetError` if no candidate
    qualifies."""
    budget = budget or FidelityBudget()
    source = SourceModel.from_dir(source_dir)
    heldout = load_split("heldout")
    with tempfile.TemporaryDirectory(prefix="optiserve-chain-") as tmp:
        candidates = build_candidates(source, Path(tmp), heldout[:32])
        evaluate(source, candidates, heldout, profile_items, threads or default_threads())
        selected = select(candidates, budget)
        report = {
            "source": {"name": source.name, "path": str(source.path), "sha256": source.sha256},
            "task": source.task,
            "budget": budget.model_dump(),
            "heldout_samples": len(heldout),
            "selected": selected.name if selected else None,
            "candidates": [c.summary(budget) for c in candidates],
        }
        if selected is None:
            report_dir = out_dir.with_name(out_dir.name + ".report")
            write_report(report_dir, report)
            closest = max(candidates[1:], key=lambda c: _closeness(c.fidelity))
            raise BudgetNotMetError(
                f"no candidate meets the fidelity budget {budget.model_dump()}; closest: {closest.name} "
                f"({closest.fidelity}); report written to {report_dir}"
            )
        package = write_candidate_package(source, selected, out_dir, budget, report)
        if baseline_out is not None:
            write_candidate_package(source, candidates[0], baseline_out, budget)
    return ChainResult(package=package, candidates=candidates, selected=selected, report=report)
