"""Export the source model (an encoder with its pooling, or a classifier) to ONNX with dynamic batch and
sequence axes, and check it against the torch model."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

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
from optimizers.source import SourceModel

log = logging.getLogger(__name__)
OUTPUT_NAMES = {"embedding": "sentence_embedding", "classification": "logits", "rerank": "logits"}


class ExportMismatchError(PassFailedError):
    """The exported graph does not reproduce the source model within tolerance (that candidate fails; the chain
    goes on with the others)."""


class ExportOnnxConfig(PassConfig):
    opset: int = Field(default=17, ge=14)
    atol: float = Field(default=1e-4, gt=0, description="max abs difference allowed vs the torch source")


def _torch_model(source: SourceModel) -> object:
    if source.format == "module":
        from optimizers.modules import load_module

        return load_module(source.path)
    from modelpkg.runtimes.torch import load_model

    return load_model(source.path, source.task, source.pooling)


def export_onnx(
    source: SourceModel, out_path: Path, check_items: list, config: ExportOnnxConfig, model: Any = None
) -> Path:
    """Write ``out_path`` (ONNX) and verify it against the torch model on ``check_items`` (texts or tensors).
    ``model``: a torch module to export instead of loading the source's (e.g. one rebuilt by a pass)."""
    import onnxruntime as ort
    import torch

    model = model if model is not None else _torch_model(source)
    _eager_attention(model)
    output_name = OUTPUT_NAMES[source.task]
    sample = model_feeds(source, check_items[:2])
    names = list(sample)
    variable = {0: "batch", 1: "sequence"} if source.tokenizer is not None else {0: "batch"}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter is chosen on purpose (verified on transformers 5 / torch 2.13); silence its notice.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*legacy TorchScript-based ONNX export.*", category=DeprecationWarning
        )
        torch.onnx.export(
            model,
            tuple(torch.from_numpy(a) for a in sample.values()),
            str(out_path),
            input_names=names,
            output_names=[output_name],
            dynamic_axes={**{n: variable for n in names}, output_name: {0: "batch"}},
            opset_version=config.opset,
            dynamo=False,
        )

    feeds = model_feeds(source, check_items)
    with torch.inference_mode():
        expected = model(*(torch.from_numpy(a) for a in feeds.values())).numpy()
    session = ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, feeds)
    max_abs = float(np.abs(got - expected).max())
    if max_abs > config.atol:
        raise ExportMismatchError(
            f"ONNX export of {source.name} differs from the torch model by {max_abs:.2e} (max abs) on "
            f"{len(check_items)} inputs; allowed {config.atol:.0e}"
        )
    log.info("exported %s to %s (max abs diff vs torch %.2e)", source.name, out_path, max_abs)
    return out_path


def _eager_attention(model: Any) -> None:
    """Trace transformers' plain ("eager") attention rather than its SDPA path. The SDPA trace rebuilds the mask
    with ``Where`` in every layer and guards the softmax with ``IsNaN``/``Where`` over every score (4% of MiniLM's
    int8 time on ONNX Runtime), and its pattern keeps ``onnxruntime.transformers`` from fusing ``Attention`` and
    ``EmbedLayerNormalization`` (``graph_optimize``). The same model, within the export check's tolerance."""
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            try:
                module.set_attn_implementation("eager")
            except (ValueError, NotImplementedError) as refused:  # a family without it keeps its own attention
                log.info("export_onnx: %s keeps its attention (%s)", type(module).__name__, refused)


@register(
    "export_onnx",
    ExportOnnxConfig,
    accepts=("hf", "module"),
    produces="onnx",
    libraries=("torch", "transformers", "onnx"),
    version=3,
)
def export_onnx_pass(artifact: Artifact, config: ExportOnnxConfig, context: PassContext) -> PassOutput:
    """Export a Hugging Face model (with its pooling) or a plain PyTorch module to ONNX, checked against torch."""
    source = context.source_for(artifact)
    path = export_onnx(source, out_path(context, "model.onnx"), context.validation[:32], config)
    _record_pruned_heads(source.path, path)
    return PassOutput(Artifact(path, "onnx", "fp32"))


def _record_pruned_heads(model_dir: Path, onnx_file: Path) -> None:
    """Copy a head-pruned model's heads per layer into the ONNX file's metadata, where ``graph_optimize`` reads
    them (its attention fusion needs the real head count; the source's config.json states the unpruned one)."""
    import json

    import onnx

    from modelpkg.runtimes.heads import HEADS_PER_LAYER

    config_file = model_dir / "config.json"
    heads = json.loads(config_file.read_text()).get(HEADS_PER_LAYER) if config_file.is_file() else None
    if not heads:
        return
    model = onnx.load(str(onnx_file))
    onnx.helper.set_model_props(model, {HEADS_PER_LAYER: json.dumps(heads)})
    onnx.save(model, str(onnx_file))
