"""Offline graph optimization with ONNX Runtime: the transformer fusions of ``onnxruntime.transformers``
(attention, skip-layer-norm, bias-GELU, …), then ORT's own graph rewrites saved to a new file."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

from optimizers.passes import base
from optimizers.passes.base import Artifact, PassConfig, PassContext, PassOutput, out_path, register

log = logging.getLogger(__name__)


class GraphOptimizeConfig(PassConfig):
    fusions: bool = True
    model_type: str = "bert"
    # "extended" rewrites are portable across CPUs; ORT's "all" level adds layout changes for the machine it runs
    # on, which the server applies itself when it loads the model, so they are not baked into the file.
    level: Literal["basic", "extended"] = "extended"


def _heads_and_width(context: PassContext, onnx_file: Path) -> tuple[int, int]:
    """Attention heads and the width of their projections (0, 0 lets ORT detect them): from the source's
    config.json, or, for a model whose heads were pruned, the count ``export_onnx`` recorded in the file."""
    import onnx

    from modelpkg.runtimes.heads import HEADS_PER_LAYER

    config_file = context.source.path / "config.json"
    if not config_file.is_file():
        return 0, 0
    config = json.loads(config_file.read_text())
    heads, width = int(config.get("num_attention_heads", 0)), int(config.get("hidden_size", 0))
    props = {p.key: p.value for p in onnx.load(str(onnx_file), load_external_data=False).metadata_props}
    if HEADS_PER_LAYER in props:
        per_layer = set(json.loads(props[HEADS_PER_LAYER]))
        if len(per_layer) != 1:
            raise base.PassUnavailableError(f"attention fusion needs one head count in all layers: {sorted(per_layer)}")
        kept = per_layer.pop()
        return kept, width // heads * kept
    return heads, width


@register("graph_optimize", GraphOptimizeConfig, accepts=("onnx",), libraries=("onnx", "onnxruntime"))
def graph_optimize(artifact: Artifact, config: GraphOptimizeConfig, context: PassContext) -> PassOutput:
    """Fuse transformer subgraphs and apply ONNX Runtime's offline graph rewrites."""
    import onnxruntime as ort

    details: dict[str, object] = {}
    fused = artifact.path
    if config.fusions:
        from onnxruntime.transformers.optimizer import optimize_model

        heads, width = _heads_and_width(context, artifact.path)
        model = optimize_model(
            str(artifact.path), model_type=config.model_type, num_heads=heads, hidden_size=width, opt_level=0
        )
        details["fused_operators"] = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
        fused = out_path(context, "fused.onnx")
        model.save_model_to_file(str(fused))
    target = out_path(context, "model.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }[config.level]
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(fused), options, providers=["CPUExecutionProvider"])
    if fused != artifact.path:
        fused.unlink()
    log.info("graph_optimize: %s", details)
    return PassOutput(Artifact(target, "onnx", artifact.precision), details)
