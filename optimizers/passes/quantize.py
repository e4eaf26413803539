"""Accuracy-aware int8 quantization with ONNX Runtime: dynamic (int8 weights, activations quantized per call:
by default with a scale per row, so an input's result does not depend on its batch-mates; see
``optimizers.row_scales``) and static (QDQ, activation ranges calibrated on the corpus's calibration split).

Both passes first quantize as configured. If the result is outside the fidelity budget on the validation split,
they measure each quantizable node's sensitivity (the fidelity loss when only that node is quantized), then try
per-channel weights if the config asked for per-tensor, then keep the most sensitive nodes in fp32, widening
the exclusion 1, 2, 4, … nodes until the budget holds. If nothing within ``max_excluded`` holds, the pass fails
naming the closest attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field
from tqdm import tqdm

from modelpkg.hardware import int8_saturates
from modelpkg.manifest import Fidelity
from optimizers.budget import admits, violations
from optimizers.passes.base import (
    Artifact,
    PassConfig,
    PassContext,
    PassFailedError,
    PassOutput,
    model_feeds,
    out_path,
    register,
)
from optimizers.row_scales import per_row_scales

log = logging.getLogger(__name__)
LIBRARIES = ("onnx", "onnxruntime")


class QuantizeConfig(PassConfig):
    per_channel: bool = True
    op_types: tuple[str, ...] = ("MatMul",)
    nodes_to_exclude: tuple[str, ...] = ()
    accuracy_aware: bool = Field(
        default=True,
        description="widen exclusions until the fidelity budget holds (off: quantize as configured and leave "
        "the verdict to the chain's selection)",
    )
    reduce_range: bool = Field(
        default_factory=int8_saturates,
        description="7-bit weights (ONNX Runtime's reduce_range); default: on where the CPU's int8 kernels saturate "
        "(x86 without VNNI). Part of the step's cache key, so a package made on another kind of CPU is not reused",
    )
    max_excluded: float = Field(default=0.25, gt=0, le=1, description="most nodes kept fp32, as a share")
    sensitivity_samples: int = Field(default=64, gt=0, description="validation texts per sensitivity probe")


class QuantizeDynamicConfig(QuantizeConfig):
    activation_scales: Literal["row", "tensor"] = Field(
        default="row",
        description="row: a symmetric scale per row of each activation (one token's vector), so outputs do not "
        "depend on their batch-mates; tensor: ONNX Runtime's one scale per call from every row in it "
        "(batch-dependent)",
    )


class QuantizeStaticConfig(QuantizeConfig):
    calibration_method: str = Field(default="MinMax", pattern="^(MinMax|Entropy|Percentile)$")
    calibration_samples: int = Field(default=128, gt=0)


def quantize_dynamic(model_path: Path, out_path: Path, config: QuantizeConfig) -> Path:
    """Write an int8 (signed weights, dynamic activations) copy of ``model_path`` to ``out_path``."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    out_path.parent.mkdir(parents=True, exist_ok=True)
    ort_quantize_dynamic(
        model_input=model_path,
        model_output=out_path,
        op_types_to_quantize=list(config.op_types),
        per_channel=config.per_channel,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(config.nodes_to_exclude),
        reduce_range=config.reduce_range,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    if isinstance(config, QuantizeDynamicConfig) and config.activation_scales == "row":
        per_row_scales(out_path, out_path)
    return out_path


class TextCalibrationReader:
    """ONNX Runtime's ``CalibrationDataReader`` over tokenized texts, a few at a time."""

    def __init__(self, batches: Sequence[dict[str, np.ndarray]]) -> None:
        self._batches = list(batches)
        self._iter: Iterator[dict[str, np.ndarray]] = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._batches)


def _calibration_batches(context: PassContext, samples: int, rows: int = 8) -> list[dict[str, np.ndarray]]:
    items = context.calibration[:samples]
    return [model_feeds(context.source, items[i : i + rows]) for i in range(0, len(items), rows)]


def quantize_static(model_path: Path, out_path: Path, config: QuantizeStaticConfig, context: PassContext) -> Path:
    """Write a QDQ int8 copy of ``model_path``: weights and activations int8, ranges from the calibration split."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    out_path.parent.mkdir(parents=True, exist_ok=True)
    ort_quantize_static(
        model_input=model_path,
        model_output=out_path,
        calibration_data_reader=TextCalibrationReader(_calibration_batches(context, config.calibration_samples)),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(config.op_types),
        per_channel=config.per_channel,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(config.nodes_to_exclude),
        reduce_range=config.reduce_range,
        calibrate_method=getattr(CalibrationMethod, config.calibration_method),
        extra_options={"ActivationSymmetric": True},
    )
    return out_path


def quantizable_nodes(model_path: Path, op_types: Sequence[str]) -> list[str]:
    """Nodes of ``op_types`` whose second input is a constant weight (activation x activation products, as in
    attention, are never quantized by these passes)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type in op_types and len(n.input) > 1 and n.input[1] in weights]


Quantizer = Callable[[Path, QuantizeConfig], Path]


def _fidelity_loss(fidelity: Fidelity) -> float:
    return 1.0 - fidelity.score


