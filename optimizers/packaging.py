"""Writing a candidate as a model package: the model files its runtime needs (with the TensorRT engine cache
where the pass built one), the tokenizer, the report and its plots, and the manifest (chain, fidelity, budget,
profile, the serving defaults handed over from the profile, runtime options, the machine and the hardware
features the profile relied on, library versions), assembled beside ``out_dir`` and moved into place whole.
"""

from __future__ import annotations

import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

from modelpkg.errors import OptiserveError
from modelpkg.hardware import HardwareProfile, detect
from modelpkg.manifest import FidelityBudget, Manifest, OnnxRuntimeOptions, ServingDefaults, Source, TensorSpec
from modelpkg.package import ModelPackage, load_package, staged_package_dir, utc_now, write_package
from optimizers.candidate import Candidate
from optimizers.evaluate import runtime_options
from optimizers.passes.base import Artifact
from optimizers.passes.export_onnx import OUTPUT_NAMES
from optimizers.profile import serving_defaults
from optimizers.report import write_report
from optimizers.source import SourceModel

LIBRARIES = ("torch", "transformers", "onnx", "onnxruntime", "tokenizers", "openvino", "nncf")
MODEL_INPUTS = [
    TensorSpec(name=name, dtype="int64", shape=["batch", "sequence"])
    for name in ("input_ids", "attention_mask", "token_type_ids")
]


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
    description = source.description().model_copy(update={"tokenizer": tokenizer})
    manifest = Manifest(
        **dict(description),
        version=candidate.name,
        created_at=utc_now(),
        source=Source(path=str(source.path), sha256=source.sha256),
        chain=candidate.chain,
        format=fmt,
        runtime=artifact.runtime,
        precision=artifact.precision,
        model_path=model_path,
        inputs=[i for i in MODEL_INPUTS if i.name in source.text_inputs] if source.input is None else [source.input],
        outputs=[TensorSpec(name=OUTPUT_NAMES[source.task], dtype="float32", shape=["batch", source.output_dim])],
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


def _installed(library: str) -> bool:
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
