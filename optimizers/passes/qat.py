"""Quantization-aware training for distillation (``distill: {qat: true}``): while the student trains, every linear
layer of its transformer layers computes as the int8 runtimes will run it, so the training sees the quantization
error and learns around it.

The scheme matches what the chain's int8 passes produce: weights symmetric int8 per output channel (ONNX
Runtime's per-channel dynamic int8, NNCF's weights), activations symmetric int8 per row (one token's vector) from
its own range, as ONNX Runtime's dynamic int8 runs with per-row scales (``optimizers.row_scales``, the default).
Rounding is a straight-through estimator (``torch.fake_quantize_*``: the gradient passes through unchanged inside
the range). After training the fake quantizers are removed and the float weights saved: the
int8 pass that follows quantizes them exactly as they were trained.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

QAT_SCHEME = "int8: weights symmetric per output channel, activations symmetric per row from each row's range"


def fake_quantize_weight(weight: Any) -> Any:
    """``weight`` rounded to symmetric int8 per output channel (row), then back to float."""
    import torch

    scale = (weight.detach().abs().amax(dim=1) / 127.0).clamp(min=1e-8)
    zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -128, 127)


def fake_quantize_activation(x: Any) -> Any:
    """``x`` rounded to symmetric int8 per row (the last axis) with the scale of its own range, as dynamic int8
    with per-row scales runs it."""
    import torch

    rows = x.reshape(-1, x.shape[-1])
    scale = (rows.detach().abs().amax(dim=1) / 127.0).clamp(min=1e-8)
    zero = torch.zeros(rows.shape[0], dtype=torch.int32, device=x.device)
    return torch.fake_quantize_per_channel_affine(rows, scale, zero, 0, -127, 127).reshape(x.shape)


def _weight_fake_quant() -> Any:
    """A parametrization: the layer sees its weight as int8 would give it back (the class needs torch, which
    this module imports only when used)."""
    import torch

    class WeightFakeQuant(torch.nn.Module):
        def forward(self, weight: Any) -> Any:
            return fake_quantize_weight(weight)

    return WeightFakeQuant()


def quantizable_linears(model: Any) -> list[Any]:
    """The linear layers inside the transformer layers (embeddings and heads stay float, as in the int8 passes)."""
    import torch

    layers = getattr(getattr(getattr(model, "encoder", model), "encoder", None), "layer", None)
    scope = layers if layers is not None else [model]
    return [m for block in scope for m in block.modules() if isinstance(m, torch.nn.Linear)]


@contextmanager
def fake_quantized(model: Any) -> Iterator[int]:
    """Train ``model`` with int8 fake quantization on its transformer layers' linear layers; yields how many."""
    from torch.nn.utils import parametrize

    linears = quantizable_linears(model)
    handles = []
    for linear in linears:
        parametrize.register_parametrization(linear, "weight", _weight_fake_quant())
        handles.append(linear.register_forward_pre_hook(lambda _m, args: (fake_quantize_activation(args[0]),)))
    try:
        yield len(linears)
    finally:
        for handle in handles:
            handle.remove()
        for linear in linears:
            parametrize.remove_parametrizations(linear, "weight", leave_parametrized=False)
