"""Structured pruning of an encoder's attention heads and feed-forward neurons, removed physically, depth kept,
with a least-squares re-fit of each block's output.

Families: BERT, RoBERTa, XLM-RoBERTa, ELECTRA (``attention.self`` / ``attention.output``, ``intermediate`` /
``output``) and DistilBERT (``attention.q_lin``... ``out_lin``, ``ffn.lin1`` / ``ffn.lin2``); MPNet's FFN only (its
relative position bias is shared by all layers per head). Importance is measured on real text, first-order and
without gradients (so an exact teacher with zero loss can be scored): a FFN neuron scores the mean magnitude of its
activation times the norm of its output weights; a head, the mean norm of what it adds to the attention output
(its context vectors through its columns of the output projection). The same number of heads and of neurons is
kept in every layer; the rest are cut out of the matrices, so every runtime computes less. Layer by layer, each
block's output projection (attention, then FFN) is re-fit by ridge least squares so that the pruned block's
pre-LayerNorm sum matches the original model's on the same tokens, which also absorbs the drift of what was
pruned before it. Recovery by distillation is the next step of a recipe (``distill: {student_from_input: true,
hidden_weight: ...}``).

How many heads each layer kept is written to the config (``modelpkg.runtimes.heads.HEADS_PER_LAYER``), which is
how the model loads again with stock transformers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from modelpkg.runtimes.heads import (
    HEADS_PER_LAYER,
    attention_family,
    attention_linears,
    head_columns,
    head_count,
    head_size,
    keep_heads,
)
from optimizers.passes.base import (
    Artifact,
    PassConfig,
    PassContext,
    PassOutput,
    PassUnavailableError,
    out_path,
    register,
    torch_inputs,
)

log = logging.getLogger(__name__)
BATCH = 32


class PruneConfig(PassConfig):
    ffn_keep: float = Field(default=0.5, gt=0, le=1, description="share of each layer's FFN neurons kept")
    heads_keep: float = Field(default=1.0, gt=0, le=1, description="share of each layer's attention heads kept")
    samples: int = Field(default=256, gt=0, description="training texts the scores and the re-fit use")
    ridge: float = Field(default=1e-3, ge=0, description="re-fit regularisation, relative to the mean activation power")
    refit: bool = Field(default=True, description="re-fit each layer's output projection by least squares")


# Where a layer's two feed-forward matrices are, per family: (module holding the one into the neurons, its name),
# and the same for the one out of them. In every family here the input of the first is also the residual added
# to the output of the second before the layer norm.
FFN_SITES = {
    "bert": (("intermediate", "dense"), ("output", "dense")),  # BERT, RoBERTa, XLM-RoBERTa, MPNet, ELECTRA
    "distilbert": (("ffn", "lin1"), ("ffn", "lin2")),
}
# The config key of the FFN width, per family.
FFN_WIDTH_KEY = {"bert": "intermediate_size", "distilbert": "hidden_dim"}


def ffn_family(layer: Any) -> str:
    """Which :data:`FFN_SITES` layout a transformer layer has."""
    for family, ((inner, _), (outer, _)) in FFN_SITES.items():
        if hasattr(layer, inner) and hasattr(layer, outer):
            return family
    raise PassUnavailableError(f"prune: no feed-forward block known in {type(layer).__name__}")


def ffn_linears(layer: Any) -> tuple[Any, Any]:
    """The layer's Linear into its FFN neurons and the Linear out of them."""
    (inner, inner_name), (outer, outer_name) = FFN_SITES[ffn_family(layer)]
    return getattr(getattr(layer, inner), inner_name), getattr(getattr(layer, outer), outer_name)


def ffn_layers(encoder: Any) -> list[Any]:
    """The encoder's transformer layers (``encoder.layer``, or DistilBERT's ``transformer.layer``), each with a
    feed-forward block of :data:`FFN_SITES`."""
    for holder in ("encoder", "transformer"):
        layers = getattr(getattr(encoder, holder, None), "layer", None)
        if layers is not None:
            for layer in layers:
                ffn_family(layer)
            return list(layers)
    raise PassUnavailableError(
        f"prune: no transformer layers (encoder.layer, transformer.layer) in {type(encoder).__name__}"
    )


