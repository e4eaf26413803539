"""ONNX Runtime provider settings a package records and a replica applies: the TensorRT provider's options with
the engine cache the package carries. Kept apart from ``modelpkg.runtimes.onnx`` so the chain's ``tensorrt`` pass
can build with exactly these options without importing ONNX Runtime at import time."""

from __future__ import annotations

from pathlib import Path

from modelpkg.manifest import OnnxRuntimeOptions, TensorRTOptions

TENSORRT_PROVIDER = "TensorrtExecutionProvider"
ENGINE_CACHE = "trt_cache"  # the engine cache directory, beside model.onnx in a package

Provider = str | tuple[str, dict[str, object]]  # a provider name, or a name with its options


def tensorrt_provider_options(options: TensorRTOptions, cache_dir: Path) -> dict[str, object]:
    """TensorRT EP options: the engine cache at ``cache_dir`` and the one min/opt/max shape profile the engines
    were built for (the ``tensorrt`` pass builds with these; a replica loads with them)."""
    return {
        "trt_fp16_enable": options.fp16,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_profile_min_shapes": options.min_shapes,
        "trt_profile_opt_shapes": options.opt_shapes,
        "trt_profile_max_shapes": options.max_shapes,
    }


def with_tensorrt_options(providers: list[str], model_path: Path, options: OnnxRuntimeOptions) -> list[Provider]:
    """``providers`` with the package's TensorRT options (and its engine cache) given to the TensorRT provider."""
    if options.tensorrt is None:
        return list(providers)
    trt = tensorrt_provider_options(options.tensorrt, model_path.parent / options.tensorrt.engine_cache)
    return [(p, trt) if p == TENSORRT_PROVIDER else p for p in providers]


def provider_name(provider: Provider) -> str:
    return provider if isinstance(provider, str) else provider[0]
