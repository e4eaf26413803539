"""OpenVINO, the runtime made for Intel CPUs: conversion of an ONNX model to OpenVINO IR with the precision it
computes in (f32, or bf16 on CPUs with AVX-512 BF16 / AMX), and int8 post-training quantization with NNCF
(``nncf.quantize`` for transformers: SmoothQuant, calibrated activations, fast bias correction), accuracy-aware:
when plain int8 misses the fidelity budget, NNCF's accuracy control keeps the most harmful layers in floating
point until the drop on the validation split fits the budget, or the pass fails naming how close it came.

Both passes skip, with the reason, where ``openvino`` / ``nncf`` are not installed, where the chain runs on CUDA,
and (bf16) where the CPU has no bf16 units.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
from pydantic import Field

from modelpkg.manifest import Fidelity
from optimizers.budget import admits, violations
from optimizers.passes.base import (
    OPENVINO_MODEL,
    Artifact,
    PassConfig,
    PassContext,
    PassFailedError,
    PassOutput,
    PassUnavailableError,
    model_feeds,
    out_path,
    register,
)

log = logging.getLogger(__name__)
InferencePrecision = Literal["f32", "bf16"]
PRECISION_NAMES: dict[str, Literal["fp32", "bf16"]] = {"f32": "fp32", "bf16": "bf16"}
CALIBRATION_ROWS = 8  # items per calibration / validation batch


def _openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise PassUnavailableError(f"openvino is not installed ({exc}); pip install 'optiserve[openvino]'") from None
    return openvino


def _check_target(context: PassContext, precision: str) -> None:
    """OpenVINO candidates run on this CPU; bf16 needs the CPU's bf16 units (OpenVINO's own capability list)."""
    if context.device != "cpu":
        raise PassUnavailableError(f"OpenVINO packages run on the CPU; this chain profiles on {context.device}")
    if precision == "bf16":
        capabilities = _openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if "BF16" not in capabilities:
            raise PassUnavailableError(
                f"this CPU has no bf16 units (OpenVINO reports {', '.join(capabilities)}); bf16 would run as f32"
            )


def _save(model: Any, context: PassContext) -> Any:
    target = out_path(context, "openvino")
    target.mkdir(exist_ok=True)
    # compress_to_fp16=False: the weights stay as the model has them; precision is the runtime's choice
    _openvino().save_model(model, str(target / OPENVINO_MODEL), compress_to_fp16=False)
    return target


class OpenVINOConfig(PassConfig):
    inference_precision: InferencePrecision = Field(
        default="f32", description="what the CPU computes in: f32, or bf16 (AVX-512 BF16 / AMX)"
    )


@register("openvino", OpenVINOConfig, accepts=("onnx",), produces="openvino", libraries=("openvino",))
def openvino_convert(artifact: Artifact, config: OpenVINOConfig, context: PassContext) -> PassOutput:
    """Convert an ONNX model to OpenVINO IR, to run in f32 or bf16 on this CPU."""
    _check_target(context, config.inference_precision)
    model = _openvino().convert_model(str(artifact.path))
    target = _save(model, context)
    options = {"inference_precision": config.inference_precision}
    return PassOutput(Artifact(target, "openvino", PRECISION_NAMES[config.inference_precision], options))


class NNCFQuantizeConfig(PassConfig):
    inference_precision: InferencePrecision = Field(
        default="f32", description="what the layers NNCF leaves unquantized compute in"
    )
    subset_size: int = Field(default=200, gt=0, description="calibration texts (from the calibration split)")
    fast_bias_correction: bool = True
    smooth_quant: bool = Field(default=True, description="SmoothQuant: move activation outliers into the weights")
    accuracy_control: bool = Field(
        default=True,
        description="when plain int8 misses the budget, keep the most harmful layers in floating point "
        "(nncf.quantize_with_accuracy_control against the validation split)",
    )
    validation_samples: int = Field(default=96, gt=0, description="validation texts accuracy control measures on")
    max_restored_layers: int = Field(
        default=6,
        gt=0,
        description="accuracy control restores at most this many layers to floating point (each step re-ranks the "
        "rest: about 45 s for a MiniLM-L6 on 2 cores)",
    )
    accuracy_control_s: float = Field(
        default=180.0,
        gt=0,
        description="seconds accuracy control may take: past them its next validation stops it, and the pass "
        "fails naming the budget (NNCF ranks every quantized layer first: over 10 minutes for a MiniLM-sized "
        "reranker on 2 cores)",
    )
    ignored_types: tuple[str, ...] = Field(default=(), description="operation types never quantized")
    overflow_fix: Literal["enable", "first_layer_only", "disable"] = Field(
        default="first_layer_only",
        description="NNCF's 7-bit weights against the int8 saturation of x86 CPUs without VNNI: on the first layer "
        "(NNCF's default and advice; every layer cost the bundled MiniLM 0.0017 of cosine on an AVX2 EPYC) or on "
        "every layer (what random weights need there; benchmarks/results/int8_saturation.md)",
    )


def _dataset(context: PassContext, items: list[Any]) -> list[dict[str, np.ndarray]]:
    return [
        model_feeds(context.source, items[i : i + CALIBRATION_ROWS]) for i in range(0, len(items), CALIBRATION_ROWS)
    ]


def _one_row_lookups(model: Any) -> list[str]:
    """Gathers from a one-row embedding table (RoBERTa's and XLM-R's token types, a constant when the model takes
    no ``token_type_ids``): quantized, OpenVINO fails to compile them, and there is nothing to gain."""
    names = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Gather":
            continue
        table = op.input_value(0).get_node()
        while table.get_type_name() == "Convert":
            table = table.input_value(0).get_node()
        shape = table.get_output_partial_shape(0)
        if table.get_type_name() == "Constant" and shape.rank.get_length() == 2 and shape[0].get_length() == 1:
            names.append(op.get_friendly_name())
    return names


def _quantize_args(
    config: NNCFQuantizeConfig, calibration: list[dict[str, np.ndarray]], model: Any
) -> tuple[dict[str, Any], Any]:
    """Keyword arguments both NNCF entry points take, and the advanced parameters (named differently in each)."""
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        OverflowFix,
    )

    advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix(config.overflow_fix))
    if not config.smooth_quant:
        advanced.smooth_quant_alphas = AdvancedSmoothQuantParameters(matmul=-1)
    return {
        "calibration_dataset": nncf.Dataset(calibration),
        "model_type": nncf.ModelType.TRANSFORMER,
        "target_device": nncf.TargetDevice.CPU,
        "subset_size": len(calibration),
        "fast_bias_correction": config.fast_bias_correction,
        "ignored_scope": nncf.IgnoredScope(names=names, types=list(config.ignored_types))
        if (names := _one_row_lookups(model)) or config.ignored_types
        else None,
    }, advanced


class _OutOfTimeError(Exception):
    """Accuracy control reached its time budget (raised from NNCF's validation_fn, caught around NNCF)."""


def _agreement_validation(
    reference_model: Any, data: list[dict[str, np.ndarray]], task: str, deadline: float = float("inf")
) -> Any:
    """NNCF's ``validation_fn``: how closely a compiled model's outputs match the unquantized model's on the same
    feeds (NNCF passes any subset of ``data``, a list of batches): the mean over rows, and one value per batch (its
    data items), so NNCF can rank layers by the harm they do. A row's agreement is the cosine of the two rows; for
    a reranker's single logit, whose cosine is only its sign, 1 − |difference| / the mean |logit| on ``data``.
    Called once ``time.monotonic()`` is past ``deadline``, it stops accuracy control (:class:`_OutOfTimeError`)."""
    import openvino as ov

    reference = ov.Core().compile_model(reference_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def expected(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(reference(feeds)[0], dtype=np.float32)

    scale = float(np.mean([np.abs(expected(feeds)).mean() for feeds in data])) or 1.0

    def agreement(got: np.ndarray, want: np.ndarray) -> np.ndarray:
        if task == "rerank":
            return 1.0 - np.abs(got - want)[:, 0] / scale
        norms = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
        return (got * want).sum(axis=1) / np.maximum(norms, 1e-12)

    def validate(compiled: Any, batches: Iterable[dict[str, np.ndarray]]) -> tuple[float, list[float]]:
        if time.monotonic() > deadline:
            raise _OutOfTimeError
        rows = [agreement(np.asarray(compiled(feeds)[0], dtype=np.float32), expected(feeds)) for feeds in batches]
        return float(np.concatenate(rows).mean()), [float(batch.mean()) for batch in rows]

    return validate


def _record(fidelity: Fidelity, context: PassContext, how: str) -> dict[str, Any]:
    return {
        "how": how,
        "fidelity": fidelity.model_dump(exclude_none=True),
        "within_budget": admits(context.budget, fidelity),
    }


@register(
    "nncf_quantize",
    NNCFQuantizeConfig,
    accepts=("openvino",),
    uses_budget=True,
    libraries=("openvino", "nncf"),
)
def nncf_quantize(artifact: Artifact, config: NNCFQuantizeConfig, context: PassContext) -> PassOutput:
    """int8 post-training quantization of an OpenVINO model with NNCF, accuracy-aware."""
    _check_target(context, config.inference_precision)
    try:
        import nncf
    except ImportError as exc:
        raise PassUnavailableError(f"nncf is not installed ({exc}); pip install 'optiserve[openvino]'") from None
    logging.getLogger("nncf").setLevel(logging.WARNING)
    ov = _openvino()
    source = ov.Core().read_model(str(artifact.model_file))
    calibration = _dataset(context, context.calibration[: config.subset_size])
    args, advanced = _quantize_args(config, calibration, source)
    options = {"inference_precision": config.inference_precision}

    def judged(model: Any, how: str) -> tuple[Artifact, dict[str, Any]]:
        result = Artifact(_save(model, context), "openvino", "int8", options)
        return result, _record(context.evaluate(result), context, how)

    quantized, first = judged(nncf.quantize(source, **args, advanced_parameters=advanced), "nncf.quantize")
    tries = [first]
    if not first["within_budget"] and config.accuracy_control:
        unquantized = context.evaluate(artifact)
        if not admits(context.budget, unquantized):
            broken = "; ".join(violations(context.budget, unquantized))
            raise PassFailedError(
                f"nncf_quantize: its input is already outside the fidelity budget ({broken})", {"tries": tries}
            )
        from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

        validation = _dataset(context, context.validation[: config.validation_samples])
        started = time.monotonic()
        try:
            restored = nncf.quantize_with_accuracy_control(
                ov.Core().read_model(str(artifact.model_file)),
                validation_dataset=nncf.Dataset(validation),
                validation_fn=_agreement_validation(
                    source, validation, context.source.task, started + config.accuracy_control_s
                ),
                max_drop=max(1e-4, 1.0 - context.budget.min_cosine_mean),
                drop_type=nncf.DropType.ABSOLUTE,
                advanced_quantization_parameters=advanced,
                advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                    max_num_iterations=config.max_restored_layers
                ),
                **args,
            )
        except _OutOfTimeError:
            tries.append({"how": "nncf.quantize_with_accuracy_control", "stopped_after_s": time.monotonic() - started})
            raise PassFailedError(
                f"nncf_quantize: plain int8 missed the fidelity budget and accuracy control reached its time budget "
                f"({config.accuracy_control_s:g} s, accuracy_control_s) before restoring enough layers",
                {"tries": tries},
            ) from None
        quantized, latest = judged(restored, "nncf.quantize_with_accuracy_control")
        tries.append(latest)
    if config.accuracy_control and not tries[-1]["within_budget"]:
        broken = "; ".join(violations(context.budget, Fidelity(**tries[-1]["fidelity"])))
        raise PassFailedError(
            f"nncf_quantize: no int8 model within the fidelity budget after {len(tries)} tries ({broken})",
            {"tries": tries},
        )
    return PassOutput(quantized, {"tries": tries, "calibration_items": len(context.calibration[: config.subset_size])})