@contextmanager
def captured_block_inputs(inner: Any, outer: Any, store: list[tuple[Any, Any]]) -> Iterator[None]:
    """Record, on each forward call, the (input of ``outer``, input of ``inner``) pair: for a FFN block the neuron
    activations and the residual, for attention the heads' context vectors and the residual."""
    residuals: list[Any] = []

    def residual(_module: Any, args: tuple[Any, ...]) -> None:
        residuals.append(args[0].detach())

    def activation(_module: Any, args: tuple[Any, ...]) -> None:
        store.append((args[0].detach(), residuals.pop()))

    handles = [inner.register_forward_pre_hook(residual), outer.register_forward_pre_hook(activation)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def block_linears(layer: Any, block: str) -> tuple[Any, Any]:
    """The Linear whose input is the block's residual, and the block's output projection (re-fit)."""
    if block == "ffn":
        return ffn_linears(layer)
    projections, output = attention_linears(layer)
    return projections[0], output


def _tokens(model: Any, layer: Any, block: str, batches: list[tuple[Any, ...]]) -> tuple[Any, Any]:
    """For every real (unpadded) token of ``batches``: the input of ``block``'s output projection (FFN neuron
    activations, or attention context vectors) and the block's residual input, as float64 matrices (tokens x
    features) and (tokens x hidden)."""
    import torch

    store: list[tuple[Any, Any]] = []
    with torch.inference_mode(), captured_block_inputs(*block_linears(layer, block), store):
        for inputs in batches:
            model(*inputs)
    masks = [inputs[1].bool() for inputs in batches]
    activations = torch.cat([a[m] for (a, _), m in zip(store, masks, strict=True)]).double()
    residuals = torch.cat([r[m] for (_, r), m in zip(store, masks, strict=True)]).double()
    return activations, residuals


def block_target(model: Any, layer: Any, block: str, batches: list[tuple[Any, ...]]) -> Any:
    """The block's pre-LayerNorm sum (output projection plus residual) for every real token of ``batches``."""
    activations, residuals = _tokens(model, layer, block, batches)
    outer = block_linears(layer, block)[1]
    return activations @ outer.weight.double().T + outer.bias.double() + residuals


def neuron_scores(activations: Any, output_weight: Any) -> Any:
    """Mean |activation| of each neuron times the norm of its column in the output projection."""
    return activations.abs().mean(dim=0) * output_weight.double().norm(dim=0)


def head_scores(contexts: Any, output_weight: Any, size: int) -> Any:
    """Mean norm, over tokens, of each head's contribution to the attention output: its ``size`` context
    columns through its columns of the output projection."""
    import torch

    weight = output_weight.double()
    return torch.stack(
        [
            (contexts[:, h * size : (h + 1) * size] @ weight[:, h * size : (h + 1) * size].T).norm(dim=1).mean()
            for h in range(contexts.shape[1] // size)
        ]
    )


def ridge_fit(inputs: Any, target: Any, ridge: float) -> tuple[Any, Any]:
    """Weight (out x in) and bias minimising ||inputs W^T + b - target||^2 + ridge * power * ||W||^2."""
    import torch

    ones = torch.ones(inputs.shape[0], 1, dtype=inputs.dtype)
    x = torch.cat([inputs, ones], dim=1)
    gram = x.T @ x
    power = float(gram.diagonal()[:-1].mean()) or 1.0
    penalty = torch.eye(x.shape[1], dtype=x.dtype) * ridge * power
    penalty[-1, -1] = 0.0  # the bias is not regularised
    solution = torch.linalg.solve(gram + penalty, x.T @ target)
    return solution[:-1].T.contiguous(), solution[-1].contiguous()


def shrink_layer(layer: Any, keep: Any, weight: Any | None = None, bias: Any | None = None) -> None:
    """Replace ``layer``'s FFN matrices with smaller ones holding only the ``keep`` neurons."""
    import torch

    inner, outer = ffn_linears(layer)
    new_inner = torch.nn.Linear(inner.in_features, len(keep), dtype=inner.weight.dtype)
    new_outer = torch.nn.Linear(len(keep), outer.out_features, dtype=outer.weight.dtype)
    with torch.no_grad():
        new_inner.weight.copy_(inner.weight[keep])
        new_inner.bias.copy_(inner.bias[keep])
        new_outer.weight.copy_(outer.weight[:, keep] if weight is None else weight.to(outer.weight.dtype))
        new_outer.bias.copy_(outer.bias if bias is None else bias.to(outer.bias.dtype))
    (inner_holder, inner_name), (outer_holder, outer_name) = FFN_SITES[ffn_family(layer)]
    setattr(getattr(layer, inner_holder), inner_name, new_inner)
    setattr(getattr(layer, outer_holder), outer_name, new_outer)


@dataclass
class _Plan:
    """What every block's pruning shares: the settings, the tokenized samples, the attention head size."""

    config: PruneConfig
    batches: list[tuple[Any, ...]]
    head_size: int


def _prune_block(
    pruned: Any, layer: Any, reference: Any, reference_layer: Any, block: str, kept: int, plan: _Plan
) -> float:
    """Cut ``layer``'s ``block`` ("attention": heads, "ffn": neurons) to ``kept`` units by measured importance,
    re-fit its output projection against ``reference``'s same block; returns the re-fit's relative error."""
    import torch

    target = block_target(reference, reference_layer, block, plan.batches)
    activations, residuals = _tokens(pruned, layer, block, plan.batches)
    outer = block_linears(layer, block)[1]
    if block == "ffn":
        scores = neuron_scores(activations, outer.weight)
    else:
        scores = head_scores(activations, outer.weight, plan.head_size)
    keep = torch.sort(torch.argsort(scores, descending=True)[:kept]).values
    columns = keep if block == "ffn" else head_columns(keep.tolist(), plan.head_size)
    weight = bias = None
    if plan.config.refit:
        weight, bias = ridge_fit(activations[:, columns], target - residuals, plan.config.ridge)
    if block == "ffn":
        shrink_layer(layer, keep, weight, bias)
    else:
        keep_heads(layer, keep.tolist(), plan.head_size, weight, bias)
    with torch.inference_mode():
        refit = block_linears(layer, block)[1](activations[:, columns].float()).double() + residuals
    return float((refit - target).norm() / target.norm())


@register("prune", PruneConfig, accepts=("hf",), libraries=("torch", "transformers"), version=2)
def prune(artifact: Artifact, config: PruneConfig, context: PassContext) -> PassOutput:
    """Remove the least important attention heads and FFN neurons of every layer physically, re-fitting each
    block's output."""
    import torch

    from modelpkg.runtimes.torch import load_model

    source = context.source_for(artifact)
    original = load_model(source.path, source.task, source.pooling)
    pruned: Any = load_model(source.path, source.task, source.pooling)
    # the transformers model saved, and the encoder inside it whose layers are pruned (a classifier's base model)
    saved: Any = getattr(pruned, "encoder", None) or pruned.classifier
    reference: Any = getattr(original, "encoder", None) or original.classifier
    texts = context.train[: config.samples]
    plan = _Plan(config, [torch_inputs(source, texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)], 0)
    before = sum(p.numel() for p in pruned.parameters())
    layers, reference_layers = ffn_layers(saved.base_model), ffn_layers(reference.base_model)
    width = ffn_linears(layers[0])[0].out_features
    kept = max(1, round(width * config.ffn_keep))
    details: dict[str, Any] = {"ffn_neurons_kept": kept, "ffn_neurons_before": width}
    blocks = [("ffn", kept)]
    if config.heads_keep < 1:
        if attention_family(layers[0]) is None:
            raise PassUnavailableError(f"prune: attention heads of {type(layers[0]).__name__} cannot be pruned here")
        plan.head_size = head_size(saved.config)
        heads = head_count(layers[0], plan.head_size)
        heads_kept = max(1, round(heads * config.heads_keep))
        blocks.insert(0, ("attention", heads_kept))
        details.update(heads_kept=heads_kept, heads_before=heads)
    errors: dict[str, list[float]] = {block: [] for block, _ in blocks}
    with torch.no_grad():  # scores and re-fits read the weights; nothing here is trained
        for index, (layer, reference_layer) in enumerate(zip(layers, reference_layers, strict=True)):
            for block, count in blocks:
                errors[block].append(_prune_block(pruned, layer, original, reference_layer, block, count, plan))
                log.info("prune layer %d %s: kept %d, relative error %.4f", index, block, count, errors[block][-1])
    setattr(saved.config, FFN_WIDTH_KEY[ffn_family(layers[0])], kept)
    if config.heads_keep < 1:
        setattr(saved.config, HEADS_PER_LAYER, [details["heads_kept"]] * len(layers))
    target_dir = out_path(context, "model")
    saved.save_pretrained(target_dir, safe_serialization=True)
    details.update(
        parameters_before=before,
        parameters_after=sum(p.numel() for p in pruned.parameters()),
        layer_relative_error=[round(e, 5) for e in errors["ffn"]],
    )
    if "attention" in errors:
        details["attention_relative_error"] = [round(e, 5) for e in errors["attention"]]
    return PassOutput(Artifact(target_dir, "hf", artifact.precision), details)
