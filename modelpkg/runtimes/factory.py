"""The factory that picks a runtime by name (or by a package's manifest) and builds it on this process's devices.
Each runtime's heavy library (ONNX Runtime, torch, OpenVINO) is imported only when that runtime is built."""

from __future__ import annotations

import logging
from pathlib import Path

from modelpkg.errors import PackageError
from modelpkg.manifest import OnnxRuntimeOptions, OpenVINOOptions, PoolingSpec, TorchOptions
from modelpkg.package import ModelPackage
from modelpkg.runtimes.base import (
    ModelRuntime,
    assigned_gpus,
    choose_onnx_providers,
    choose_torch_device,
    default_threads,
)
from modelpkg.runtimes.onnx_options import TENSORRT_PROVIDER

log = logging.getLogger("optiserve")


def create_runtime(
    runtime: str,
    model_path: Path,
    pooling: PoolingSpec,
    threads: int,
    task: str = "embedding",
    gpus: list[str] | None = None,
    torch_options: TorchOptions | None = None,
    pad_token_id: int = 0,
    openvino_options: OpenVINOOptions | None = None,
    onnxruntime_options: OnnxRuntimeOptions | None = None,
) -> ModelRuntime:
    """A runtime by name, on the GPUs in ``gpus`` if it can use them. Heavy libraries are imported only here."""
    if runtime == "onnxruntime":
        try:
            import onnxruntime as ort
        except ImportError:
            raise PackageError(
                f"{model_path.name} runs on ONNX Runtime, which is not installed: pip install 'optiserve[cpu]' "
                "(or 'optiserve[gpu]' for the CUDA/TensorRT build)"
            ) from None

        from modelpkg.runtimes.onnx import OnnxRuntime
        from modelpkg.runtimes.onnx_options import with_tensorrt_options

        options = onnxruntime_options or OnnxRuntimeOptions()
        choice = choose_onnx_providers(gpus or [], ort.get_available_providers())
        reason = choice.reason
        if options.tensorrt is not None and TENSORRT_PROVIDER not in choice.providers:
            reason += "; the package's TensorRT engines are not used (no TensorRT provider on a GPU here)"
        if gpus or options.tensorrt is not None:
            log.warning("%s: %s", model_path.name, reason)
        providers = with_tensorrt_options(list(choice.providers), model_path, options)
        onnx_runtime = OnnxRuntime(model_path, threads=threads, providers=providers, device=choice.device)
        onnx_runtime.device_reason = reason
        return onnx_runtime
    if runtime == "torch":
        import torch

        from modelpkg.runtimes.torch import TorchRuntime

        choice = choose_torch_device(gpus or [], torch.cuda.is_available())
        if gpus:
            log.warning("%s: %s", model_path.name, choice.reason)
        torch_runtime = TorchRuntime(
            model_path, pooling, threads, task, choice.device, torch_options, pad_token_id=pad_token_id
        )
        torch_runtime.device_reason = "; ".join(filter(None, (choice.reason, torch_runtime.skipped_options)))
        return torch_runtime
    if runtime == "openvino":
        from modelpkg.runtimes.openvino import OpenVINORuntime

        openvino_runtime = OpenVINORuntime(model_path, threads, openvino_options, pad_token_id)
        if gpus:
            openvino_runtime.device_reason = f"GPU {','.join(gpus)} assigned, but this package runs OpenVINO on the CPU"
            log.warning("%s: %s", model_path.name, openvino_runtime.device_reason)
        return openvino_runtime
    raise ValueError(f"unknown runtime {runtime!r}; expected 'onnxruntime', 'torch' or 'openvino'")


def load_runtime(package: ModelPackage, threads: int | None = None, gpus: list[str] | None = None) -> ModelRuntime:
    """The runtime a package's manifest asks for, on this process's assigned GPUs (if any)."""
    m = package.manifest
    return create_runtime(
        m.runtime,
        package.model_file,
        m.pooling,
        threads or default_threads(),
        m.task,
        assigned_gpus() if gpus is None else gpus,
        m.torch_options,
        m.tokenizer.pad_token_id if m.tokenizer else 0,
        m.openvino_options,
        m.onnxruntime_options,
    )
