"""GPU passes: TensorRT engines from ONNX, and torch ``compile`` / CUDA graphs settings. Each checks what it
needs first and raises :class:`PassUnavailableError` with the reason where CUDA or TensorRT is absent (CI has
no GPU)."""

from __future__ import annotations

import shutil

from pydantic import Field

from modelpkg.manifest import BATCH_BUCKETS, SEQUENCE_BUCKETS, TensorRTOptions
from modelpkg.runtimes.onnx_options import ENGINE_CACHE, tensorrt_provider_options
from optimizers.passes.base import (
    Artifact,
    PassConfig,
    PassContext,
    PassFailedError,
    PassOutput,
    PassUnavailableError,
    out_path,
    register,
)


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise PassUnavailableError("CUDA is not available on this machine (torch.cuda.is_available() is False)")


def require_tensorrt() -> None:
    import onnxruntime as ort

    require_cuda()
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        raise PassUnavailableError(
            f"ONNX Runtime has no TensorrtExecutionProvider here (available: {ort.get_available_providers()}); "
            "install onnxruntime-gpu and tensorrt"
        )


class TensorRTConfig(PassConfig):
    fp16: bool = True
    min_batch: int = Field(default=1, gt=0)
    opt_batch: int = Field(default=16, gt=0)
    max_batch: int = Field(default=64, gt=0)
    min_sequence: int = Field(default=1, gt=0)
    opt_sequence: int = Field(default=64, gt=0)
    max_sequence: int = Field(default=256, gt=0)


TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _shapes(batch: int, sequence: int, names: tuple[str, ...]) -> str:
    return ",".join(f"{n}:{batch}x{sequence}" for n in names)


def tensorrt_options(config: TensorRTConfig, names: tuple[str, ...] = TEXT_INPUTS) -> TensorRTOptions:
    """What the package records for the replica: the pass's precision and shape profile (for the model's text
    inputs ``names``: no token types for RoBERTa, DistilBERT, …), and the engine cache."""
    return TensorRTOptions(
        fp16=config.fp16,
        min_shapes=_shapes(config.min_batch, config.min_sequence, names),
        opt_shapes=_shapes(config.opt_batch, config.opt_sequence, names),
        max_shapes=_shapes(config.max_batch, config.max_sequence, names),
        engine_cache=ENGINE_CACHE,
    )


@register("tensorrt", TensorRTConfig, accepts=("onnx",), libraries=("onnxruntime",), version=2)
def tensorrt(artifact: Artifact, config: TensorRTConfig, context: PassContext) -> PassOutput:
    """Build TensorRT engines (ONNX Runtime's TensorRT EP engine cache) for a min/opt/max shape profile."""
    require_tensorrt()
    import numpy as np
    import onnxruntime as ort

    target_dir = out_path(context, "trt")
    target_dir.mkdir(exist_ok=True)
    model = target_dir / "model.onnx"
    shutil.copy2(artifact.path, model)
    cache = target_dir / ENGINE_CACHE
    recorded = tensorrt_options(config, context.source.text_inputs)
    options = tensorrt_provider_options(recorded, cache)
    session = ort.InferenceSession(str(model), providers=[("TensorrtExecutionProvider", options)])
    for batch, sequence in ((config.opt_batch, config.opt_sequence), (config.max_batch, config.max_sequence)):
        feed = {n: np.ones((batch, sequence), dtype=np.int64) for n in context.source.text_inputs}
        if "token_type_ids" in feed:
            feed["token_type_ids"] = np.zeros((batch, sequence), dtype=np.int64)
        session.run(None, feed)  # builds and caches the engine
    engines = sorted(p.name for p in cache.glob("*"))
    if not any(name.endswith(".engine") for name in engines):
        raise PassFailedError(f"tensorrt: ONNX Runtime built no engine in {cache} (found {engines})")
    artifact_options = {"tensorrt": recorded.model_dump()}
    return PassOutput(
        Artifact(model, "onnx", "fp16" if config.fp16 else "fp32", artifact_options), {"engines": engines}
    )


class TorchCompileConfig(PassConfig):
    mode: str = "max-autotune-no-cudagraphs"


class CudaGraphsConfig(PassConfig):
    batch_buckets: tuple[int, ...] = BATCH_BUCKETS
    sequence_buckets: tuple[int, ...] = SEQUENCE_BUCKETS


def _with_options(artifact: Artifact, context: PassContext, **options: object) -> PassOutput:
    """The same weights (copied into the pass's output) with torch runtime options added."""
    target = out_path(context, "model")
    target.mkdir(exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(artifact.path / name, target / name)
    merged = {**artifact.options, **options}
    return PassOutput(Artifact(target, "hf", artifact.precision, merged), {"torch_options": merged})


@register("torch_compile", TorchCompileConfig, accepts=("hf",), libraries=("torch",))
def torch_compile(artifact: Artifact, config: TorchCompileConfig, context: PassContext) -> PassOutput:
    """Serve the torch model through ``torch.compile`` on CUDA (a runtime option recorded in the package)."""
    require_cuda()
    return _with_options(artifact, context, compile=True, compile_mode=config.mode)


@register("cuda_graphs", CudaGraphsConfig, accepts=("hf",), libraries=("torch",))
def cuda_graphs(artifact: Artifact, config: CudaGraphsConfig, context: PassContext) -> PassOutput:
    """Capture CUDA graphs per bucketed (batch, sequence) shape for the torch runtime."""
    require_cuda()
    from modelpkg.runtimes.buckets import ShapeBuckets

    ShapeBuckets(config.batch_buckets, config.sequence_buckets)  # validates the buckets
    return _with_options(
        artifact,
        context,
        cuda_graphs=True,
        batch_buckets=list(config.batch_buckets),
        sequence_buckets=list(config.sequence_buckets),
    )
