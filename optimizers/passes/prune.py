"""Structured pruning of a BERT-family encoder's feed-forward neurons, removed physically, with a least-squares
re-fit of each layer's output.

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


def ffn_layers(encoder: Any) -> list[Any]:
    """The encoder's layers, each with ``intermediate.dense`` and ``output.dense`` (BERT, RoBERTa, …)."""
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if layers is None or not all(hasattr(layer, "intermediate") and hasattr(layer, "output") for layer in layers):
        raise PassUnavailableError(
            f"prune handles BERT-style encoders (encoder.layer[i].intermediate/output); got {type(encoder).__name__}"
        )
    return list(layers)


@contextmanager
def captured_ffn_inputs(layer: Any, store: list[tuple[Any, Any]]) -> Iterator[None]:
    """Record the (intermediate activation, residual) pairs entering ``layer.output`` on each forward call."""

    def record(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        values = [*args, kwargs.get("hidden_states"), kwargs.get("input_tensor")]
        hidden, residual = [v for v in values if v is not None][:2]
        store.append((hidden.detach(), residual.detach()))

    handle = layer.output.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield
    finally:
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

    inner, outer = layer.intermediate.dense, layer.output.dense
    new_inner = torch.nn.Linear(inner.in_features, len(keep), dtype=inner.weight.dtype)
    new_outer = torch.nn.Linear(len(keep), outer.out_features, dtype=outer.weight.dtype)
    with torch.no_grad():
        new_inner.weight.copy_(inner.weight[keep])
        new_inner.bias.copy_(inner.bias[keep])
        new_outer.weight.copy_(outer.weight[:, keep] if weight is None else weight.to(outer.weight.dtype))
        new_outer.bias.copy_(outer.bias if bias is None else bias.to(outer.bias.dtype))
    layer.intermediate.dense, layer.output.dense = new_inner, new_outer


@register("prune", PruneConfig, accepts=("hf",), libraries=("torch", "transformers"))
def prune(artifact: Artifact, config: PruneConfig, context: PassContext) -> PassOutput:
    """Remove the least important FFN neurons of every layer physically, re-fitting each layer's output."""
    import torch

    from serving.runtimes.torch import load_model

    source = context.source_for(artifact)
    if source.task != "embedding":
        raise PassUnavailableError("prune handles embedding encoders; classifiers are not supported yet")
    original = load_model(source.path, source.task, source.pooling)
    pruned: Any = load_model(source.path, source.task, source.pooling)
    texts = context.train[: config.samples]
    batches = [torch_inputs(source, texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)]
    before = sum(p.numel() for p in pruned.parameters())
    layers = ffn_layers(pruned.encoder)
    width = layers[0].intermediate.dense.out_features
    kept = max(1, round(width * config.ffn_keep))
    residual_errors = []
    for index, (layer, reference) in enumerate(zip(layers, ffn_layers(original.encoder), strict=True)):
        ref_act, ref_res = _tokens(original, reference, batches)
        target = ref_act @ reference.output.dense.weight.double().T + reference.output.dense.bias.double() + ref_res
        activations, residuals = _tokens(pruned, layer, batches)
        keep = torch.argsort(neuron_scores(activations, layer.output.dense.weight), descending=True)[:kept]
        keep = torch.sort(keep).values
        weight = bias = None
        if config.refit:
            weight, bias = ridge_fit(activations[:, keep], target - residuals, config.ridge)
        shrink_layer(layer, keep, weight, bias)
        with torch.inference_mode():
            refit = layer.output.dense(activations[:, keep].float()).double() + residuals
        residual_errors.append(float((refit - target).norm() / target.norm()))
        log.info(
            "prune layer %d: kept %d of %d FFN neurons, relative error %.4f", index, kept, width, residual_errors[-1]
        )
    pruned.encoder.config.intermediate_size = kept
    target_dir = out_path(context, "model")
    pruned.encoder.save_pretrained(target_dir, safe_serialization=True)
    after = sum(p.numel() for p in pruned.parameters())
    details = {
        "ffn_neurons_kept": kept,
        "ffn_neurons_before": width,
        "parameters_before": before,
        "parameters_after": after,
        "layer_relative_error": [round(e, 5) for e in residual_errors],
    }
    return PassOutput(Artifact(target_dir, "hf", artifact.precision), details)
