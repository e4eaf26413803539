"""Structured pruning of an encoder's feed-forward neurons (BERT, RoBERTa, XLM-RoBERTa, MPNet: ``intermediate`` /
``output``; DistilBERT: ``ffn.lin1`` / ``ffn.lin2``), removed physically, with a least-squares re-fit of each
layer's output.

Each layer's FFN neurons are scored by what they contribute on real text: the mean magnitude of the neuron's
activation times the norm of its output weights (first-order, data-aware; no gradient is needed, so an exact
teacher with zero loss can be scored). The same number of neurons is kept in every layer (a Hugging Face config
has one ``intermediate_size``), the rest are cut out of both matrices, so every runtime computes less. Layer by
layer, the output projection is then re-fit by ridge least squares so that the pruned layer's pre-LayerNorm sum
matches the original model's on the same tokens, which also absorbs the drift of the layers pruned before it.
Attention heads are not pruned here (transformers 5 dropped per-layer head pruning from its configs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import Field

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
def captured_ffn_inputs(layer: Any, store: list[tuple[Any, Any]]) -> Iterator[None]:
    """Record, on each forward call, the (neuron activations, residual) pair: the inputs of the FFN's output and
    input Linears."""
    inner, outer = ffn_linears(layer)
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


def _tokens(model: Any, layer: Any, batches: list[tuple[Any, ...]]) -> tuple[Any, Any]:
    """For every real (unpadded) token of ``batches``: the activation of each FFN neuron and the residual input
    of ``layer.output``, as (tokens x neurons) and (tokens x hidden) float64 matrices."""
    import torch

    store: list[tuple[Any, Any]] = []
    with torch.inference_mode(), captured_ffn_inputs(layer, store):
        for inputs in batches:
            model(*inputs)
    masks = [inputs[1].bool() for inputs in batches]
    activations = torch.cat([a[m] for (a, _), m in zip(store, masks, strict=True)]).double()
    residuals = torch.cat([r[m] for (_, r), m in zip(store, masks, strict=True)]).double()
    return activations, residuals


def neuron_scores(activations: Any, output_weight: Any) -> Any:
    """Mean |activation| of each neuron times the norm of its column in the output projection."""
    return activations.abs().mean(dim=0) * output_weight.double().norm(dim=0)


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


@register("prune", PruneConfig, accepts=("hf",), libraries=("torch", "transformers"))
def prune(artifact: Artifact, config: PruneConfig, context: PassContext) -> PassOutput:
    """Remove the least important FFN neurons of every layer physically, re-fitting each layer's output."""
    import torch

    from modelpkg.runtimes.torch import load_model

    source = context.source_for(artifact)
    original = load_model(source.path, source.task, source.pooling)
    pruned: Any = load_model(source.path, source.task, source.pooling)
    # the transformers model saved, and the encoder inside it whose layers are pruned (a classifier's base model)
    saved: Any = getattr(pruned, "encoder", None) or pruned.classifier
    texts = context.train[: config.samples]
    batches = [torch_inputs(source, texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)]
    before = sum(p.numel() for p in pruned.parameters())
    layers = ffn_layers(saved.base_model)
    width = ffn_linears(layers[0])[0].out_features
    kept = max(1, round(width * config.ffn_keep))
    residual_errors = []
    reference: Any = getattr(original, "encoder", None) or original.classifier
    reference_layers = ffn_layers(reference.base_model)
    for index, (layer, reference_layer) in enumerate(zip(layers, reference_layers, strict=True)):
        ref_act, ref_res = _tokens(original, reference_layer, batches)
        ref_outer = ffn_linears(reference_layer)[1]
        target = ref_act @ ref_outer.weight.double().T + ref_outer.bias.double() + ref_res
        activations, residuals = _tokens(pruned, layer, batches)
        keep = torch.argsort(neuron_scores(activations, ffn_linears(layer)[1].weight), descending=True)[:kept]
        keep = torch.sort(keep).values
        weight = bias = None
        if config.refit:
            weight, bias = ridge_fit(activations[:, keep], target - residuals, config.ridge)
        shrink_layer(layer, keep, weight, bias)
        with torch.inference_mode():
            refit = ffn_linears(layer)[1](activations[:, keep].float()).double() + residuals
        residual_errors.append(float((refit - target).norm() / target.norm()))
        log.info(
            "prune layer %d: kept %d of %d FFN neurons, relative error %.4f", index, kept, width, residual_errors[-1]
        )
    setattr(saved.config, FFN_WIDTH_KEY[ffn_family(layers[0])], kept)
    target_dir = out_path(context, "model")
    saved.save_pretrained(target_dir, safe_serialization=True)
    after = sum(p.numel() for p in pruned.parameters())
    details = {
        "ffn_neurons_kept": kept,
        "ffn_neurons_before": width,
        "parameters_before": before,
        "parameters_after": after,
        "layer_relative_error": [round(e, 5) for e in residual_errors],
    }
    return PassOutput(Artifact(target_dir, "hf", artifact.precision), details)