def sensitivity(
    model_path: Path, config: QuantizeConfig, quantize: Quantizer, context: PassContext
) -> dict[str, float]:
    """Fidelity loss on a validation sample when only one node is quantized, for every quantizable node."""
    nodes = quantizable_nodes(model_path, config.op_types)
    texts = context.validation[: config.sensitivity_samples]
    losses = {}
    for node in tqdm(nodes, desc="sensitivity", unit="node", disable=None):
        only = config.model_copy(update={"nodes_to_exclude": tuple(n for n in nodes if n != node)})
        probe = quantize(model_path, only)
        losses[node] = _fidelity_loss(context.evaluate(Artifact(probe, "onnx", "int8"), texts))
        probe.unlink()
    return losses


def _attempts(config: QuantizeConfig, ranked: list[str], limit: int) -> Iterator[QuantizeConfig]:
    """Per-channel first (if the config was per-tensor), then the most sensitive 1, 2, 4, … nodes excluded."""
    if not config.per_channel:
        yield config.model_copy(update={"per_channel": True})
    count = 1
    while count <= limit:
        excluded = tuple(dict.fromkeys((*config.nodes_to_exclude, *ranked[:count])))
        yield config.model_copy(update={"per_channel": True, "nodes_to_exclude": excluded})
        count *= 2
    if count // 2 < limit:
        yield config.model_copy(update={"per_channel": True, "nodes_to_exclude": tuple(ranked[:limit])})


def accuracy_aware(
    artifact: Artifact, config: QuantizeConfig, context: PassContext, quantize: Quantizer, kind: str
) -> PassOutput:
    """Quantize as configured; if out of budget, search granularity and exclusions (module docstring)."""
    final = out_path(context, "model.onnx")

    def attempt(cfg: QuantizeConfig) -> dict[str, Any]:
        quantize(artifact.path, cfg).replace(final)
        fidelity = context.evaluate(Artifact(final, "onnx", "int8"))
        tried = {
            "per_channel": cfg.per_channel,
            "excluded": list(cfg.nodes_to_exclude),
            "fidelity": fidelity.model_dump(exclude_none=True),
            "within_budget": admits(context.budget, fidelity),
        }
        log.info("%s: per_channel=%s excluded=%d → %s", kind, cfg.per_channel, len(cfg.nodes_to_exclude), fidelity)
        return tried

    tries = [attempt(config)]
    details: dict[str, Any] = {"tries": tries}
    if not tries[0]["within_budget"] and config.accuracy_aware:
        unquantized = context.evaluate(artifact)
        if not admits(context.budget, unquantized):  # e.g. a distilled student: keeping nodes fp32 cannot help
            broken = "; ".join(violations(context.budget, unquantized))
            raise PassFailedError(f"{kind}: its input is already outside the fidelity budget ({broken})", details)
        losses = sensitivity(artifact.path, config, quantize, context)
        ranked = sorted(losses, key=lambda n: -losses[n])
        details["sensitivity_top10"] = {n: round(losses[n], 6) for n in ranked[:10]}
        details["nodes_probed"] = len(ranked)
        limit = max(1, int(len(ranked) * config.max_excluded))
        for cfg in _attempts(config, ranked, limit):
            tries.append(attempt(cfg))
            if tries[-1]["within_budget"]:
                break
    if config.accuracy_aware and not tries[-1]["within_budget"]:
        closest = max(tries, key=lambda t: 1 - _fidelity_loss(Fidelity(**t["fidelity"])))
        broken = "; ".join(violations(context.budget, Fidelity(**closest["fidelity"])))
        raise PassFailedError(
            f"{kind}: no configuration within the fidelity budget after {len(tries)} tries; closest: "
            f"per_channel={closest['per_channel']} with {len(closest['excluded'])} nodes in fp32 ({broken})",
            details,
        )
    details["chosen"] = {k: tries[-1][k] for k in ("per_channel", "excluded")}
    return PassOutput(Artifact(final, "onnx", "int8"), details)


@register(
    "quantize_dynamic", QuantizeDynamicConfig, accepts=("onnx",), uses_budget=True, libraries=LIBRARIES, version=3
)
def quantize_dynamic_pass(artifact: Artifact, config: QuantizeDynamicConfig, context: PassContext) -> PassOutput:
    """Dynamic int8 quantization (int8 weights, activation scales per row or per call), accuracy-aware."""
    probe = context.out_dir / "probe.onnx"
    return accuracy_aware(artifact, config, context, lambda p, c: quantize_dynamic(p, probe, c), "quantize_dynamic")


@register("quantize_static", QuantizeStaticConfig, accepts=("onnx",), uses_budget=True, libraries=LIBRARIES)
def quantize_static_pass(artifact: Artifact, config: QuantizeStaticConfig, context: PassContext) -> PassOutput:
    """Static QDQ int8 quantization calibrated on the calibration split, accuracy-aware."""
    probe = context.out_dir / "probe.onnx"

    def run(path: Path, cfg: QuantizeConfig) -> Path:
        return quantize_static(path, probe, cfg, context)  # type: ignore[arg-type]

    return accuracy_aware(artifact, config, context, run, "quantize_static")
