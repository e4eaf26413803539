"""The runtime contract and the factory that picks one for a package."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from serving.package import ModelPackage, PoolingSpec
from serving.tokenizer import EncodedBatch


class EmbeddingRuntime(ABC):
    """Runs one padded batch and returns one float32 embedding per row."""

    name: str

    @abstractmethod
    def run(self, batch: EncodedBatch) -> np.ndarray: ...


def default_threads() -> int:
    """Threads for one runtime: ``OPTISERVE_THREADS``, else ``OMP_NUM_THREADS`` (Ray sets it to a replica's
    ``num_cpus``), else 1 -- the same default the optimizer profiles with, so its profile predicts the server."""
    for var in ("OPTISERVE_THREADS", "OMP_NUM_THREADS"):
        if value := os.environ.get(var):
            return max(1, int(value))
    return 1


def create_runtime(runtime: str, model_path: Path, pooling: PoolingSpec, threads: int) -> EmbeddingRuntime:
    """A runtime by name. Heavy libraries are imported only here."""
    if runtime == "onnxruntime":
        from serving.runtimes.onnx import OnnxRuntime

        return OnnxRuntime(model_path, threads=threads)
    if runtime == "torch":
        from serving.runtimes.torch import TorchRuntime

        return TorchRuntime(model_path, pooling, threads=threads)
    raise ValueError(f"unknown runtime {runtime!r}; expected 'onnxruntime' or 'torch'")


def load_runtime(package: ModelPackage, threads: int | None = None) -> EmbeddingRuntime:
    """The runtime a package's manifest asks for."""
    m = package.manifest
    return create_runtime(m.runtime, package.model_file, m.pooling, threads or default_threads())
