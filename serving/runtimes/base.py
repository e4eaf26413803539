"""The runtime contract and the factory that picks one for a package."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

import numpy as np

from serving.package import ModelPackage
from serving.tokenizer import EncodedBatch


class EmbeddingRuntime(ABC):
    """Runs one padded batch and returns one float32 embedding per row."""

    name: str
    device: str = "cpu"

    @abstractmethod
    def run(self, batch: EncodedBatch) -> np.ndarray: ...


def default_threads() -> int:
    """Threads for one runtime: the cores Ray assigned to this process, else every core."""
    for var in ("OPTISERVE_THREADS", "OMP_NUM_THREADS"):
        if value := os.environ.get(var):
            return max(1, int(value))
    return os.cpu_count() or 1


def load_runtime(package: ModelPackage, threads: int | None = None) -> EmbeddingRuntime:
    """The runtime a package's manifest asks for. Heavy libraries are imported only here."""
    threads = threads or default_threads()
    runtime = package.manifest.runtime
    if runtime == "onnxruntime":
        from serving.runtimes.onnx import OnnxRuntime

        return OnnxRuntime(package.model_file, threads=threads)
    if runtime == "torch":
        from serving.runtimes.torch import TorchRuntime

        return TorchRuntime(package.model_file, package.manifest.pooling, threads=threads)
    raise ValueError(f"unknown runtime {runtime!r}; expected 'onnxruntime' or 'torch'")
