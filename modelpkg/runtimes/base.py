"""The runtime contract and device selection: what every runtime implements, which device and providers it
gets, and how many threads. It imports no runtime; :mod:`modelpkg.runtimes.factory` picks and builds one."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from modelpkg import settings
from modelpkg.runtimes.onnx_options import TENSORRT_PROVIDER
from modelpkg.tokenizer import EncodedBatch

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
