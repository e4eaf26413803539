"""Low-rank factorization: each chosen linear layer W (out x in) becomes two, ``in -> r -> out``, from its
truncated SVD (W ~ U_r S_r V_r^T, the singular values split evenly between the two factors). A rank saves work
only below ``in * out / (in + out)`` (192 for MiniLM's 384x1536 FFN matrices, half their full rank), so the
rank is searched from the smallest share upwards and the first rank within the fidelity budget wins; if none is,
the pass fails naming the closest. The factorized model has no Hugging Face config, so it is exported to ONNX
(and checked against itself) in the same step.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field

from modelpkg.manifest import Fidelity
from optimizers.budget import admits, violations
from optimizers.fidelity import fidelity_score
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
from optimizers.passes.export_onnx import ExportOnnxConfig, export_onnx

log = logging.getLogger(__name__)
Target = Literal["ffn", "attention"]


class LowRankConfig(PassConfig):
    rank_ratios: tuple[float, ...] = Field(
        default=(0.25, 0.375, 0.5), min_length=1, description="ranks to try, as shares of each matrix's full rank"
    )
    targets: tuple[Target, ...] = Field(default=("ffn",), min_length=1, description="which linear layers")


def factorized(linear: Any, rank: int) -> Any:
    """``linear`` as two linear layers through ``rank`` dimensions (truncated SVD)."""
    import torch

    u, s, vh = torch.linalg.svd(linear.weight.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    first = torch.nn.Linear(linear.in_features, rank, bias=False)
    second = torch.nn.Linear(rank, linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        first.weight.copy_((root[:, None] * vh[:rank]).to(linear.weight.dtype))
        second.weight.copy_((u[:, :rank] * root[None, :]).to(linear.weight.dtype))
        if linear.bias is not None:
            second.bias.copy_(linear.bias)
    return torch.nn.Sequential(first, second)


def _linears(layer: Any, targets: tuple[Target, ...]) -> list[tuple[Any, str]]:
    """(parent module, attribute) of each linear layer of ``layer`` the targets name (BERT-style names)."""
    found = []
    if "ffn" in targets:
        found += [(layer.intermediate, "dense"), (layer.output, "dense")]
    if "attention" in targets:
        attention = layer.attention
        found += [(attention.self, name) for name in ("query", "key", "value")] + [(attention.output, "dense")]
    return found


def factorize_model(model: Any, ratio: float, targets: tuple[Target, ...]) -> dict[str, float]:
    """Factorize ``model``'s chosen layers in place at ``ratio`` of full rank; returns the share of their
    multiply-adds that remains (below 1 saves work)."""
    layers = getattr(getattr(getattr(model, "encoder", None), "encoder", None), "layer", None)
    if layers is None:
        raise PassUnavailableError(f"low_rank handles BERT-style encoders; got {type(model).__name__}")
    before = after = 0
    for layer in layers:
        for parent, name in _linears(layer, targets):
            linear = getattr(parent, name)
            rank = max(1, round(min(linear.in_features, linear.out_features) * ratio))
            before += linear.in_features * linear.out_features
            after += rank * (linear.in_features + linear.out_features)
            setattr(parent, name, factorized(linear, rank))
    return {"ratio": ratio, "macs_remaining": round(after / before, 4)}


@register("low_rank", LowRankConfig, accepts=("hf",), produces="onnx", uses_budget=True, libraries=("torch", "onnx"))
def low_rank(artifact: Artifact, config: LowRankConfig, context: PassContext) -> PassOutput:
    """Factorize linear layers by truncated SVD, the smallest rank within the fidelity budget; export to ONNX."""
    from modelpkg.runtimes.torch import load_model

    source = context.source_for(artifact)
    if source.task != "embedding":
        raise PassUnavailableError("low_rank handles embedding encoders; classifiers are not supported yet")
    final = out_path(context, "model.onnx")
    tries: list[dict[str, Any]] = []
    for ratio in sorted(config.rank_ratios):
        model = load_model(source.path, source.task, source.pooling)
        shape = factorize_model(model, ratio, config.targets)
        export_onnx(source, final, context.validation[:8], ExportOnnxConfig(), model=model)
        fidelity = context.evaluate(Artifact(final, "onnx", artifact.precision))
        how = f"rank {ratio} of full ({shape['macs_remaining']} of the multiply-adds)"
        within = admits(context.budget, fidelity)
        tries.append({**shape, "how": how, "fidelity": fidelity.model_dump(exclude_none=True), "within_budget": within})
        log.info("low_rank %.3f: %s of the multiply-adds, %s", ratio, shape["macs_remaining"], fidelity)
        if tries[-1]["within_budget"]:
            return PassOutput(Artifact(final, "onnx", artifact.precision), {"tries": tries, "chosen": shape})
    closest = max(tries, key=lambda t: fidelity_score(t["fidelity"]))
    broken = "; ".join(violations(context.budget, Fidelity(**closest["fidelity"])))
    raise PassFailedError(
        f"low_rank: no rank within the fidelity budget; closest: {closest['ratio']} of full rank "
        f"({closest['macs_remaining']} of the multiply-adds; {broken})",
        {"tries": tries},
    )
