"""The runtime contract, device selection, and the factory that picks a runtime for a package."""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving import settings
from serving.errors import PackageError
from serving.package import ModelPackage, OnnxRuntimeOptions, OpenVINOOptions, PoolingSpec, TorchOptions
from serving.runtimes.onnx_options import TENSORRT_PROVIDER
from serving.tokenizer import EncodedBatch

log = logging.getLogger("optiserve")
CPU_PROVIDER = "CPUExecutionProvider"
GPU_PROVIDERS = (TENSORRT_PROVIDER, "CUDAExecutionProvider")


class ModelRuntime(ABC):
    """Runs one padded batch and returns one float32 row per input (an embedding, or a classifier's logits)."""

    name: str
    device: str = "cpu"
    device_reason: str = "no GPU assigned to this replica"

    @abstractmethod
    def run(self, batch: EncodedBatch) -> np.ndarray: ...

    def run_array(self, inputs: np.ndarray) -> np.ndarray:
        """Run a model whose single input is a float tensor (no tokenizer)."""
        raise NotImplementedError(f"the {self.name} runtime runs text models only")


@dataclass(frozen=True)
class DeviceChoice:
    """Where a runtime runs, and why there (the reason is logged and shown in model metadata)."""

    device: str  # "cpu" or "cuda"
    providers: tuple[str, ...]  # ONNX Runtime providers, in preference order
    reason: str


def assigned_gpus() -> list[str]:
    """GPU ids this process was given: Ray sets ``CUDA_VISIBLE_DEVICES`` for actors with ``num_gpus`` > 0."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return [gpu for gpu in visible.split(",") if gpu.strip() not in ("", "-1", "NoDevFiles")]


def choose_onnx_providers(gpus: list[str], available: list[str]) -> DeviceChoice:
    """TensorRT, then CUDA, then CPU when a GPU is assigned; CPU alone otherwise. Providers this ONNX Runtime
    build lacks are skipped, and the reason says so."""
    if not gpus:
        return DeviceChoice("cpu", (CPU_PROVIDER,), "no GPU assigned to this replica")
    usable = tuple(p for p in GPU_PROVIDERS if p in available)
    missing = [p for p in GPU_PROVIDERS if p not in available]
    if not usable:
        return DeviceChoice(
            "cpu",
            (CPU_PROVIDER,),
            f"GPU {','.join(gpus)} assigned but this onnxruntime build has no GPU provider "
            f"(has {', '.join(available)}); install onnxruntime-gpu — running on CPU",
        )
    note = f"; {', '.join(missing)} not available" if missing else ""
    return DeviceChoice("cuda", (*usable, CPU_PROVIDER), f"GPU {','.join(gpus)} assigned{note}")


def choose_torch_device(gpus: list[str], cuda_available: bool) -> DeviceChoice:
    if not gpus:
        return DeviceChoice("cpu", (), "no GPU assigned to this replica")
    if not cuda_available:
        return DeviceChoice("cpu", (), f"GPU {','.join(gpus)} assigned but torch sees no CUDA device — running on CPU")
    return DeviceChoice("cuda", (), f"GPU {','.join(gpus)} assigned")


def default_threads() -> int:
    """Threads for one runtime: ``OPTISERVE_THREADS``, else ``OMP_NUM_THREADS`` (Ray sets it to a replica's
    ``num_cpus``), else 1 -- the same default the optimizer profiles with, so its profile predicts the server."""
    if threads := settings.THREADS.get():
        return threads
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    return max(1, int(omp)) if omp.isdigit() else 1


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

        from serving.runtimes.onnx import OnnxRuntime
        from serving.runtimes.onnx_options import with_tensorrt_options

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

        from serving.runtimes.torch import TorchRuntime

        choice = choose_torch_device(gpus or [], torch.cuda.is_available())
        if gpus:
            log.warning("%s: %s", model_path.name, choice.reason)
        torch_runtime = TorchRuntime(
            model_path, pooling, threads, task, choice.device, torch_options, pad_token_id=pad_token_id
        )
        torch_runtime.device_reason = "; ".join(filter(None, (choice.reason, torch_runtime.skipped_options)))
        return torch_runtime
    if runtime == "openvino":
        from serving.runtimes.openvino import OpenVINORuntime

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
