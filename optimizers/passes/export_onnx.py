"""Export the source model (an encoder with its pooling, or a classifier) to ONNX with dynamic batch and
sequence axes, and check it against the torch model."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from optimizers.source import SourceModel
from serving.errors import OptiserveError
from serving.tokenizer import TextEncoder

log = logging.getLogger(__name__)
INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
OUTPUT_NAMES = {"embedding": "sentence_embedding", "classification": "logits"}


class ExportMismatchError(OptiserveError):
    """The exported graph does not reproduce the source model within tolerance."""


class ExportOnnxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    opset: int = Field(default=17, ge=14)
    atol: float = Field(default=1e-4, gt=0, description="max abs difference allowed vs the torch source")


def export_onnx(source: SourceModel, out_path: Path, check_texts: list[str], config: ExportOnnxConfig) -> Path:
    """Write ``out_path`` (ONNX) and verify it against the torch model on ``check_texts``."""
    import onnxruntime as ort
    import torch

    from serving.runtimes.torch import load_model

    model = load_model(source.path, source.task, source.pooling)
    output_name = OUTPUT_NAMES[source.task]
    encoder = TextEncoder.from_spec(source.path, source.tokenizer)
    sample = encoder.pad(encoder.encode(check_texts[:2]))
    args = tuple(torch.from_numpy(getattr(sample, name)) for name in INPUT_NAMES)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter is chosen on purpose (verified on transformers 5 / torch 2.13); silence its notice.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*legacy TorchScript-based ONNX export.*", category=DeprecationWarning
        )
        torch.onnx.export(
            model,
            args,
            str(out_path),
            input_names=INPUT_NAMES,
            output_names=[output_name],
            dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in INPUT_NAMES}, output_name: {0: "batch"}},
            opset_version=config.opset,
            dynamo=False,
        )

    batch = encoder.pad(encoder.encode(check_texts))
    with torch.inference_mode():
        expected = model(*(torch.from_numpy(getattr(batch, n)) for n in INPUT_NAMES)).numpy()
    session = ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {n: getattr(batch, n) for n in INPUT_NAMES})
    max_abs = float(np.abs(got - expected).max())
    if max_abs > config.atol:
        raise ExportMismatchError(
            f"ONNX export of {source.name} differs from the torch model by {max_abs:.2e} (max abs) on "
            f"{len(check_texts)} texts; allowed {config.atol:.0e}"
        )
    log.info("exported %s to %s (max abs diff vs torch %.2e)", source.name, out_path, max_abs)
    return out_path
